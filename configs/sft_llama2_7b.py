"""Xwin-Math-7B recipe: SFT of LLaMA-2-7B on GSM8K + MATH chain-of-thought data (real + synthetic).

Settings: full fine-tuning for 3 epochs with AdamW at learning rate 2e-5, linear warmup (3%) then
cosine decay, bf16 compute with f32 master weights -- as the paper (Li et al. 2024, "Common 7B
Language Models Already Possess Strong Math Capabilities") describes its SFT. The global batch of
256 sequences and the packed length of 2048 tokens are our reading of the recipe (common
LLaMA-2 SFT practice; GSM8K / MATH solutions are a few hundred tokens): check them against the
paper's appendix before a reproduction run.

Mesh for a TPU v4-64 slice (32 chips): pure FSDP over all chips. 7B in f32 master weights +
Adam = 16 bytes/param = 108 GB, 3.4 GB per chip; activations of 8 x 2048 tokens per chip with
remat fit in 32 GB HBM.
"""

from mathjax_sft.train.config import xwin_math_recipe


def get_config():
  c = xwin_math_recipe()
  c.init_checkpoint = "runs/llama2-7b"          # tools/convert_hf_to_flax.py of meta-llama/Llama-2-7b-hf
  c.output_dir = "runs/sft_llama2_7b"
  c.learning_rate = 2e-5
  c.mesh_shape = (1, -1, 1)                     # (data, fsdp, tensor): FSDP over all chips
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 3
  return c
