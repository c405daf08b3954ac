"""The output directory of a run: finished rows, failures, usage, log; exactly one record per row.

Layout: `rows.jsonl` (finished rows), `failures.jsonl` (id, step, reason, detail), `usage.json`
(totals), `synth.log`, `batch/` (batch mode state) and `.lock` (an flock held while a run is
active, so two runs cannot write the same directory; the kernel drops it even on SIGKILL).
Every row id is written to exactly one of the two JSONL files, once: ids already present are
skipped when a run starts, and a second write of an id in one run is refused.
"""

from __future__ import annotations

import collections
import fcntl
import logging
import os
from pathlib import Path
from typing import Any

from mathjax_sft import errors
from mathjax_sft.jsonl_store import JsonlStore
from mathjax_sft.synth import retry
from mathjax_sft.synth.usage import USAGE_NAME, UsageTracker

log = logging.getLogger(__name__)
ROWS_NAME = "rows.jsonl"
FAILURES_NAME = "failures.jsonl"
LOCK_NAME = ".lock"


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
    self.rows = JsonlStore(self.path / ROWS_NAME, fsync=fsync)
    self.failures = JsonlStore(self.path / FAILURES_NAME, fsync=fsync)
    self.done: set[str] = set()
    self.existing_questions: list[tuple[str, str]] = []   # (row id, question) of finished rows
    self.previous_rows = 0
    self.previous_failures: collections.Counter[str] = collections.Counter()   # final, by reason
    self.pending_retry: set[str] = set()   # rows whose last failure was transient: asked again
    for record in self.rows:
      self._remember(record, self.rows.path)
      self.pending_retry.discard(record.get("id"))
      self.previous_rows += 1
      question = record.get(question_field)
      if isinstance(question, str):
        self.existing_questions.append((record["id"], question))
    for record in self.failures:
      reason = str(record.get("reason"))
      row_id = record.get("id")
      if reason in retry.RETRYABLE or retry_rejected:   # not final: the row is asked again
        if row_id not in self.done:
          self.pending_retry.add(row_id)
        continue
      self.pending_retry.discard(row_id)
      self._remember(record, self.failures.path)
      self.previous_failures[reason] += 1
    self.usage: UsageTracker | None = None
    self.progress = None  # a tqdm bar, set by the runner when wanted

  @property
  def usage_path(self) -> Path:
    return self.path / USAGE_NAME

  def _remember(self, record: dict[str, Any], path: Path) -> None:
    row_id = record.get("id")
    if not isinstance(row_id, str):
      raise ValueError(f"{path}: a record without a string 'id'")
    if row_id in self.done:
      log.warning("%s: id %s already recorded earlier; keeping the first record", path, row_id)
    self.done.add(row_id)

  def _claim(self, row_id: str) -> bool:
    if row_id in self.done:
      log.error("refusing to record %s twice", row_id)
      return False
    self.done.add(row_id)
    return True

  def write_row(self, record: dict[str, Any]) -> None:
    """Appends a finished row (once per id)."""
    if self._claim(record["id"]):
      self.rows.append(record)
      if self.usage is not None:
        self.usage.record_row()
      self._tick()

  def write_failure(self, record: dict[str, Any]) -> None:
    """Appends a failed row with its reason (once per id)."""
    if self._claim(record["id"]):
      self.failures.append(record)
      if self.usage is not None:
        self.usage.record_failure(record["reason"])
      log.info("row %s failed at %s: %s (%s)", record["id"], record["step"], record["reason"], record["detail"])
      self._tick()

  def _tick(self) -> None:
    if self.progress is not None and self.usage is not None:
      u = self.usage
      self.progress.update(1)
      self.progress.set_postfix(rows=u.rows_written, failed=u.rows_failed,
                                tokens=u.prompt_tokens + u.completion_tokens, refresh=False)

  def close(self) -> None:
    self.rows.close()
    self.failures.close()
    if self._lock_fd is not None:
      os.close(self._lock_fd)   # releases the flock
      self._lock_fd = None
