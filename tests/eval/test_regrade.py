"""tools/grade.py: saved samples regraded with the current grader, verdict changes listed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _record(pid, dataset, gold, texts, verdicts):
  return {"id": pid, "dataset": dataset, "gold": gold, "meta": {},
          "samples": [{"text": t, "answer": None, "correct": v, "reason": "old"}
                      for t, v in zip(texts, verdicts)]}


def test_regrade_a_run_directory(tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  records = [
      # graded wrong by the old thousands-separator handling: right now
      _record("math-1", "math", "\\$15,\\!000", ["So \\boxed{15000}.", "The answer is: 15000.",
                                                  "\\boxed{16000}"], [False, False, False]),
      # "the answer is 20 * 35 = 750" was taken as 20: right before, wrong now (gold 20)
      _record("gsm-1", "gsm8k", "20", ["Therefore, the answer is 20 * 35 = 750 cups of feed.",
                                       "#### 20"], [True, True]),
  ]
  (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  (run / "summary.json").write_text(json.dumps({"pass_at_n": 0.5, "pass_ratio_at_n": 0.4,
                                                "settings": {"seed": 3}}))
  before = (run / "samples.jsonl").read_text()
  proc = subprocess.run([sys.executable, "tools/grade.py", f"--samples={run}"], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  counts = json.loads(proc.stdout.splitlines()[0])
  assert counts == {"samples": 5, "changed": 3, "wrong_to_right": 2, "right_to_wrong": 1,
                    "answer_changed": 5}
  summary = json.loads((run / "summary.regraded.json").read_text())
  assert summary["pass_at_n"] == 1.0 and summary["settings"] == {"seed": 3}
  assert summary["per_problem"] == [{"id": "math-1", "n": 3, "c": 2}, {"id": "gsm-1", "n": 2, "c": 1}]
  assert summary["regraded"]["before"] == {"pass_at_n": 0.5, "pass_ratio_at_n": 0.4}
  assert "ci95" in summary
  diff = json.loads((run / "regrade_diff.json").read_text())
  flips = {(c["id"], c["sample"]): (c["old_correct"], c["new_correct"], c["new_answer"])
           for c in diff["changed_samples"]}
  assert flips == {("math-1", 0): (False, True, "15000"), ("math-1", 1): (False, True, "15000"),
                   ("gsm-1", 0): (True, False, "750")}
  assert (run / "samples.jsonl").read_text() == before          # inputs untouched


def test_regrade_names_a_missing_path(tmp_path):
  proc = subprocess.run([sys.executable, "tools/grade.py", f"--samples={tmp_path / 'nope'}"],
                        cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and "nope" in proc.stderr


def test_regrade_with_another_comparison(tmp_path):
  """--verify_fn picks the workers' comparison: math-verify's verify credits a tiny near-miss
  that the default comparison does not."""
  run = tmp_path / "run"
  run.mkdir()
  records = [_record("math-2", "math", "\\frac{1}{2^{99}}",
                     ["So the answer is $\\boxed{\\frac{1}{2^{98}}}$."], [False])]
  (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  proc = subprocess.run([sys.executable, "tools/grade.py", f"--samples={run}",
                         "--verify_fn=mathjax_sft.eval.grade_worker:math_verify_equal"], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  diff = json.loads((run / "regrade_diff.json").read_text())
  assert diff["verify_fn"] == "mathjax_sft.eval.grade_worker:math_verify_equal"
  assert [(c["new_answer"], c["new_correct"]) for c in diff["changed_samples"]] == [
      ("\\frac{1}{2^{98}}", True)]
