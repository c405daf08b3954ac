"""The row map of a sampling run, host side: which decode row holds which sample.

The decode program reports, per step and row, the sample a row started and the token it drew;
the host mirrors each row's sample id from these reports. A sample the host ends itself (a stop
string in its text) is still live on the device: its rows are released here and marked in the
kill mask, which stops them at the start of the next chunk.

The tail: once every sample has been handed to a row, rows only go idle. The pool then shrinks by
halves while the live rows fit (`tail_size`), the live rows moving to the front in row order
(`tail_order`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

IDLE = -1                       # the sample id of a row that holds none


@dataclasses.dataclass
class RowMap:
  """Per decode row: the id of its sample (IDLE: none), and the kill mask sent with the next
  chunk."""
  sample: np.ndarray            # int64 [rows]
  kill: np.ndarray              # bool [rows]: rows whose sample ended on the host

  @classmethod
  def idle(cls, rows: int) -> RowMap:
    return cls(sample=np.full(rows, IDLE, np.int64), kill=np.zeros(rows, bool))

  @property
  def size(self) -> int:
    return len(self.sample)

  def live(self) -> np.ndarray:
    """The rows that hold a sample, in row order."""
    return np.flatnonzero(self.sample != IDLE)

  def any_live(self) -> bool:
    return bool((self.sample != IDLE).any())

  def assign(self, row: int, sample_id: int) -> None:
    self.sample[row] = sample_id

  def release(self, row: int) -> None:
    self.sample[row] = IDLE

  def kill_sample(self, sample_id: int) -> None:
    """The rows holding `sample_id` stop at the next chunk's start; they are free from now."""
    rows = self.sample == sample_id
    self.kill |= rows
    self.sample[rows] = IDLE

  def clear_kills(self) -> None:
    """The kill mask was applied (by the chunk it was sent with)."""
    self.kill[:] = False

  def tail_order(self, size: int) -> np.ndarray:
    """The `size` rows of a smaller pool, as indices into this one: the live rows, then idle
    ones, each in row order."""
    return np.concatenate([self.live(), np.flatnonzero(self.sample == IDLE)])[:size]

  def reorder(self, order: np.ndarray) -> None:
    """The map of the pool made of rows `order` (`tail_order`); its kill mask is empty."""
    self.sample = self.sample[order]
    self.kill = np.zeros(len(order), bool)


def tail_size(rows: int, live: int, min_rows: int, shards: int) -> int:
  """The pool size for the tail's `live` rows: `rows` halved while they fit, the size stays a
  multiple of `shards` and at least `min_rows` (0: never shrink)."""
  while min_rows and live <= rows // 2 and rows // 2 >= min_rows and (rows // 2) % shards == 0:
    rows //= 2
  return rows
