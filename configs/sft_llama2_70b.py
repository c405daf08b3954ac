"""Xwin-Math-70B recipe: SFT of LLaMA-2-70B, same data, epochs and schedule as the 7B config, with
a lower learning rate (1e-5) for the larger model; batch and packed length as in the 7B config
(our reading of the recipe -- check against the paper's appendix before a reproduction run).

Slice: TPU v5p-256 (topology v5p:4x4x8, 128 chips): tensor parallel 8 (the 8 KV heads and 64
query heads divide it) x FSDP 16; the 256 x 2048 batch in 2 microbatches.
`tools/aot_check.py --config=configs/sft_llama2_70b.py` compiles the train step (and the
sampler's programs at N = 256 on one host's 4 chips) ahead of time for that topology and says
whether they fit; the per-chip memory it measured, with and without accumulation, is in
docs/benchmarks.md (from docs/results/aot.jsonl).
"""

from mathjax_sft.train.config import xwin_math_recipe


def get_config():
  return xwin_math_recipe().replace({
      "model.init_checkpoint": "runs/llama2-70b",   # meta-llama/Llama-2-70b-hf, converted
      "model.preset": "llama2-70b",                 # its shape, for tools/aot_check.py before converting
      "output_dir": "runs/sft_llama2_70b",
      "optimizer.learning_rate": 1e-5,
      "grad_accum_steps": 2,
      "mesh.topology": "v5p:4x4x8",                 # TPU v5p-256: 128 chips
      "mesh.shape": (1, -1, 8),                     # (data, fsdp, tensor)
      "checkpoint.every_steps": 200,
      "checkpoint.keep": 2,
  })
