"""Append-only JSONL files where a line is written whole or not at all.

Each record is one `os.write` of a complete line (JSON escapes newlines, so the only newline is
the last byte) on an unbuffered O_APPEND descriptor, followed by `os.fsync`. A crash can
therefore leave at most a torn *last* line: no trailing newline, or (after a power loss) bytes that
are not valid JSON. Opening the store detects that line, logs it and truncates it away; it is never
parsed. Any other unreadable line is corruption that a crash cannot explain, so it is an error.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mathjax_sft import errors

log = logging.getLogger(__name__)
_CHUNK = 1 << 16


class StoreError(errors.UserError, RuntimeError):
  """A store file that is corrupt beyond a torn last line; names the file and line."""


def _last_line_start(f, end: int) -> int:
  """Offset just after the last b"\\n" before `end` (0 when there is none)."""
  pos = end
  while pos > 0:
    start = max(0, pos - _CHUNK)
    f.seek(start)
    chunk = f.read(pos - start)
    i = chunk.rfind(b"\n")
    if i >= 0:
      return start + i + 1
    pos = start
  return 0


def repair_tail(path: Path) -> int:
  """Truncates a torn last line of `path` (missing newline or invalid JSON); returns the number
  of bytes removed (0 when the file is intact or absent)."""
  path = Path(path)
  if not path.exists():
    return 0
  with open(path, "rb+") as f:
    size = f.seek(0, os.SEEK_END)
    if size == 0:
      return 0
    f.seek(size - 1)
    if f.read(1) == b"\n":
      start = _last_line_start(f, size - 1)
      f.seek(start)
      try:
        json.loads(f.read(size - 1 - start))
        return 0
      except ValueError:
        pass
    else:
      start = _last_line_start(f, size)
    f.truncate(start)
    f.flush()
    os.fsync(f.fileno())
  removed = size - start
  log.warning("%s: removed a torn last line (%d bytes) left by an interrupted write", path, removed)
  return removed


def read_complete(path: Path) -> Iterator[dict[str, Any]]:
  """The records of a store another process may be appending to, read-only: an unterminated last
  line (a write in progress, or a torn one its owner will repair) is left out, not truncated."""
  path = Path(path)
  if not path.exists():
    return
  with open(path, "rb") as f:
    for line_no, line in enumerate(f, start=1):
      if line.endswith(b"\n"):
        yield JsonlStore.parse_line(path, line, line_no)


class JsonlStore:
  """An append-only JSONL file of dict records."""

  def __init__(self, path: Path, fsync: bool = True):
    self.path = Path(path)
    self.fsync = fsync
    self.torn_bytes_removed = repair_tail(self.path)
    self._fd: int | None = None

  def __iter__(self) -> Iterator[dict[str, Any]]:
    """The records now in the file, in order (streamed, not loaded at once)."""
    for _, record in self.with_offsets():
      yield record

  def with_offsets(self) -> Iterator[tuple[int, dict[str, Any]]]:
    """(byte offset of the line, record) for each line, in order."""
    if not self.path.exists():
      return
    offset = 0
    with open(self.path, "rb") as f:
      for line_no, line in enumerate(f, start=1):
        if not line.endswith(b"\n"):
          raise StoreError(f"{self.path}:{line_no}: line without newline (written concurrently?)")
        yield offset, self._parse(line, line_no)
        offset += len(line)

  def _parse(self, line: bytes, line_no: int | str) -> dict[str, Any]:
    return self.parse_line(self.path, line, line_no)

  @staticmethod
  def parse_line(path: Path, line: bytes, line_no: int | str) -> dict[str, Any]:
    try:
      record = json.loads(line)
    except ValueError as e:
      raise StoreError(f"{path}:{line_no}: invalid JSON inside the file ({e})") from None
    if not isinstance(record, dict):
      raise StoreError(f"{path}:{line_no}: not a JSON object")
    return record

  def read_at(self, offset: int) -> dict[str, Any]:
    """The record whose line starts at byte `offset` (from `append` or `with_offsets`)."""
    with open(self.path, "rb") as f:
      f.seek(offset)
      return self._parse(f.readline(), f"byte {offset}")

  @staticmethod
  def encode(record: dict[str, Any]) -> bytes:
    """`record` as the line `append` writes."""
    return (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")

  def size(self) -> int:
    """Bytes in the file now (0 when absent)."""
    return self.path.stat().st_size if self.path.exists() else 0

  def append(self, record: dict[str, Any]) -> int:
    """Writes `record` as one line with a single write, then fsyncs; returns the line's offset."""
    return self.append_lines(self.encode(record))

  def append_lines(self, data: bytes) -> int:
    """Writes whole lines (`encode`d records, joined) with a single write, then fsyncs; returns
    the offset of the first. A crash can tear only the last of them."""
    if self._fd is None:
      self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    offset = os.lseek(self._fd, 0, os.SEEK_END)   # where O_APPEND will put it (one writer: the lock)
    view = memoryview(data)
    while view:  # a regular file takes it in one go; loop only for a short write
      written = os.write(self._fd, view)
      view = view[written:]
    if self.fsync:
      os.fsync(self._fd)
    return offset

  def close(self) -> None:
    if self._fd is not None:
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> JsonlStore:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
