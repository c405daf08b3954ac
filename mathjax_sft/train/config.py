"""The SFT run config: every field with its default, and one validation pass at start.

Config files under `configs/` call `default_config()` and override fields; `tools/train.py`
loads one with `config_flags` (so any field can be set from the command line) and hands it to
`mathjax_sft.train.loop.train`, which calls `validate` once and locks the config.
"""

from __future__ import annotations

import ml_collections

from mathjax_sft.data import sources, templates, tokenize
from mathjax_sft.model.config import DTYPES, PRESETS

REQUIRED_FIELDS = ("init_checkpoint", "train_files", "output_dir", "max_steps", "batch_size",
                   "seq_len", "learning_rate", "checkpoint_every_steps", "seed")


def field_docs() -> dict[str, str]:
  """Every config field -> its default and its comment in `default_config` (for --help)."""
  import inspect  # pylint: disable=import-outside-toplevel
  import re  # pylint: disable=import-outside-toplevel
  docs: dict[str, str] = {}
  last = None
  for line in inspect.getsource(default_config).splitlines():
    m = re.match(r"\s*c\.(\w+) = (.*?)(?:\s+#\s*(.*))?$", line)
    if m:
      last = m.group(1)
      docs[last] = f"(default {m.group(2).strip()}) {m.group(3) or ''}".strip()
      continue
    m = re.match(r"\s*#\s*(.*)$", line)
    if m and last is not None and not m.group(1).startswith("----"):
      docs[last] += " " + m.group(1)
    elif m:
      last = None
  return docs


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # ---- model ----
  c.init_checkpoint = ""        # converted checkpoint dir (config.json + params/ + tokenizer)
  c.model_preset = ""           # random init from a preset when init_checkpoint is "" (tests)
  c.vocab_size = 0              # with model_preset: override the preset's vocab (0 = keep)
  c.tokenizer = ""              # tokenizer dir or .gguf; "" = init_checkpoint
  c.param_dtype = "float32"     # master weights (and optimizer state)
  c.compute_dtype = "float32"   # "bfloat16": bf16 matmuls with f32 accumulation
  c.scan_layers = True          # lax.scan over layers (compile time) vs unrolled loop
  c.remat = False               # rematerialise each layer in the backward pass. On XLA:CPU this
                                # saves memory only with scan_layers (its scheduler runs an
                                # unrolled model's recomputation early); TPU/GPU either way.
  c.remat_policy = "full"       # with remat: "full" (save nothing) | "dots" (save matmul outputs)
  # ---- data ----
  c.train_files = ""            # comma-separated: path[@weight], data:REL[@w], tfds:NAME[:SPLIT]
  c.prompt_fields = ",".join(sources.DEFAULT_PROMPT_FIELDS)
  c.response_fields = ",".join(sources.DEFAULT_RESPONSE_FIELDS)
  c.template = "alpaca"         # one of data.templates.TEMPLATES
  c.system_prompt = "<default>"  # chat template only: "<default>" keeps the template's own
  c.seq_len = 2048
  c.packing = True              # pack several rows per sequence (else one padded row each)
  c.packing_bins = 0            # first-fit bins per packing round (0 = batch_size)
  c.long_rows = "truncate"      # rows longer than seq_len: "truncate" | "drop" (both counted)
  c.on_bad_row = "error"        # malformed / missing field / empty: "error" (file:line) | "skip"
  c.tfds_data_dir = ""
  c.tfds_download = False
  c.eval_files = ""             # held-out rows (same syntax as train_files), or:
  c.eval_fraction = 0.0         # fraction of the train rows held out (seeded) for eval loss
  c.eval_every_steps = 0        # 0 = no periodic eval
  c.eval_batches = 0            # 0 = the whole eval split
  # ---- optimisation ----
  c.max_steps = 1000            # <= 0: num_epochs over the data (counted after packing)
  c.num_epochs = 0              # with max_steps <= 0
  c.batch_size = 64             # global sequences per optimizer step
  c.grad_accum_steps = 1        # microbatches per step (batch_size must divide)
  c.learning_rate = 2e-5
  c.warmup_steps = -1           # -1: warmup_ratio * max_steps
  c.warmup_ratio = 0.03
  c.min_lr_ratio = 0.0          # cosine decays to learning_rate * min_lr_ratio
  c.weight_decay = 0.0
  c.adam_b1 = 0.9
  c.adam_b2 = 0.999
  c.adam_eps = 1e-8
  c.max_grad_norm = 1.0         # 0 = no clipping
  c.seed = 0
  # ---- mesh ----
  c.mesh_shape = (1, -1, 1)     # (data, fsdp, tensor); -1 = the rest of the devices
  c.topology = ""               # the TPU slice this config is sized for (e.g. "v5p:4x4x4"):
                                # tools/aot_check.py compiles it there and checks it fits
  c.num_devices = 0             # use the first N devices (single process only); 0 = all
  c.coordinator_address = ""    # multi-host: "host:port" (else auto-detected by jax, if any)
  c.num_processes = 0
  c.process_id = -1
  c.distributed = "auto"        # "auto": initialise when a cluster is detected | "yes" | "no"
  # ---- checkpoints, logs ----
  c.output_dir = ""
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 3
  c.async_checkpointing = True
  c.export_final = True         # write output_dir/final as a model checkpoint dir (for export)
  c.export_hf = False           # with export_final: also output_dir/final_hf, an HF directory
                                # (safetensors) that transformers / vLLM load (one process only;
                                # a multi-host run logs the tools/convert_flax_to_hf.py command)
  c.export_hf_shard_gib = 5.0   # safetensors shard size of that export
  c.log_every_steps = 10
  c.peak_flops_per_device = 0.0  # MFU denominator; 0 = measure a matmul peak at start
  c.progress_bar = True
  c.compilation_cache_dir = ""
  return c


def xwin_math_recipe() -> ml_collections.ConfigDict:
  """The Xwin-Math SFT recipe shared by the LLaMA-2 configs (configs/sft_llama2_*.py), which add
  the model, learning rate, mesh and checkpoint cadence: GSM8K + MATH chain-of-thought rows, real
  and synthesized, Xwin-Math's own prompt format (template "xwin"), 3 epochs, 3% linear warmup then cosine decay, bf16 compute
  with f32 master weights, scan + remat. The global batch (256 x 2048 packed tokens) is our
  reading of the recipe: check it against the paper's appendix before a reproduction run."""
  c = default_config()
  # real GSM8K + MATH train, and the synthesized rows (tools/synthesize.py --output_dir=...)
  c.train_files = ("data:gsm8k/train.jsonl,data:math/train.jsonl,"
                   "runs/synth_gsm8k/rows.jsonl,runs/synth_math/rows.jsonl")
  c.export_hf = True            # final_hf/: safetensors for transformers / vLLM evaluation
  c.template = "xwin"           # the paper's format (Xwin-Math eval/prompt/xwin-math.json)
  c.seq_len = 2048
  c.batch_size = 256
  c.grad_accum_steps = 1
  c.max_steps = 0               # 0: num_epochs over the packed data
  c.num_epochs = 3
  c.warmup_ratio = 0.03
  c.min_lr_ratio = 0.0
  c.weight_decay = 0.0
  c.max_grad_norm = 1.0
  c.param_dtype = "float32"
  c.compute_dtype = "bfloat16"
  c.scan_layers = True
  c.remat = True
  c.log_every_steps = 10
  c.eval_fraction = 0.002
  c.eval_every_steps = 500
  c.compilation_cache_dir = "runs/jax_cache"
  c.seed = 0
  return c


def _check(cond: bool, msg: str) -> None:
  if not cond:
    raise ValueError(f"invalid config: {msg}")


def validate(c: ml_collections.ConfigDict) -> None:
  """Checks every field once at start; raises ValueError naming the field."""
  for name in REQUIRED_FIELDS:
    _check(name in c, f"missing field {name!r}")
  _check(bool(c.init_checkpoint) or bool(c.model_preset),
         "set init_checkpoint (a converted checkpoint dir) or model_preset")
  _check(not c.model_preset or c.model_preset in PRESETS,
         f"model_preset={c.model_preset!r}; known: {sorted(PRESETS)}")
  _check(bool(c.tokenizer) or bool(c.init_checkpoint), "set tokenizer (no init_checkpoint to take it from)")
  _check(c.param_dtype in DTYPES and c.compute_dtype in DTYPES,
         f"param_dtype/compute_dtype must be in {DTYPES}")
  _check(bool(c.train_files.strip()), "train_files is empty")
  _check(bool(c.output_dir), "output_dir is empty")
  templates.check_template(c.template)
  _check(c.long_rows in tokenize.LONG_ROW_POLICIES, f"long_rows must be in {tokenize.LONG_ROW_POLICIES}")
  _check(c.on_bad_row in sources.BAD_ROW_POLICIES, f"on_bad_row must be in {sources.BAD_ROW_POLICIES}")
  _check(c.seq_len >= 2, "seq_len must be >= 2")
  _check(c.batch_size > 0, "batch_size must be positive")
  _check(c.grad_accum_steps > 0 and c.batch_size % c.grad_accum_steps == 0,
         f"grad_accum_steps={c.grad_accum_steps} must divide batch_size={c.batch_size}")
  _check(c.max_steps > 0 or c.num_epochs > 0, "set max_steps > 0 or num_epochs > 0")
  _check(c.learning_rate > 0, "learning_rate must be positive")
  _check(0 <= c.warmup_ratio < 1, "warmup_ratio must be in [0, 1)")
  _check(0 <= c.min_lr_ratio <= 1, "min_lr_ratio must be in [0, 1]")
  _check(c.max_grad_norm >= 0 and c.weight_decay >= 0, "max_grad_norm, weight_decay must be >= 0")
  _check(c.checkpoint_every_steps > 0, "checkpoint_every_steps must be positive")
  _check(c.keep_checkpoints > 0, "keep_checkpoints must be positive")
  _check(c.log_every_steps > 0, "log_every_steps must be positive")
  _check(0 <= c.eval_fraction < 1, "eval_fraction must be in [0, 1)")
  _check(not (c.eval_files and c.eval_fraction), "set eval_files or eval_fraction, not both")
  _check(len(tuple(c.mesh_shape)) == 3, "mesh_shape must be (data, fsdp, tensor)")
  _check(c.num_devices >= 0, "num_devices must be >= 0")
  _check(c.distributed in ("auto", "yes", "no"), "distributed must be auto | yes | no")
  _check(c.peak_flops_per_device >= 0, "peak_flops_per_device must be >= 0")
  _check(c.export_hf_shard_gib > 0, "export_hf_shard_gib must be positive")
  _check(c.export_final or not c.export_hf, "export_hf needs export_final")
