"""Grading benchmark on the real test sets: false credit of near-misses, true credit of right answers.

  python tools/bench_grade.py > grade_bench.json                   # the grader as it is
  python tools/bench_grade.py \
      --verify_fn=mathjax_sft.eval.grade_worker:math_verify_equal  # math-verify's verify instead

Prints JSON (see mathjax_sft/eval/grade_bench.py for the sets): per set the cases, how many were
credited, counts by kind and by grading reason, and every case graded against expectation (a
credited near-miss, an uncredited right answer). Near-miss sets: `near_miss` (a MATH test gold
with one number changed), `tiny` (exact values scaled by 10^-30, or offset by 10^-30); right
answers: `reference_math`, `reference_gsm8k` (reference solutions against their golds),
`reference_math500`, `rewrite` (golds written differently).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout


from mathjax_sft import cli, errors  # noqa: E402
from mathjax_sft.eval import grade_bench  # noqa: E402

_CONFIG = cli.TreeFlags(grade_bench.GradeBenchConfig)


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f"unexpected arguments: {argv[1:]}")
  c = _CONFIG.value()
  result = grade_bench.run_config(c)
  text = json.dumps(result, indent=1, ensure_ascii=False)
  if c.output:
    Path(c.output).write_text(text + "\n", encoding="utf-8")
  print(text)


if __name__ == "__main__":
  cli.run(main)
