"""pass@k against brute-force enumeration; maj@k tie and no-answer rules; summarize."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from mathjax_sft.eval import metrics


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
  """Fraction of all k-subsets of n samples (first c correct) containing a correct one."""
  subsets = list(itertools.combinations(range(n), k))
  return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_matches_enumeration(n):
  for c in range(n + 1):
    curve = metrics.pass_at_k_curve(n, c)
    assert len(curve) == n
    for k in range(1, n + 1):
      expected = brute_force_pass_at_k(n, c, k)
      assert metrics.pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)
      assert curve[k - 1] == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_edge_cases():
  assert metrics.pass_at_k(5, 0, 1) == 0.0
  assert metrics.pass_at_k(5, 0, 5) == 0.0
  assert metrics.pass_at_k(5, 5, 1) == 1.0
  assert metrics.pass_at_k(5, 1, 5) == 1.0  # k = n: any correct sample is drawn
  assert metrics.pass_at_k(5, 2, 1) == pytest.approx(0.4)  # pass@1 = c/n
  assert metrics.pass_at_k_curve(4, 0) == [0.0] * 4
  assert metrics.pass_at_k_curve(4, 4) == [1.0] * 4
  # Large n: the product form stays finite and equals the exact binomial ratio.
  exact = 1 - math.comb(256 - 3, 100) / math.comb(256, 100)
  assert metrics.pass_at_k(256, 3, 100) == pytest.approx(exact, rel=1e-12)
  assert metrics.pass_at_k_curve(256, 3)[99] == pytest.approx(exact, rel=1e-12)
  for bad in [(3, 4, 1), (3, 1, 0), (3, 1, 4), (3, -1, 1)]:
    with pytest.raises(ValueError):
      metrics.pass_at_k(*bad)


def test_maj_at_k_majority_and_normalised_grouping():
  answers = ["1,000", "7", "1000", "7", "$1000$"]
  correct = [True, False, True, False, True]
  # k=1: "1000" leads; k=2: tie 1-1, earlier "1000" wins; k=4: tie 2-2, "1000" first; k=5: 3-2.
  assert metrics.maj_at_k_curve(answers, correct) == [True, True, True, True, True]
  answers = ["7", "1000", "1000", "7", "7"]
  correct = [False, True, True, False, False]
  # k=2: tie, "7" seen first -> wrong; k=3: "1000" 2-1 -> right; k=4: tie 2-2, "7" first -> wrong.
  assert metrics.maj_at_k_curve(answers, correct) == [False, False, True, False, False]
  assert metrics.maj_at_k(answers, correct, 3) is True
  assert metrics.maj_at_k(answers, correct, 4) is False


def test_maj_at_k_no_answer():
  assert metrics.maj_at_k_curve([None, None], [False, False]) == [False, False]
  # Samples without an answer do not vote: one answer beats two Nones.
  assert metrics.maj_at_k_curve([None, None, "5"], [False, False, True]) == [False, False, True]
  assert metrics.maj_at_k_curve(["", "5"], [False, True]) == [False, True]


def _record(pid, correct, answers=None, meta=None):
  answers = answers or [("a" if ok else f"w{i}") for i, ok in enumerate(correct)]
  return {"id": pid, "meta": meta or {},
          "samples": [{"text": "", "answer": a, "correct": ok} for a, ok in zip(answers, correct)]}


def test_summarize_values_and_breakdown():
  records = [
      _record("p0", [True, False, False, False], meta={"level": 1, "subject": "Algebra"}),
      _record("p1", [False, False, False, False], answers=[None, None, "3", "4"],
              meta={"level": 2, "subject": "Algebra"}),
      _record("p2", [True, True, True, False], meta={"level": 2, "subject": "Geometry"}),
  ]
  s = metrics.summarize(records)
  json.dumps(s)  # serialisable
  assert s["num_problems"] == 3 and s["num_samples"] == 4
  assert s["pass_at_n"] == pytest.approx(2 / 3)
  assert s["pass_ratio_at_n"] == pytest.approx((1 / 4 + 0 + 3 / 4) / 3)
  assert s["pass_at_k"]["1"] == pytest.approx(s["pass_ratio_at_n"])
  assert s["pass_at_k"]["4"] == pytest.approx(s["pass_at_n"])
  assert s["pass_at_k"]["2"] == pytest.approx((0.5 + 0 + 1.0) / 3)
  assert s["no_answer_rate"] == pytest.approx(2 / 12)
  # maj@1: p0 right, p1 no answer, p2 right. maj@4: p0 "a" vs 3 distinct wrong answers -> tie at 1,
  # "a" first -> right; p2 "a" x3 -> right.
  assert s["maj_at_k"]["1"] == pytest.approx(2 / 3)
  assert s["maj_at_k"]["4"] == pytest.approx(2 / 3)
  assert set(s["by"]) == {"level", "subject"}
  assert s["by"]["level"]["1"]["pass_at_n"] == 1.0
  assert s["by"]["level"]["2"]["num_problems"] == 2
  assert s["by"]["level"]["2"]["pass_ratio_at_n"] == pytest.approx(3 / 8)
  assert s["by"]["subject"]["Geometry"]["pass_at_n"] == 1.0
  assert [p["c"] for p in s["per_problem"]] == [1, 0, 3]


def test_summarize_uneven_sample_counts():
  s = metrics.summarize([_record("a", [True, False]), _record("b", [False, False, False, True])])
  assert s["num_samples"] == 2 and s["max_samples"] == 4
  assert sorted(s["pass_at_k"]) == ["1", "2"]
  assert s["pass_ratio_at_n"] == pytest.approx((0.5 + 0.25) / 2)
  with pytest.raises(ValueError):
    metrics.summarize([])


def test_summary_has_seeded_bootstrap_intervals():
  """95% intervals over problems: they contain the estimate, shrink with more problems, are
  the same for the same records, and collapse to a point when every problem agrees."""
  from mathjax_sft.eval import metrics as m
  def recs(pattern):
    return [{"id": str(i), "samples": [{"correct": bool(c), "answer": str(c)} for c in row]}
            for i, row in enumerate(pattern)]
  small = recs([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 1]] * 3)
  big = recs([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 1]] * 30)
  s, b = m.summarize(small), m.summarize(big)
  for key in ("pass_at_n", "pass_ratio_at_n"):
    lo, hi = s["ci95"][key]
    assert lo <= s[key] <= hi and lo < hi
    blo, bhi = b["ci95"][key]
    assert bhi - blo < (hi - lo) * 0.6
  lo, hi = s["ci95"]["pass_at_k"]["2"]
  assert lo <= s["pass_at_k"]["2"] <= hi
  assert m.summarize(small)["ci95"] == s["ci95"]
  same = m.summarize(recs([[1, 0]] * 10))
  assert same["ci95"]["pass_ratio_at_n"] == [0.5, 0.5]


def test_maj_at_k_votes_by_equivalence(grader):
  """0.5, \\frac{1}{2} and 1/2 are one answer (3 votes), so they beat 0.3 (2 votes)."""
  from mathjax_sft.eval import metrics as m
  from mathjax_sft.eval.problems import Problem
  from mathjax_sft.eval.records import make_records
  texts = ["\\boxed{0.3}", "\\boxed{0.5}", "\\boxed{\\frac{1}{2}}", "\\boxed{0.3}", "\\boxed{1/2}",
           "no answer here"]
  problem = Problem(id="p", question="q", gold="\\frac{1}{2}", dataset="math", meta={})
  record = make_records([problem], [texts], grader)[0]
  assert [s["group"] for s in record["samples"]] == [0, 1, 1, 0, 1, None]
  stats = m.problem_stats(record)
  assert stats["maj_at_k"][4] == 1.0           # maj@5: the 1/2 group has 3 of 5 votes
  assert stats["maj_at_k"][0] == 0.0           # maj@1: 0.3
  by_string = m.maj_at_k_curve([s["answer"] for s in record["samples"]],
                               [s["correct"] for s in record["samples"]])
  assert by_string[4] is False                 # strings alone: 0.3 (2) vs three singletons


def _reference_maj_curve(answers, correct):
  """maj@k by its definition, recounted from scratch for every prefix."""
  curve = []
  for k in range(1, len(answers) + 1):
    votes = [(a, i) for i, a in enumerate(answers[:k]) if a is not None]
    if not votes:
      curve.append(False)
      continue
    counts = {}
    for a, i in votes:
      counts.setdefault(a, [0, i])[0] += 1
    best = min(counts, key=lambda a: (-counts[a][0], counts[a][1]))
    curve.append(bool(correct[counts[best][1]]))
  return curve


def test_summary_fields_equal_per_problem_definitions():
  """Every k of the pass@k and maj@k tables, the per-problem list and a one-sample problem,
  recomputed from the definitions (binomials, majority votes)."""
  rows = [(["7", "7", "3", "3", "9"], [True, True, False, False, False]),
          (["3", "5", "5", None, "3"], [False, True, True, False, False]),
          ([None, "4", "8", "8", "8"], [False, True, False, False, False]),
          (["2", None, None, None, None], [True, False, False, False, False])]
  records = [_record(f"q{i}", c, answers=a) for i, (a, c) in enumerate(rows)]
  records.append(_record("single", [True], answers=["1"]))
  s = metrics.summarize(records)
  assert s["per_problem"] == [{"id": "q0", "n": 5, "c": 2}, {"id": "q1", "n": 5, "c": 2},
                              {"id": "q2", "n": 5, "c": 1}, {"id": "q3", "n": 5, "c": 1},
                              {"id": "single", "n": 1, "c": 1}]
  assert (s["num_samples"], s["max_samples"]) == (1, 5)
  s = metrics.summarize(records[:4])
  for k in range(1, 6):
    want = sum(1 - math.comb(5 - c, k) / math.comb(5, k) for c in (2, 2, 1, 1)) / 4
    assert s["pass_at_k"][str(k)] == pytest.approx(want, abs=1e-12)
    want = sum(_reference_maj_curve(a, c)[k - 1] for a, c in rows) / 4
    assert s["maj_at_k"][str(k)] == pytest.approx(want, abs=1e-12)
  # by hand: q0 [1 1 1 1 1], q1 [0 0 1 1 0], q2 [0 1 1 0 0], q3 [1 1 1 1 1]
  assert [s["maj_at_k"][str(k)] for k in range(1, 6)] == [0.5, 0.75, 1.0, 0.75, 0.5]
  for table in (s["pass_at_k"], s["maj_at_k"], s["ci95"]["pass_at_k"]):
    assert sorted(table, key=int) == ["1", "2", "3", "4", "5"]
  assert metrics.maj_at_k(rows[1][0], rows[1][1], 1) is False
  assert metrics.maj_at_k(rows[1][0], rows[1][1], 3) is True
  assert metrics.maj_at_k(rows[1][0], rows[1][1], 5) is False   # "3" and "5" tie, "3" first


def test_grouped_votes_skip_samples_without_an_answer():
  """With equivalence groups, samples whose group is None (no answer) do not vote."""
  assert metrics.maj_at_k_curve(["x", "y", "z"], [False, False, True],
                                groups=[None, None, 4]) == [False, False, True]


def test_bootstrap_interval_is_a_95_percent_percentile_interval():
  """Every problem can be drawn (one solved problem of four lifts the upper bound), and the
  interval of a mean of 400 coin flips is about +-1.96 standard errors wide."""
  lo, hi = metrics.bootstrap_ci(np.array([1.0, 0.0, 0.0, 0.0]))
  assert lo == 0.0 and hi > 0.0
  flips = np.random.default_rng(1).integers(0, 2, 400).astype(np.float64)
  lo, hi = metrics.bootstrap_ci(flips)
  se = flips.std() / np.sqrt(len(flips))
  assert 1.85 < (hi - flips.mean()) / se < 2.07 and 1.85 < (flips.mean() - lo) / se < 2.07
  s = metrics.summarize([_record(str(i), [i % 3 == 0, i % 2 == 0, False]) for i in range(7)])
  assert s["ci95"]["level"] == 0.95 and "2000 resamples, seed 0" in s["ci95"]["method"]
  bounds = [*s["ci95"]["pass_at_n"], *s["ci95"]["pass_ratio_at_n"],
            *(v for pair in s["ci95"]["pass_at_k"].values() for v in pair)]
  assert all(b == round(b, 4) for b in bounds) and any(b != round(b, 3) for b in bounds)


def test_breakdown_keys_and_their_order():
  """Breakdowns by int or str meta values only (not floats, lists or bools); ints before strings,
  each in order."""
  records = [_record("a", [True], meta={"level": 3, "w": 0.5, "tags": ["x"], "hard": True}),
             _record("b", [False], meta={"level": "unknown"}),
             _record("c", [False], meta={"level": 1})]
  by = metrics.summarize(records)["by"]
  assert list(by) == ["level"]
  assert list(by["level"]) == ["1", "3", "unknown"]


def test_errors_name_the_bad_input():
  with pytest.raises(ValueError, match=r"need 0 <= c <= n and 1 <= k <= n, got n=3 c=1 k=4"):
    metrics.pass_at_k(3, 1, 4)
  with pytest.raises(ValueError, match=r"need 0 <= c <= n and n >= 1, got n=3 c=4"):
    metrics.pass_at_k_curve(3, 4)
  with pytest.raises(ValueError, match=r"got n=0 c=0"):
    metrics.pass_at_k_curve(0, 0)
  with pytest.raises(ValueError, match="2 answers but 3 grades"):
    metrics.maj_at_k_curve(["1", "2"], [True, False, True])
  with pytest.raises(ValueError, match=r"need 1 <= k <= 2, got k=3"):
    metrics.maj_at_k(["1", "2"], [True, False], 3)
  with pytest.raises(ValueError, match="record 'empty' has no samples"):
    metrics.summarize([_record("empty", [])])
  with pytest.raises(ValueError, match="^no records to summarize$"):
    metrics.summarize([])
