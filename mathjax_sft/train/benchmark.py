"""Timing of the jitted train step on synthetic batches (tools/bench_train.py)."""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from mathjax_sft import hardware
from mathjax_sft.configtree import setting
from mathjax_sft.model import llama
from mathjax_sft.model.config import REMAT_POLICIES, ModelConfig
from mathjax_sft.sharding.mesh import make_mesh
from mathjax_sft.train import optimizer as optimizer_lib
from mathjax_sft.train import state as state_lib
from mathjax_sft.train import step as step_lib


def synthetic_batch(vocab_size: int, batch_size: int, seq_len: int, seed: int = 0) -> dict[str, np.ndarray]:
  """One unpacked sequence per row, every target in the loss (what a plain causal-LM loop does)."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, vocab_size, (batch_size, seq_len + 1)).astype(np.int32)
  return {"inputs": ids[:, :-1], "targets": ids[:, 1:],
          "loss_mask": np.ones((batch_size, seq_len), np.int32),
          "segment_ids": np.ones((batch_size, seq_len), np.int32),
          "positions": np.tile(np.arange(seq_len, dtype=np.int32), (batch_size, 1))}


class StepTimer:
  """A compiled train step on one synthetic batch, timed on demand (so a benchmark can
  interleave it with a reference on a shared, noisy machine)."""

  def __init__(self, cfg: ModelConfig, batch_size: int, seq_len: int, learning_rate: float = 1e-5,
               mesh_shape=(1, -1, 1), seed: int = 0):
    mesh = make_mesh(mesh_shape)
    stacked = cfg.scan_layers
    p_shard = state_lib.param_shardings(cfg, mesh, stacked)
    params = llama.init_params(cfg, jax.random.PRNGKey(seed), p_shard, stacked=stacked)
    ocfg = optimizer_lib.OptimizerConfig(learning_rate=learning_rate, warmup_steps=0)
    tx = optimizer_lib.make_optimizer(ocfg, llama.param_axes(cfg, cfg.scan_layers), 1000)
    s_shard = state_lib.state_shardings(llama.abstract_params(cfg, stacked), p_shard, tx, mesh)
    self.state = state_lib.create_state(params, tx, s_shard)
    b_shard = step_lib.batch_sharding(mesh, batch_size, seq_len)
    self.fn = step_lib.make_train_step(cfg, tx, optimizer_lib.schedule(ocfg, 1000), s_shard, b_shard)
    self.batch = {k: jax.device_put(v, b_shard)
                  for k, v in synthetic_batch(cfg.vocab_size, batch_size, seq_len, seed).items()}
    self.tokens_per_step = batch_size * seq_len
    self.losses: list[float] = []
    t0 = time.perf_counter()
    self.step()
    self.first_step_s = time.perf_counter() - t0

  def step(self) -> float:
    """Runs one step to completion; returns its seconds."""
    t0 = time.perf_counter()
    self.state, m = self.fn(self.state, self.batch)
    self.losses.append(float(m["loss"]))
    return time.perf_counter() - t0


def time_train_steps(cfg: ModelConfig, batch_size: int, seq_len: int, steps: int = 5,
                     warmup: int = 2, learning_rate: float = 1e-5, mesh_shape=(1, -1, 1),
                     seed: int = 0) -> dict[str, float]:
  """Seconds per step (median of `steps` after `warmup`) of the full jitted AdamW step."""
  timer = StepTimer(cfg, batch_size, seq_len, learning_rate, mesh_shape, seed)
  for _ in range(max(warmup - 1, 0)):
    timer.step()
  times = [timer.step() for _ in range(steps)]
  step_s = float(np.median(times))
  return {"step_s": step_s, "tokens_per_s": timer.tokens_per_step / step_s,
          "first_step_s": timer.first_step_s, "losses": timer.losses,
          "peak_memory_bytes": hardware.peak_memory_bytes()}


@dataclasses.dataclass(frozen=True)
class BenchTrainConfig:
  """Settings of tools/bench_train.py: the model, batch and step variant timed."""
  model: str = setting("smollm2-135m", "model preset")
  batch_size: int = setting(4, "sequences per step")
  seq_len: int = setting(512, "tokens per sequence")
  rounds: int = setting(2, "timed rounds (one phase of each side per round)")
  phase_steps: int = setting(3, "consecutive steps of one side per phase")
  compute_dtype: str = setting("bfloat16", "our matmul dtype (master weights and Adam state stay "
                               "f32)", choices=("float32", "bfloat16"))
  scan_layers: bool = setting(True, "lax.scan over layers (else unrolled); the default matches "
                              "configs/sft_smollm2_135m.py")
  remat: bool = setting(True, "rematerialise layers in the backward pass")
  remat_policy: str = setting("dots", "with --remat: what a layer keeps from its forward pass",
                              choices=tuple(REMAT_POLICIES))
  torch: bool = setting(True, "also time the PyTorch loop")
