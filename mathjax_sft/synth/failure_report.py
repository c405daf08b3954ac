"""What went wrong in a synthesis output directory: the most common failure reasons, each with
the step it happened at, one row's detail, and the raw reply the server sent for it.

Read-only, so it may run while a synthesis run writes the directory: failures.jsonl is read
whole (an unterminated last line is left out), each row in its latest state; a row written after
it failed is not a failure. Used by `tools/inspect_failures.py`."""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path
from typing import Any

from mathjax_sft import errors
from mathjax_sft.configtree import setting
from mathjax_sft.jsonl_store import read_complete
from mathjax_sft.synth import retry
from mathjax_sft.synth.client import clip
from mathjax_sft.synth.outputs import FAILURES_NAME, ROWS_NAME, row_ids


@dataclasses.dataclass(frozen=True)
class InspectConfig:
  """Settings of tools/inspect_failures.py."""

  output_dir: Path = setting(doc="A tools/synthesize.py --output_dir.")
  top: int = setting(5, "How many failure reasons to show, most common first.")
  max_reply_chars: int = setting(2000, "Characters of each example reply to print (failure "
                                 "records keep up to 4000).")

  def __post_init__(self):
    for name in ("top", "max_reply_chars"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class FailureGroup:
  """The rows whose latest failure has one reason."""

  reason: str
  rows: int
  pending: bool                  # transient: the next run asks these rows again
  steps: dict[str, int]          # step -> rows
  example: dict[str, Any]        # the latest such failure record that kept a reply (else the latest)


def failure_groups(output_dir: Path) -> list[FailureGroup]:
  """Failure reasons of the rows in `output_dir`, most common first."""
  output_dir = Path(output_dir)
  failures_path = output_dir / FAILURES_NAME
  if not output_dir.is_dir():
    raise errors.BadInput(f"{output_dir}: no such directory", flag="--output_dir")
  if not failures_path.exists() and not (output_dir / ROWS_NAME).exists():
    raise errors.BadInput(f"{output_dir}: not a synthesis output directory (no {FAILURES_NAME} or "
                          f"{ROWS_NAME})", flag="--output_dir")
  latest: dict[str, tuple[str, str]] = {}            # id -> (reason, step)
  examples: dict[str, dict[str, Any]] = {}
  for record in read_complete(failures_path):
    reason, row_id = str(record.get("reason")), record.get("id")
    latest[row_id] = (reason, str(record.get("step")))
    if record.get("reply") or not examples.get(reason, {}).get("reply"):
      examples[reason] = record
  for row_id in row_ids(output_dir / ROWS_NAME):
    latest.pop(row_id, None)
  rows: collections.Counter[str] = collections.Counter()
  by_step: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
  for reason, step in latest.values():
    rows[reason] += 1
    by_step[reason][step] += 1
  return [FailureGroup(reason, n, reason in retry.RETRYABLE, dict(by_step[reason].most_common()), examples[reason])
          for reason, n in rows.most_common()]


def _indent(text: str, prefix: str = "    ") -> str:
  return "\n".join(prefix + line for line in text.splitlines()) or prefix


def format_groups(groups: list[FailureGroup], output_dir: Path, top: int, max_reply_chars: int) -> str:
  """The report `tools/inspect_failures.py` prints."""
  total = sum(g.rows for g in groups)
  if not total:
    return f"{output_dir}: no failed rows"
  lines = [f"{output_dir}: {total} failed rows, {len(groups)} reasons"
           + (f" (the {top} most common below)" if len(groups) > top else "")]
  for g in groups[:top]:
    ex = g.example
    steps = ", ".join(f"{step} {n}" for step, n in g.steps.items())
    state = "pending: the next run asks these rows again" if g.pending else "final"
    usage = ex.get("usage") or {}
    lines += ["", f"{g.reason}: {g.rows} rows ({state}); at step {steps}",
              f"  e.g. row {ex.get('id')} (reference {ex.get('reference_id')}): {ex.get('detail')}",
              f"  {ex.get('attempts', '?')} attempt(s) at that step; the row made {usage.get('requests', '?')} "
              f"request(s), {usage.get('prompt_tokens', 0)} + {usage.get('completion_tokens', 0)} tokens"]
    reply = ex.get("reply")
    if reply:
      lines += ["  its last reply:", _indent(clip(reply, max_reply_chars))]
    else:
      lines.append("  no reply kept (a filter's removal, or no reply came back)")
  return "\n".join(lines)
