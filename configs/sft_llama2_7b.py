"""Xwin-Math-7B recipe: SFT of LLaMA-2-7B on GSM8K + MATH chain-of-thought data (real + synthetic).

Settings: full fine-tuning for 3 epochs with AdamW at learning rate 2e-5, linear warmup (3%) then
cosine decay, bf16 compute with f32 master weights -- as the paper (Li et al. 2024, "Common 7B
Language Models Already Possess Strong Math Capabilities") describes its SFT. The global batch of
256 sequences and the packed length of 2048 tokens are our reading of the recipe (common
LLaMA-2 SFT practice; GSM8K / MATH solutions are a few hundred tokens): check them against the
paper's appendix before a reproduction run.

Slice: TPU v5p-128 (topology v5p:4x4x4, 64 chips), pure FSDP over all chips (4 sequences of
2048 tokens per chip). Measured by `tools/aot_check.py --config=configs/sft_llama2_7b.py`
(ahead-of-time compile for that topology): per chip 1.18 GiB arguments (f32 weights + Adam
state, sharded) + 10.09 GiB temporaries = 11.3 GiB of 95 GiB HBM (88% free). On v4:4x4x4 (64
chips = 128 TensorCore devices of 16 GiB): 0.59 + 5.22 GiB per device (64% free). Sampling at
N = 256 (4 problems x 64 rows, 512 new tokens, bf16) on one v5p host (4 chips, tensor 4): 3.26
+ 17.31 GiB per chip; on a single chip: 13.05 + 67.19 GiB (16% free).
"""

from mathjax_sft.train.config import xwin_math_recipe


def get_config():
  c = xwin_math_recipe()
  c.init_checkpoint = "runs/llama2-7b"          # tools/convert_hf_to_flax.py of meta-llama/Llama-2-7b-hf
  c.model_preset = "llama2-7b"                  # its shape, for tools/aot_check.py before converting
  c.output_dir = "runs/sft_llama2_7b"
  c.learning_rate = 2e-5
  c.topology = "v5p:4x4x4"                      # TPU v5p-128: 64 chips
  c.mesh_shape = (1, -1, 1)                     # (data, fsdp, tensor): FSDP over all chips
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 3
  return c
