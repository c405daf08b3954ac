"""Train-step throughput: our jitted JAX step vs a plain PyTorch loop over transformers'
LlamaForCausalLM, same model shape, batch, seq_len and AdamW settings, in one run. Prints JSON.

  .venv/bin/python tools/bench_train.py --model=smollm2-135m --batch_size=4 --seq_len=512

The two are interleaved step by step (with a matmul-peak probe each round), so a shared machine's
load changes hit both alike; the best and median of each are reported. The PyTorch side is a
reference (f32, as many threads as JAX uses) and lives here: the library never imports torch.
"""

import json
import os
import time

import numpy as np
from absl import app, flags

from mathjax_sft.model.config import preset
from mathjax_sft.train import benchmark, metrics

_MODEL = flags.DEFINE_string("model", "smollm2-135m", "model preset")
_BATCH = flags.DEFINE_integer("batch_size", 4, "sequences per step")
_SEQ = flags.DEFINE_integer("seq_len", 512, "tokens per sequence")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "timed rounds (one step of each side per round)")
_COMPUTE = flags.DEFINE_enum("compute_dtype", "bfloat16", ["float32", "bfloat16"],
                             "our matmul dtype (master weights and Adam state stay f32)")
_SCAN = flags.DEFINE_bool("scan_layers", False, "lax.scan over layers (else unrolled)")
_REMAT = flags.DEFINE_bool("remat", False, "rematerialise layers in the backward pass")
_TORCH = flags.DEFINE_bool("torch", True, "also time the PyTorch loop")
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


def main(argv):
  del argv
  import jax
  cfg = preset(_MODEL.value, param_dtype="float32", compute_dtype=_COMPUTE.value,
               scan_layers=_SCAN.value, remat=_REMAT.value)
  ours = benchmark.StepTimer(cfg, _BATCH.value, _SEQ.value, learning_rate=_LR)
  ref = TorchLoop(cfg, _BATCH.value, _SEQ.value, os.cpu_count()) if _TORCH.value else None
  jax_s, torch_s, peaks, peaks_f32, loads = [], [], [], [], []
  for _ in range(_ROUNDS.value):
    peaks.append(metrics.measure_matmul_peak(_COMPUTE.value, n=2048, repeats=5))
    peaks_f32.append(metrics.measure_matmul_peak("float32", n=2048, repeats=5))
    jax_s.append(ours.step())
    if ref is not None:
      torch_s.append(ref.step())
    loads.append(os.getloadavg()[0])
  fpt = cfg.flops_per_token(_SEQ.value)
  n = jax.device_count()
  tps = lambda s: ours.tokens_per_step / s
  result = {
      "model": _MODEL.value, "batch_size": _BATCH.value, "seq_len": _SEQ.value,
      "compute_dtype": _COMPUTE.value, "master_dtype": "float32", "scan_layers": _SCAN.value,
      "remat": _REMAT.value, "devices": [str(d) for d in jax.devices()],
      "cpu_count": os.cpu_count(), "load_avg_1m": loads, "rounds": _ROUNDS.value,
      "flops_per_token": fpt,
      "jax_tokens_per_s_best": tps(min(jax_s)), "jax_tokens_per_s_median": tps(np.median(jax_s)),
      "jax_first_step_s": ours.first_step_s,
      "matmul_peak_flops": max(peaks), "matmul_peak_dtype": f"{_COMPUTE.value} (f32 accumulate)",
      "matmul_peak_flops_f32": max(peaks_f32),
      "jax_mfu": metrics.mfu(fpt, tps(min(jax_s)), max(peaks), n),
      "jax_mfu_vs_f32_peak": metrics.mfu(fpt, tps(min(jax_s)), max(peaks_f32), n),
      "jax_losses_finite": bool(np.isfinite(ours.losses).all()),
      "peak_rss_bytes": metrics.peak_memory_bytes(),
  }
  if ref is not None:
    result.update({
        "torch_dtype": "float32", "torch_threads": os.cpu_count(),
        "torch_tokens_per_s_best": tps(min(torch_s)),
        "torch_tokens_per_s_median": tps(np.median(torch_s)),
        "speedup_best": min(torch_s) / min(jax_s),
        "speedup_median": float(np.median(torch_s) / np.median(jax_s)),
        "speedup_per_round": [t / j for t, j in zip(torch_s, jax_s)],
    })
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  app.run(main)
