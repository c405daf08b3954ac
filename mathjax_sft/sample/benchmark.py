"""Sampler benchmark: our engine vs transformers `generate(num_return_sequences=N)` in one run.

Both draw N samples per prompt from the same model, prompts, temperature and token budget.
Throughput is generated tokens (up to and including EOS) per second of wall time, after a
warm-up call (compilation excluded for us, first-call overhead excluded for torch). transformers
is a reference only: it is imported here, never by the engine.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from mathjax_sft import paths
from mathjax_sft.configtree import setting
from mathjax_sft.checkpoint import params as ckpt
from mathjax_sft.data import templates
from mathjax_sft.eval import problems as problems_lib
from mathjax_sft.sample.engine import Engine, EngineConfig, step_flops
from mathjax_sft.sample.strategies import SamplingParams
from mathjax_sft.hardware import measure_matmul_peak


@dataclasses.dataclass(frozen=True)
class BenchSampleConfig:
  """Settings of one benchmark run (tools/bench_sample.py's flags); `run_config` runs it."""
  workload: str = setting("gsm8k", "gsm8k: K problems x N through tools/sample.py; decode: the "
                          "engine's decode loop alone.", choices=("gsm8k", "decode"))
  checkpoint: str = setting(paths.EMBEDDED_CHECKPOINT, "Converted SmolLM2 checkpoint (`make convert`); "
                            "the reference reads the same GGUF.")
  num_problems: int = setting(8, "gsm8k: K, the first K GSM8K test problems.")
  num_prompts: int = setting(1, "decode: GSM8K prompts timed (one more warms up).")
  num_samples: int = setting(64, "N samples per prompt.")
  max_new_tokens: int = setting(320, "Token budget per sample.")
  temperature: float = setting(SamplingParams.temperature, "Sampling temperature (both sides).")
  threads: int = setting(2, "torch intra-op threads (XLA uses all cores).")
  compute_dtype: str = setting("float32", "decode: our weights/compute dtype (the reference stays "
                               "float32).", choices=("float32", "bfloat16"))
  repo: str = setting(".", "gsm8k: the checkout whose tools/sample.py is timed.")
  output_dir: str | None = setting(None, "gsm8k: keep our run directories here and in "
                                   "<output_dir>_after_reference (default: temporary ones); both "
                                   "must be new or empty, or tools/sample.py would resume instead "
                                   "of sampling.")
  skip_reference: bool = setting(False, "Time only our sampler.")


_D = BenchSampleConfig()   # the library functions' defaults are the tool's


def run_config(c: BenchSampleConfig) -> dict[str, Any]:
  """The benchmark `c.workload` with the settings of `c`."""
  if c.workload == "gsm8k":
    return run_workload(c.checkpoint, c.num_problems, c.num_samples, c.max_new_tokens,
                        c.temperature, c.threads, c.repo, c.skip_reference, c.output_dir)
  return run(c.checkpoint, c.num_prompts, c.num_samples, c.max_new_tokens, c.temperature,
             c.threads, c.compute_dtype, c.skip_reference)


def _prompts(tokenizer, num_prompts: int) -> list[list[int]]:
  problems = problems_lib.load_problems("gsm8k", num_prompts + 1)
  texts = [templates.render_prompt("chat", p.question, tokenizer) for p in problems]
  return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def run_ours(checkpoint: str, prompts, num_samples, max_new_tokens, temperature,
             compute_dtype: str) -> dict[str, Any]:
  params, cfg = ckpt.load_params(checkpoint, compute_dtype=compute_dtype,
                                 param_dtype=compute_dtype)
  engine = Engine(params, cfg, EngineConfig(max_new_tokens=max_new_tokens, rows=num_samples))
  sampling = SamplingParams(temperature)
  tic = time.perf_counter()
  timed = prompts[1:]
  engine.generate(timed, [f"warmup{i}" for i in range(len(timed))], num_samples, sampling)  # compiles
  compile_s = time.perf_counter() - tic
  engine.stats = type(engine.stats)()
  tic = time.perf_counter()
  results = engine.generate(timed, [f"p{i}" for i in range(len(timed))], num_samples, sampling)
  wall = time.perf_counter() - tic
  lengths = [len(t) + f for r in results for t, f in zip(r.tokens, r.finished)]
  ctx = np.mean([len(p) for p in prompts[1:]]) + np.mean(lengths) / 2
  return {"tokens": int(sum(lengths)), "seconds": wall, "first_call_s": compile_s,
          "tokens_per_s": sum(lengths) / wall, "mean_len": float(np.mean(lengths)),
          "utilisation": round(engine.stats.utilisation, 4),
          "flops": step_flops(cfg, 1, ctx) * sum(lengths), "cfg": cfg}


def run_transformers(prompts, num_samples, max_new_tokens, temperature, threads: int,
                     eos_id: int) -> dict[str, Any]:
  import torch
  import transformers
  torch.set_num_threads(threads)
  gguf = paths.smollm2_gguf()
  model = transformers.AutoModelForCausalLM.from_pretrained(
      str(gguf.parent), gguf_file=gguf.name, dtype="float32").eval()

  def generate(prompt, n_new):
    ids = torch.tensor([prompt])
    with torch.no_grad():
      out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                           temperature=temperature, top_k=0, top_p=1.0,
                           num_return_sequences=num_samples, max_new_tokens=n_new,
                           pad_token_id=eos_id, eos_token_id=eos_id)
    new = out[:, len(prompt):].numpy()
    return [int(np.argmax(row == eos_id)) + 1 if (row == eos_id).any() else len(row) for row in new]

  generate(prompts[0], 4)                                            # warm-up
  tic = time.perf_counter()
  lengths = [n for p in prompts[1:] for n in generate(p, max_new_tokens)]
  wall = time.perf_counter() - tic
  return {"tokens": int(sum(lengths)), "seconds": wall, "tokens_per_s": sum(lengths) / wall,
          "mean_len": float(np.mean(lengths))}


def run(checkpoint: str, num_prompts: int = _D.num_prompts, num_samples: int = _D.num_samples,
        max_new_tokens: int = _D.max_new_tokens, temperature: float = _D.temperature,
        threads: int = _D.threads, compute_dtype: str = _D.compute_dtype,
        skip_reference: bool = False) -> dict[str, Any]:
  from transformers import AutoTokenizer
  tokenizer = AutoTokenizer.from_pretrained(checkpoint)
  prompts = _prompts(tokenizer, num_prompts)
  peak = measure_matmul_peak(compute_dtype, n=2048, repeats=5)
  ours = run_ours(checkpoint, prompts, num_samples, max_new_tokens, temperature, compute_dtype)
  cfg = ours.pop("cfg")
  result: dict[str, Any] = {
      "model": checkpoint, "num_prompts": num_prompts, "num_samples": num_samples,
      "max_new_tokens": max_new_tokens, "temperature": temperature, "threads": threads,
      "compute_dtype": compute_dtype,
      "ours": _rounded({k: v for k, v in ours.items() if k != "flops"}),
      "matmul_peak_gflops": round(peak / 1e9, 1),
      "ours_gflops": round(ours["flops"] / ours["seconds"] / 1e9, 1),
  }
  result["ours_fraction_of_peak"] = round(ours["flops"] / ours["seconds"] / peak, 3)
  if not skip_reference:
    ref = run_transformers(prompts, num_samples, max_new_tokens, temperature, threads,
                           cfg.eos_token_ids[0])
    result["transformers"] = _rounded(ref)
    result["speedup"] = round(ours["tokens_per_s"] / ref["tokens_per_s"], 2)
  return result


def _rounded(d: dict[str, Any]) -> dict[str, Any]:
  """Floats to 3 decimals, for the JSON."""
  return {k: round(v, 3) if isinstance(v, float) else v for k, v in d.items()}


def to_json(result: dict[str, Any]) -> str:
  return json.dumps(result, indent=2)


# ---- the real workload, end to end ------------------------------------------------------------

def _useful_tokens(samples_path) -> tuple[int, int]:
  """(tokens, samples) of a samples.jsonl: each sample's kept tokens plus its stop token."""
  tokens = samples = 0
  for line in open(samples_path):
    for s in json.loads(line)["samples"]:
      tokens += s["num_tokens"] + int(s["finished"])
      samples += 1
  return tokens, samples


def run_sample_tool(repo: str, checkpoint: str, num_problems: int, num_samples: int,
                    max_new_tokens: int, temperature: float, out_dir: str,
                    extra_flags: tuple[str, ...] = ()) -> dict[str, Any]:
  """`tools/sample.py` of checkout `repo` as a user runs it (a fresh process), timed whole."""
  cmd = [sys.executable, "tools/sample.py", f"--checkpoint={Path(checkpoint).absolute()}",
         "--dataset=gsm8k", f"--num_problems={num_problems}", f"--num_samples={num_samples}",
         f"--temperature={temperature}", f"--max_new_tokens={max_new_tokens}",
         f"--output_dir={out_dir}", *extra_flags]
  env = dict(os.environ, PYTHONPATH=str(Path(repo).absolute()),   # that checkout's library
             MATHJAX_DATA_DIR=str(paths.data_dir().absolute()))
  tic = time.perf_counter()
  proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
  wall = time.perf_counter() - tic
  if proc.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  tokens, samples = _useful_tokens(Path(out_dir) / "samples.jsonl")
  summary = json.loads((Path(out_dir) / "summary.json").read_text())
  out = {"command": " ".join(cmd[1:]), "repo": str(Path(repo).absolute()), "wall_s": wall,
         "useful_tokens": tokens, "samples": samples, "useful_tokens_per_s": tokens / wall,
         "pass_at_n": summary["pass_at_n"], "pass_ratio_at_n": summary["pass_ratio_at_n"]}
  for key in ("utilisation", "seconds", "decode_flops"):
    if key in summary.get("this_run", {}):
      out[key] = summary["this_run"][key]
  return out


def run_workload(checkpoint: str, num_problems: int = _D.num_problems,
                 num_samples: int = _D.num_samples, max_new_tokens: int = _D.max_new_tokens,
                 temperature: float = _D.temperature, threads: int = _D.threads,
                 repo: str = _D.repo, skip_reference: bool = False,
                 out_dir: str | None = None) -> dict[str, Any]:
  """K GSM8K test problems x N samples: `tools/sample.py` end to end against transformers
  `generate(num_return_sequences=N)` one prompt at a time (same prompts, threads, budget).

  Timed A-B-A: our run, the reference, our run again (a fresh output directory, so it samples
  everything anew), so that a drift of the machine's speed during the hour does not land on one
  side only (two runs of the same command differed by 15% on a shared 2-core VM). The ratio is
  the mean of our two useful-token rates over the reference's; each run's ratio is reported too,
  as is the matmul peak before and after."""
  from transformers import AutoTokenizer
  for d in ([out_dir, f"{out_dir}_after_reference"] if out_dir else []):
    if Path(d).is_dir() and any(Path(d).iterdir()):
      raise ValueError(f"--output_dir: {d} is not empty; tools/sample.py would resume the run "
                       "there instead of timing it (give a new directory)")
  peak = measure_matmul_peak("float32", n=2048, repeats=5)
  with tempfile.TemporaryDirectory() as tmp:
    run_dir = out_dir or f"{tmp}/run"
    ours = run_sample_tool(repo, checkpoint, num_problems, num_samples, max_new_tokens,
                           temperature, run_dir)
    result: dict[str, Any] = {
        "workload": f"gsm8k test[:{num_problems}] x N={num_samples}, {max_new_tokens} new "
                    f"tokens, T={temperature}", "model": checkpoint, "threads": threads,
        "matmul_peak_gflops": round(peak / 1e9, 1), "ours": _rounded(ours)}
    if "decode_flops" in ours and ours.get("seconds", {}).get("decode"):
      achieved = ours["decode_flops"] / ours["seconds"]["decode"]
      result["ours_decode_gflops"] = round(achieved / 1e9, 1)
      result["ours_decode_fraction_of_peak"] = round(achieved / peak, 3)
    if skip_reference:
      return result
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    problems = problems_lib.load_problems("gsm8k", num_problems)
    prompts = [tokenizer(templates.render_prompt("chat", p.question, tokenizer),
                         add_special_tokens=False)["input_ids"] for p in problems]
    eos = json.loads(open(f"{checkpoint}/config.json").read()).get("eos_token_id", 2)
    eos = eos[0] if isinstance(eos, list) else eos
    tic = time.perf_counter()
    ref = run_transformers([prompts[0]] + prompts, num_samples, max_new_tokens, temperature,
                           threads, eos)
    ref["wall_s"] = time.perf_counter() - tic        # with model load and warm-up, as a user
    ref["useful_tokens_per_s"] = ref["tokens"] / ref["wall_s"]
    result["transformers"] = _rounded(ref)
    again = run_sample_tool(repo, checkpoint, num_problems, num_samples, max_new_tokens,
                            temperature, f"{run_dir}_after_reference")
  result["ours_after_reference"] = _rounded(again)
  result["matmul_peak_gflops_after"] = round(measure_matmul_peak("float32", n=2048,
                                                                 repeats=5) / 1e9, 1)
  rates = [ours["useful_tokens_per_s"], again["useful_tokens_per_s"]]
  result["speedup_end_to_end_runs"] = [round(r / ref["useful_tokens_per_s"], 2) for r in rates]
  result["speedup_end_to_end"] = round(float(np.mean(rates)) / ref["useful_tokens_per_s"], 2)
  return result
