"""Regrade an existing sampling run with the current answer extraction and grader.

  python tools/grade.py --samples=runs/gsm8k50-n64            # a tools/sample.py --output_dir
  python tools/grade.py --samples=runs/gsm8k50-n64/samples.jsonl
  python tools/grade.py --samples=runs/gsm8k50-n64 \
      --verify_fn=mathjax_sft.eval.grade_worker:math_verify_equal   # math-verify's verify instead

Writes, next to the samples: `summary.regraded.json` (the summary as tools/sample.py writes it,
from the new verdicts, with a `regraded` section of counts) and `regrade_diff.json` (every
sample whose verdict changed: problem id, sample index, old / new answer and verdict, the end of
its text). The samples files and the old summary.json are left as they are. The gold answers are
the ones recorded with the samples.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout


from mathjax_sft import cli, errors  # noqa: E402
from mathjax_sft.eval import regrade  # noqa: E402

_CONFIG = cli.TreeFlags(regrade.RegradeConfig)


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f"unexpected arguments: {argv[1:]}")
  c = _CONFIG.value()
  try:
    result = regrade.regrade_dir(c.samples, c.grader_workers, c.grade_timeout_s, c.verify_fn)
  except (FileNotFoundError, ValueError) as e:
    print(cli.error_line(e), file=sys.stderr)
    sys.exit(2)
  diff, summary = result["diff"], result["summary"]
  print(json.dumps({k: diff[k] for k in ("samples", "changed", "wrong_to_right", "right_to_wrong",
                                          "answer_changed")}))
  before = diff.get("before") or {}
  print(f"Pass@N {before.get('pass_at_n')} -> {summary['pass_at_n']:.4f}, PassRatio@N "
        f"{before.get('pass_ratio_at_n')} -> {summary['pass_ratio_at_n']:.4f} "
        f"(95% CI {summary['ci95']['pass_ratio_at_n']})")
  print(f"wrote {Path(result['out_dir']) / regrade.REGRADED_SUMMARY} and "
        f"{Path(result['out_dir']) / regrade.REGRADE_DIFF}")


if __name__ == "__main__":
  cli.run(main)
