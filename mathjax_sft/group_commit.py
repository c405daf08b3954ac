"""Group commit for a `JsonlStore`: records are appended by one writer thread, and every record
waiting when it comes round goes out in one write followed by one fsync.

A caller is told its record is durable (its future completes) only after that fsync, so nothing
acknowledged is lost; a crash tears at most the last line of the file, which the store repairs
when it is opened again. Writing and syncing happen off the caller's thread (an event loop keeps
serving requests meanwhile), and the cost of an fsync is shared by all the records of its group.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any

from mathjax_sft.jsonl_store import JsonlStore

_MAX_GROUP_BYTES = 8 << 20


class GroupCommit:
  """Appends records to `store` from a writer thread of its own; `close` drains and stops it."""

  def __init__(self, store: JsonlStore):
    self.store = store
    self._cond = threading.Condition()
    self._queue: list[tuple[bytes, concurrent.futures.Future]] = []
    self._end = store.size()            # where the next submitted record will start
    self.durable_size = self._end       # bytes known to be on disk
    self._last: concurrent.futures.Future | None = None
    self._error: BaseException | None = None
    self._closing = False
    self._thread = threading.Thread(target=self._loop, name=f"commit-{store.path.name}", daemon=True)
    self._thread.start()

  def submit(self, record: dict[str, Any]) -> tuple[int, concurrent.futures.Future]:
    """Queues `record`; returns its byte offset and a future that completes once it is durable
    (or fails with the write's error)."""
    data = JsonlStore.encode(record)
    future: concurrent.futures.Future = concurrent.futures.Future()
    with self._cond:
      if self._error is not None:
        raise RuntimeError(f"{self.store.path}: an earlier write failed") from self._error
      if self._closing:
        raise RuntimeError(f"{self.store.path}: closed")
      offset = self._end
      self._end += len(data)
      self._queue.append((data, future))
      self._last = future
      self._cond.notify()
    return offset, future

  async def append(self, record: dict[str, Any]) -> int:
    """Queues `record` and waits until it is durable; returns its byte offset."""
    offset, future = self.submit(record)
    await asyncio.wrap_future(future)
    return offset

  async def drain(self) -> None:
    """Waits until everything submitted so far is durable."""
    last = self._last
    if last is not None:
      await asyncio.wrap_future(last)

  def flush(self) -> None:
    """`drain` for a caller without an event loop."""
    last = self._last
    if last is not None:
      last.result()

  def close(self) -> None:
    """Writes what is queued, stops the thread and closes the store."""
    with self._cond:
      self._closing = True
      self._cond.notify()
    self._thread.join()
    self.store.close()

  def _loop(self) -> None:
    while True:
      with self._cond:
        while not self._queue and not self._closing:
          self._cond.wait()
        if not self._queue:
          return
        take, size = 0, 0
        for data, _ in self._queue:
          if take and size + len(data) > _MAX_GROUP_BYTES:
            break
          take += 1
          size += len(data)
        group = self._queue[:take]
        del self._queue[:take]
        failed = self._error
      if failed is None:
        try:
          self.store.append_lines(b"".join(data for data, _ in group))
        except BaseException as error:   # every waiter hears of it, and later submits refuse
          with self._cond:
            self._error = failed = error
      if failed is not None:
        for _, future in group:
          future.set_exception(failed)
        continue
      self.durable_size += size
      for _, future in group:
        future.set_result(None)
