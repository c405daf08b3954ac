"""Reproduce the paper's phenomenon at small scale: Pass@N and PassRatio@N of the embedded
SmolLM2-135M-Instruct before SFT and after SFT on growing slices of GSM8K train, the figure
(Xwin-Math Figure 1 style) and accuracy by reasoning-step count. Resumable stage by stage.

  python tools/reproduce.py --output_dir=runs/reproduce
  python tools/reproduce.py --output_dir=runs/repro-smoke --sizes=64,256 --max_steps=20 \
      --num_problems=8 --num_samples=8 --max_new_tokens=160
"""

import dataclasses
import json

from absl import app, flags

from mathjax_sft import logs, reproduce

# every default comes from the config dataclass (one home per setting)
_D = {f.name: f.default for f in dataclasses.fields(reproduce.ReproduceConfig)
      if f.default is not dataclasses.MISSING}

_OUT = flags.DEFINE_string("output_dir", "runs/reproduce", "Folder for every stage's output.")
_BASE = flags.DEFINE_string("base_checkpoint", _D["base_checkpoint"], "Starting checkpoint dir.")
_TRAIN_CONFIG = flags.DEFINE_string("train_config", _D["train_config"],
                                    "SFT recipe (ml_collections config file).")
_SIZES = flags.DEFINE_list("sizes", [str(k) for k in _D["sizes"]], "SFT data sizes: first K rows of "
                           "GSM8K train.")
_EPOCHS = flags.DEFINE_integer("num_epochs", _D["num_epochs"], "Epochs for every size (the same for all).")
_MAX_STEPS = flags.DEFINE_integer("max_steps", _D["max_steps"], "> 0 caps every SFT run (smoke runs).")
_DATASET = flags.DEFINE_string("eval_dataset", _D["eval_dataset"], "Evaluation set (see tools/sample.py).")
_PROBLEMS = flags.DEFINE_integer("num_problems", _D["num_problems"], "First K evaluation problems.")
_N = flags.DEFINE_integer("num_samples", _D["num_samples"], "N samples per problem.")
_TEMP = flags.DEFINE_float("temperature", _D["temperature"], "Sampling temperature.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", _D["max_new_tokens"], "Token budget per sample.")
_DTYPE = flags.DEFINE_enum("sample_dtype", _D["sample_dtype"], ["float32", "bfloat16"],
                           "Weights/compute dtype while sampling.")
_ROWS = flags.DEFINE_integer("rows", _D["rows"], "Sampler decode rows (default: tools/sample.py's).")


def main(argv):
  del argv
  logs.quiet(logs.absl_verbose())
  rows = reproduce.run(reproduce.ReproduceConfig(
      output_dir=_OUT.value, base_checkpoint=_BASE.value, train_config=_TRAIN_CONFIG.value,
      sizes=tuple(int(s) for s in _SIZES.value), num_epochs=_EPOCHS.value,
      max_steps=_MAX_STEPS.value, eval_dataset=_DATASET.value, num_problems=_PROBLEMS.value,
      num_samples=_N.value, temperature=_TEMP.value, max_new_tokens=_MAX_NEW.value,
      sample_dtype=_DTYPE.value, rows=_ROWS.value))
  print(reproduce.table_markdown(rows))
  print(json.dumps(rows, indent=2))


if __name__ == "__main__":
  app.run(main)
