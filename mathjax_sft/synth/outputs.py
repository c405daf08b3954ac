"""The output directory of a run: finished rows, failures, usage, log; exactly one record per row.

Layout: `rows.jsonl` (finished rows), `failures.jsonl` (id, step, reason, detail), `usage.json`
(totals), `synth.log`, `batch/` (batch mode state) and `.lock` (an flock held while a run is
active, so two runs cannot write the same directory; the kernel drops it even on SIGKILL).
Every row id is written to exactly one of the two JSONL files, once: ids already present are
skipped when a run starts, and a second write of an id in one run is refused.

Writes go through a group commit (`mathjax_sft.group_commit`): `write_row` / `write_failure`
return once the record is durable; `queue_row` / `queue_failure` return at once and `drain`
waits for them. Opening streams the files: rows.jsonl is read line by line for the ids only (the
id is the first field of every row this tool writes), so a million finished rows cost seconds,
not a parse of every row.
"""

from __future__ import annotations

import collections
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mathjax_sft import errors
from mathjax_sft.group_commit import GroupCommit
from mathjax_sft.jsonl_store import JsonlStore, StoreError
from mathjax_sft.synth import retry
from mathjax_sft.synth.usage import USAGE_NAME, UsageTracker

log = logging.getLogger(__name__)
ROWS_NAME = "rows.jsonl"
FAILURES_NAME = "failures.jsonl"
LOCK_NAME = ".lock"
_ID_HEAD = b'{"id":"'


def row_ids(path: Path) -> Iterator[str]:
  """The id of every line of a rows.jsonl, streamed; a line is parsed only when its id is not a
  plain string at its start. An unterminated last line (a write in progress) is left out."""
  if not path.exists():
    return
  with open(path, "rb") as f:
    for line_no, line in enumerate(f, start=1):
      if not line.endswith(b"\n"):
        return
      if not line.endswith(b"}\n"):
        raise StoreError(f"{path}:{line_no}: not a whole JSON object line")
      end = line.find(b'"', len(_ID_HEAD))
      if line.startswith(_ID_HEAD) and end > 0 and b"\\" not in line[len(_ID_HEAD):end]:
        yield line[len(_ID_HEAD):end].decode("utf-8")
      else:
        row_id = JsonlStore.parse_line(path, line, line_no).get("id")
        if not isinstance(row_id, str):
          raise StoreError(f"{path}:{line_no}: a record without a string 'id'")
        yield row_id


class RowStates:
  """Every row id recorded in the output directory, counted once, in its latest state: written
  (in rows.jsonl), failed (its latest failure record has a final reason) or pending (its latest
  failure was transient, so the next run asks it again). failures.jsonl is append-only: a row
  that failed in two runs has two lines there, and counts once here."""

  def __init__(self) -> None:
    self.written = 0
    self.last_failure: dict[str, str] = {}     # id -> reason of its latest failure (ids not written)
    self.failed: collections.Counter[str] = collections.Counter()    # final reason -> rows
    self.pending: collections.Counter[str] = collections.Counter()   # transient reason -> rows

  def _counter(self, reason: str) -> collections.Counter[str]:
    return self.pending if reason in retry.RETRYABLE else self.failed

  def _forget_failure(self, row_id: str) -> None:
    old = self.last_failure.pop(row_id, None)
    if old is not None:
      counter = self._counter(old)
      counter[old] -= 1
      if not counter[old]:
        del counter[old]

  def row(self, row_id: str) -> None:
    """`row_id` was written (final; the caller writes an id once)."""
    self._forget_failure(row_id)
    self.written += 1

  def failure(self, row_id: str, reason: str) -> None:
    """`row_id` failed for `reason`; it replaces any earlier failure of the same row."""
    self._forget_failure(row_id)
    self.last_failure[row_id] = reason
    self._counter(reason)[reason] += 1

  def counts(self) -> dict[str, Any]:
    """rows / failures / pending (each id once) and the failures and pending rows by reason."""
    return {"rows": self.written, "failures": sum(self.failed.values()), "pending": sum(self.pending.values()),
            "failures_by_reason": dict(sorted(self.failed.items())),
            "pending_by_reason": dict(sorted(self.pending.items()))}


class OutputDirBusy(errors.UserError, RuntimeError):
  """Another run holds the output directory."""


class OutputDir:
  """Opens (and locks) the directory, repairs torn tails, remembers which rows are done."""

  def __init__(self, path: Path, question_field: str, fsync: bool = True,
               retry_rejected: bool = False):
    self.path = Path(path)
    self.path.mkdir(parents=True, exist_ok=True)
    self._lock_fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(self._lock_fd)
      raise OutputDirBusy(f"{self.path} is in use by another synthesize run") from None
    self.question_field = question_field
    self.rows = JsonlStore(self.path / ROWS_NAME, fsync=fsync)
    self.failures = JsonlStore(self.path / FAILURES_NAME, fsync=fsync)
    self.states = RowStates()
    self.done: set[str] = set()            # ids this run does not ask: written, or failed for good
    for row_id in row_ids(self.rows.path):
      if row_id in self.done:
        log.warning("%s: id %s already recorded earlier; keeping the first record", self.rows.path, row_id)
        continue
      self.done.add(row_id)
      self.states.row(row_id)
    for record in self.failures:
      row_id = record.get("id")
      if not isinstance(row_id, str):
        raise StoreError(f"{self.failures.path}: a record without a string 'id'")
      if row_id not in self.done:   # a row written after it failed is written
        self.states.failure(row_id, str(record.get("reason")))
    for row_id, reason in self.states.last_failure.items():
      if reason not in retry.RETRYABLE and not retry_rejected:
        self.done.add(row_id)
    self.previous = self.states.counts()     # as the run found them
    self.usage: UsageTracker | None = None
    self.progress = None  # a tqdm bar, set by the runner when wanted
    self.read_seconds = 0.0   # how long opening took, set by the runner
    self._rows_commit = GroupCommit(self.rows)
    self._failures_commit = GroupCommit(self.failures)

  def asked_again(self, row_id: str) -> bool:
    """Whether `row_id` failed before and is asked again by this run."""
    return row_id in self.states.last_failure and row_id not in self.done

  def row_questions(self, start: int = 0) -> Iterator[tuple[str, str]]:
    """(id, question) of every row from byte `start` of rows.jsonl on (each line parsed)."""
    if not self.rows.path.exists():
      return
    with open(self.rows.path, "rb") as f:
      f.seek(start)
      for line_no, line in enumerate(f, start=1):
        record = JsonlStore.parse_line(self.rows.path, line, f"{line_no} after byte {start}")
        question = record.get(self.question_field)
        if isinstance(question, str) and isinstance(record.get("id"), str):
          yield record["id"], question

  def is_row(self, row_id: str) -> bool:
    """Whether `row_id` is recorded in rows.jsonl (not as a failure)."""
    return row_id in self.done and row_id not in self.states.last_failure

  @property
  def rows_durable_bytes(self) -> int:
    """How many bytes of rows.jsonl are known to be on disk."""
    return self._rows_commit.durable_size

  @property
  def usage_path(self) -> Path:
    return self.path / USAGE_NAME

  def _claim(self, row_id: str) -> bool:
    if row_id in self.done:
      log.error("refusing to record %s twice", row_id)
      return False
    self.done.add(row_id)
    return True

  async def write_row(self, record: dict[str, Any]) -> None:
    """Appends a finished row (once per id); returns when it is durable."""
    if self._claim(record["id"]):
      await self._rows_commit.append(record)
      self._counted_row(record["id"])

  async def write_failure(self, record: dict[str, Any]) -> None:
    """Appends a failed row with its reason (once per id); returns when it is durable."""
    if self._claim(record["id"]):
      await self._failures_commit.append(record)
      self._counted_failure(record)

  def queue_row(self, record: dict[str, Any]) -> None:
    """`write_row` without waiting: durable after `drain`."""
    if self._claim(record["id"]):
      self._rows_commit.submit(record)
      self._counted_row(record["id"])

  def queue_failure(self, record: dict[str, Any]) -> None:
    """`write_failure` without waiting: durable after `drain`."""
    if self._claim(record["id"]):
      self._failures_commit.submit(record)
      self._counted_failure(record)

  async def drain(self) -> None:
    """Waits until every row and failure written so far is durable."""
    await self._rows_commit.drain()
    await self._failures_commit.drain()

  def _counted_row(self, row_id: str) -> None:
    self.states.row(row_id)
    if self.usage is not None:
      self.usage.record_row()
    self._tick()

  def _counted_failure(self, record: dict[str, Any]) -> None:
    self.states.failure(record["id"], record["reason"])
    if self.usage is not None:
      self.usage.record_failure(record["reason"], record["step"], record["detail"])
    log.info("row %s failed at %s: %s (%s)", record["id"], record["step"], record["reason"], record["detail"])
    self._tick()

  def _tick(self) -> None:
    if self.progress is not None and self.usage is not None:
      u = self.usage
      self.progress.update(1)
      self.progress.set_postfix(rows=u.rows_written, failed=u.rows_not_written,
                                tokens=u.prompt_tokens + u.completion_tokens, refresh=False)

  def close(self) -> None:
    self._rows_commit.close()
    self._failures_commit.close()
    if self._lock_fd is not None:
      os.close(self._lock_fd)   # releases the flock
      self._lock_fd = None
