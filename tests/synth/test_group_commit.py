"""Group commit: every record lands whole at the offset it was given, a waiter hears of its
record only after an fsync that covers it, and many records share one fsync."""

from __future__ import annotations

import asyncio
import os

from mathjax_sft.group_commit import GroupCommit
from mathjax_sft.jsonl_store import JsonlStore


def test_records_are_whole_at_their_offsets_and_share_fsyncs(tmp_path, monkeypatch):
  path = tmp_path / "rows.jsonl"
  path.write_text('{"id": "before"}\n')
  synced: list[int] = []            # file size at each fsync
  real_fsync = os.fsync

  def counting_fsync(fd):
    real_fsync(fd)
    synced.append(os.fstat(fd).st_size)

  monkeypatch.setattr(os, "fsync", counting_fsync)
  commit = GroupCommit(JsonlStore(path))
  acknowledged: list[tuple[int, int]] = []   # (offset, fsyncs seen when acknowledged)

  async def write(i: int) -> None:
    offset = await commit.append({"id": f"r{i}", "text": "x" * (i % 50)})
    acknowledged.append((offset, synced[-1]))

  async def main() -> None:
    await asyncio.gather(*(write(i) for i in range(500)))

  asyncio.run(main())
  commit.close()
  store = JsonlStore(path)
  records = dict((offset, record["id"]) for offset, record in store.with_offsets())
  assert len(records) == 501 and len(set(records.values())) == 501
  for offset, durable_size in acknowledged:
    assert offset in records and offset < durable_size    # durable when acknowledged
  assert 1 <= len(synced) < 100                           # groups, not one fsync per line
  assert commit.durable_size == path.stat().st_size
