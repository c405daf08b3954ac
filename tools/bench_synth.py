"""Synthesis benchmark: tools/synthesize.py at scale against a fast loopback server.

  python tools/bench_synth.py --per_reference=4 --output=docs/results/bench_synth.json
  # the same harness on another checkout (before/after on one machine)
  python tools/bench_synth.py --repo=../old --per_reference=1 --limit_references=4000

Prints JSON (see mathjax_sft/synth/benchmark.py): requests/s and rows/s per tenth of the rows,
RSS and CPU against rows, resume seconds after a SIGKILL at a random point and with every row
done (each extrapolated to a million rows), and counts of lost / duplicated / torn rows.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from mathjax_sft import cli, errors  # noqa: E402
from mathjax_sft.synth import benchmark  # noqa: E402

_CONFIG = cli.TreeFlags(benchmark.BenchSynthConfig)


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f"unexpected arguments: {argv[1:]}")
  c = _CONFIG.value()
  text = benchmark.to_json(benchmark.run_config(c))
  if c.output:
    Path(c.output).write_text(text + "\n", encoding="utf-8")
  print(text)


if __name__ == "__main__":
  cli.run(main)
