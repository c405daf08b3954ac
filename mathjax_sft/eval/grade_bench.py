"""Grading benchmark on the real test sets: false credit of near-misses, true credit of right answers.

Every prediction is written as a model writes it (``..., the answer is $\\boxed{...}$.``)
and goes through the path of a user's samples: :func:`answers.extract_answer`, then
:meth:`Grader.grade_detailed`. Sets (each a list of cases ``{id, gold, text, kind, dataset}``):

* ``near_miss``: for every MATH test gold that contains a number, the gold with one number changed
  (an integer n -> n + 1, a decimal's last digit + 1; the number picked by a hash of the problem
  id; numbers in a unit's exponent, ``\\text{ cm}^2``, are left alone). Must not be credited.
* ``tiny``: for every MATH test gold that is one exact value (digits, ``\\frac``, ``\\sqrt``,
  powers, factorials, pi; no decimal point, no variable, no list), two near-misses among tiny
  values: gold and its near-miss both divided by 10^30 (``scaled``), and the gold plus 10^-30
  against the gold (``offset``). Must not be credited.
* ``reference_math`` / ``reference_gsm8k``: the reference solutions of MATH test and GSM8K test,
  the answer extracted from the solution text against the gold. Must be credited.
* ``reference_math500``: MATH500's solutions against its separately written ``answer`` field.
* ``rewrite``: MATH test golds rewritten into an equal value (``\\frac{a}{b}`` -> ``a/b``, a
  terminating fraction as a decimal, an unreduced fraction, ``k\\sqrt{m}`` -> ``\\sqrt{k^2 m}``,
  a value as ``x = value``). Must be credited.

:func:`run` returns, per set, the counts, the credited rate and the cases graded against
expectation (false credits of the near-miss sets, missed credits of the others).
"""

from __future__ import annotations

import dataclasses
import decimal
import re
import time
import zlib
from typing import Any, Callable, Sequence

from mathjax_sft.configtree import setting
from mathjax_sft.eval import answers
from mathjax_sft.eval.grade import Grader
from mathjax_sft.eval.problems import Problem, load_problems

NEAR_MISS_SETS = ("near_miss", "tiny")
TRUE_SETS = ("reference_math", "reference_gsm8k", "reference_math500", "rewrite")
SETS = NEAR_MISS_SETS + TRUE_SETS

_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?")
# a unit's exponent: \text{ cm}^2, \mbox{ inches}^{3}
_UNIT_EXPONENT_RE = re.compile(r"\\(?:text|mbox|mathrm)\{[^{}]*\}\s*\^\s*\{?(\d+)\}?")
# one exact value: numbers and these commands and symbols only
_EXACT_TOKENS_RE = re.compile(
    r"\\(?:[dt]?frac|sqrt|pi|cdot|times|left|right)(?![A-Za-z])|\d+|[-+^{}()!\[\] ]")
_INT_FRACTION_RE = re.compile(r"^(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}$")
_RADICAL_RE = re.compile(r"^(\d+)\\sqrt\{?(\d+)\}?$")
_PLAIN_VALUE_RE = re.compile(r"^-?(?:\d+|\\[dt]?frac\{\d+\}\{\d+\}|\d*\\sqrt\{?\d+\}?)$")


@dataclasses.dataclass(frozen=True)
class GradeBenchConfig:
  """Settings of one grading benchmark (tools/bench_grade.py's flags); `run_config` runs it."""
  grader_workers: int = setting(2, "Grading worker processes.")
  grade_timeout_s: float = setting(10.0, "Time limit per graded answer (s).")
  verify_fn: str | None = setting(None, "The workers' comparison, module:function (default: the "
                                  "grader's own).")
  sets: tuple[str, ...] = setting(SETS, "Which sets to grade.", choices=SETS)
  limit: int | None = setting(None, "Only the first K problems of each test set.")
  max_listed: int = setting(100, "Cases graded against expectation listed per set (all are "
                            "counted).")
  output: str | None = setting(None, "Also write the JSON to this file.")


def run_config(c: GradeBenchConfig, **kwargs: Any) -> dict[str, Any]:
  """`run` with the settings of `c` (kwargs: run's other arguments, e.g. loader)."""
  return run(c.grader_workers, c.grade_timeout_s, c.verify_fn, c.sets, c.limit, c.max_listed,
             **kwargs)


def model_text(answer: str) -> str:
  """The end of a sample that gives ``answer`` as its final answer."""
  return f"Putting it together, the answer is $\\boxed{{{answer}}}$."


def _pick(key: str, count: int) -> int:
  return zlib.crc32(key.encode("utf-8")) % count


def _bumped(number: str) -> str:
  """``"7"`` -> ``"8"``, ``"0.25"`` -> ``"0.26"``, ``"0.9"`` -> ``"1.0"``."""
  if "." not in number:
    return str(int(number) + 1)
  value = decimal.Decimal(number)
  step = decimal.Decimal(1).scaleb(value.as_tuple().exponent)
  return str(value + step)


def change_one_number(gold: str, key: str) -> str | None:
  """The gold with one number changed (see module docstring), or None if it has none.

  Args:
    gold: a gold answer in LaTeX.
    key: picks which number (a problem id), so the benchmark is the same on every run.
  """
  skip = {m.start(1) for m in _UNIT_EXPONENT_RE.finditer(gold)}
  numbers = [m for m in _NUMBER_RE.finditer(gold) if m.start() not in skip]
  if not numbers:
    return None
  m = numbers[_pick(key, len(numbers))]
  return gold[:m.start()] + _bumped(m.group(0)) + gold[m.end():]


def is_exact_value(gold: str) -> bool:
  """Whether a gold is one exact value: digits with ``\\frac``, ``\\sqrt``, powers, factorials,
  pi and signs only (no decimal point, no variable, no list)."""
  if not re.search(r"\d", gold) or "." in gold or "," in gold:
    return False
  return _EXACT_TOKENS_RE.sub("", gold) == ""


def rewrites(gold: str) -> list[tuple[str, str]]:
  """(kind, answer) pairs, each the gold's value written differently (module docstring)."""
  out = []
  fraction = _INT_FRACTION_RE.match(gold)
  if fraction:
    sign, a, b = fraction.group(1), int(fraction.group(2)), int(fraction.group(3))
    out.append(("slash", f"{sign}{a}/{b}"))
    out.append(("unreduced", f"{sign}\\frac{{{3 * a}}}{{{3 * b}}}"))
    places = next((k for k in range(64) if 10 ** k % b == 0), None)
    if places:  # a terminating decimal, written out exactly
      value = decimal.Decimal(a * 10 ** places // b).scaleb(-places)
      out.append(("decimal", sign + answers.canonical_number(format(value, "f"))))
  radical = _RADICAL_RE.match(gold)
  if radical:
    k, m = int(radical.group(1)), int(radical.group(2))
    out.append(("radical", f"\\sqrt{{{k * k * m}}}"))
  if _PLAIN_VALUE_RE.match(gold):
    out.append(("assignment", f"x = {gold}"))
  return out


def _case(case_id: str, gold: str, answer_text: str, kind: str, dataset: str = "math") -> dict:
  return {"id": case_id, "gold": gold, "text": answer_text, "kind": kind, "dataset": dataset}


def build_cases(math_test: Sequence[Problem], gsm8k_test: Sequence[Problem],
                math500: Sequence[Problem]) -> dict[str, list[dict]]:
  """The benchmark's cases, by set (module docstring), from loaded problems."""
  sets: dict[str, list[dict]] = {name: [] for name in SETS}
  for p in math_test:
    near = change_one_number(p.gold, p.id)
    if near is not None:
      sets["near_miss"].append(_case(p.id, p.gold, model_text(near), "one_number"))
      if is_exact_value(p.gold):
        sets["tiny"].append(_case(p.id, f"\\frac{{{p.gold}}}{{10^{{30}}}}",
                                  model_text(f"\\frac{{{near}}}{{10^{{30}}}}"), "scaled"))
        sets["tiny"].append(_case(p.id, p.gold, model_text(f"{p.gold}+10^{{-30}}"), "offset"))
    for kind, answer in rewrites(p.gold):
      sets["rewrite"].append(_case(p.id, p.gold, model_text(answer), kind))
    if p.reference_solution is not None:
      sets["reference_math"].append(_case(p.id, p.gold, p.reference_solution, "solution"))
  for p in gsm8k_test:
    if p.reference_solution is not None:
      sets["reference_gsm8k"].append(_case(p.id, p.gold, p.reference_solution, "solution",
                                           "gsm8k"))
  for p in math500:
    if p.reference_solution is not None:
      sets["reference_math500"].append(_case(p.id, p.gold, p.reference_solution, "solution"))
  return sets


def grade_cases(cases: Sequence[dict], grader: Grader) -> list[dict]:
  """Each case with ``pred`` (extracted from its text), ``correct`` and ``reason`` added."""
  out = [dict(c, pred=answers.extract_answer(c["text"], c["dataset"])) for c in cases]
  for dataset in answers.DATASETS:
    rows = [c for c in out if c["dataset"] == dataset]
    if rows:
      grades = grader.grade_detailed([c["gold"] for c in rows], [c["pred"] for c in rows], dataset)
      for c, g in zip(rows, grades):
        c["correct"], c["reason"] = g.correct, g.reason
  return out


def _rate(part: int, whole: int) -> float | None:
  return round(part / whole, 6) if whole else None


def summarize(graded: dict[str, list[dict]], max_listed: int = 100) -> dict[str, Any]:
  """Per set: cases, credited, rate, counts by kind and reason, and the cases graded against
  expectation (false credits of near-misses, missed credits of right answers; the first
  ``max_listed`` of them, with their number in ``false_credits_total`` / ``missed_credits_total``)."""
  out: dict[str, Any] = {}
  for name, cases in graded.items():
    credited = sum(c["correct"] for c in cases)
    expect_credit = name in TRUE_SETS
    unexpected = [c for c in cases if c["correct"] != expect_credit]
    by_kind: dict[str, list[int]] = {}
    reasons: dict[str, int] = {}
    for c in cases:
      counts = by_kind.setdefault(c["kind"], [0, 0])
      counts[0] += 1
      counts[1] += int(c["correct"])
      reasons[c["reason"]] = reasons.get(c["reason"], 0) + 1
    listed = "missed_credits" if expect_credit else "false_credits"
    out[name] = {
        "cases": len(cases), "credited": credited, "credited_rate": _rate(credited, len(cases)),
        "by_kind": {k: {"cases": n, "credited": m} for k, (n, m) in sorted(by_kind.items())},
        "reasons": dict(sorted(reasons.items())),
        f"{listed}_total": len(unexpected),
        listed: [{k: c[k] for k in ("id", "kind", "gold", "pred", "reason")}
                 | ({"text_tail": c["text"][-160:]} if expect_credit else {})
                 for c in unexpected[:max_listed]],
    }
  near = [c for name in NEAR_MISS_SETS for c in graded.get(name, [])]
  out["near_miss_all"] = {"cases": len(near), "credited": sum(c["correct"] for c in near),
                          "false_credit_rate": _rate(sum(c["correct"] for c in near), len(near))}
  return out


def run(num_workers: int = 2, timeout_s: float = 10.0, verify_fn: str | None = None,
        sets: Sequence[str] = SETS, limit: int | None = None, max_listed: int = 100,
        loader: Callable[[str], list[Problem]] = load_problems) -> dict[str, Any]:
  """Builds the cases from the test sets, grades them, returns the summary (JSON-serialisable).

  Args:
    num_workers: grading worker processes.
    timeout_s: the grader's time limit per answer.
    verify_fn: the worker's comparison (``module:function``; None: the default, strict one).
    sets: which sets to grade (names in :data:`SETS`).
    limit: keep only the first K problems of each test set (None: all).
    max_listed: cases graded against expectation listed per set.
    loader: problem loader, ``loader(spec) -> list[Problem]`` (tests pass small sets).
  """
  unknown = sorted(set(sets) - set(SETS))
  if unknown:
    raise ValueError(f"unknown sets {unknown}; expected some of {list(SETS)}")
  problems = {spec: loader(spec)[:limit] if limit else loader(spec)
              for spec in ("math", "gsm8k", "math500")}
  cases = build_cases(problems["math"], problems["gsm8k"], problems["math500"])
  start = time.monotonic()
  graded = {}
  with Grader(num_workers=num_workers, timeout_s=timeout_s, verify_fn=verify_fn) as grader:
    for name in sets:
      graded[name] = grade_cases(cases[name], grader)
    restarts = grader.num_restarts
  return {"settings": {"num_workers": num_workers, "timeout_s": timeout_s,
                       "verify_fn": verify_fn or "default", "sets": list(sets), "limit": limit},
          "grading_seconds": round(time.monotonic() - start, 1), "worker_restarts": restarts,
          **summarize(graded, max_listed)}
