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
from absl import app, flags

from mathjax_sft import hardware
from mathjax_sft.model.config import REMAT_POLICIES, preset
from mathjax_sft.train import benchmark, metrics

_MODEL = flags.DEFINE_string("model", "smollm2-135m", "model preset")
_BATCH = flags.DEFINE_integer("batch_size", 4, "sequences per step")
_SEQ = flags.DEFINE_integer("seq_len", 512, "tokens per sequence")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "timed rounds (one phase of each side per round)")
_PHASE = flags.DEFINE_integer("phase_steps", 3, "consecutive steps of one side per phase")
_COMPUTE = flags.DEFINE_enum("compute_dtype", "bfloat16", ["float32", "bfloat16"],
                             "our matmul dtype (master weights and Adam state stay f32)")
_SCAN = flags.DEFINE_bool("scan_layers", True, "lax.scan over layers (else unrolled); the "
                          "default matches configs/sft_smollm2_135m.py")
_REMAT = flags.DEFINE_bool("remat", True, "rematerialise layers in the backward pass")
_POLICY = flags.DEFINE_enum("remat_policy", "dots", list(REMAT_POLICIES),
                            "with --remat: what a layer keeps from its forward pass")
_TORCH = flags.DEFINE_bool("torch", True, "also time the PyTorch loop")
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
  cfg = preset(_MODEL.value, param_dtype="float32")
  loop = TorchLoop(cfg, _BATCH.value, _SEQ.value, os.cpu_count())
  print("ready", flush=True)
  for _ in sys.stdin:
    print(loop.step(), flush=True)


class TorchChild:
  def __init__(self):
    args = [sys.executable, os.path.abspath(__file__), "--torch_worker", f"--model={_MODEL.value}",
            f"--batch_size={_BATCH.value}", f"--seq_len={_SEQ.value}"]
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
  cfg = preset(_MODEL.value, param_dtype="float32", compute_dtype=_COMPUTE.value,
               scan_layers=_SCAN.value, remat=_REMAT.value, remat_policy=_POLICY.value)
  ours = benchmark.StepTimer(cfg, _BATCH.value, _SEQ.value, learning_rate=_LR)
  ref = TorchChild() if _TORCH.value else None
  jax_s, torch_s, peaks, peaks_f32, loads = [], [], [], [], []
  for _ in range(_ROUNDS.value):
    peaks.append(hardware.measure_matmul_peak(_COMPUTE.value, n=2048, repeats=5))
    peaks_f32.append(hardware.measure_matmul_peak("float32", n=2048, repeats=5))
    ours.step()                                   # untimed: back in steady state
    jax_s += [ours.step() for _ in range(_PHASE.value)]
    if ref is not None:
      ref.step()
      torch_s += [ref.step() for _ in range(_PHASE.value)]
    loads.append(os.getloadavg()[0])
  torch_rss = None
  if ref is not None:
    ref.close()
    torch_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024   # KiB on Linux
  fpt = cfg.flops_per_token(_SEQ.value)
  n = jax.device_count()
  tps = lambda s: ours.tokens_per_step / s
  result = {
      "model": _MODEL.value, "batch_size": _BATCH.value, "seq_len": _SEQ.value,
      "compute_dtype": _COMPUTE.value, "master_dtype": "float32", "scan_layers": _SCAN.value,
      "remat": _REMAT.value, "remat_policy": _POLICY.value, "devices": [str(d) for d in jax.devices()],
      "cpu_count": os.cpu_count(), "load_avg_1m": loads, "rounds": _ROUNDS.value, "phase_steps": _PHASE.value,
      "flops_per_token": fpt,
      "jax_tokens_per_s_best": tps(min(jax_s)), "jax_tokens_per_s_median": tps(np.median(jax_s)),
      "jax_first_step_s": ours.first_step_s,
      "matmul_peak_flops": max(peaks), "matmul_peak_dtype": f"{_COMPUTE.value} (f32 accumulate)",
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
  app.run(main)
