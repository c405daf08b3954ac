"""The host side of one `Engine.generate` call, between decode chunks.

It ties the run's three books together: the prompt-slot pool (`pool.SlotPool`), the samples
(`book.SampleBook`) and the decode rows (`rows.RowMap`). Before a chunk it hands out the work
queue; after it, it reads the chunk's events:
  * step by step, a row's new sample (its first token), then the token the row drew, rows in
    order: tokens are appended to their samples, and a sample whose end code says so ends
    (`book.SampleEnd`), freeing its row;
  * then the samples that grew are searched for stop strings; one found ends its sample there,
    and the rows still decoding it are killed at the next chunk's start (the tokens they drew
    after the string are dropped).
A problem whose last sample ended gets its `Samples`, and `on_problem` is called at once.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import numpy as np

from mathjax_sft.sample.book import SampleBook, SampleEnd, Samples
from mathjax_sft.sample.pool import SlotPool, WorkItem
from mathjax_sft.sample.rows import RowMap
from mathjax_sft.sample.stats import EngineStats

OnProblem = Callable[[int, Samples], None]
# the end codes as plain ints, for the comparisons made per event
_CONTINUES, _STOP_TOKEN = int(SampleEnd.CONTINUES), int(SampleEnd.STOP_TOKEN)


@dataclasses.dataclass
class Scheduler:
  """One run's pool, samples and rows; `results[i]` is problem i's samples once they all ended.

  The chunk events it reads (`engine.Events`, as numpy arrays) are [steps, rows] arrays:
  `start_sample` / `start_token` / `start_end` (the sample a row started, its first token and
  that token's end code) and `token_sample` / `token` / `token_end` (the sample a row decoded
  a token for); sample id -1: no event."""
  slots: SlotPool
  book: SampleBook
  rows: RowMap
  stats: EngineStats            # counts the samples ended, useful tokens and callback time
  on_problem: OnProblem | None = None
  results: list[Samples | None] = dataclasses.field(init=False)

  def __post_init__(self):
    self.results = [None] * len(self.slots.problems)

  @property
  def remaining(self) -> int:
    """Samples not ended yet."""
    return self.book.remaining

  def queue(self, limit: int) -> list[WorkItem]:
    return self.slots.queue(limit)

  def record_chunk(self, taken: Sequence[WorkItem], events) -> None:
    """After a chunk that took the work items `taken`: its events, then stop strings."""
    self.slots.mark_started(taken)
    self.rows.clear_kills()
    grew: set[int] = set()
    for step in range(events.token.shape[0]):
      self._record(events.start_sample[step], events.start_token[step], events.start_end[step],
                   grew, starts=True)
      self._record(events.token_sample[step], events.token[step], events.token_end[step],
                   grew, starts=False)
    if self.book.matches_stop_strings:
      self._match_stop_strings(grew)

  def _record(self, sample_ids: np.ndarray, tokens: np.ndarray, ends: np.ndarray,
              grew: set[int], starts: bool) -> None:
    """One step's row events, rows in order: a row starting a sample (`starts`) or drawing a
    token. Samples that got a token are added to `grew`."""
    rows = np.flatnonzero(sample_ids >= 0).tolist()
    sample_ids, tokens, ends = sample_ids.tolist(), tokens.tolist(), ends.tolist()
    for row in rows:
      sample_id = sample_ids[row]
      if starts:
        self.rows.assign(row, sample_id)
      elif self.book.is_ended(sample_id):            # cut by a stop string: discarded
        continue
      end = ends[row]
      if end != _STOP_TOKEN:
        self.book.append(sample_id, tokens[row])
        grew.add(sample_id)
      if end != _CONTINUES:
        self.rows.release(row)
        self.end_sample(sample_id, finished=end == _STOP_TOKEN)

  def _match_stop_strings(self, grew: set[int]) -> None:
    for sample_id in grew:
      if self.book.is_ended(sample_id):
        continue
      found = self.book.find_stop(sample_id)
      if found is None:
        continue
      self.rows.kill_sample(sample_id)
      self.end_sample(sample_id, True, found)

  def end_sample(self, sample_id: int, finished: bool,
                 found: tuple[int, str] | None = None) -> None:
    """Ends a sample (see `SampleBook.end`); if it was its problem's last, the problem's slot
    frees and its samples go to `results` and `on_problem`."""
    self.stats.useful_tokens += self.book.end(sample_id, finished, found)
    self.stats.samples += 1
    problem = self.slots.end_sample(sample_id)
    if problem is None:
      return
    self.results[problem.index] = self.book.samples(problem.index)
    if self.on_problem is not None:
      tic = time.perf_counter()
      self.on_problem(problem.index, self.results[problem.index])
      self.stats.callback_s += time.perf_counter() - tic
