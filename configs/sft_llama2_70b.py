"""Xwin-Math-70B recipe: SFT of LLaMA-2-70B, same data, epochs and schedule as the 7B config, with
a lower learning rate (1e-5) for the larger model; batch and packed length as in the 7B config
(our reading of the recipe -- check against the paper's appendix before a reproduction run).

Mesh for a TPU v4-256 / v5p-256 slice (128 chips): tensor parallel 8 (the 8 KV heads and 64
query heads divide it) x FSDP 16. 70B in f32 master weights + Adam = 16 bytes/param = 1.1 TB,
8.8 GB per chip; activations with remat: 256 x 2048 tokens over 16 FSDP groups = 16 sequences
per group, split in 2 microbatches.
"""

from mathjax_sft.train.config import default_config


def get_config():
  c = default_config()
  c.init_checkpoint = "runs/llama2-70b"         # tools/convert_hf_to_flax.py of meta-llama/Llama-2-70b-hf
  # real GSM8K + MATH train, and the synthesized rows (tools/synthesize.py --output_dir=...)
  c.train_files = ("data:gsm8k/train.jsonl,data:math/train.jsonl,"
                   "runs/synth_gsm8k/rows.jsonl,runs/synth_math/rows.jsonl")
  c.output_dir = "runs/sft_llama2_70b"
  c.export_hf = True                # final_hf/: safetensors for transformers / vLLM evaluation
  c.template = "alpaca"
  c.seq_len = 2048
  c.batch_size = 256
  c.grad_accum_steps = 2
  c.max_steps = 0
  c.num_epochs = 3
  c.learning_rate = 1e-5
  c.warmup_ratio = 0.03
  c.min_lr_ratio = 0.0
  c.weight_decay = 0.0
  c.max_grad_norm = 1.0
  c.param_dtype = "float32"
  c.compute_dtype = "bfloat16"
  c.scan_layers = True
  c.remat = True
  c.mesh_shape = (1, -1, 8)                     # (data, fsdp, tensor)
  c.checkpoint_every_steps = 200
  c.keep_checkpoints = 2
  c.log_every_steps = 10
  c.eval_fraction = 0.002
  c.eval_every_steps = 500
  c.compilation_cache_dir = "runs/jax_cache"
  c.seed = 0
  return c
