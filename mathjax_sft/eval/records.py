"""Graded sample records: building them from completions, and the ``samples.jsonl`` file format.

``samples.jsonl`` holds one JSON object per problem (a *record*, the input of
:func:`mathjax_sft.eval.metrics.summarize`)::

  {"id": str, "dataset": "gsm8k"|"math", "gold": str, "meta": {...},
   "samples": [{"text": str, "answer": str | None, "correct": bool, "reason": str,
                "group": int | None}, ...]}

``group`` numbers the equivalence classes of a problem's answers (None: no answer), for maj@k:
distinct normalised answers are compared by the grader, each against the
representatives found so far, so ``0.5`` and ``\\frac{1}{2}`` share a group.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

from mathjax_sft.eval import answers
from mathjax_sft.eval.grade import Grader
from mathjax_sft.eval.problems import Problem


def make_records(problems: Sequence[Problem], completions: Sequence[Sequence[str]],
                 grader: Grader) -> list[dict[str, Any]]:
  """Extracts and grades every completion; one record per problem.

  Args:
    problems: P problems.
    completions: P lists of sample texts (any number per problem, typically N each).
    grader: an open :class:`Grader`; all pairs of a dataset are graded in one batch.
  Returns: P records (format in the module docstring), in problem order.
  """
  if len(problems) != len(completions):
    raise ValueError(f"{len(problems)} problems but {len(completions)} completion lists")
  records = []
  for problem, texts in zip(problems, completions):
    records.append({
        "id": problem.id, "dataset": problem.dataset, "gold": problem.gold,
        "meta": dict(problem.meta),
        "samples": [{"text": t, "answer": answers.extract_answer(t, problem.dataset)}
                    for t in texts]})
  for dataset in answers.DATASETS:
    flat = [(r, s) for r in records if r["dataset"] == dataset for s in r["samples"]]
    if not flat:
      continue
    grades = grader.grade_detailed([r["gold"] for r, _ in flat], [s["answer"] for _, s in flat],
                                   dataset)
    for (_, sample), grade in zip(flat, grades):
      sample["correct"], sample["reason"] = grade.correct, grade.reason
  for record in records:
    assign_groups(record["samples"], record["dataset"], grader)
  return records


def assign_groups(samples: list[dict[str, Any]], dataset: str, grader: Grader) -> None:
  """Sets each sample's ``group``: equal normalised answers share one; a new answer joins the
  first representative the grader calls equivalent to it, else starts a group."""
  reps: list[str] = []                    # one answer per group, in order of first appearance
  by_key: dict[str, int] = {}
  for sample in samples:
    answer = sample.get("answer")
    key = answers.normalize_answer(answer) if answer is not None else ""
    if not key:
      sample["group"] = None
      continue
    if key not in by_key:
      same = grader.grade(reps, [answer] * len(reps), dataset) if reps else []
      hit = next((g for g, ok in enumerate(same) if ok), None)
      if hit is None:
        reps.append(answer)
        hit = len(reps) - 1
      by_key[key] = hit
    sample["group"] = by_key[key]


def write_records(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
  """Writes records as JSON Lines (UTF-8, one record per line)."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open("w", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps(record, ensure_ascii=False) + "\n")


def read_records(path: str | Path) -> list[dict[str, Any]]:
  """Reads a ``samples.jsonl``; ValueError naming file and line for a malformed or gradeless row."""
  path = Path(path)
  records = []
  with path.open(encoding="utf-8") as f:
    for lineno, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{lineno}: malformed JSON ({e.msg})") from e
      samples = record.get("samples") if isinstance(record, dict) else None
      if not isinstance(samples, list) or not all(
          isinstance(s, dict) and "correct" in s for s in samples):
        raise ValueError(f"{path}:{lineno}: record needs 'samples', each with a 'correct' field")
      records.append(record)
  return records
