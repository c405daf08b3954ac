"""The sampler's host side without a model: the prompt-slot pool, the sample book, the row map
and the scheduler that feeds them a chunk's events (built here by hand)."""

import dataclasses

import numpy as np
import pytest

from mathjax_sft.sample.book import SampleBook, SampleEnd
from mathjax_sft.sample.engine import Events
from mathjax_sft.sample.pool import Problem, SlotPool, WorkItem
from mathjax_sft.sample.rows import IDLE, RowMap, tail_size
from mathjax_sft.sample.scheduler import Scheduler
from mathjax_sft.sample.stats import EngineStats
from mathjax_sft.sample.stops import StopStrings

GOES_ON, STOP_TOKEN, MAX_TOKENS = SampleEnd.CONTINUES, SampleEnd.STOP_TOKEN, SampleEnd.MAX_TOKENS

# a vocabulary whose "Question" starts inside token 5 and ends inside token 7
VOCAB = {1: "The", 2: " answer", 3: " is", 4: " 4", 5: ".\n\nQu", 6: "est", 7: "ion:", 8: " x",
         9: " y"}


def detok(tokens):
  return "".join(VOCAB[t] for t in tokens)


def problems(k, prompt_len=3):
  return [Problem(i, [1] * prompt_len, key=100 + i) for i in range(k)]


# ---- prompt-slot pool --------------------------------------------------------------------------

def test_slots_are_taken_in_order_and_freed_by_a_problems_last_sample():
  pool = SlotPool.create(problems(4), slots=2, num_samples=2)
  admitted = [pool.admit(), pool.admit(), pool.admit()]
  assert [(p.index, p.slot) for p in admitted[:2]] == [(0, 0), (1, 1)]
  assert admitted[2] is None                       # no free slot
  assert not pool.all_admitted and [p.index for p in pool.waiting] == [2, 3]
  assert pool.end_sample(2) is None                # problem 1, its first sample
  assert pool.end_sample(3).index == 1             # problem 1's last sample: slot 1 frees
  assert pool.free == [1] and [p.index for p in pool.resident] == [0]
  assert pool.end_sample(1) is None
  assert pool.end_sample(0).index == 0
  assert pool.free == [1, 0]                       # reused in the order they were freed
  assert pool.admit().slot == 1 and pool.admit().slot == 0
  assert pool.admit() is None and pool.all_admitted
  assert [(p.index, p.slot) for p in pool.resident] == [(2, 1), (3, 0)]


def test_queue_oldest_problem_first_and_started_samples_leave_it():
  pool = SlotPool.create(problems(3), slots=2, num_samples=3)
  while pool.admit() is not None:
    pass
  items = pool.queue(limit=4)
  assert items == [WorkItem(0, 0, 0), WorkItem(0, 1, 1), WorkItem(0, 2, 2), WorkItem(1, 0, 3)]
  pool.mark_started(items[:2])                     # the chunk's rows took two of them
  assert [p.started for p in pool.problems] == [2, 0, 0]
  assert pool.queue(limit=10) == [WorkItem(0, 2, 2), WorkItem(1, 0, 3), WorkItem(1, 1, 4),
                                  WorkItem(1, 2, 5)]
  pool.mark_started(pool.queue(limit=10))
  assert pool.queue(limit=10) == []                # problem 2 waits for a slot


def test_a_problem_ends_once_all_its_samples_ended_in_any_order():
  pool = SlotPool.create(problems(1), slots=1, num_samples=3)
  pool.admit()
  assert [pool.end_sample(g) for g in (2, 0)] == [None, None]
  assert pool.end_sample(1) is pool.problems[0] and pool.resident == [] and pool.free == [0]


# ---- sample book -------------------------------------------------------------------------------

def test_end_codes_are_the_decode_programs():
  assert [int(e) for e in (GOES_ON, STOP_TOKEN, MAX_TOKENS)] == [0, 1, 2]
  assert SampleEnd(1) is SampleEnd.STOP_TOKEN


def test_book_without_a_detokenizer_keeps_tokens_only():
  book = SampleBook.create(num_problems=2, num_samples=2)
  for token in (1, 2, 3):
    book.append(3, token)                          # problem 1, sample 1
  assert book.end(3, finished=True) == 4           # 3 tokens + the stop token
  assert book.end(2, finished=False) == 0
  assert book.is_ended(3) and not book.is_ended(0) and book.remaining == 2
  got = book.samples(1)
  assert got.tokens == [[], [1, 2, 3]] and got.finished == [False, True] and got.texts is None


def test_stop_string_straddling_tokens_and_chunks_is_found_once_whole():
  """`find_stop` searches only new text (less the longest string's length): "Question" half in
  one chunk is not found, then found when the next chunk completes it; the sample keeps the
  token the string starts in, its text ends where the string starts."""
  stops = StopStrings(["Question"], detok)
  book = SampleBook.create(1, 1, detok, stops)
  for token in (1, 2, 3, 4, 5):                   # chunk 1: "The answer is 4.\n\nQu"
    book.append(0, token)
  assert book.find_stop(0) is None
  assert book.searched[0, 0] == len(detok([1, 2, 3, 4, 5]))
  for token in (6, 7, 8):                         # chunk 2: "estion: x"
    book.append(0, token)
  found = book.find_stop(0)
  assert found == (5, "The answer is 4.\n\n")
  assert book.end(0, True, found) == 6            # tokens 1..5 kept, + the string
  got = book.samples(0)
  assert got.tokens == [[1, 2, 3, 4, 5]] and got.finished == [True]
  assert got.texts == ["The answer is 4.\n\n"]


def test_a_sample_that_ends_on_its_budget_is_searched_once_more():
  """Ended by max_new_tokens with a stop string in its last tokens: cut there and finished."""
  book = SampleBook.create(1, 2, detok, StopStrings(["Question"], detok))
  for token in (4, 5, 6, 7):
    book.append(1, token)
  book.append(0, 8)
  assert book.end(1, finished=False) == 3         # " 4.\n\nQu" kept (2 tokens) + the string
  assert book.end(0, finished=False) == 1
  got = book.samples(0)
  assert got.tokens == [[8], [4, 5]] and got.finished == [False, True]
  assert got.texts == [" x", " 4.\n\n"]


def test_a_detokenizer_without_stop_strings_gives_texts():
  book = SampleBook.create(1, 1, detok, StopStrings([], detok))
  assert not book.matches_stop_strings
  for token in (1, 5, 6, 7):
    book.append(0, token)
  assert book.end(0, finished=True) == 5
  assert book.samples(0).texts == ["The.\n\nQuestion:"]


# ---- row map -----------------------------------------------------------------------------------

def test_rows_mirror_their_samples_and_killed_rows_are_free_at_once():
  rows = RowMap.idle(4)
  assert not rows.any_live() and list(rows.sample) == [IDLE] * 4
  rows.assign(2, 7)
  rows.assign(0, 3)
  assert list(rows.live()) == [0, 2]
  rows.release(0)
  rows.kill_sample(7)
  assert list(rows.kill) == [False, False, True, False] and not rows.any_live()
  rows.clear_kills()
  assert not rows.kill.any()


def test_tail_order_puts_live_rows_first_in_row_order():
  rows = RowMap.idle(8)
  for row, sample in ((6, 40), (1, 10), (3, 30)):
    rows.assign(row, sample)
  rows.kill_sample(30)                             # killed: idle for the new pool
  order = rows.tail_order(4)
  assert list(order) == [1, 6, 0, 2]
  rows.reorder(order)
  assert list(rows.sample) == [10, 40, IDLE, IDLE] and not rows.kill.any()


@pytest.mark.parametrize("rows,live,floor,shards,want", [
    (16, 3, 2, 1, 4), (16, 3, 8, 1, 8), (16, 9, 2, 1, 16), (16, 8, 2, 1, 8), (16, 3, 0, 1, 16),
    (16, 1, 1, 2, 2), (6, 1, 1, 2, 6), (16, 0, 2, 1, 2)])
def test_tail_size_halves_while_the_live_rows_fit(rows, live, floor, shards, want):
  assert tail_size(rows, live, floor, shards) == want


# ---- scheduler: a chunk's events ---------------------------------------------------------------

def chunk(steps, rows, starts=(), tokens=()):
  """Events of a chunk from (step, row, sample id, token, end code) tuples."""
  fields = [f.name for f in dataclasses.fields(Events)]
  ev = {f: np.full((steps, rows), -1 if f.endswith("_sample") else 0, np.int32) for f in fields}
  for prefix, entries in (("start", starts), ("token", tokens)):
    for step, row, sample, token, end in entries:
      ev[f"{prefix}_sample"][step, row] = sample
      ev["start_token" if prefix == "start" else "token"][step, row] = token
      ev[f"{prefix}_end"][step, row] = end
  return Events(**ev)


def scheduler(num_problems, num_samples, rows, slots, stop_strings=(), detokenize=None):
  seen = []
  stops = StopStrings(stop_strings, detokenize) if detokenize else None
  run = Scheduler(slots=SlotPool.create(problems(num_problems), slots, num_samples),
                  book=SampleBook.create(num_problems, num_samples, detokenize, stops),
                  rows=RowMap.idle(rows), stats=EngineStats(),
                  on_problem=lambda i, s: seen.append((i, s.tokens, s.finished)))
  while run.slots.admit() is not None:
    pass
  return run, seen


def test_rows_take_samples_and_end_codes_end_them():
  """Two rows, two problems of two samples. A first token that is a stop token is an empty
  finished sample; a budget end keeps its token, unfinished; the row is refilled in the step
  after its sample ended; a problem is reported when its last sample ends."""
  run, seen = scheduler(2, 2, rows=2, slots=2)
  items = run.queue(limit=4)
  events = chunk(3, 2, starts=[(0, 0, 0, 11, GOES_ON), (0, 1, 1, 5, STOP_TOKEN),
                               (1, 1, 2, 21, GOES_ON), (2, 0, 3, 31, MAX_TOKENS)],
                 tokens=[(0, 0, 0, 12, GOES_ON), (1, 0, 0, 13, MAX_TOKENS),
                         (1, 1, 2, 22, GOES_ON), (2, 1, 2, 23, GOES_ON)])
  run.record_chunk(items, events)
  assert run.book.tokens == [[[11, 12, 13], []], [[21, 22, 23], [31]]]
  assert list(run.rows.sample) == [IDLE, 2]
  assert seen == [(0, [[11, 12, 13], []], [False, True])]
  assert run.slots.free == [0] and run.queue(limit=4) == []
  assert run.remaining == 1 and run.stats.samples == 3 and run.stats.useful_tokens == 3 + 1 + 1
  run.record_chunk([], chunk(1, 2, tokens=[(0, 1, 2, 5, STOP_TOKEN)]))
  assert seen[1] == (1, [[21, 22, 23], [31]], [True, False])
  assert run.remaining == 0 and run.results[1].tokens == [[21, 22, 23], [31]]
  assert run.stats.useful_tokens == 5 + 4 and not run.rows.any_live()


def test_stop_string_across_chunks_ends_the_sample_and_kills_its_row():
  """Sample 1's "Question" starts in chunk 1 and ends in chunk 2: it ends after chunk 2, cut
  (the tokens after the string dropped), its row is released and marked in the kill mask sent
  with the next chunk; events of the killed row in that chunk are dropped."""
  run, seen = scheduler(1, 2, rows=2, slots=1, stop_strings=("Question",), detokenize=detok)
  run.record_chunk(run.queue(4), chunk(2, 2, starts=[(0, 0, 0, 1, GOES_ON), (0, 1, 1, 4, GOES_ON)],
                                       tokens=[(0, 0, 0, 2, GOES_ON), (0, 1, 1, 5, GOES_ON),
                                               (1, 0, 0, 3, GOES_ON), (1, 1, 1, 6, GOES_ON)]))
  assert run.book.remaining == 2 and not run.rows.kill.any()
  run.record_chunk([], chunk(2, 2, tokens=[(0, 0, 0, 8, GOES_ON), (0, 1, 1, 7, GOES_ON),
                                           (1, 0, 0, 9, GOES_ON), (1, 1, 1, 8, GOES_ON)]))
  assert run.book.ended[0, 1] and run.book.tokens[0][1] == [4, 5]
  assert run.book.texts[0][1] == " 4.\n\n" and run.book.finished[0][1]
  assert list(run.rows.sample) == [0, IDLE] and list(run.rows.kill) == [False, True]
  run.record_chunk([], chunk(1, 2, tokens=[(0, 0, 0, 5, MAX_TOKENS), (0, 1, 1, 9, GOES_ON)]))
  assert not run.rows.kill.any()                   # applied by the chunk it was sent with
  assert run.book.tokens[0] == [[1, 2, 3, 8, 9, 5], [4, 5]]
  assert seen == [(0, [[1, 2, 3, 8, 9, 5], [4, 5]], [False, True])]
  assert run.stats.useful_tokens == 6 + 3


def test_scheduler_reads_the_engines_events_fields():
  """The events the decode program returns are what the scheduler reads (same field names)."""
  assert [f.name for f in dataclasses.fields(Events)] == [
      "start_sample", "start_token", "start_end", "token_sample", "token", "token_end"]
