"""Append-only JSONL store: whole lines only, torn tails repaired, corruption reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mathjax_sft.jsonl_store import JsonlStore, StoreError, repair_tail


def test_append_writes_whole_lines_and_reads_back(tmp_path: Path):
  path = tmp_path / "rows.jsonl"
  with JsonlStore(path) as store:
    store.append({"id": "a", "text": "line one\nline two"})
    store.append({"id": "b", "text": "ünïcødé"})
  raw = path.read_bytes()
  assert raw.count(b"\n") == 2 and raw.endswith(b"\n")
  assert [r["id"] for r in JsonlStore(path)] == ["a", "b"]
  assert list(JsonlStore(path))[0]["text"] == "line one\nline two"


@pytest.mark.parametrize("torn", [b'{"id": "c", "te', b'{"id": "c"}', b"\x00\x00\x00\n", b'{"id": "c", "x\n'])
def test_torn_last_line_is_truncated_not_parsed(tmp_path: Path, torn: bytes):
  path = tmp_path / "rows.jsonl"
  good = b'{"id":"a"}\n{"id":"b"}\n'
  path.write_bytes(good + torn)
  store = JsonlStore(path)
  assert store.torn_bytes_removed == len(torn)
  assert path.read_bytes() == good
  assert [r["id"] for r in store] == ["a", "b"]
  store.append({"id": "c"})
  store.close()
  assert [r["id"] for r in JsonlStore(path)] == ["a", "b", "c"]


def test_torn_only_line_and_long_tail(tmp_path: Path):
  path = tmp_path / "rows.jsonl"
  path.write_bytes(b'{"id": "x", "pad": "' + b"y" * 200_000)   # longer than one read chunk
  assert repair_tail(path) == 200_000 + 20
  assert path.read_bytes() == b""
  assert repair_tail(tmp_path / "absent.jsonl") == 0


def test_intact_file_untouched(tmp_path: Path):
  path = tmp_path / "rows.jsonl"
  data = "".join(json.dumps({"id": str(i), "pad": "z" * 5000}) + "\n" for i in range(50)).encode()
  path.write_bytes(data)
  assert repair_tail(path) == 0
  assert path.read_bytes() == data


def test_corrupt_middle_line_is_an_error_naming_the_line(tmp_path: Path):
  path = tmp_path / "rows.jsonl"
  path.write_bytes(b'{"id":"a"}\nnot json\n{"id":"b"}\n')
  with pytest.raises(StoreError, match=r"rows\.jsonl:2"):
    list(JsonlStore(path))


def test_offsets_address_records(tmp_path: Path):
  path = tmp_path / "steps.jsonl"
  with JsonlStore(path) as store:
    offsets = [store.append({"id": str(i), "content": "é" * i}) for i in range(5)]
  store = JsonlStore(path)
  assert [o for o, _ in store.with_offsets()] == offsets
  assert store.read_at(offsets[3]) == {"id": "3", "content": "ééé"}
