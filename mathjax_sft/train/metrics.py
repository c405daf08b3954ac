"""Run metrics: model FLOPs utilisation and the writers (TensorBoard event files + metrics.jsonl,
on process 0 only). Device peaks live in mathjax_sft.hardware."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

def mfu(flops_per_token: float, tokens_per_s: float, peak_per_device: float,
        num_devices: int) -> float:
  return flops_per_token * tokens_per_s / (peak_per_device * num_devices)


def _jsonable(v: Any) -> Any:
  if isinstance(v, (np.generic, jax.Array)):
    v = np.asarray(v).item()
  if isinstance(v, float) and not np.isfinite(v):
    return str(v)
  return v


class MetricsWriter:
  """Scalars to TensorBoard (output_dir/tb) and one JSON line per record (metrics.jsonl).

  On processes other than 0 every call does nothing. A resumed run appends; readers take the
  last record of each step.
  """

  def __init__(self, output_dir: str | Path, enabled: bool = True):
    self.enabled = enabled and jax.process_index() == 0
    self._tb = None
    self._jsonl = None
    if self.enabled:
      out = Path(output_dir)
      out.mkdir(parents=True, exist_ok=True)
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._tb = SummaryWriter(logdir=str(out / "tb"))
      self._jsonl = open(out / "metrics.jsonl", "a", encoding="utf-8")

  def scalars(self, step: int, values: dict[str, Any], kind: str = "train") -> None:
    if not self.enabled:
      return
    clean = {k: _jsonable(v) for k, v in values.items()}
    for k, v in clean.items():
      if isinstance(v, (int, float)):
        self._tb.add_scalar(f"{kind}/{k}", v, step)
    self._jsonl.write(json.dumps({"kind": kind, "step": int(step), **clean}) + "\n")
    self._jsonl.flush()

  def record(self, kind: str, values: dict[str, Any], step: int = 0) -> None:
    """A non-scalar record (data statistics, run facts) to metrics.jsonl and as TB text."""
    if not self.enabled:
      return
    text = json.dumps(values, default=str)
    self._tb.add_text(kind, text, step)
    self._jsonl.write(json.dumps({"kind": kind, "step": int(step), **json.loads(text)}) + "\n")
    self._jsonl.flush()

  def flush(self) -> None:
    """Writes buffered TensorBoard events to disk (called at every checkpoint)."""
    if self.enabled:
      self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()


def read_metrics(path: str | Path, kind: str = "train") -> dict[int, dict[str, Any]]:
  """step -> last record of that kind in a metrics.jsonl (later lines win: resumed runs)."""
  out = {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      rec = json.loads(line)
      if rec.get("kind") == kind:
        out[int(rec["step"])] = rec
  return out
