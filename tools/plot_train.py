"""Plots the loss curve of a training run from its metrics.jsonl.

  python tools/plot_train.py --run_dir=runs/sft_smollm2_135m --output=runs/sft_smollm2_135m/loss.png
"""

from absl import app, flags

from mathjax_sft.train import plots

_RUN_DIR = flags.DEFINE_string("run_dir", None, "Training output_dir (holds metrics.jsonl).",
                               required=True)
_OUTPUT = flags.DEFINE_string("output", None, "PNG path (default <run_dir>/loss.png).")
_WINDOW = flags.DEFINE_integer("window", 10, "Steps in the moving average drawn over the raw loss.")


def main(argv):
  del argv
  out = _OUTPUT.value or f"{_RUN_DIR.value}/loss.png"
  print(plots.plot_run(_RUN_DIR.value, out, _WINDOW.value))


if __name__ == "__main__":
  app.run(main)
