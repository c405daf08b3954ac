"""The held-out split: a seeded fraction of rows, disjoint from the training rows."""

import collections

import pytest

from mathjax_sft.data import dataset
from mathjax_sft.data.sources import Row


def _rows(n):
  return [Row(f"question {i}", f"answer {i}", f"data.jsonl:{i + 1}") for i in range(n)]


@pytest.mark.parametrize("n, fraction, held_count", [(50, 0.2, 10), (7, 0.1, 1), (9, 0.5, 4)])
def test_holdout_partitions_the_rows(n, fraction, held_count):
  """Every row lands in exactly one of train / held out, each keeping the input order, and the
  held-out share is round(fraction * n) (at least one)."""
  rows = _rows(n)
  train, held = dataset.split_holdout(rows, fraction, seed=3)
  assert len(held) == held_count and len(train) == n - held_count
  assert collections.Counter(r.origin for r in train + held) == collections.Counter(
      r.origin for r in rows)
  assert not {r.origin for r in train} & {r.origin for r in held}
  assert train == [r for r in rows if r in train] and held == [r for r in rows if r in held]


def test_holdout_is_deterministic_by_seed():
  rows = _rows(40)
  held = lambda seed: [r.origin for r in dataset.split_holdout(rows, 0.25, seed)[1]]
  assert held(5) == held(5)
  assert len({tuple(held(seed)) for seed in range(5)}) == 5
  assert dataset.split_holdout(rows, 0.0, seed=5) == (rows, [])
  with pytest.raises(ValueError, match="leaves no training rows"):
    dataset.split_holdout(rows[:2], 0.9, seed=0)
