"""Examples -> fixed-shape global batches, deterministic by seed and epoch, with a saveable position.

Built on grain: each source is a `MapDataset` of pre-tokenized examples, shuffled with a seed that
changes every epoch (grain's `shuffle(...).repeat()` reseeds per epoch), mixed by weight when
weights are given, then packed (first-fit into `seq_len` rows, several examples per row, each
with its own segment id and positions from 0) or padded one example per row, then batched.

Every host runs the same pipeline and gets the same global batch; each feeds only its own rows to
the devices (see `mathjax_sft.distributed`). The iterator state (`get_state`, a small JSON
dict) is saved in every checkpoint and restored with `set_state`, so a resumed run sees exactly
the batches an uninterrupted run would.

A batch is a dict of int32 arrays [batch, seq_len]:
  inputs, targets, loss_mask, segment_ids (0 = padding), positions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Iterator, Sequence

import grain
import numpy as np

from mathjax_sft.data.tokenize import Example

BATCH_KEYS = ("inputs", "targets", "loss_mask", "segment_ids", "positions")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  batch_size: int             # global rows per batch
  seq_len: int
  seed: int = 0
  packing: bool = True
  packing_bins: int = 0       # first-fit bins per packing round; 0 = batch_size
  num_epochs: int | None = None  # None: repeat forever (the trainer stops at max_steps)

  def __post_init__(self):
    if self.batch_size <= 0 or self.seq_len <= 0:
      raise ValueError(f"batch_size and seq_len must be positive: {self}")
    if self.num_epochs is not None and self.num_epochs <= 0:
      raise ValueError(f"num_epochs must be positive or None, got {self.num_epochs}")


def _pad_one(example: Example, seq_len: int) -> dict[str, np.ndarray]:
  n = len(example["inputs"])
  out = {}
  for key in ("inputs", "targets", "loss_mask"):
    row = np.zeros(seq_len, np.int32)
    row[:n] = example[key]
    out[key] = row
  out["segment_ids"] = (np.arange(seq_len) < n).astype(np.int32)
  out["positions"] = np.where(np.arange(seq_len) < n, np.arange(seq_len), 0).astype(np.int32)
  return out


def _from_packed(packed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {"inputs": packed["inputs"], "targets": packed["targets"],
          "loss_mask": packed["loss_mask"], "segment_ids": packed["inputs_segment_ids"],
          "positions": packed["inputs_positions"]}


def _as_int32(example: Example) -> Example:
  return {k: np.asarray(example[k], np.int32) for k in ("inputs", "targets", "loss_mask")}


def mixed_dataset(sources: Sequence[Sequence[Example]], weights: Sequence[float] | None,
                  seed: int, num_epochs: int | None, shuffle: bool = True) -> grain.MapDataset:
  """One stream of examples: concatenated (no weights) or mixed by weight, reshuffled per epoch.

  With weights, an "epoch" is as many examples as all sources hold together.
  """
  if not sources or any(len(s) == 0 for s in sources):
    raise ValueError("every source needs at least one example")
  if weights is None or len(sources) == 1:
    merged = [e for s in sources for e in s]
    ds = grain.MapDataset.source(merged)
    if shuffle:
      ds = ds.shuffle(seed=seed)
    return ds.repeat(num_epochs)
  if len(weights) != len(sources):
    raise ValueError(f"{len(weights)} weights for {len(sources)} sources")
  parts = []
  for i, s in enumerate(sources):
    ds = grain.MapDataset.source(list(s))
    if shuffle:
      ds = ds.shuffle(seed=seed + 1000003 * (i + 1))
    parts.append(ds.repeat(None))
  mixed = grain.MapDataset.mix(parts, [float(w) for w in weights])
  total = sum(len(s) for s in sources)
  if num_epochs is not None:
    mixed = mixed.slice(slice(0, num_epochs * total))
  return mixed


def batches(stream: grain.MapDataset, cfg: PipelineConfig,
            drop_remainder: bool = True) -> grain.IterDataset:
  """Examples -> packed or padded global batches."""
  ds = stream.map(_as_int32).to_iter_dataset()
  if cfg.packing:
    lengths = {"inputs": cfg.seq_len, "targets": cfg.seq_len, "loss_mask": cfg.seq_len}
    ds = grain.experimental.FirstFitPackIterDataset(
        ds, length_struct=lengths, num_packing_bins=cfg.packing_bins or cfg.batch_size,
        seed=cfg.seed, shuffle_bins=True)
    ds = ds.map(_from_packed)
  else:
    ds = ds.map(lambda e: _pad_one(e, cfg.seq_len))
  return ds.batch(cfg.batch_size, drop_remainder=drop_remainder)


class BatchIterator:
  """Global batches with a JSON-serialisable position (`get_state` / `set_state`)."""

  def __init__(self, dataset: grain.IterDataset, epoch_size: int, fingerprint: str):
    self._dataset = dataset
    self._it = iter(dataset)
    self.epoch_size = epoch_size
    self.fingerprint = fingerprint

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._it)

  def get_state(self) -> dict[str, Any]:
    """A detached copy (saved asynchronously while the iterator moves on)."""
    return json.loads(json.dumps({"grain": self._it.get_state(), "fingerprint": self.fingerprint}))

  def set_state(self, state: dict[str, Any]) -> None:
    if state.get("fingerprint") != self.fingerprint:
      raise ValueError(
          "the checkpoint's data iterator state was saved for different training data or data "
          f"settings (fingerprint {state.get('fingerprint')} != {self.fingerprint}); resume with "
          "the same train_files, seq_len, batch_size, seed, template and packing, or start a new "
          "output_dir")
    self._it.set_state(state["grain"])

  def examples_consumed(self) -> int:
    """Examples drawn from the shuffled stream so far (epochs = this / epoch_size)."""
    return _find_next_index(self._it.get_state())


def _find_next_index(state: Any) -> int:
  if isinstance(state, dict):
    if "next_index" in state:
      return int(state["next_index"])
    for v in state.values():
      found = _find_next_index(v)
      if found >= 0:
        return found
  return -1


def fingerprint(sources: Sequence[Sequence[Example]], weights, cfg: PipelineConfig,
                extra: Any = None) -> str:
  """A short hash of the examples and settings that define the batch sequence."""
  h = hashlib.sha256()
  h.update(json.dumps([dataclasses.asdict(cfg), weights, extra], sort_keys=True,
                      default=str).encode())
  for s in sources:
    h.update(len(s).to_bytes(8, "little"))
    for e in s:
      h.update(e["inputs"].tobytes())
      h.update(e["loss_mask"].tobytes())
  return h.hexdigest()[:16]


def train_iterator(sources: Sequence[Sequence[Example]], weights: Sequence[float] | None,
                   cfg: PipelineConfig, extra_fingerprint: Any = None) -> BatchIterator:
  stream = mixed_dataset(sources, weights, cfg.seed, cfg.num_epochs)
  return BatchIterator(batches(stream, cfg), sum(len(s) for s in sources),
                       fingerprint(sources, weights, cfg, extra_fingerprint))


def eval_batches(examples: Sequence[Example], cfg: PipelineConfig,
                 max_batches: int = 0) -> list[dict[str, np.ndarray]]:
  """One ordered pass over held-out examples; the last batch is padded with empty rows."""
  if not examples:
    return []
  stream = grain.MapDataset.source(list(examples))
  out = []
  for batch in batches(stream, dataclasses.replace(cfg, num_epochs=1), drop_remainder=False):
    rows = batch["inputs"].shape[0]
    if rows < cfg.batch_size:
      batch = {k: np.concatenate([v, np.zeros((cfg.batch_size - rows,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    out.append(batch)
    if max_batches and len(out) >= max_batches:
      break
  return out


def count_batches(sources: Sequence[Sequence[Example]], weights, cfg: PipelineConfig) -> int:
  """Batches in `cfg.num_epochs` epochs (runs the packing on lengths only)."""
  if cfg.num_epochs is None:
    raise ValueError("count_batches needs a finite num_epochs")
  light = [[{"inputs": np.zeros(len(e["inputs"]), np.int32),
             "targets": np.zeros(len(e["inputs"]), np.int32),
             "loss_mask": np.zeros(len(e["inputs"]), np.int32)} for e in s] for s in sources]
  stream = mixed_dataset(light, weights, cfg.seed, cfg.num_epochs)
  return sum(1 for _ in batches(stream, cfg))
