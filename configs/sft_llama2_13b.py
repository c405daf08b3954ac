"""Xwin-Math-13B recipe: SFT of LLaMA-2-13B, same data, epochs, schedule, batch and packed length
as the 7B config (configs/sft_llama2_7b.py), learning rate 2e-5.

Slice: TPU v5p-128 (topology v5p:4x4x4, 64 chips), pure FSDP over all chips (4 sequences of
2048 tokens per chip). `tools/aot_check.py --config=configs/sft_llama2_13b.py` compiles the train
step ahead of time for that topology and says whether it fits; the per-chip memory it measured
is in docs/benchmarks.md (from docs/results/aot.jsonl).
"""

from mathjax_sft.train.config import xwin_math_recipe


def get_config():
  return xwin_math_recipe().replace({
      "model.init_checkpoint": "runs/llama2-13b",   # meta-llama/Llama-2-13b-hf, converted
      "model.preset": "llama2-13b",                 # its shape, for tools/aot_check.py before converting
      "output_dir": "runs/sft_llama2_13b",
      "optimizer.learning_rate": 2e-5,
      "mesh.topology": "v5p:4x4x4",                 # TPU v5p-128: 64 chips
      "mesh.shape": (1, -1, 1),                     # (data, fsdp, tensor): FSDP over all chips
      "checkpoint.every_steps": 500,
      "checkpoint.keep": 3,
  })
