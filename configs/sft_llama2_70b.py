"""Xwin-Math-70B recipe: SFT of LLaMA-2-70B, same data, epochs and schedule as the 7B config, with
a lower learning rate (1e-5) for the larger model; batch and packed length as in the 7B config
(our reading of the recipe -- check against the paper's appendix before a reproduction run).

Mesh for a TPU v4-256 / v5p-256 slice (128 chips): tensor parallel 8 (the 8 KV heads and 64
query heads divide it) x FSDP 16. 70B in f32 master weights + Adam = 16 bytes/param = 1.1 TB,
8.8 GB per chip; activations with remat: 256 x 2048 tokens over 16 FSDP groups = 16 sequences
per group, split in 2 microbatches.
"""

from mathjax_sft.train.config import xwin_math_recipe


def get_config():
  c = xwin_math_recipe()
  c.init_checkpoint = "runs/llama2-70b"         # tools/convert_hf_to_flax.py of meta-llama/Llama-2-70b-hf
  c.output_dir = "runs/sft_llama2_70b"
  c.learning_rate = 1e-5
  c.grad_accum_steps = 2
  c.mesh_shape = (1, -1, 8)                     # (data, fsdp, tensor)
  c.checkpoint_every_steps = 200
  c.keep_checkpoints = 2
  return c
