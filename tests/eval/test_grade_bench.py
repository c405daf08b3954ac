"""The grading benchmark: near-misses and rewrites built from golds, graded through extraction
and the Grader, counted by set; and tools/bench_grade.py's command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mathjax_sft.eval import grade_bench
from mathjax_sft.eval.problems import Problem

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("gold, key, expected", [
    ("7", "a", "8"),
    ("0.25", "a", "0.26"),
    ("0.9", "a", "1.0"),
    ("\\frac{1}{2}", "a", None),      # either number: checked below
    ("864 \\mbox{ inches}^2", "a", "865 \\mbox{ inches}^2"),   # a unit's exponent is no answer
    ("\\text{Evelyn}", "a", None),
])
def test_change_one_number(gold, key, expected):
  near = grade_bench.change_one_number(gold, key)
  if gold == "\\frac{1}{2}":
    assert near in ("\\frac{2}{2}", "\\frac{1}{3}")
    assert grade_bench.change_one_number(gold, key) == near      # the same on every call
  else:
    assert near == expected


def test_exact_values_and_rewrites():
  assert grade_bench.is_exact_value("\\frac{\\sqrt{3}}{2}")
  assert grade_bench.is_exact_value("2006!")
  assert not grade_bench.is_exact_value("2.5")
  assert not grade_bench.is_exact_value("(1, 2)")
  assert not grade_bench.is_exact_value("x^2+1")
  assert dict(grade_bench.rewrites("-\\frac{3}{8}")) == {
      "slash": "-3/8", "unreduced": "-\\frac{9}{24}", "decimal": "-0.375",
      "assignment": "x = -\\frac{3}{8}"}
  assert dict(grade_bench.rewrites("\\frac{1}{3}")).keys() == {"slash", "unreduced", "assignment"}
  assert dict(grade_bench.rewrites("3\\sqrt{2}"))["radical"] == "\\sqrt{18}"
  assert grade_bench.rewrites("x^2") == []


def _problems(spec: str) -> list[Problem]:
  if spec == "gsm8k":
    return [Problem("g-0", "q", "18", "gsm8k", reference_solution="9 * 2 = 18\n#### 18")]
  return [
      Problem("m-0", "q", "\\frac{1}{2^{99}}", "math",
              reference_solution="So it is $\\boxed{\\frac{1}{2^{99}}}$."),
      Problem("m-1", "q", "(3, 4)", "math", reference_solution="The point is $\\boxed{(3, 4)}$."),
      Problem("m-2", "q", "\\text{Evelyn}", "math",
              reference_solution="It is $\\boxed{\\text{Evelyn}}$."),
  ]


def test_run_counts_each_set():
  result = grade_bench.run(num_workers=1, timeout_s=8, loader=_problems)
  assert result["near_miss"]["cases"] == 2          # Evelyn has no number
  assert result["tiny"]["cases"] == 2               # only 1/2^99 is one exact value
  assert result["near_miss_all"] == {"cases": 4, "credited": 0, "false_credit_rate": 0.0}
  for name, cases in (("reference_math", 3), ("reference_gsm8k", 1), ("reference_math500", 3)):
    assert (result[name]["cases"], result[name]["credited"]) == (cases, cases), name
  assert result["rewrite"]["cases"] == 0
  assert result["settings"]["verify_fn"] == "default"
  # math-verify's verify credits the tiny near-misses: they are listed with their golds
  before = grade_bench.run(num_workers=1, timeout_s=8, loader=_problems, sets=["tiny"],
                           verify_fn="mathjax_sft.eval.grade_worker:math_verify_equal")
  assert before["tiny"]["credited"] >= 1
  assert before["tiny"]["false_credits_total"] == before["tiny"]["credited"]
  listed = before["tiny"]["false_credits"][0]
  assert listed["id"] == "m-0" and listed["kind"] in ("scaled", "offset")
  assert "10^{" in listed["gold"] + listed["pred"]


def test_bench_grade_command_line():
  proc = subprocess.run([sys.executable, "tools/bench_grade.py", "--limit=3",
                         "--sets=near_miss,reference_gsm8k", "--grader_workers=1"], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(proc.stdout)
  assert result["settings"]["sets"] == ["near_miss", "reference_gsm8k"]
  assert result["near_miss"]["cases"] == 3 and result["near_miss"]["credited"] == 0
  assert result["reference_gsm8k"]["cases"] == 3 and result["reference_gsm8k"]["credited"] == 3
  assert "tiny" not in result
