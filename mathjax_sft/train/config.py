"""The SFT run's config tree: `TrainConfig{model, data, optimizer, mesh, checkpoint, distributed}`.

Each field has one default and one doc, here. Config files under `configs/` return a tree
(`xwin_math_recipe()` or `TrainConfig()` with some paths replaced); `tools/train.py` loads one
and applies `--config.PATH=VALUE` overrides (flags generated from this tree, see
`mathjax_sft.cli`), then `mathjax_sft.train.loop.train` checks it once (`validate`).
"""

from __future__ import annotations

import dataclasses

from mathjax_sft import configtree, errors
from mathjax_sft.configtree import section, setting
from mathjax_sft.data import sources, templates, tokenize
from mathjax_sft.distributed import DistributedConfig
from mathjax_sft.model.config import DTYPES, PRESETS, REMAT_POLICIES
from mathjax_sft.train.optimizer import OptimizerConfig


@dataclasses.dataclass(frozen=True)
class ModelSettings:
  """Which model a run starts from and how its layers run."""
  init_checkpoint: str = setting("", "Converted checkpoint dir (config.json + params/ + "
                                 "tokenizer) to fine-tune.")
  preset: str = setting("", "Random init from this preset when init_checkpoint is empty (tests, "
                        "ahead-of-time checks). One of: " + ", ".join(PRESETS) + ".")
  vocab_size: int = setting(0, "With preset: override the preset's vocabulary size (0 = keep).")
  tokenizer: str = setting("", "Tokenizer dir or .gguf; empty = init_checkpoint's.")
  param_dtype: str = setting("float32", "Master weights (and optimizer state).", choices=DTYPES)
  compute_dtype: str = setting("float32", "bfloat16: bf16 matmuls with f32 accumulation.",
                               choices=DTYPES)
  scan_layers: bool = setting(True, "lax.scan over the layers (one compiled layer) instead of "
                              "an unrolled loop.")
  remat: bool = setting(False, "Rematerialise each layer in the backward pass. On XLA:CPU this "
                        "saves memory only with scan_layers; on TPU/GPU either way.")
  remat_policy: str = setting("full", "With remat: full = save nothing, dots = save matmul "
                              "outputs.", choices=REMAT_POLICIES)


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """The training rows, how they become sequences, and the held-out rows."""
  train_files: str = setting("", "Comma-separated: path[@weight], data:REL[@weight] (under "
                             "$MATHJAX_DATA_DIR), tfds:NAME[:SPLIT].")
  prompt_fields: str = setting(",".join(sources.DEFAULT_PROMPT_FIELDS), "Row fields tried in "
                               "order for the prompt (comma-separated).")
  response_fields: str = setting(",".join(sources.DEFAULT_RESPONSE_FIELDS), "Row fields tried "
                                 "in order for the response (comma-separated).")
  template: str = setting("alpaca", "Prompt format the rows are rendered in.",
                          choices=templates.TEMPLATES)
  system_prompt: str = setting("<default>", "Chat template only: the system turn; <default> "
                               "keeps the template's own.")
  seq_len: int = setting(2048, "Tokens per training sequence (packed rows, or one padded row "
                         "each).")
  packing: bool = setting(True, "Pack several rows per sequence (else one padded row each).")
  packing_bins: int = setting(0, "First-fit bins per packing round (0 = batch_size).")
  long_rows: str = setting("truncate", "Rows longer than seq_len (both counted).",
                           choices=tokenize.LONG_ROW_POLICIES)
  on_bad_row: str = setting("error", "A malformed row, missing field or empty text: error "
                            "(naming file:line) or skip.", choices=sources.BAD_ROW_POLICIES)
  tfds_data_dir: str = setting("", "tensorflow-datasets data_dir for tfds: train files.")
  tfds_download: bool = setting(False, "Let tensorflow-datasets download a tfds: dataset "
                                "(needs the network).")
  eval_files: str = setting("", "Held-out rows for the eval loss (same syntax as train_files).")
  eval_fraction: float = setting(0.0, "Or: this fraction of the train rows held out (seeded).")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """The device mesh, and the TPU slice the run is sized for."""
  shape: tuple[int, ...] = setting((1, -1, 1), "(data, fsdp, tensor) sizes; -1 = the rest of "
                                   "the devices.")
  topology: str = setting("", "The TPU slice this config is sized for (e.g. v5p:4x4x4): "
                          "tools/aot_check.py compiles it there and checks it fits.")
  num_devices: int = setting(0, "Use the first N devices (single process only); 0 = all.")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """Checkpoints during the run and the model written at its end."""
  every_steps: int = setting(500, "Save an orbax checkpoint every this many steps (and at the "
                             "end, or on SIGTERM).")
  keep: int = setting(3, "Checkpoints kept on disk (older ones are deleted).")
  async_save: bool = setting(True, "Write checkpoints in the background while training goes on.")
  export_final: bool = setting(True, "Write output_dir/final, a model checkpoint dir "
                               "(tools/sample.py and tools/convert_flax_to_hf.py read it).")
  export_hf: bool = setting(False, "With export_final: also output_dir/final_hf, an HF "
                            "directory (safetensors) for transformers / vLLM (one process "
                            "only; a multi-host run logs the tools/convert_flax_to_hf.py "
                            "command).")
  export_hf_shard_gib: float = setting(5.0, "Safetensors shard size of that export, GiB.")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """One SFT run (`mathjax_sft.train.loop.train`)."""
  output_dir: str = setting("", "Run directory: checkpoints/, model_files/, final/, "
                            "metrics.jsonl, tb/. A run whose output_dir holds a checkpoint "
                            "resumes from it.")
  max_steps: int = setting(1000, "Optimizer steps; <= 0: num_epochs over the data (counted "
                           "after packing).")
  num_epochs: int = setting(0, "Epochs, with max_steps <= 0.")
  batch_size: int = setting(64, "Global sequences per optimizer step.")
  grad_accum_steps: int = setting(1, "Microbatches per step (must divide batch_size).")
  seed: int = setting(0, "Seed of the parameter init (with model.preset), the shuffling and "
                      "the holdout.")
  eval_every_steps: int = setting(0, "Steps between two eval-loss passes (0 = none).")
  eval_batches: int = setting(0, "Batches per eval pass (0 = the whole held-out split).")
  log_every_steps: int = setting(10, "Steps between two metrics lines (metrics.jsonl, "
                                 "TensorBoard, log).")
  peak_flops_per_device: float = setting(0.0, "MFU denominator, FLOP/s; 0 = the device's "
                                         "known peak, else a measured matmul peak.")
  progress_bar: bool = setting(True, "Show a progress bar.")
  compilation_cache_dir: str = setting("", "Persistent XLA compilation cache directory "
                                       "(empty = off).")
  model: ModelSettings = section(ModelSettings, "Which model and how its layers run.")
  data: DataConfig = section(DataConfig, "Training and held-out rows.")
  optimizer: OptimizerConfig = section(OptimizerConfig, "AdamW and its learning-rate schedule.")
  mesh: MeshConfig = section(MeshConfig, "Device mesh.")
  checkpoint: CheckpointConfig = section(CheckpointConfig, "Checkpoints and the final export.")
  distributed: DistributedConfig = section(DistributedConfig, "Multi-host start-up.")

  def replace(self, updates: dict) -> "TrainConfig":
    """A copy with dotted paths set: `c.replace({"optimizer.learning_rate": 1e-5})`."""
    return configtree.replace_paths(self, updates)


def xwin_math_recipe() -> TrainConfig:
  """The Xwin-Math SFT recipe shared by the LLaMA-2 configs (configs/sft_llama2_*.py), which add
  the model, learning rate, mesh and checkpoint cadence: GSM8K + MATH chain-of-thought rows, real
  and synthesized, Xwin-Math's own prompt format (template "xwin"), 3 epochs, 3% linear warmup
  then cosine decay, bf16 compute with f32 master weights, scan + remat. The global batch
  (256 x 2048 packed tokens) is our reading of the recipe: check it against the paper's appendix
  before a reproduction run."""
  return TrainConfig().replace({
      # real GSM8K + MATH train, and the synthesized rows (tools/synthesize.py --output_dir=...)
      "data.train_files": "data:gsm8k/train.jsonl,data:math/train.jsonl,"
                          "runs/synth_gsm8k/rows.jsonl,runs/synth_math/rows.jsonl",
      "data.template": "xwin",               # the paper's format (Xwin-Math eval/prompt/xwin-math.json)
      "data.seq_len": 2048,
      "batch_size": 256,
      "max_steps": 0,                        # 0: num_epochs over the packed data
      "num_epochs": 3,
      "optimizer.warmup_ratio": 0.03,
      "optimizer.min_lr_ratio": 0.0,
      "optimizer.weight_decay": 0.0,
      "optimizer.max_grad_norm": 1.0,
      "model.param_dtype": "float32",
      "model.compute_dtype": "bfloat16",
      "model.scan_layers": True,
      "model.remat": True,
      "checkpoint.export_hf": True,          # final_hf/: safetensors for transformers / vLLM
      "data.eval_fraction": 0.002,
      "eval_every_steps": 500,
      "compilation_cache_dir": "runs/jax_cache",
  })


def _check(cond: bool, msg: str) -> None:
  if not cond:
    raise errors.BadInput(f"invalid config: {msg}")


def validate(c: TrainConfig) -> None:
  """Checks the fields' relations once at start (each field's own values are checked by its
  type and choices); raises ValueError naming the field."""
  m, d, o, k = c.model, c.data, c.optimizer, c.checkpoint
  _check(isinstance(c, TrainConfig), f"expected a TrainConfig, got {type(c).__name__}")
  _check(bool(m.init_checkpoint) or bool(m.preset),
         "set model.init_checkpoint (a converted checkpoint dir) or model.preset")
  _check(not m.preset or m.preset in PRESETS, f"model.preset={m.preset!r}; known: {sorted(PRESETS)}")
  _check(bool(m.tokenizer) or bool(m.init_checkpoint),
         "set model.tokenizer (no model.init_checkpoint to take it from)")
  for name, value, allowed in (("model.param_dtype", m.param_dtype, DTYPES),
                               ("model.compute_dtype", m.compute_dtype, DTYPES),
                               ("model.remat_policy", m.remat_policy, REMAT_POLICIES),
                               ("data.template", d.template, templates.TEMPLATES),
                               ("data.long_rows", d.long_rows, tokenize.LONG_ROW_POLICIES),
                               ("data.on_bad_row", d.on_bad_row, sources.BAD_ROW_POLICIES),
                               ("distributed.mode", c.distributed.mode, ("auto", "yes", "no"))):
    _check(value in allowed, f"{name}={value!r}; expected one of {allowed}")
  _check(bool(d.train_files.strip()), "data.train_files is empty")
  _check(bool(c.output_dir), "output_dir is empty")
  _check(d.seq_len >= 2, "data.seq_len must be >= 2")
  _check(c.batch_size > 0, "batch_size must be positive")
  _check(c.grad_accum_steps > 0 and c.batch_size % c.grad_accum_steps == 0,
         f"grad_accum_steps={c.grad_accum_steps} must divide batch_size={c.batch_size}")
  _check(c.max_steps > 0 or c.num_epochs > 0, "set max_steps > 0 or num_epochs > 0")
  _check(o.learning_rate > 0, "optimizer.learning_rate must be positive")
  _check(0 <= o.warmup_ratio < 1, "optimizer.warmup_ratio must be in [0, 1)")
  _check(0 <= o.min_lr_ratio <= 1, "optimizer.min_lr_ratio must be in [0, 1]")
  _check(o.max_grad_norm >= 0 and o.weight_decay >= 0,
         "optimizer.max_grad_norm, optimizer.weight_decay must be >= 0")
  _check(k.every_steps > 0, "checkpoint.every_steps must be positive")
  _check(k.keep > 0, "checkpoint.keep must be positive")
  _check(c.log_every_steps > 0, "log_every_steps must be positive")
  _check(0 <= d.eval_fraction < 1, "data.eval_fraction must be in [0, 1)")
  _check(not (d.eval_files and d.eval_fraction), "set data.eval_files or data.eval_fraction, not both")
  _check(len(c.mesh.shape) == 3, "mesh.shape must be (data, fsdp, tensor)")
  _check(c.mesh.num_devices >= 0, "mesh.num_devices must be >= 0")
  _check(c.peak_flops_per_device >= 0, "peak_flops_per_device must be >= 0")
  _check(k.export_hf_shard_gib > 0, "checkpoint.export_hf_shard_gib must be positive")
  _check(k.export_final or not k.export_hf, "checkpoint.export_hf needs checkpoint.export_final")
