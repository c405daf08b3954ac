"""Train-step throughput: our jitted JAX step vs a plain PyTorch loop over transformers'
LlamaForCausalLM, same model shape, batch, seq_len and AdamW settings, in one run. Prints JSON.

  .venv/bin/python tools/bench_train.py --model=smollm2-135m --batch_size=4 --seq_len=512

The two alternate in phases of a few consecutive steps each (a training loop's steady state; a
matmul-peak probe opens every round), so a shared machine's load changes hit both alike; the best
and median of each are reported. The PyTorch loop runs in a
child process (this file with --torch_worker) that waits on a pipe between steps: in one process
torch's OpenMP threads and XLA's thread pool slow each other down (~30% measured here). The
PyTorch side is a reference (f32, as many threads as JAX uses) and lives here: the library never
imports torch.
"""

import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
from absl import flags

from mathjax_sft import cli, hardware
from mathjax_sft.model.config import preset
from mathjax_sft.train import benchmark, metrics

_CONFIG = cli.TreeFlags(benchmark.BenchTrainConfig)
_WORKER = flags.DEFINE_bool("torch_worker", False, "internal: be the PyTorch child process")
_LR = 1e-5


class TorchLoop:
  """transformers LlamaForCausalLM + torch.optim.AdamW, f32: the plain PyTorch training loop."""

  def __init__(self, cfg, batch_size, seq_len, threads):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    hf = cfg.to_hf()
    hf.pop("architectures", None)
    self.torch = torch
    self.model = LlamaForCausalLM(LlamaConfig(**hf)).float().train()
    self.opt = torch.optim.AdamW(self.model.parameters(), lr=_LR, betas=(0.9, 0.999), eps=1e-8,
                                 weight_decay=0.0)
    batch = benchmark.synthetic_batch(cfg.vocab_size, batch_size, seq_len)
    self.ids = torch.from_numpy(batch["inputs"]).long()
    self.tokens_per_step = batch_size * seq_len
    self.step()

  def step(self) -> float:
    t0 = time.perf_counter()
    out = self.model(input_ids=self.ids, labels=self.ids)
    self.opt.zero_grad(set_to_none=True)
    out.loss.backward()
    self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
    self.opt.step()
    return time.perf_counter() - t0


def torch_worker() -> None:
  """Child process: builds the loop, then runs one step per line on stdin, answering seconds."""
  c = _CONFIG.value()
  cfg = preset(c.model, param_dtype="float32")
  loop = TorchLoop(cfg, c.batch_size, c.seq_len, os.cpu_count())
  print("ready", flush=True)
  for _ in sys.stdin:
    print(loop.step(), flush=True)


class TorchChild:
  def __init__(self, c):
    args = [sys.executable, os.path.abspath(__file__), "--torch_worker", f"--model={c.model}",
            f"--batch_size={c.batch_size}", f"--seq_len={c.seq_len}"]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 env=env)
    if self.proc.stdout.readline().strip() != "ready":
      raise RuntimeError("the PyTorch worker failed to start")

  def step(self) -> float:
    self.proc.stdin.write("step\n")
    self.proc.stdin.flush()
    return float(self.proc.stdout.readline())

  def close(self) -> None:
    self.proc.stdin.close()
    self.proc.wait()


def main(argv):
  del argv
  if _WORKER.value:
    torch_worker()
    return
  import jax
  c = _CONFIG.value()
  cfg = preset(c.model, param_dtype="float32", compute_dtype=c.compute_dtype,
               scan_layers=c.scan_layers, remat=c.remat, remat_policy=c.remat_policy)
  ours = benchmark.StepTimer(cfg, c.batch_size, c.seq_len, learning_rate=_LR)
  ref = TorchChild(c) if c.torch else None
  jax_s, torch_s, peaks, peaks_f32, loads = [], [], [], [], []
  for _ in range(c.rounds):
    peaks.append(hardware.measure_matmul_peak(c.compute_dtype, n=2048, repeats=5))
    peaks_f32.append(hardware.measure_matmul_peak("float32", n=2048, repeats=5))
    ours.step()                                   # untimed: back in steady state
    jax_s += [ours.step() for _ in range(c.phase_steps)]
    if ref is not None:
      ref.step()
      torch_s += [ref.step() for _ in range(c.phase_steps)]
    loads.append(os.getloadavg()[0])
  torch_rss = None
  if ref is not None:
    ref.close()
    torch_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024   # KiB on Linux
  fpt = cfg.flops_per_token(c.seq_len)
  n = jax.device_count()
  tps = lambda s: ours.tokens_per_step / s
  result = {
      "model": c.model, "batch_size": c.batch_size, "seq_len": c.seq_len,
      "compute_dtype": c.compute_dtype, "master_dtype": "float32", "scan_layers": c.scan_layers,
      "remat": c.remat, "remat_policy": c.remat_policy, "devices": [str(d) for d in jax.devices()],
      "cpu_count": os.cpu_count(), "load_avg_1m": loads, "rounds": c.rounds, "phase_steps": c.phase_steps,
      "flops_per_token": fpt,
      "jax_tokens_per_s_best": tps(min(jax_s)), "jax_tokens_per_s_median": tps(np.median(jax_s)),
      "jax_first_step_s": ours.first_step_s,
      "matmul_peak_flops": max(peaks), "matmul_peak_dtype": f"{c.compute_dtype} (f32 accumulate)",
      "matmul_peak_flops_f32": max(peaks_f32),
      "jax_mfu": metrics.mfu(fpt, tps(min(jax_s)), max(peaks), n),
      "jax_mfu_vs_f32_peak": metrics.mfu(fpt, tps(min(jax_s)), max(peaks_f32), n),
      "jax_losses_finite": bool(np.isfinite(ours.losses).all()),
      "jax_peak_rss_bytes": hardware.peak_memory_bytes(),
  }
  if ref is not None:
    result.update({
        "torch_dtype": "float32", "torch_threads": os.cpu_count(),
        "torch_tokens_per_s_best": tps(min(torch_s)),
        "torch_tokens_per_s_median": tps(np.median(torch_s)),
        "torch_peak_rss_bytes": torch_rss,
        "speedup_best": min(torch_s) / min(jax_s),
        "speedup_median": float(np.median(torch_s) / np.median(jax_s)),
        "jax_step_s": jax_s, "torch_step_s": torch_s,
    })
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  cli.run(main)
