"""SFT of the embedded default, SmolLM2-135M-Instruct, on GSM8K train, sized for a 2-core CPU.

  .venv/bin/python tools/convert_hf_to_flax.py --gguf=embedded --output_dir=runs/smollm2-135m
  .venv/bin/python tools/train.py --config=configs/sft_smollm2_135m.py --config.max_steps=200

One epoch of GSM8K train is ~7.4K rows, ~1.4M tokens: about 700 packed steps of 4 x 512.
"""

from mathjax_sft.paths import EMBEDDED_CHECKPOINT
from mathjax_sft.train.config import TrainConfig


def get_config():
  return TrainConfig().replace({
      "model.init_checkpoint": EMBEDDED_CHECKPOINT,       # make convert
      "data.train_files": "data:gsm8k/train.jsonl",  # ../shared/data unless $MATHJAX_DATA_DIR is set
      "output_dir": "runs/sft_smollm2_135m",
      "data.template": "chat",                      # the instruct model's own chat template
      "data.seq_len": 512,
      "batch_size": 4,
      "grad_accum_steps": 1,
      "max_steps": 0,                               # 0: num_epochs over the data
      "num_epochs": 3,
      "optimizer.learning_rate": 5e-5,
      "optimizer.warmup_ratio": 0.03,
      "optimizer.weight_decay": 0.0,
      "model.param_dtype": "float32",               # f32 master weights and Adam state
      "model.compute_dtype": "bfloat16",            # bf16 matmuls, f32 accumulation
      "model.scan_layers": True,                    # scan + remat: far less memory than unrolled
      "model.remat": True,                          # layers, and no slower on CPU
      "model.remat_policy": "dots",                 # keep matmul outputs, recompute attention
      "mesh.shape": (1, -1, 1),
      "checkpoint.every_steps": 100,
      "checkpoint.keep": 2,
      "log_every_steps": 1,
      "data.eval_fraction": 0.0,
      "seed": 0,
  })
