"""Compact append-only containers for integer data: a growable numpy column and an int64 -> int32
multimap (a sorted base searched with `np.searchsorted`, plus a dict of recent additions merged
into the base once it reaches a quarter of it, so an insert costs amortised O(1) and a lookup
O(log n)). About 12 bytes per multimap entry, against ~100 for a dict of lists."""

from __future__ import annotations

import numpy as np

_MIN_MERGE = 1 << 15


class Column:
  """A numpy array that grows by half its size at a time; `view` is the filled part (valid until
  the next append)."""

  def __init__(self, dtype: np.dtype | type, capacity: int = 1024):
    self._data = np.empty(max(capacity, 16), dtype)
    self.size = 0

  def __len__(self) -> int:
    return self.size

  def _reserve(self, extra: int) -> None:
    need = self.size + extra
    if need > self._data.size:
      grown = np.empty(max(need, self._data.size + self._data.size // 2), self._data.dtype)
      grown[:self.size] = self._data[:self.size]
      self._data = grown

  def append(self, value) -> None:
    self._reserve(1)
    self._data[self.size] = value
    self.size += 1

  def extend(self, values: np.ndarray) -> None:
    values = np.asarray(values, self._data.dtype)
    self._reserve(values.size)
    self._data[self.size:self.size + values.size] = values
    self.size += values.size

  @property
  def view(self) -> np.ndarray:
    return self._data[:self.size]


class MultiMap:
  """int64 key -> int32 values, insertion order kept per key; values are never removed."""

  def __init__(self):
    self._keys = np.empty(0, np.int64)
    self._values = np.empty(0, np.int32)
    self._recent: dict[int, list[int]] = {}
    self._recent_size = 0

  def __len__(self) -> int:
    return self._keys.size + self._recent_size

  def add(self, key: int, value: int) -> None:
    self._recent.setdefault(key, []).append(value)
    self._recent_size += 1
    if self._recent_size >= max(_MIN_MERGE, self._keys.size // 4):
      self._merge()

  def add_many(self, keys: np.ndarray, values: np.ndarray) -> None:
    """Bulk insert (e.g. when loading): one merge."""
    self._merge(np.asarray(keys, np.int64), np.asarray(values, np.int32))

  def _merge(self, keys: np.ndarray | None = None, values: np.ndarray | None = None) -> None:
    parts_k, parts_v = [self._keys], [self._values]
    if self._recent:
      counts = [len(v) for v in self._recent.values()]
      parts_k.append(np.repeat(np.fromiter(self._recent.keys(), np.int64, len(self._recent)), counts))
      parts_v.append(np.fromiter((x for v in self._recent.values() for x in v), np.int32, sum(counts)))
    if keys is not None:
      parts_k.append(keys)
      parts_v.append(values)
    k, v = np.concatenate(parts_k), np.concatenate(parts_v)
    order = np.argsort(k, kind="stable")   # sorted runs: a merge, not a full sort
    self._keys, self._values = k[order], v[order]
    self._recent = {}
    self._recent_size = 0

  def get(self, key: int) -> np.ndarray:
    lo = int(np.searchsorted(self._keys, key, "left"))
    hi = int(np.searchsorted(self._keys, key, "right"))
    recent = self._recent.get(key)
    if recent is None:
      return self._values[lo:hi]
    return np.concatenate([self._values[lo:hi], np.asarray(recent, np.int32)])

  def get_many(self, keys: list[int]) -> np.ndarray:
    """The values of all `keys`, concatenated (duplicates kept)."""
    q = np.asarray(keys, np.int64)
    lo = np.searchsorted(self._keys, q, "left")
    hi = np.searchsorted(self._keys, q, "right")
    parts = [self._values[a:b] for a, b in zip(lo.tolist(), hi.tolist()) if b > a]
    for key in keys:
      recent = self._recent.get(key)
      if recent is not None:
        parts.append(np.asarray(recent, np.int32))
    return np.concatenate(parts) if parts else np.empty(0, np.int32)

  def counts(self, keys: list[int]) -> list[int]:
    """How many values each key has."""
    q = np.asarray(keys, np.int64)
    base = (np.searchsorted(self._keys, q, "right") - np.searchsorted(self._keys, q, "left")).tolist()
    return [n + len(self._recent.get(k, ())) for n, k in zip(base, keys)]
