"""What a device can do: its dense matmul peak (known for accelerators, measured on CPUs) and the
peak memory a run used. Shared by the trainer's MFU and the benchmarks."""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp

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
