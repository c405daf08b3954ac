"""Plots pass@k / maj@k curves and the per-problem correct-count histogram of one sampling run.

  python tools/plot_passk.py --samples=runs/x/samples.jsonl --output_dir=runs/x/plots
  python tools/plot_passk.py --summary=runs/x/summary.json --output_dir=runs/x/plots

With --samples the summary is computed (mathjax_sft.eval.metrics.summarize) and also written to
<output_dir>/summary.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from absl import app, flags

from mathjax_sft.eval import metrics, plots, records

_SAMPLES = flags.DEFINE_string("samples", None, "graded samples.jsonl (one record per problem)")
_SUMMARY = flags.DEFINE_string("summary", None, "summary.json written by metrics.summarize")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "where the PNG files go", required=True)

flags.register_multi_flags_validator(
    ["samples", "summary"], lambda f: (f["samples"] is None) != (f["summary"] is None),
    message="give exactly one of --samples or --summary")


def main(argv: list[str]) -> None:
  del argv
  output_dir = Path(_OUTPUT_DIR.value)
  if _SAMPLES.value:
    summary = metrics.summarize(records.read_records(_SAMPLES.value))
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
  else:
    summary = json.loads(Path(_SUMMARY.value).read_text())
  for path in plots.plot_summary(summary, output_dir):
    print(path)


if __name__ == "__main__":
  app.run(main)
