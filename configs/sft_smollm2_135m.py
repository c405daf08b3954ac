"""SFT of the embedded default, SmolLM2-135M-Instruct, on GSM8K train, sized for a 2-core CPU.

  .venv/bin/python tools/convert_hf_to_flax.py --gguf=embedded --output_dir=runs/smollm2-135m
  .venv/bin/python tools/train.py --config=configs/sft_smollm2_135m.py --config.max_steps=200

One epoch of GSM8K train is ~7.4K rows, ~1.4M tokens: about 700 packed steps of 4 x 512.
"""

from mathjax_sft.train.config import default_config


def get_config():
  c = default_config()
  c.init_checkpoint = "runs/smollm2-135m"
  c.train_files = "data:gsm8k/train.jsonl"     # ../shared/data unless $MATHJAX_DATA_DIR is set
  c.output_dir = "runs/sft_smollm2_135m"
  c.template = "chat"                           # the instruct model's own chat template
  c.seq_len = 512
  c.batch_size = 4
  c.grad_accum_steps = 1
  c.max_steps = 0                               # 0: num_epochs over the data
  c.num_epochs = 3
  c.learning_rate = 5e-5
  c.warmup_ratio = 0.03
  c.weight_decay = 0.0
  c.param_dtype = "float32"                     # f32 master weights and Adam state
  c.compute_dtype = "bfloat16"                  # bf16 matmuls, f32 accumulation
  c.scan_layers = True                          # with remat: far less memory than unrolled
  c.remat = True                                # layers without remat, and no slower on CPU
  c.remat_policy = "dots"                       # keep matmul outputs, recompute attention
  c.mesh_shape = (1, -1, 1)
  c.checkpoint_every_steps = 100
  c.keep_checkpoints = 2
  c.log_every_steps = 1
  c.eval_fraction = 0.0
  c.seed = 0
  return c
