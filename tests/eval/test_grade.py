"""Grader: tricky equivalences through math-verify, fast paths, and the per-answer time limit."""

from __future__ import annotations

import time

import pytest

from mathjax_sft.eval import grade
from mathjax_sft.eval.grade import Grader

# (gold, prediction, expected) for both datasets.
COMMON_PAIRS = [
    ("1000", "1,000", True),
    ("1,000", "1000", True),
    ("0.5", "\\frac{1}{2}", True),
    ("0.75", "\\dfrac{3}{4}", True),
    ("18", "18 dollars", True),
    ("18", "\\$18", True),
    ("18", "$18.00", True),
    ("50", "50\\%", True),
    ("50", "50%", True),
    ("-3", "\u22123", True),
    ("-3", "-3.0", True),
    ("18", None, False),
    ("18", "", False),
    ("18", "19", False),
    ("-3", "3", False),
    ("0.5", "\\frac{1}{3}", False),
    ("0.75", "3/5", False),
    ("1000", "1,001", False),
]
MATH_PAIRS = [
    ("\\frac{14}{3}", "\\dfrac{14}{3}", True),
    ("\\frac{14}{3}", "14/3", True),
    ("x^2+1", "1+x^2", True),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\frac{\\pi}{2})", True),
    ("90^\\circ", "90", True),
    ("864 \\mbox{ inches}^2", "864", True),
    ("2\\sqrt{2}", "\\sqrt{8}", True),
    ("\\{1,2,3\\}", "\\{3,2,1\\}", True),
    ("x^2+1", "x^2-1", False),
    ("2\\sqrt{2}", "\\sqrt{2}", False),
    ("\\frac{14}{3}", "\\frac{3}{14}", False),
]


@pytest.mark.parametrize("dataset", ["gsm8k", "math"])
def test_tricky_pairs(grader, dataset):
  pairs = COMMON_PAIRS + (MATH_PAIRS if dataset == "math" else [])
  golds, preds, expected = zip(*pairs)
  got = grader.grade(list(golds), list(preds), dataset)
  wrong = [(g, p, e) for g, p, e, r in zip(golds, preds, expected, got) if r != e]
  assert not wrong, f"misgraded (gold, pred, expected): {wrong}"
  assert all(isinstance(r, bool) for r in got)


def test_reasons_and_fast_paths(grader):
  grades = grader.grade_detailed(["18", "18", "18", "0.5", "0.5"],
                                 [None, "\\$18", "19", "\\frac{1}{2}", "\\frac{1}{3}"], "math")
  assert [g.reason for g in grades] == ["no_answer", "exact", "numeric", "verify", "verify"]
  assert [g.correct for g in grades] == [False, True, False, True, False]
  assert grade.fast_grade("1,000", "1000.0") == grade.Grade(True, "exact")
  assert grade.fast_grade("1/2", "0.5") is None  # needs math-verify


def test_input_validation(grader):
  with pytest.raises(ValueError, match="golds"):
    grader.grade(["1"], ["1", "2"], "math")
  with pytest.raises(ValueError, match="unknown dataset"):
    grader.grade(["1"], ["1"], "aime")


def test_adversarial_latex_cut_off_by_math_verify_limit(grader):
  """A prediction math-verify would take forever on is graded False ("timeout") within the
  grader's limit, next to a normal one; timed with the workers already running, with room for a
  loaded machine."""
  assert grader.grade(["3"], ["\\sqrt{9}"], "math") == [True]   # workers started
  start = time.monotonic()
  grades = grader.grade_detailed(["5", "5"], ["9^{9^{9^{9}}}", "\\sqrt{25}"], "math")
  elapsed = time.monotonic() - start
  assert grades[0] == grade.Grade(False, "timeout")
  assert grades[1] == grade.Grade(True, "verify")
  assert elapsed < 3 * 4, f"took {elapsed:.1f}s"   # three times the fixture's 4 s limit
  assert grader.grade(["0.5"], ["\\frac{2}{4}"], "math") == [True]


def test_hung_worker_is_killed_and_replaced():
  """A verify that ignores SIGALRM and sleeps (like hung C code) must not hang the run."""
  with Grader(num_workers=1, timeout_s=1.5, verify_fn="tests.eval.slow_verify:hang_on_slow",
              startup_timeout_s=30) as g:
    assert g.grade(["c+d"], ["d+c"], "math") == [True]   # the worker is up
    start = time.monotonic()
    grades = g.grade_detailed(["a+b", "a+b", "a+b"], ["SLOW a+b", "b+a", "a-b"], "math")
    elapsed = time.monotonic() - start
    assert grades == [grade.Grade(False, "timeout"), grade.Grade(True, "verify"),
                      grade.Grade(False, "verify")]
    assert g.num_restarts == 1
    # the 1.5 s limit, one replacement worker's start and two answers; the hang is an hour
    assert elapsed < 1.5 + 15, f"took {elapsed:.1f}s"
    # The replacement worker keeps serving.
    assert g.grade(["x+y"], ["y+x"], "gsm8k") == [True]
    assert g.num_restarts == 1
    # A worker that dies mid-answer: that answer is False ("crash"), the rest still get graded.
    grades = g.grade_detailed(["p+q", "p+q"], ["CRASH", "q+p"], "math")
    assert grades == [grade.Grade(False, "crash"), grade.Grade(True, "verify")]
    assert g.num_restarts == 2


def test_worker_that_cannot_start_raises(monkeypatch):
  """A worker that exits at start-up is an error after a few tries, not restarted forever."""
  starts = []

  class CountedWorker(grade._Worker):  # pylint: disable=protected-access
    def __init__(self, *args, **kwargs):
      starts.append(1)
      assert len(starts) <= 10, "grading worker restarted again and again"
      super().__init__(*args, **kwargs)

  monkeypatch.setattr(grade, "_Worker", CountedWorker)
  with Grader(num_workers=1, timeout_s=2, verify_fn="tests.eval.no_such_module:f") as g:
    with pytest.raises(RuntimeError, match="exited at startup"):
      g.grade(["a+b"], ["b+a"], "math")
  assert 1 <= len(starts) <= 3
