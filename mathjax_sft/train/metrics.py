"""Run metrics: throughput, model FLOPs utilisation, a measured matmul peak, and the writers
(TensorBoard event files + metrics.jsonl, on process 0 only)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Dense bf16 peaks per chip (FLOP/s) by jax device_kind; CPUs are measured instead.
KNOWN_PEAKS = {
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v5": 459e12, "TPU v6 lite": 918e12, "TPU v6e": 918e12,
    "NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
}


def measure_matmul_peak(dtype: str = "float32", n: int = 1024, repeats: int = 10,
                        device: Any = None) -> float:
  """Best FLOP/s of an n x n x n matmul on one device (bf16 inputs accumulate in f32)."""
  device = device or jax.local_devices()[0]
  dt = jnp.dtype(dtype)
  key = jax.random.PRNGKey(0)
  a = jax.device_put(jax.random.normal(key, (n, n), jnp.float32).astype(dt), device)
  b = jax.device_put(jax.random.normal(jax.random.fold_in(key, 1), (n, n), jnp.float32).astype(dt),
                     device)
  f = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
  f(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2.0 * n ** 3 / best


def peak_flops_per_device(configured: float, compute_dtype: str) -> tuple[float, str]:
  """(FLOP/s, where it came from): the configured value, a known accelerator, or measured."""
  if configured > 0:
    return float(configured), "config"
  kind = jax.devices()[0].device_kind
  if kind in KNOWN_PEAKS:
    return KNOWN_PEAKS[kind], f"known peak of {kind}"
  return measure_matmul_peak(compute_dtype), f"measured {compute_dtype} matmul on {kind}"


def mfu(flops_per_token: float, tokens_per_s: float, peak_per_device: float,
        num_devices: int) -> float:
  return flops_per_token * tokens_per_s / (peak_per_device * num_devices)


def peak_memory_bytes() -> int | None:
  """Peak memory of the first device if the backend reports it, else this process's max RSS."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"])
  try:
    import resource  # pylint: disable=import-outside-toplevel
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
  except (ImportError, OSError):
    return None


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
