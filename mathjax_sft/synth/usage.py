"""Counting a run: requests, tokens, estimated cost, rows, failures and filter removals, written
to `usage.json` (atomically) with the totals of every run so far in this output directory.

usage.json holds `output_files` (every row recorded so far, each id once in its latest state:
written, failed for good, or pending), `total` (what all runs spent: requests, tokens, cost,
summed; and the row counts of `output_files`, so that a row that failed in two runs counts once),
`prices` and `runs` (what each run did; in a run every row is recorded once).
A run killed with SIGKILL keeps its last periodic snapshot; the next run adds to it."""

from __future__ import annotations

import collections
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mathjax_sft.synth import retry
from mathjax_sft.synth.prices import Prices

log = logging.getLogger(__name__)

USAGE_NAME = "usage.json"
# Failure reasons that are quality-filter removals (the rest are transport / reply failures).
FILTER_REASONS = ("verify_rejected", "exact_duplicate", "near_duplicate", "contaminated", "answer_format")


class UsageTracker:
  """Counters of the current run, plus the runs recorded before it in `path`."""

  def __init__(self, path: Path, *, mode: str, model: str, prices: Prices, discount: float = 1.0,
               row_states: Callable[[], dict[str, Any]] | None = None):
    """`row_states` gives the output directory's counts (`RowStates.counts`)."""
    self.path = Path(path)
    self.mode = mode
    self.model = model
    self.prices = prices
    self.discount = discount
    self._row_states = row_states or (lambda: {})
    self.started_wall = time.time()
    self.started = time.monotonic()
    self.rows_in = 0
    self.rows_written = 0
    self.rows_not_written = 0             # failure records of this run, final or pending
    self.first_failure: dict[str, dict[str, str]] = {}   # reason -> step and detail of its first row this run
    self.failures_by_reason: collections.Counter[str] = collections.Counter()
    self.requests = 0
    self.requests_ok = 0
    self.request_errors: collections.Counter[str] = collections.Counter()
    self.retries = 0
    self.bad_replies: collections.Counter[str] = collections.Counter()
    self.prompt_tokens = 0
    self.completion_tokens = 0
    self.tokens_by_step: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    self.extra: dict[str, Any] = {}
    self.finished = False
    self._prior_runs = self._load_prior()
    self._last_flush = 0.0

  def _load_prior(self) -> list[dict[str, Any]]:
    if not self.path.exists():
      return []
    try:
      runs = json.loads(self.path.read_text(encoding="utf-8")).get("runs", [])
      return [r for r in runs if isinstance(r, dict)]
    except (OSError, ValueError, AttributeError) as e:
      log.warning("%s unreadable (%s); previous run totals are not carried over", self.path, type(e).__name__)
      return []

  # -- recording ---------------------------------------------------------------------------------
  def record_request(self, ok: bool, failure_class: str | None = None) -> None:
    self.requests += 1
    if ok:
      self.requests_ok += 1
    else:
      self.request_errors[failure_class or "unknown"] += 1

  def record_tokens(self, step: str, prompt_tokens: int, completion_tokens: int) -> None:
    self.prompt_tokens += prompt_tokens
    self.completion_tokens += completion_tokens
    self.tokens_by_step[step]["prompt"] += prompt_tokens
    self.tokens_by_step[step]["completion"] += completion_tokens

  def record_row(self) -> None:
    self.rows_written += 1

  def record_failure(self, reason: str, step: str = "", detail: str = "") -> None:
    self.rows_not_written += 1
    self.failures_by_reason[reason] += 1
    self.first_failure.setdefault(reason, {"step": step, "detail": detail[:300]})

  # -- reporting ---------------------------------------------------------------------------------
  def cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
    """Estimated USD for these tokens at the run's prices (and batch discount); None when the
    prices are unknown."""
    if not self.prices.known:
      return None
    return round(self.discount * (prompt_tokens * self.prices.prompt + completion_tokens * self.prices.completion)
                 / 1e6, 6)

  @property
  def elapsed(self) -> float:
    return time.monotonic() - self.started

  def run_summary(self) -> dict[str, Any]:
    """What this run did: rows written, failed for good and left pending (each of its rows once),
    failures by reason, requests, tokens, cost."""
    elapsed = self.elapsed
    pending = sum(n for reason, n in self.failures_by_reason.items() if reason in retry.RETRYABLE)
    return {
        "mode": self.mode,
        "model": self.model,
        "started_at": self.started_wall,
        "updated_at": time.time(),
        "finished": self.finished,
        "elapsed_s": round(elapsed, 3),
        "rows_in": self.rows_in,
        "rows_written": self.rows_written,
        "rows_failed": self.rows_not_written - pending,
        "rows_pending": pending,
        "failures_by_reason": dict(sorted(self.failures_by_reason.items())),
        "first_failure_by_reason": dict(sorted(self.first_failure.items())),
        "removed_by_filter": {r: self.failures_by_reason.get(r, 0) for r in FILTER_REASONS},
        "requests": self.requests,
        "requests_ok": self.requests_ok,
        "request_errors": dict(sorted(self.request_errors.items())),
        "retries": self.retries,
        "bad_replies": dict(sorted(self.bad_replies.items())),
        "requests_per_s": round(self.requests / elapsed, 3) if elapsed > 0 else 0.0,
        "prompt_tokens": self.prompt_tokens,
        "completion_tokens": self.completion_tokens,
        "tokens_by_step": {k: dict(v) for k, v in sorted(self.tokens_by_step.items())},
        "estimated_cost_usd": self.cost(self.prompt_tokens, self.completion_tokens),
        **self.extra,
    }

  def snapshot(self) -> dict[str, Any]:
    """The usage.json content: output file counts, totals over all runs, prices, each run."""
    runs = self._prior_runs + [self.run_summary()]
    files = self._row_states()
    return {"output_files": files, "total": _sum_runs(runs, files),
            "prices": {"usd_per_million_prompt_tokens": self.prices.prompt,
                       "usd_per_million_completion_tokens": self.prices.completion,
                       "source": self.prices.source, "discount": self.discount},
            "runs": runs}

  def flush(self, force: bool = False, interval: float = 10.0) -> dict[str, Any] | None:
    """Writes usage.json atomically (temp file, fsync, rename) at most every `interval` seconds;
    returns what it wrote (None when it skipped)."""
    now = time.monotonic()
    if not force and now - self._last_flush < interval:
      return None
    self._last_flush = now
    tmp = self.path.with_name(self.path.name + ".tmp")
    snapshot = self.snapshot()
    data = json.dumps(snapshot, indent=2, sort_keys=False) + "\n"
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, self.path)
    return snapshot


_SUMMED = ("elapsed_s", "requests", "requests_ok", "retries", "prompt_tokens", "completion_tokens")
_SUMMED_DICTS = ("request_errors", "bad_replies")


def _sum_runs(runs: list[dict[str, Any]], files: dict[str, Any]) -> dict[str, Any]:
  """What every run spent, summed; the rows as the output files hold them (each id once)."""
  total: dict[str, Any] = {"runs": len(runs)}
  for key in _SUMMED:
    total[key] = round(sum(r.get(key, 0) or 0 for r in runs), 6)
  for key in _SUMMED_DICTS:
    merged: collections.Counter[str] = collections.Counter()
    for r in runs:
      merged.update(r.get(key) or {})
    total[key] = dict(sorted(merged.items()))
  total["requests_per_s"] = round(total["requests"] / total["elapsed_s"], 3) if total["elapsed_s"] else 0.0
  costs = [r["estimated_cost_usd"] for r in runs if r.get("estimated_cost_usd") is not None]
  total["estimated_cost_usd"] = round(sum(costs), 6) if costs else None
  failed = files.get("failures_by_reason", {})
  total.update(rows_written=files.get("rows", 0), rows_failed=files.get("failures", 0),
               rows_pending=files.get("pending", 0), failures_by_reason=failed,
               removed_by_filter={r: failed.get(r, 0) for r in FILTER_REASONS})
  return total


def progress_line(run: dict[str, Any]) -> str:
  """A one-line account of a run summary, for the log; the cost only where it is known."""
  cost = run.get("estimated_cost_usd")
  return (f"{run['rows_written']}/{run['rows_in']} rows written, {run['rows_failed']} failed, "
          f"{run.get('rows_pending', 0)} pending, {run['requests']} requests ({run['requests_per_s']:.1f}/s), "
          f"{run['prompt_tokens'] + run['completion_tokens']} tokens" + (f", ~${cost:.4f}" if cost is not None else ""))
