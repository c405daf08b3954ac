"""Xwin-Math-13B recipe: SFT of LLaMA-2-13B, same data, epochs, schedule, batch and packed length
as the 7B config (configs/sft_llama2_7b.py), learning rate 2e-5.

Slice: TPU v5p-128 (topology v5p:4x4x4, 64 chips), pure FSDP over all chips (4 sequences of
2048 tokens per chip). `tools/aot_check.py --config=configs/sft_llama2_13b.py` compiles the train
step ahead of time for that topology and says whether it fits; the per-chip memory it measured
is in docs/benchmarks.md (from docs/results/aot.jsonl).
"""

from mathjax_sft.train.config import xwin_math_recipe


def get_config():
  c = xwin_math_recipe()
  c.init_checkpoint = "runs/llama2-13b"         # tools/convert_hf_to_flax.py of meta-llama/Llama-2-13b-hf
  c.model_preset = "llama2-13b"                 # its shape, for tools/aot_check.py before converting
  c.output_dir = "runs/sft_llama2_13b"
  c.learning_rate = 2e-5
  c.topology = "v5p:4x4x4"                      # TPU v5p-128: 64 chips
  c.mesh_shape = (1, -1, 1)                     # (data, fsdp, tensor): FSDP over all chips
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 3
  return c
