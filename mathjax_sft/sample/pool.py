"""The prompt-slot pool of a sampling run, host side: which problem's prompt is in which slot.

A run's problems wait in order. Whenever a slot is free, the next waiting problem takes it (the
engine prefills its prompt there) and becomes resident. Resident problems hand their samples to
decode rows oldest problem first; a problem's slot is freed when its last sample ends, and the
freed slots are taken again in the order they were freed. The device side of the pool (prompt
keys / values, lengths, first tokens) is `engine.PromptPool`.

A sample's id is `problem index * N + sample index` (N: samples per problem).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import NamedTuple, Sequence


@dataclasses.dataclass
class Problem:
  """One problem of a run: its prompt, the key that seeds its samples, its slot while resident,
  and how far its N samples are."""
  index: int                    # position in the run's prompts
  prompt: list[int]
  key: int                      # seeds its samples (`engine.problem_key`)
  slot: int = -1                # its pool slot once admitted (-1: waiting)
  started: int = 0              # samples handed to decode rows so far (the next one's index)
  ended: int = 0                # samples ended so far


class WorkItem(NamedTuple):
  """A sample waiting for a decode row: its problem's slot, its index within the problem, its
  id."""
  slot: int
  sample_index: int
  sample_id: int


@dataclasses.dataclass
class SlotPool:
  """`slots` prompt slots shared by a run's problems (see the module docstring)."""
  num_samples: int              # N, samples per problem
  problems: list[Problem]       # all of the run's problems, by index
  free: list[int]               # free slots, in the order they will be taken
  waiting: list[Problem]        # problems not admitted yet, in order
  resident: list[Problem] = dataclasses.field(default_factory=list)   # admitted, oldest first

  @classmethod
  def create(cls, problems: Sequence[Problem], slots: int, num_samples: int) -> SlotPool:
    return cls(num_samples=num_samples, problems=list(problems), free=list(range(slots)),
               waiting=list(problems))

  @property
  def all_admitted(self) -> bool:
    """No problem is waiting: no sample beyond the resident problems' will be queued."""
    return not self.waiting

  def admit(self) -> Problem | None:
    """The next waiting problem, given the first free slot and made resident; None when no slot
    is free or no problem waits."""
    if not (self.free and self.waiting):
      return None
    problem = self.waiting.pop(0)
    problem.slot = self.free.pop(0)
    self.resident.append(problem)
    return problem

  def queue(self, limit: int) -> list[WorkItem]:
    """The resident problems' samples not yet handed to a row, oldest problem first, then by
    sample index; at most `limit`."""
    n = self.num_samples
    pending = (WorkItem(p.slot, j, p.index * n + j) for p in self.resident
               for j in range(p.started, n))
    return list(itertools.islice(pending, limit))

  def mark_started(self, items: Sequence[WorkItem]) -> None:
    """`items` (a prefix of a `queue`) were taken by rows."""
    for item in items:
      self.problems[item.sample_id // self.num_samples].started += 1

  def end_sample(self, sample_id: int) -> Problem | None:
    """Counts an ended sample. Returns its problem when that was its last sample: the problem
    leaves the pool and its slot is freed (None otherwise)."""
    problem = self.problems[sample_id // self.num_samples]
    problem.ended += 1
    if problem.ended < self.num_samples:
      return None
    self.resident.remove(problem)
    self.free.append(problem.slot)
    return problem
