"""Reproduce the paper's phenomenon at small scale: Pass@N and PassRatio@N of the embedded
SmolLM2-135M-Instruct before SFT and after SFT on growing slices of GSM8K train, the figure
(Xwin-Math Figure 1 style) and accuracy by reasoning-step count. Resumable stage by stage.

  python tools/reproduce.py --output_dir=runs/reproduce
  python tools/reproduce.py --output_dir=runs/repro-smoke --sizes=64,256 --max_steps=20 \
      --num_problems=8 --num_samples=8 --max_new_tokens=160
"""

import json


from mathjax_sft import cli, logs, reproduce

_CONFIG = cli.TreeFlags(reproduce.ReproduceConfig)


def main(argv):
  del argv
  logs.quiet(logs.absl_verbose())
  rows = reproduce.run(_CONFIG.value())
  print(reproduce.table_markdown(rows))
  print(json.dumps(rows, indent=2))


if __name__ == "__main__":
  cli.run(main)
