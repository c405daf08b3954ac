"""Pass@N, PassRatio@N, unbiased pass@k and maj@k over graded samples.

A *record* is one problem's samples, as written by :mod:`mathjax_sft.eval.records`::

  {"id": str, "meta": {"level": int, "subject": str, "steps": int, ...},
   "samples": [{"text": str, "answer": str | None, "correct": bool}, ...], ...}

Per problem with n samples of which c are correct:

* Pass@N = 1 if c > 0 (the best of the N samples counts), PassRatio@N = c / n (Xwin-Math);
* pass@k = 1 - C(n-c, k) / C(n, k), the unbiased estimator of Chen et al. 2021 for every k <= n
  (the chance that k samples drawn without replacement include a correct one);
* maj@k = whether the majority answer of the **first** k samples (in sample order; not an
  expectation over random k-subsets) is correct. Answers are grouped by equivalence: a sample's
  ``group`` (written by :func:`records.make_records`, which asks the grader whether two distinct
  answers are the same, so ``0.5`` and ``\\frac{1}{2}`` vote together), else by
  :func:`answers.normalize_answer`; samples without an answer do not vote; among answers tied for
  the most votes the one whose first occurrence comes earliest wins; a group is correct if its
  first sample was graded correct; no answer at all among the k samples counts as wrong.

Aggregates are means over problems. Curves run over k = 1..N with N the smallest n of any problem.

Confidence: ``summary["ci95"]`` holds 95% percentile-bootstrap intervals (resampling problems
with replacement, seeded, :data:`BOOTSTRAP_RESAMPLES` draws) for Pass@N, PassRatio@N and every
pass@k. With 50 problems one problem is 2 points of Pass@N: the interval says how far a number
may move with another draw of problems.
"""

from __future__ import annotations

import collections
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from mathjax_sft.eval import answers as answers_lib


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k = 1 - C(n-c, k)/C(n, k), as the stable product prod_{i=n-c+1}^{n} (1 - k/i).

  Requires 0 <= c <= n and 1 <= k <= n.
  """
  if not 0 <= c <= n or not 1 <= k <= n:
    raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
  if n - c < k:
    return 1.0
  prob_all_wrong = 1.0
  for i in range(n - c + 1, n + 1):
    prob_all_wrong *= 1.0 - k / i
  return 1.0 - prob_all_wrong


def pass_at_k_curve(n: int, c: int) -> list[float]:
  """``[pass@1, ..., pass@n]`` for one problem in O(n).

  Uses C(n-c, k+1)/C(n, k+1) = C(n-c, k)/C(n, k) * (n-c-k)/(n-k): every factor lies in [0, 1], so
  the running product neither overflows nor loses precision the way the binomials would.
  """
  if not 0 <= c <= n or n < 1:
    raise ValueError(f"need 0 <= c <= n and n >= 1, got n={n} c={c}")
  curve = []
  prob_all_wrong = 1.0
  for k in range(n):
    prob_all_wrong *= max(0, n - c - k) / (n - k)
    curve.append(1.0 - prob_all_wrong)
  return curve


def maj_at_k_curve(answers: Sequence[str | None], correct: Sequence[bool],
                   groups: Sequence[int | None] | None = None) -> list[bool]:
  """``[maj@1, ..., maj@n]`` of one problem for the first-k prefixes of its samples.

  Args:
    answers: extracted answer per sample (None: no answer; does not vote).
    correct: grade per sample, same length.
    groups: equivalence class per sample (None: no answer); default: normalised answer strings.
  Returns: list of n bools; entry k-1 is maj@k (tie rule in the module docstring).
  """
  if len(answers) != len(correct):
    raise ValueError(f"{len(answers)} answers but {len(correct)} grades")
  if groups is not None:
    answers = [None if g is None else f"group {g}" for g in groups]
    keyed = True
  else:
    keyed = False
  counts: dict[str, int] = {}
  first_seen: dict[str, int] = {}
  group_correct: dict[str, bool] = {}
  leader: str | None = None
  curve = []
  for i, (answer, ok) in enumerate(zip(answers, correct)):
    key = (answer if keyed else answers_lib.normalize_answer(answer)) if answer is not None else ""
    if key:
      if key not in counts:
        counts[key], first_seen[key], group_correct[key] = 0, i, bool(ok)
      counts[key] += 1
      # Only the group that just grew can overtake; on equal counts the earlier-seen group leads.
      if leader is None or counts[key] > counts[leader] or (
          counts[key] == counts[leader] and first_seen[key] < first_seen[leader]):
        leader = key
    curve.append(leader is not None and group_correct[leader])
  return curve


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int) -> bool:
  """maj@k of one problem: the majority answer among the first k samples is correct."""
  if not 1 <= k <= len(answers):
    raise ValueError(f"need 1 <= k <= {len(answers)}, got k={k}")
  return maj_at_k_curve(answers[:k], correct[:k])[-1]


def _mean(values: Iterable[float]) -> float:
  values = list(values)
  return sum(values) / len(values) if values else float("nan")


def problem_stats(record: Mapping[str, Any]) -> dict[str, Any]:
  """n, c, Pass@N, PassRatio@N, no-answer count, pass@k and maj@k curves (k=1..n) of one record."""
  samples = record["samples"]
  n = len(samples)
  if n == 0:
    raise ValueError(f"record {record.get('id')!r} has no samples")
  correct = [bool(s["correct"]) for s in samples]
  answers = [s.get("answer") for s in samples]
  c = sum(correct)
  return {
      "id": record.get("id"),
      "n": n,
      "c": c,
      "pass_at_n": float(c > 0),
      "pass_ratio_at_n": c / n,
      "no_answer": sum(1 for a in answers if a is None),
      "pass_at_k": pass_at_k_curve(n, c),
      "maj_at_k": [float(m) for m in maj_at_k_curve(
          answers, correct, [s.get("group") for s in samples] if all(
              "group" in s for s in samples) else None)],
  }


def _aggregate(stats: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Means over problems of per-problem stats; curves cut to the smallest n."""
  n_min = min(s["n"] for s in stats)
  return {
      "num_problems": len(stats),
      "num_samples": n_min,
      "max_samples": max(s["n"] for s in stats),
      "pass_at_n": _mean(s["pass_at_n"] for s in stats),
      "pass_ratio_at_n": _mean(s["pass_ratio_at_n"] for s in stats),
      "no_answer_rate": sum(s["no_answer"] for s in stats) / sum(s["n"] for s in stats),
      "pass_at_k": {str(k): _mean(s["pass_at_k"][k - 1] for s in stats)
                    for k in range(1, n_min + 1)},
      "maj_at_k": {str(k): _mean(s["maj_at_k"][k - 1] for s in stats)
                   for k in range(1, n_min + 1)},
  }


BOOTSTRAP_RESAMPLES = 2000


def bootstrap_ci(per_problem: np.ndarray, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES,
                 level: float = 0.95) -> np.ndarray:
  """Percentile-bootstrap interval of the mean over problems: per_problem [P] or [P, K] ->
  [2] or [2, K] (low, high)."""
  values = np.asarray(per_problem, np.float64)
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, values.shape[0], (resamples, values.shape[0]))
  means = values[idx].mean(axis=1)
  alpha = (1.0 - level) / 2
  return np.quantile(means, [alpha, 1.0 - alpha], axis=0)


def _confidence(stats: Sequence[Mapping[str, Any]], seed: int = 0) -> dict[str, Any]:
  n_min = min(s["n"] for s in stats)
  r4 = lambda pair: [round(float(pair[0]), 4), round(float(pair[1]), 4)]
  curves = bootstrap_ci(np.array([s["pass_at_k"][:n_min] for s in stats]), seed)
  return {
      "level": 0.95, "method": f"percentile bootstrap over problems, {BOOTSTRAP_RESAMPLES} "
                                f"resamples, seed {seed}",
      "pass_at_n": r4(bootstrap_ci(np.array([s["pass_at_n"] for s in stats]), seed)),
      "pass_ratio_at_n": r4(bootstrap_ci(np.array([s["pass_ratio_at_n"] for s in stats]), seed)),
      "pass_at_k": {str(k): r4(curves[:, k - 1]) for k in range(1, n_min + 1)},
  }


def summarize(records: Sequence[Mapping[str, Any]],
              breakdown_keys: Sequence[str] | None = None) -> dict[str, Any]:
  """JSON-serialisable summary of graded records.

  Args:
    records: one per problem (format in the module docstring).
    breakdown_keys: ``meta`` keys to break results down by (default: every key whose values are
      ints or strings, e.g. ``level``, ``subject``, ``steps``).
  Returns:
    ``{"num_problems", "num_samples" (N = smallest n), "max_samples", "pass_at_n",
    "pass_ratio_at_n", "no_answer_rate", "pass_at_k": {"1": .., .., "N": ..}, "maj_at_k": {..},
    "ci95": {"pass_at_n": [lo, hi], "pass_ratio_at_n": [lo, hi], "pass_at_k": {k: [lo, hi]}},
    "by": {meta_key: {str(value): <same fields, no "by"/"per_problem">}},
    "per_problem": [{"id", "n", "c"}]}``. Pass@N and PassRatio@N use each problem's own n.
  """
  if not records:
    raise ValueError("no records to summarize")
  stats = [problem_stats(r) for r in records]
  summary = _aggregate(stats)
  summary["ci95"] = _confidence(stats)
  if breakdown_keys is None:
    found: dict[str, None] = {}
    for r in records:
      for key, value in (r.get("meta") or {}).items():
        if isinstance(value, (int, str)) and not isinstance(value, bool):
          found[key] = None
    breakdown_keys = list(found)
  by: dict[str, dict[str, Any]] = {}
  for key in breakdown_keys:
    groups: dict[Any, list] = collections.defaultdict(list)
    for r, s in zip(records, stats):
      value = (r.get("meta") or {}).get(key)
      if value is not None:
        groups[value].append(s)
    if groups:
      ordered = sorted(groups, key=lambda v: (isinstance(v, str), v))
      by[key] = {str(v): _aggregate(groups[v]) for v in ordered}
  summary["by"] = by
  summary["per_problem"] = [{"id": s["id"], "n": s["n"], "c": s["c"]} for s in stats]
  return summary
