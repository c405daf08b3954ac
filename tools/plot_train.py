"""Plots the loss curve of a training run from its metrics.jsonl.

  python tools/plot_train.py --run_dir=runs/sft_smollm2_135m --output=runs/sft_smollm2_135m/loss.png
"""


from mathjax_sft import cli
from mathjax_sft.train import plots

_CONFIG = cli.TreeFlags(plots.PlotTrainConfig)


def main(argv):
  del argv
  c = _CONFIG.value()
  out = c.output or f"{c.run_dir}/loss.png"
  print(plots.plot_run(c.run_dir, out, c.window))


if __name__ == "__main__":
  cli.run(main)
