"""Ahead-of-time compiles: per-device work and memory shrink with the mesh (the sharded-step
tests compare numbers, which cannot see that), and tools/aot_check.py on a TPU topology."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from mathjax_sft import aot
from mathjax_sft.model.config import ModelConfig

REPO = Path(__file__).resolve().parents[1]
# Small enough to compile in seconds, with activations (not weights) dominating memory.
CFG = ModelConfig(vocab_size=512, hidden_size=128, intermediate_size=512, num_layers=2,
                  num_heads=8, num_kv_heads=4, head_dim=16, max_position_embeddings=512,
                  scan_layers=True, remat=True, attention_chunk=64, loss_chunk=64)


@pytest.fixture(scope="module")
def one_device():
  return aot.check_train(CFG, aot.target("cpu:1"), (1, 1, 1), batch_size=8, seq_len=256)


@pytest.mark.parametrize("mesh", [(1, 8, 1), (8, 1, 1), (2, 2, 2)])
def test_train_step_work_and_memory_per_device_shrink_8x(one_device, mesh):
  """Batch 8 x 256 over 8 devices (one sequence each). Allowed overhead: 15% on the 1/8 share
  of temporaries, plus one gradient copy in the parameters' own sharding (a data-parallel-only
  mesh holds a whole one). Without activation constraints, (1, 8, 1) needed 0.49x and (2, 2, 2)
  0.19x of the one-device temporaries: the whole batch's activations on every device."""
  assert jax.device_count() == 8
  r = aot.check_train(CFG, aot.target("cpu:8"), mesh, batch_size=8, seq_len=256)
  param_bytes = CFG.num_params() * 4
  grad_copy = param_bytes / (mesh[1] * mesh[2])
  assert r.temp_bytes <= 1.15 * one_device.temp_bytes / 8 + grad_copy, (
      r.temp_bytes / one_device.temp_bytes)
  assert r.xla_flops <= 1.1 * one_device.xla_flops / 8, r.xla_flops / one_device.xla_flops
  # arguments (params + Adam state + batch) are split by the parameter sharding
  weights_split = mesh[1] * mesh[2]
  assert r.argument_bytes <= 1.05 * one_device.argument_bytes / weights_split + 8 * 256 * 4 * 5


def test_sampler_programs_shard_rows_and_cache():
  """Decode on 8 CPU devices as data parallel rows: per-device temporaries (the rows' activations,
  besides the replicated embedding table) and arguments (their KV caches) shrink ~8x
  (temporaries: < 0.3x); the prefill of one prompt is not
  split (the pool is replicated over data-parallel devices)."""
  from mathjax_sft.sample.engine import EngineConfig
  ecfg = EngineConfig(max_new_tokens=64, rows=64)
  cfg = CFG.replace(scan_layers=False, remat=False)
  one = {r.program: r for r in aot.check_sample(cfg, aot.target("cpu:8"), None, ecfg, 16, 40)}
  eight = {r.program: r for r in aot.check_sample(cfg, aot.target("cpu:8"), (8, 1, 1), ecfg, 16, 40)}
  assert one["sample_decode"].devices == 1 and eight["sample_decode"].devices == 8
  # the embedding lookup reads a replicated table (llama.forward): in every device's temporaries
  table = cfg.vocab_size * cfg.hidden_size * 4
  ratio = (eight["sample_decode"].temp_bytes - table) / (one["sample_decode"].temp_bytes - table)
  assert ratio <= 0.3, ratio     # the rest: the queue and per-step scalars
  pool = one["sample_prefill"].argument_bytes       # weights + prompt pool: replicated
  assert eight["sample_prefill"].argument_bytes >= 0.9 * pool
  cache = one["sample_decode"].argument_bytes - pool
  assert eight["sample_decode"].argument_bytes - eight["sample_prefill"].argument_bytes <= (
      0.2 * cache), "the rows' caches are split over the devices"


# Heads of head_dim 128 (LLaMA's): the decode cache shape in which XLA:TPU tiles the cache in
# another order inside the decode loop than row-major.
DECODE_CFG = ModelConfig(vocab_size=512, hidden_size=1024, intermediate_size=1024, num_layers=2,
                         num_heads=8, num_kv_heads=8, head_dim=128, max_position_embeddings=1024,
                         scan_layers=False, remat=False, param_dtype="bfloat16",
                         compute_dtype="bfloat16")


@pytest.mark.parametrize("target,dtype", [("cpu:1", "float32"), ("v5p:2x2x1", "bfloat16")])
def test_decode_keeps_one_copy_of_the_cache(target, dtype):
  """The decode chunk's temporaries stay within a quarter of the rows' caches it carries: no
  second copy of the cache (each platform in the dtype it samples in). On a v5p chip (libtpu,
  no TPU needed) a row-major state was copied into the loop's tiled order and back: 99 MiB of
  temporaries for this 128 MiB cache, 16 MiB in the layout the program takes."""
  from mathjax_sft.sample.engine import EngineConfig
  rows, new = 64, 256
  c = DECODE_CFG.replace(param_dtype=dtype, compute_dtype=dtype)
  ecfg = EngineConfig(max_new_tokens=new, rows=rows)
  reports = {r.program: r for r in aot.check_sample(c, aot.target(target), None, ecfg, 16, 64)}
  decode = reports["sample_decode"]
  itemsize = 4 if dtype == "float32" else 2
  cache = 2 * c.num_layers * rows * c.num_kv_heads * c.head_dim * new * itemsize
  assert decode.argument_bytes >= cache and decode.settings["decode_rows"] == rows
  assert decode.temp_bytes <= 0.25 * cache, decode.temp_bytes / cache
  assert decode.alias_bytes >= cache                     # the state is updated in place
  assert decode.floor_bytes >= cache and decode.xla_bytes > 0


def test_rows_from_the_compiled_program_against_the_device_memory():
  """Default rows: the most whose compiled decode fits 90% of the device's memory (here a
  pretend device of 128 MiB for 63 MB of f32 weights and 2 MiB of cache per row; the weights are
  never allocated); rows given that cannot fit are refused before any weight exists, naming
  --rows."""
  from mathjax_sft import errors
  from mathjax_sft.sample import engine as engine_lib, programs
  memory = 128 * 2 ** 20
  cfg = DECODE_CFG.replace(param_dtype="float32", compute_dtype="float32")
  ecfg = engine_lib.EngineConfig(max_new_tokens=256)
  engine = engine_lib.Engine(None, cfg, ecfg, memory=memory)
  sampling = engine_lib.SamplingParams()
  rows, slots, width = engine.plan([50] * 16, 16, sampling)
  assert 8 <= rows < 64, rows                       # 16 x 16 samples of work, the cap 64 on CPU
  fitted = engine.decode_program(rows, slots, width, 16, sampling.traced())
  assert fitted.peak_bytes <= programs.MEMORY_FRACTION * memory
  assert engine.params is None
  too_many = engine_lib.Engine(None, cfg, dataclasses.replace(ecfg, rows=64),
                               memory=memory)
  with pytest.raises(errors.BadInput, match="64 rows x 256 new tokens.*--rows") as e:
    too_many.plan([50] * 16, 16, sampling)
  assert e.value.flag == "--rows"


def test_aot_check_tool_on_a_tpu_topology(tmp_path):
  """tools/aot_check.py compiles a tiny config's train step, prefill and decode for a TPU v5e 2x2
  slice through libtpu's topology API (no TPU here), one JSON line each."""
  out = tmp_path / "aot.jsonl"
  cmd = [sys.executable, "tools/aot_check.py", "--config=configs/sft_smollm2_135m.py",
         "--config.model.init_checkpoint=", "--config.model.preset=tiny", "--config.data.seq_len=128",
         "--config.batch_size=8", "--topology=v5e:2x2", "--sample_mesh_shape=4,1,1",
         "--num_samples=16", "--rows=8", "--max_new_tokens=32", "--prompt_len=32",
         f"--output={out}"]
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
  assert [l["program"] for l in lines] == ["train_step", "sample_prefill", "sample_decode"]
  assert out.read_text().count("\n") == 3
  for line in lines:
    assert line["target"] == "v5e:2x2" and line["devices"] == 4
    assert line["hbm_gib"] == 16.0 and line["fits"] is True
    assert 0 <= line["temp_bytes"] < 2 ** 30 and line["xla_flops"] > 0
  assert lines[0]["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
  assert "fits" in proc.stderr


def test_unknown_topology_is_named():
  with pytest.raises(ValueError, match="v9x"):
    aot.target("v9x:2x2")
  with pytest.raises(ValueError, match="device_count=64"):
    aot.target("cpu:64")
