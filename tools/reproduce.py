"""Reproduce the paper's phenomenon at small scale: Pass@N and PassRatio@N of the embedded
SmolLM2-135M-Instruct before SFT and after SFT on growing slices of GSM8K train, the figure
(Xwin-Math Figure 1 style) and accuracy by reasoning-step count. Resumable stage by stage.

  python tools/reproduce.py --output_dir=runs/reproduce
  python tools/reproduce.py --output_dir=runs/repro-smoke --sizes=64,256 --max_steps=20 \
      --num_problems=8 --num_samples=8 --max_new_tokens=160
"""

import json
import logging

from absl import app, flags

from mathjax_sft import reproduce

_OUT = flags.DEFINE_string("output_dir", "runs/reproduce", "Folder for every stage's output.")
_BASE = flags.DEFINE_string("base_checkpoint", "runs/smollm2-135m", "Starting checkpoint dir.")
_TRAIN_CONFIG = flags.DEFINE_string("train_config", "configs/sft_smollm2_135m.py",
                                    "SFT recipe (ml_collections config file).")
_SIZES = flags.DEFINE_list("sizes", ["1000", "3000", "7473"], "SFT data sizes: first K rows of "
                           "GSM8K train.")
_EPOCHS = flags.DEFINE_integer("num_epochs", 3, "Epochs for every size (the same for all).")
_MAX_STEPS = flags.DEFINE_integer("max_steps", 0, "> 0 caps every SFT run (smoke runs).")
_DATASET = flags.DEFINE_string("eval_dataset", "gsm8k", "Evaluation set (see tools/sample.py).")
_PROBLEMS = flags.DEFINE_integer("num_problems", 100, "First K evaluation problems.")
_N = flags.DEFINE_integer("num_samples", 64, "N samples per problem.")
_TEMP = flags.DEFINE_float("temperature", 0.7, "Sampling temperature.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 320, "Token budget per sample.")
_DTYPE = flags.DEFINE_enum("sample_dtype", "bfloat16", ["float32", "bfloat16"],
                           "Weights/compute dtype while sampling.")
_PPB = flags.DEFINE_integer("problems_per_batch", 2, "Problems decoded together.")
_SPP = flags.DEFINE_integer("slots_per_problem", 32, "Decode rows per problem.")


def main(argv):
  del argv
  logging.getLogger("mathjax_sft").setLevel(logging.INFO)
  rows = reproduce.run(reproduce.ReproduceConfig(
      output_dir=_OUT.value, base_checkpoint=_BASE.value, train_config=_TRAIN_CONFIG.value,
      sizes=tuple(int(s) for s in _SIZES.value), num_epochs=_EPOCHS.value,
      max_steps=_MAX_STEPS.value, eval_dataset=_DATASET.value, num_problems=_PROBLEMS.value,
      num_samples=_N.value, temperature=_TEMP.value, max_new_tokens=_MAX_NEW.value,
      sample_dtype=_DTYPE.value, problems_per_batch=_PPB.value, slots_per_problem=_SPP.value))
  print(reproduce.table_markdown(rows))
  print(json.dumps(rows, indent=2))


if __name__ == "__main__":
  app.run(main)
