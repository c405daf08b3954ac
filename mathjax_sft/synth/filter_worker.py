"""The question filters on a thread of their own, so that the event loop keeps sending and
receiving requests while a question is checked; the thread also saves the dedup index now and
then (with how much of rows.jsonl it covers), so that a resumed run loads it instead of
rebuilding it. One thread: checks run one at a time, in arrival order (a test-and-set)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable

from mathjax_sft.synth.filters import QuestionFilters


class FilterWorker:
  """`await check(question, name)` runs `filters.check` on the worker thread."""

  def __init__(self, filters: QuestionFilters, save_interval: float, rows_bytes: Callable[[], int]):
    self.filters = filters
    self._save_interval = save_interval
    self._rows_bytes = rows_bytes
    self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="filters")
    self._saved = time.monotonic()

  async def check(self, question: str, name: str) -> tuple[str, str] | None:
    """(reason, detail) when `question` must be dropped, else None (and it is now indexed)."""
    return await asyncio.get_running_loop().run_in_executor(self._pool, self._check, question, name)

  def _check(self, question: str, name: str) -> tuple[str, str] | None:
    hit = self.filters.check(question, name)
    if time.monotonic() - self._saved >= self._save_interval:
      self.save()
    return hit

  def save(self) -> None:
    """Saves the dedup index; every row in the first `rows_bytes()` bytes of rows.jsonl had its
    question indexed before it was written, so the index covers them."""
    self.filters.dedup.save({"rows_bytes": self._rows_bytes()})
    self._saved = time.monotonic()

  def close(self) -> None:
    """Waits for the check in progress, saves, and stops the thread."""
    self._pool.shutdown(wait=True)
    self.save()
