"""Xwin-Math-7B recipe: SFT of LLaMA-2-7B on GSM8K + MATH chain-of-thought data (real + synthetic).

Settings: full fine-tuning for 3 epochs with AdamW at learning rate 2e-5, linear warmup (3%) then
cosine decay, bf16 compute with f32 master weights -- as the paper (Li et al. 2024, "Common 7B
Language Models Already Possess Strong Math Capabilities") describes its SFT. The global batch of
256 sequences and the packed length of 2048 tokens are our reading of the recipe (common
LLaMA-2 SFT practice; GSM8K / MATH solutions are a few hundred tokens): check them against the
paper's appendix before a reproduction run.

Slice: TPU v5p-128 (topology v5p:4x4x4, 64 chips), pure FSDP over all chips (4 sequences of
2048 tokens per chip). `tools/aot_check.py --config=configs/sft_llama2_7b.py` compiles the train
step (and the sampler's programs at N = 256) ahead of time for that topology and says whether
they fit; `--topology=v4:4x4x4` checks a v4 slice. The per-chip memory it measured (train step on
v5p and v4, sampling on one v5p host and on one chip) is in docs/benchmarks.md (from
docs/results/aot.jsonl).
"""

from mathjax_sft.train.config import xwin_math_recipe


def get_config():
  return xwin_math_recipe().replace({
      "model.init_checkpoint": "runs/llama2-7b",    # meta-llama/Llama-2-7b-hf, converted
      "model.preset": "llama2-7b",                  # its shape, for tools/aot_check.py before converting
      "output_dir": "runs/sft_llama2_7b",
      "optimizer.learning_rate": 2e-5,
      "mesh.topology": "v5p:4x4x4",                 # TPU v5p-128: 64 chips
      "mesh.shape": (1, -1, 1),                     # (data, fsdp, tensor): FSDP over all chips
      "checkpoint.every_steps": 500,
      "checkpoint.keep": 3,
  })
