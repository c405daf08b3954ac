"""Packing/padding, per-epoch deterministic shuffling, saved positions, mixing weights."""

import collections
import json

import numpy as np
import pytest

from mathjax_sft.data import pipeline


def _examples(n, tag=0, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    length = int(rng.integers(3, 20))
    ids = np.full(length + 1, 1000 * tag + i + 1, np.int32)   # every token names its example
    mask = np.zeros(length, np.int32)
    mask[length // 2:] = 1
    out.append({"inputs": ids[:-1], "targets": ids[1:], "loss_mask": mask})
  return out


def _segments(batch):
  """Example ids seen in a batch, one per packed segment, checking layout on the way."""
  seen = []
  for r in range(batch["inputs"].shape[0]):
    seg, pos, inp = batch["segment_ids"][r], batch["positions"][r], batch["inputs"][r]
    for s in np.unique(seg[seg > 0]):
      where = np.flatnonzero(seg == s)
      assert (np.diff(where) == 1).all()                      # contiguous
      assert (pos[where] == np.arange(len(where))).all()       # positions restart at 0
      assert len(set(inp[where].tolist())) == 1                # one example per segment
      seen.append(int(inp[where][0]))
    pad = seg == 0
    assert (batch["loss_mask"][r][pad] == 0).all() and (inp[pad] == 0).all()
  return seen


def test_packed_batches_cover_each_example_once_per_epoch():
  exs = _examples(40)
  cfg = pipeline.PipelineConfig(batch_size=4, seq_len=32, seed=3, num_epochs=2)
  it = pipeline.train_iterator([exs], None, cfg)
  seen = []
  for batch in it:
    assert {k: v.shape for k, v in batch.items()} == {k: (4, 32) for k in pipeline.BATCH_KEYS}
    seen += _segments(batch)
  counts = collections.Counter(seen)
  assert set(counts) == set(range(1, 41)) and max(counts.values()) == 2
  assert min(counts.values()) >= 1   # a few may sit in the dropped last partial batch
  first_epoch = seen[:20]
  assert first_epoch != sorted(first_epoch)   # shuffled


def test_epochs_are_reshuffled_and_seeded():
  exs = _examples(30)
  def order(seed):
    cfg = pipeline.PipelineConfig(batch_size=1, seq_len=32, seed=seed, packing=False, num_epochs=2)
    return [int(b["inputs"][0, 0]) for b in pipeline.train_iterator([exs], None, cfg)]
  a = order(1)
  assert a == order(1) and a != order(2)
  assert sorted(a[:30]) == sorted(a[30:]) == list(range(1, 31)) and a[:30] != a[30:]


def test_state_restores_the_exact_position():
  exs = _examples(50)
  cfg = pipeline.PipelineConfig(batch_size=4, seq_len=32, seed=0)
  it = pipeline.train_iterator([exs], None, cfg)
  for _ in range(7):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  want = [next(it) for _ in range(5)]
  fresh = pipeline.train_iterator([exs], None, cfg)
  fresh.set_state(state)
  got = [next(fresh) for _ in range(5)]
  for w, g in zip(want, got):
    for k in pipeline.BATCH_KEYS:
      np.testing.assert_array_equal(w[k], g[k])
  other = pipeline.train_iterator([exs[:-1]], None, cfg)
  with pytest.raises(ValueError, match="different training data"):
    other.set_state(state)


def test_padding_mode_one_example_per_row():
  """Each row holds one whole example; every epoch holds each example exactly once, epochs run on
  across batch boundaries and only the stream's last partial batch is dropped."""
  exs = _examples(12)
  cfg = pipeline.PipelineConfig(batch_size=5, seq_len=32, seed=0, packing=False, num_epochs=2)
  batches = list(pipeline.train_iterator([exs], None, cfg))
  assert len(batches) == 4   # 24 rows // 5
  rows = []
  for b in batches:
    for r in range(5):
      seg = b["segment_ids"][r]
      assert set(seg[seg > 0].tolist()) == {1}
    ids = _segments(b)
    assert [int((b["segment_ids"][r] > 0).sum()) for r in range(5)] == [
        len(exs[i - 1]["inputs"]) for i in ids]
    rows += ids
  assert sorted(rows[:12]) == list(range(1, 13))   # epoch 1: every example once
  assert len(set(rows[12:])) == 8 and set(rows[12:]) < set(range(1, 13))   # epoch 2: 8 of 12


def test_mixing_weights():
  a, b = _examples(20, tag=1), _examples(200, tag=2, seed=1)
  cfg = pipeline.PipelineConfig(batch_size=1, seq_len=32, seed=0, packing=False)
  it = pipeline.train_iterator([a, b], [0.8, 0.2], cfg)
  tags = [int(next(it)["inputs"][0, 0]) // 1000 for _ in range(500)]
  frac = tags.count(1) / len(tags)
  assert 0.75 < frac < 0.85


def test_eval_batches_pad_the_last_batch_and_count_batches():
  exs = _examples(9)
  cfg = pipeline.PipelineConfig(batch_size=4, seq_len=32, seed=0, packing=False)
  batches = pipeline.eval_batches(exs, cfg)
  assert len(batches) == 3 and (batches[-1]["segment_ids"][1:] == 0).all()
  assert sorted(s for b in batches for s in _segments(b)) == list(range(1, 10))
  n = pipeline.count_batches([exs], None, pipeline.PipelineConfig(batch_size=2, seq_len=32,
                                                                   packing=False, num_epochs=3))
  assert n == 13   # 27 rows // 2
