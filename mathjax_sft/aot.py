"""Ahead-of-time compilation of the programs a run executes, for a TPU slice or simulated devices.

Nothing is allocated: every argument is a `jax.ShapeDtypeStruct` with its sharding, so a 70B
train step compiles for a 128-chip TPU slice on a CPU host (libtpu's topology API; MaxText's
`train_compile.py` does the same). XLA's `memory_analysis()` of the compiled program gives what
each chip needs: arguments (weights, optimizer state, batch), temporaries (activations, gathered
weights, gradients), outputs. `tools/aot_check.py` prints one `ProgramReport` per program.

Devices: `"v5p:4x4x4"` (any topology name libtpu knows: v4, v5e, v5p, v6e) or `"cpu:8"` (the first
8 CPU devices of this process; set `--xla_force_host_platform_device_count`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mathjax_sft.model import llama
from mathjax_sft.model.config import ModelConfig
from mathjax_sft.sample import engine as engine_lib
from mathjax_sft.sharding import mesh as mesh_lib
from mathjax_sft.sharding import rules as sharding_rules
from mathjax_sft.train import optimizer as optimizer_lib
from mathjax_sft.train import state as state_lib
from mathjax_sft.train import step as step_lib

GIB = 2 ** 30
# HBM per jax device by TPU generation (the topology name's prefix). A device is a chip, except
# on v4, whose topology description lists each of a chip's 2 TensorCores as a device (no
# megacore): 128 devices of 16 GiB for a v4:4x4x4 slice of 64 chips with 32 GiB each.
TPU_HBM_GIB = {"v4": 16, "v5e": 16, "v5litepod": 16, "v5p": 95, "v6e": 32}


@dataclasses.dataclass(frozen=True)
class Target:
  """Devices to compile for: all devices of a slice, and the devices of its first host."""
  name: str                       # "v5p:4x4x4" | "cpu:8"
  devices: tuple                  # every device (train step)
  host_devices: tuple             # the first host's devices (the sampler runs per host)
  hbm_bytes: int | None           # per device (None: unknown, e.g. CPU)

  @property
  def platform(self) -> str:
    return "cpu" if self.name.startswith("cpu") else "tpu"


def target(name: str, chips_per_host: Sequence[int] | None = None) -> Target:
  """`"cpu:N"` or a TPU topology name (needs libtpu: `pip install -e '.[tpu]'`);
  `chips_per_host` (x, y, z) where a slice's hosts differ from libtpu's default (4 chips:
  a v5e-8 host holds 2 x 4)."""
  if name.startswith("cpu"):
    count = int(name.split(":", 1)[1]) if ":" in name else len(jax.devices("cpu"))
    cpus = jax.devices("cpu")
    if count > len(cpus):
      raise ValueError(f"{name}: this process has {len(cpus)} CPU devices; set XLA_FLAGS="
                       f"--xla_force_host_platform_device_count={count}")
    devices = tuple(cpus[:count])
    return Target(name, devices, devices, None)
  generation = name.split(":", 1)[0]
  if generation not in TPU_HBM_GIB:
    raise ValueError(f"topology {name!r}: expected '<generation>:<shape>' with generation in "
                     f"{sorted(TPU_HBM_GIB)} (e.g. v5p:4x4x4), or cpu:N")
  try:
    from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
    host = {} if not chips_per_host else {"chips_per_host_bounds": tuple(chips_per_host)}
    with _libtpu_describes_only():
      topo = topologies.get_topology_desc(topology_name=name, platform="tpu", **host)
  except Exception as e:  # libtpu missing or an unknown shape: say which
    raise RuntimeError(f"cannot describe TPU topology {name!r} ({type(e).__name__}: {e}); "
                       "libtpu comes with pip install -e '.[tpu]'") from None
  devices = tuple(topo.devices)
  first = devices[0].process_index
  host = tuple(d for d in devices if d.process_index == first)
  return Target(name, devices, host, TPU_HBM_GIB[generation] * GIB)


@contextlib.contextmanager
def _libtpu_describes_only():
  """libtpu loaded to describe a slice (no TPU here): without its start-up noise and its
  one-process lock (a job on this host may hold it). The variables are set only while it loads:
  left in the environment, they would make this process and its children look like TPU hosts
  (`jax.distributed.initialize` would look for a TPU cluster)."""
  settings = {"TPU_ACCELERATOR_TYPE": "v5p-8", "TPU_WORKER_HOSTNAMES": "localhost",
              "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}
  saved = {k: os.environ.get(k) for k in settings}
  for key, value in settings.items():
    os.environ.setdefault(key, value)
  try:
    yield
  finally:
    for key, value in saved.items():
      if value is None:
        os.environ.pop(key, None)
      else:
        os.environ[key] = value


@dataclasses.dataclass
class ProgramReport:
  """Per-device figures of one compiled program (bytes; FLOPs per device)."""
  program: str
  target: str
  devices: int
  mesh: dict
  argument_bytes: int
  output_bytes: int
  alias_bytes: int              # outputs that reuse donated argument buffers
  temp_bytes: int
  peak_bytes: int               # arguments + temporaries + outputs not aliased to arguments
  hbm_bytes: int | None
  fits: bool | None             # peak <= HBM
  headroom: float | None        # 1 - peak / HBM
  xla_flops: float | None       # XLA's count per device (a scanned or looped body counts once)
  model_flops: float            # the model's FLOPs per device for what the program computes once
  xla_bytes: float | None       # XLA's bytes accessed per device (a looped body counts once)
  floor_bytes: int | None       # decode: one step's least traffic per device (`decode_floor`)
  compile_s: float
  settings: dict

  def to_json(self) -> dict:
    out = dataclasses.asdict(self)
    for key in ("argument_bytes", "output_bytes", "temp_bytes", "peak_bytes", "hbm_bytes",
                "xla_bytes", "floor_bytes"):
      if out[key] is not None:
        out[key.replace("_bytes", "_gib")] = round(out[key] / GIB, 3)
    if self.xla_bytes and self.floor_bytes:
      out["bytes_over_floor"] = round(self.xla_bytes / self.floor_bytes, 3)
    if out["headroom"] is not None:
      out["headroom"] = round(out["headroom"], 4)
    out["compile_s"] = round(out["compile_s"], 1)
    return out


def compile_report(program: str, tgt: Target, mesh, fn: Callable, args: Sequence[Any],
                   model_flops: float, settings: dict, kwargs: dict | None = None) -> ProgramReport:
  """Lowers and compiles `fn(*args, **kwargs)` (a jitted function over abstract args)."""
  tic = time.perf_counter()
  compiled = fn.lower(*args, **(kwargs or {})).compile()
  return report(program, tgt, mesh, compiled, time.perf_counter() - tic, model_flops, settings)


def report(program: str, tgt: Target, mesh, compiled, seconds: float, model_flops: float,
           settings: dict, floor_bytes: int | None = None) -> ProgramReport:
  """The per-device figures of a compiled program (`memory_analysis`, `cost_analysis`)."""
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  number = lambda key: float(cost[key]) if cost and key in cost else None
  args_b, out_b = int(mem.argument_size_in_bytes), int(mem.output_size_in_bytes)
  alias_b, temp_b = int(mem.alias_size_in_bytes), int(mem.temp_size_in_bytes)
  peak = args_b + temp_b + out_b - alias_b
  hbm = tgt.hbm_bytes
  return ProgramReport(
      program=program, target=tgt.name, devices=int(np.prod(list(mesh.shape.values()))),
      mesh=dict(mesh.shape), argument_bytes=args_b, output_bytes=out_b, alias_bytes=alias_b,
      temp_bytes=temp_b, peak_bytes=peak, hbm_bytes=hbm,
      fits=None if hbm is None else peak <= hbm,
      headroom=None if hbm is None else 1.0 - peak / hbm,
      xla_flops=number("flops"), model_flops=model_flops, xla_bytes=number("bytes accessed"),
      floor_bytes=floor_bytes, compile_s=seconds, settings=settings)


# ---- the train step ---------------------------------------------------------------------------

def abstract_batch(batch_size: int, seq_len: int, sharding) -> dict[str, jax.ShapeDtypeStruct]:
  shape = (batch_size, seq_len)
  return {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding)
          for k in ("inputs", "targets", "loss_mask", "segment_ids", "positions")}


def train_step_program(cfg: ModelConfig, mesh, batch_size: int, seq_len: int,
                       grad_accum_steps: int = 1, weight_decay: float = 0.0):
  """(jitted train step, its abstract (state, batch)) -- exactly what `train.loop` runs."""
  stacked = cfg.scan_layers
  p_shard = state_lib.param_shardings(cfg, mesh, stacked)
  p_abstract = llama.abstract_params(cfg, stacked)
  ocfg = optimizer_lib.OptimizerConfig(learning_rate=1e-5, warmup_steps=0,
                                       weight_decay=weight_decay)
  tx = optimizer_lib.make_optimizer(ocfg, llama.param_axes(cfg, stacked), max_steps=1000)
  s_shard = state_lib.state_shardings(p_abstract, p_shard, tx, mesh)
  state = state_lib.abstract_state(p_abstract, tx, s_shard)
  b_shard = step_lib.batch_sharding(mesh, batch_size, seq_len)
  fn = step_lib.make_train_step(cfg, tx, optimizer_lib.schedule(ocfg, 1000), s_shard, b_shard,
                                grad_accum_steps)
  return fn, (state, abstract_batch(batch_size, seq_len, b_shard))


def check_train(cfg: ModelConfig, tgt: Target, mesh_shape: Sequence[int], batch_size: int,
                seq_len: int, grad_accum_steps: int = 1) -> ProgramReport:
  mesh = mesh_lib.make_mesh(mesh_shape, devices=tgt.devices)
  fn, args = train_step_program(cfg, mesh, batch_size, seq_len, grad_accum_steps)
  model_flops = cfg.flops_per_token(seq_len) * batch_size * seq_len / mesh.size
  settings = {"batch_size": batch_size, "seq_len": seq_len, "grad_accum_steps": grad_accum_steps,
              "param_dtype": cfg.param_dtype, "compute_dtype": cfg.compute_dtype,
              "scan_layers": cfg.scan_layers, "remat": cfg.remat,
              "remat_policy": cfg.remat_policy, "params": cfg.num_params()}
  return compile_report("train_step", tgt, mesh, fn, args, model_flops, settings)


# ---- the sampler ------------------------------------------------------------------------------

def _sds(shape, dtype, mesh, axes):
  sharding = (None if mesh is None else
              sharding_rules.named_sharding(mesh, axes, shape, name="sampler input"))
  return jax.ShapeDtypeStruct(shape, jnp.dtype(dtype), sharding=sharding)


RUN_PROBLEMS = 1024   # problems of the sampler run compiled for: enough to fill any row pool


def decode_floor(engine: engine_lib.Engine, rows: int, slots: int, width: int,
                 num_samples: int) -> int:
  """One decode step's least memory traffic per device: every weight, every prompt slot and
  every row's ring of `max_new_tokens` keys read once (the rows at their longest). The step is
  bound by it: its FLOPs per byte are ~2 x rows / weight itemsize for the weights, ~1 for the
  caches."""
  pool, state = engine.specs(rows, slots, width, num_samples)[:2]
  leaves = jax.tree.leaves((engine.param_specs(), pool.prefix.k, pool.prefix.v, state.cache.k,
                            state.cache.v))
  shard_bytes = lambda a: (math.prod(engine.on_device(a).sharding.shard_shape(a.shape))
                           * a.dtype.itemsize)
  return int(sum(shard_bytes(a) for a in leaves))


def check_sample(cfg: ModelConfig, tgt: Target, mesh_shape: Sequence[int] | None,
                 ecfg: engine_lib.EngineConfig, num_samples: int,
                 prompt_len: int) -> list[ProgramReport]:
  """The sampler's two programs on the first host's devices (it runs one engine per host;
  `mesh_shape` over those devices, or None: one device), exactly as a run of `RUN_PROBLEMS`
  prompts of `prompt_len` tokens plans them (`Engine.plan`: `ecfg.rows`, else the most rows
  whose decode fits `programs.MEMORY_FRACTION` of the device's memory): prefill of one prompt
  into the prompt pool, and one decode chunk of the row pool."""
  devices = tgt.host_devices if mesh_shape else tgt.host_devices[:1]
  mesh = mesh_lib.make_mesh(mesh_shape or (1, 1, 1), devices=devices)
  engine_mesh = mesh if mesh_shape else None
  engine = engine_lib.Engine(None, cfg, ecfg, mesh=engine_mesh, device=devices[0],
                             memory=tgt.hbm_bytes)
  sampling = engine_lib.SamplingParams()
  tic = time.perf_counter()
  rows, slots, T = engine.plan([prompt_len] * RUN_PROBLEMS, num_samples, sampling)
  program = engine.decode_program(rows, slots, T, num_samples, sampling.traced())
  settings = {"num_samples": num_samples, "decode_rows": rows, "prefix_slots": slots,
              "pool_width": T, "max_new_tokens": ecfg.max_new_tokens,
              "chunk_steps": ecfg.chunk_steps, "param_dtype": cfg.param_dtype,
              "compute_dtype": cfg.compute_dtype, "params": cfg.num_params(),
              "plan_s": round(time.perf_counter() - tic, 1)}
  params = engine.param_specs()
  pool = jax.tree.map(engine.on_device, engine.specs(rows, slots, T, num_samples)[0])
  i32 = jax.ShapeDtypeStruct((), jnp.int32)
  sampler = jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)),
                         sampling.traced())
  tokens = _sds((1, T), jnp.int32, engine_mesh, (None, None))
  devices = mesh.size
  reports = [compile_report(
      "sample_prefill", tgt, mesh, engine._prefill,
      (params, pool, tokens, i32, i32, i32, i32, sampler),
      2.0 * cfg.num_params() * T / devices, settings, kwargs=dict(num_samples=num_samples))]
  reports.append(report(
      "sample_decode", tgt, mesh, program.compiled, program.compile_s,
      engine_lib.step_flops(cfg, rows, slots * T + ecfg.max_new_tokens) / devices,  # one step
      settings, floor_bytes=decode_floor(engine, rows, slots, T, num_samples)))
  return reports


def fits_with_headroom(report: ProgramReport, headroom: float = 0.10) -> bool:
  return report.hbm_bytes is not None and report.peak_bytes <= (1 - headroom) * report.hbm_bytes


def human(report: ProgramReport) -> str:
  """One line for a person (the JSON line is the record)."""
  hbm = "" if report.hbm_bytes is None else (
      f" of {report.hbm_bytes / GIB:.0f} GiB HBM: {'fits' if report.fits else 'DOES NOT FIT'}"
      f" ({100 * report.headroom:.0f}% headroom)")
  return (f"{report.program} on {report.target} mesh {report.mesh}: args "
          f"{report.argument_bytes / GIB:.2f} + temps {report.temp_bytes / GIB:.2f} GiB per device"
          f"{hbm}; compiled in {report.compile_s:.0f} s")

