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

from mathjax_sft.train.config import default_config


def get_config():
  c = default_config()
  c.init_checkpoint = "runs/llama2-7b"          # tools/convert_hf_to_flax.py of meta-llama/Llama-2-7b-hf
  # real GSM8K + MATH train, and the synthesized rows (tools/synthesize.py --output_dir=...)
  c.train_files = ("data:gsm8k/train.jsonl,data:math/train.jsonl,"
                   "runs/synth_gsm8k/rows.jsonl,runs/synth_math/rows.jsonl")
  c.output_dir = "runs/sft_llama2_7b"
  c.export_hf = True                # final_hf/: safetensors for transformers / vLLM evaluation
  c.template = "alpaca"
  c.seq_len = 2048
  c.batch_size = 256
  c.grad_accum_steps = 1
  c.max_steps = 0                               # 0: num_epochs over the packed data
  c.num_epochs = 3
  c.learning_rate = 2e-5
  c.warmup_ratio = 0.03
  c.min_lr_ratio = 0.0
  c.weight_decay = 0.0
  c.max_grad_norm = 1.0
  c.param_dtype = "float32"
  c.compute_dtype = "bfloat16"
  c.scan_layers = True
  c.remat = True
  c.mesh_shape = (1, -1, 1)                     # (data, fsdp, tensor): FSDP over all chips
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 3
  c.log_every_steps = 10
  c.eval_fraction = 0.002
  c.eval_every_steps = 500
  c.compilation_cache_dir = "runs/jax_cache"
  c.seed = 0
  return c
