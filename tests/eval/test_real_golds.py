"""Grading against the real MATH and GSM8K test sets: the answer a model would plainly write for
every gold with a thousands separator, a unit, a degree sign, a percentage or a dollar sign is
graded correct (and a wrong number wrong); reference solutions fed as samples are graded
correct, and the same solutions with the final answer changed are graded wrong."""

from __future__ import annotations

import json
import re

import pytest

from mathjax_sft import paths
from mathjax_sft.eval import answers

DECORATED = re.compile(r",\\!|\{,\}|\\text\{|\\mbox\{|\\circ|°|\\%|%|\\\$")


def _rows(name: str) -> list[dict]:
  with open(paths.data_file(name), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def _plain(gold: str) -> str:
  """What a model writes without LaTeX decoration (built here independently of the grader)."""
  s = gold.replace("\\$", "").replace(",\\!", "").replace("{,}", "")
  s = re.sub(r"\^\s*\{?\\circ\}?|°", "", s)
  s = s.replace("\\%", "").replace("%", "")
  # a unit after a number is dropped; any other \text{...} (a name, a choice, "and") is kept as text
  s = re.sub(r"(?<=[\d}])\s*\\(?:text|mbox)\{\s*[A-Za-z][A-Za-z. ]*\}(\^\d)?\s*$", "", s)
  s = re.sub(r"\\(?:text|mbox)\{([^{}]*)\}", r"\1", s)
  return s.strip()


@pytest.fixture(scope="module")
def math_golds():
  rows = _rows("math/test.jsonl")
  return [(r["unique_id"], answers.extract_math_answer(r["solution"])) for r in rows]


def test_decorated_math_golds_accept_plain_answers(math_golds, grader):
  decorated = [(i, g) for i, g in math_golds if g and DECORATED.search(g)]
  assert len(decorated) > 250          # 45 separators, 119 units, 86 degrees, 15 %, 23 $
  golds, preds, ids = [], [], []
  for uid, gold in decorated:
    plain = _plain(gold)
    for pred in (f"\\boxed{{{plain}}}", f"The answer is: {plain}."):
      golds.append(gold)
      preds.append(answers.extract_math_answer(pred))
      ids.append((uid, gold, pred))
  verdicts = grader.grade(golds, preds, "math")
  wrong = [ids[k] for k, ok in enumerate(verdicts) if not ok]
  assert not wrong, f"{len(wrong)} of {len(ids)} plain answers graded wrong, e.g. {wrong[:5]}"


def test_decorated_math_golds_reject_a_wrong_number(math_golds, grader):
  golds, preds = [], []
  for _, gold in math_golds:
    if gold and DECORATED.search(gold):
      plain = _plain(gold)
      if answers.canonical_number(plain.replace(",", "")) is not None:
        golds.append(gold)
        preds.append(str(int(float(plain.replace(",", ""))) + 1))
  assert len(golds) > 150
  verdicts = grader.grade(golds, preds, "math")
  assert not any(verdicts), [(g, p) for g, p, v in zip(golds, preds, verdicts) if v][:5]


def _changed(answer: str) -> str:
  """A different final answer: numbers shifted by 7 (kept apart from any digit), else wrapped."""
  key = answers.normalize_answer(answer)
  if answers.canonical_number(key) == key:
    return str(float(key) + 7)
  return f"{answer}+7"


@pytest.mark.parametrize("dataset,file,text_key", [
    ("gsm8k", "gsm8k/test.jsonl", "answer"), ("math", "math/test.jsonl", "solution")])
def test_reference_solutions_graded_correct_and_changed_ones_wrong(grader, dataset, file,
                                                                   text_key):
  rows = _rows(file)
  golds = [answers.extract_answer(r[text_key], dataset) for r in rows]
  assert all(g is not None for g in golds)
  verdicts = grader.grade(golds, golds, dataset)
  assert sum(verdicts) / len(rows) >= 0.995
  # the gold answer replaced in the solution text, then extracted and graded again
  changed_texts = []
  for r, g in zip(rows, golds):
    new = _changed(g)
    text = r[text_key]
    if dataset == "gsm8k":
      text = text[:text.rindex("####")] + f"#### {new}"
    else:
      text = text + f"\n\nThe answer is: $\\boxed{{{new}}}$."
    changed_texts.append(text)
  preds = [answers.extract_answer(t, dataset) for t in changed_texts]
  verdicts = grader.grade(golds, preds, dataset)
  right = [(r.get("unique_id", k), g, p) for k, (r, g, p, v) in
           enumerate(zip(rows, golds, preds, verdicts)) if v]
  assert len(right) / len(rows) <= 0.005, right[:5]
