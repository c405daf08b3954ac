"""The sampler benchmark: its command line on a tiny workload, the A-B-A arithmetic of the
end-to-end comparison, and the refusal of a run directory that would resume instead of sample."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mathjax_sft.sample import benchmark

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("taken", ["run", "run_after_reference"])
def test_workload_refuses_a_used_output_dir(tmp_path, taken):
  (tmp_path / taken).mkdir()
  (tmp_path / taken / "samples.jsonl").write_text("{}\n")
  with pytest.raises(ValueError, match=f"--output_dir: .*{taken} is not empty"):
    benchmark.run_workload("runs/smollm2-135m", out_dir=str(tmp_path / "run"))


def test_decode_benchmark_command_line(smollm2_checkpoint):
  """tools/bench_sample.py --workload=decode, one prompt x 2 samples x 4 tokens against
  transformers: the JSON's counts are the workload's and its ratios are its own rates'."""
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "tools/bench_sample.py", "--workload=decode",
       f"--checkpoint={smollm2_checkpoint}", "--num_samples=2", "--max_new_tokens=4",
       "--temperature=0.7"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout)
  assert (out["num_prompts"], out["num_samples"], out["max_new_tokens"]) == (1, 2, 4)
  for side in ("ours", "transformers"):
    assert 2 <= out[side]["tokens"] <= 2 * 4       # 2 samples of at most 4 tokens
    assert out[side]["tokens_per_s"] == pytest.approx(
        out[side]["tokens"] / out[side]["seconds"], rel=0.01)
  # from tokens and seconds (3 decimals): a rate rounded to 3 decimals can be off by 0.5% or more
  rate = {side: out[side]["tokens"] / out[side]["seconds"] for side in ("ours", "transformers")}
  assert out["speedup"] == pytest.approx(rate["ours"] / rate["transformers"], rel=0.005, abs=0.01)
  assert out["ours_fraction_of_peak"] == pytest.approx(
      out["ours_gflops"] / out["matmul_peak_gflops"], abs=0.002)
  assert 0 < out["ours"]["utilisation"] <= 1


def test_end_to_end_comparison_is_timed_a_b_a(smollm2_checkpoint, monkeypatch, tmp_path):
  """Ours, the reference, ours again: the ratio is the mean of our two useful-token rates over
  the reference's, each run's own ratio listed; the two runs sample into separate directories."""
  calls = []

  def fake_tool(repo, checkpoint, num_problems, num_samples, max_new_tokens, temperature,
                out_dir, extra_flags=()):
    calls.append(("ours", out_dir))
    rate = 30.0 if len(calls) == 1 else 50.0
    return {"wall_s": 10.0, "useful_tokens": int(rate * 10), "useful_tokens_per_s": rate,
            "seconds": {"decode": 8.0}, "decode_flops": 8e9}

  def fake_reference(prompts, num_samples, max_new_tokens, temperature, threads, eos_id):
    calls.append(("transformers", len(prompts), num_samples, max_new_tokens, eos_id))
    return {"tokens": 200, "seconds": 9.0, "tokens_per_s": 200 / 9.0}

  monkeypatch.setattr(benchmark, "run_sample_tool", fake_tool)
  monkeypatch.setattr(benchmark, "run_transformers", fake_reference)
  monkeypatch.setattr(benchmark, "measure_matmul_peak", lambda *a, **k: 4e9)
  clock = iter([100.0, 110.0])                      # the reference's wall time: 10 s
  monkeypatch.setattr(benchmark.time, "perf_counter", lambda: next(clock))
  out = benchmark.run_workload(str(smollm2_checkpoint), num_problems=2,
                               num_samples=4, max_new_tokens=8, out_dir=str(tmp_path / "run"))
  assert [c[0] for c in calls] == ["ours", "transformers", "ours"]
  assert calls[0][1] == str(tmp_path / "run")
  assert calls[2][1] == str(tmp_path / "run") + "_after_reference"
  assert calls[1][1:4] == (3, 4, 8)                 # a warm-up prompt, then the 2 problems
  assert out["transformers"]["useful_tokens_per_s"] == 20.0   # 200 tokens / 10 s with load
  assert out["speedup_end_to_end_runs"] == [1.5, 2.5]
  assert out["speedup_end_to_end"] == 2.0           # (30 + 50) / 2 / 20
  assert out["ours_decode_gflops"] == 1.0 and out["ours_decode_fraction_of_peak"] == 0.25
