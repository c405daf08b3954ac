"""Plots pass@k / maj@k curves and the per-problem correct-count histogram of one sampling run.

  python tools/plot_passk.py --samples=runs/x/samples.jsonl --output_dir=runs/x/plots
  python tools/plot_passk.py --summary=runs/x/summary.json --output_dir=runs/x/plots

With --samples the summary is computed (mathjax_sft.eval.metrics.summarize) and also written to
<output_dir>/summary.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from absl import flags

from mathjax_sft import cli
from mathjax_sft.eval import metrics, plots, records

_CONFIG = cli.TreeFlags(plots.PlotPassKConfig)

flags.register_multi_flags_validator(
    ["samples", "summary"], lambda f: (f["samples"] is None) != (f["summary"] is None),
    message="give exactly one of --samples or --summary")


def main(argv: list[str]) -> None:
  del argv
  c = _CONFIG.value()
  output_dir = Path(c.output_dir)
  if c.samples:
    summary = metrics.summarize(records.read_records(c.samples))
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
  else:
    summary = json.loads(Path(c.summary).read_text())
  for path in plots.plot_summary(summary, output_dir):
    print(path)


if __name__ == "__main__":
  cli.run(main)
