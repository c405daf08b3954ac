"""tools/bench_train.py on the tiny model: its JSON report's throughput, FLOPs and MFU."""

import importlib.util
import json
import types
from pathlib import Path

import jax
import numpy as np
import pytest

from mathjax_sft.model.config import preset
from mathjax_sft import hardware
from mathjax_sft.train import benchmark

TOOL = Path(__file__).resolve().parents[2] / "tools" / "bench_train.py"


def test_bench_train_reports_throughput_flops_and_mfu(monkeypatch, capsys):
  """With a clock where every step takes 0.5 s and matmul peaks of 4e9 (bf16) and 2e9 (f32)
  FLOP/s, the report's tokens/s, FLOPs per token and MFU follow from the batch and the model."""
  spec = importlib.util.spec_from_file_location("bench_train", TOOL)
  tool = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(tool)
  clock = iter(np.arange(0.0, 1e3, 0.5))
  monkeypatch.setattr(benchmark, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
  measured = []

  def peak(dtype, n, repeats):
    measured.append(dtype)
    return {"bfloat16": 4e9, "float32": 2e9}[dtype]

  monkeypatch.setattr(hardware, "measure_matmul_peak", peak)
  flags = tool.flags.FLAGS
  own = [v.name for v in vars(tool).values() if isinstance(v, tool.flags.FlagHolder)]
  own += [tool._CONFIG.prefix + leaf.path for leaf in tool._CONFIG.leaves]
  try:
    flags(["bench_train", "--model=tiny", "--batch_size=8", "--seq_len=16", "--rounds=1",
           "--phase_steps=2", "--notorch"])
    tool.main([])
  finally:
    flags.unparse_flags()
    for name in own:
      delattr(flags, name)
  report = json.loads(capsys.readouterr().out)
  assert sorted(measured) == ["bfloat16", "float32"]
  fpt = preset("tiny").flops_per_token(16)
  n = jax.device_count()
  assert report["flops_per_token"] == fpt
  assert len(report["devices"]) == n and report["compute_dtype"] == "bfloat16"
  assert report["jax_tokens_per_s_best"] == report["jax_tokens_per_s_median"] == 8 * 16 / 0.5
  assert report["jax_first_step_s"] > 0
  assert report["matmul_peak_flops"] == 4e9 and report["matmul_peak_flops_f32"] == 2e9
  assert report["jax_mfu"] == pytest.approx(fpt * 256 / (4e9 * n), rel=1e-12)
  assert report["jax_mfu_vs_f32_peak"] == pytest.approx(fpt * 256 / (2e9 * n), rel=1e-12)
  assert 0 < report["jax_mfu"] < report["jax_mfu_vs_f32_peak"] <= 1
  assert report["jax_losses_finite"] is True
  assert "torch_tokens_per_s_best" not in report
