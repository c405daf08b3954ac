"""Loading evaluation sets; gold extraction on every real GSM8K / MATH500 reference solution.

These tests need the benchmark data ($MATHJAX_DATA_DIR, default ../shared/data) and fail with
paths.data_file's message when it is missing.
"""

from __future__ import annotations

import json
import re

import pytest

from mathjax_sft import paths
from mathjax_sft.eval import answers, problems


def _rows(relative: str) -> list[dict]:
  with paths.data_file(relative).open(encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def test_gsm8k_gold_from_every_test_row():
  rows = _rows("gsm8k/test.jsonl")
  loaded = problems.load_problems("gsm8k")
  assert len(loaded) == len(rows) == 1319
  for i, (row, problem) in enumerate(zip(rows, loaded)):
    # Independent reading of the gold: the digits after the final "#### ".
    match = re.search(r"\n#### (-?[\d,]*\.?\d+)$", row["answer"])
    assert match, f"row {i}"
    expected = str(int(match.group(1).replace(",", "")))
    assert problem.id == f"gsm8k-test-{i}"
    assert problem.gold == expected, f"row {i}: {problem.gold!r} != {expected!r}"
    assert problem.dataset == "gsm8k" and problem.question == row["question"]
    # The model-output extractor must read reference solutions the same way.
    assert answers.extract_answer(row["answer"], "gsm8k") == expected, f"row {i}"
    assert problem.meta["steps"] == len([l for l in row["answer"].split("####")[0].split("\n")
                                         if l.strip()])


def test_math500_extraction_agrees_with_answer_field(grader):
  rows = _rows("math500/test.jsonl")
  loaded = problems.load_problems("math500")
  assert len(loaded) == 500
  extracted = []
  for row, problem in zip(rows, loaded):
    assert problem.id == row["unique_id"] and problem.gold == row["answer"]
    assert problem.meta["level"] == row["level"] and problem.meta["subject"] == row["subject"]
    assert problem.reference_solution == row["solution"]
    extracted.append(answers.extract_answer(problem.reference_solution, "math"))
  assert all(e is not None for e in extracted)
  same_key = sum(answers.normalize_answer(e) == answers.normalize_answer(p.gold)
                 for e, p in zip(extracted, loaded))
  verified = grader.grade([p.gold for p in loaded], extracted, "math")
  print(f"math500: {same_key}/500 normalised-equal, {sum(verified)}/500 graded equivalent")
  assert same_key >= 495
  assert sum(verified) >= 495


def test_math_test_loads_with_meta():
  loaded = problems.load_problems("math")
  assert len(loaded) == 5000
  assert loaded[0].id == "test/algebra/1.json"
  assert {p.meta["level"] for p in loaded} == {1, 2, 3, 4, 5}
  assert len({p.meta["subject"] for p in loaded}) == 7
  assert all(p.gold for p in loaded)
  assert all(p.meta["steps"] >= 1 for p in loaded)
  assert len(problems.load_problems("math", num_problems=7)) == 7
  assert [p.id for p in problems.load_problems("gsm8k", num_problems=3)] == [
      "gsm8k-test-0", "gsm8k-test-1", "gsm8k-test-2"]


def test_count_reasoning_steps_rules():
  assert problems.count_reasoning_steps("a = 1\n\nb = 2\nc\n#### 3", "gsm8k") == 3
  solution = ("We have $r = 3.$  Also the angle is $\\frac{\\pi}{2}$ here.\n\n[asy]\ndraw(x);\n"
              "[/asy]\n\nTherefore,\n\\[x = 1.\\]Finally $\\boxed{5}$.")
  # "We have M."; "Also the angle is M here."; "Therefore, M."; "Finally M."
  assert problems.count_reasoning_steps(solution, "math") == 4
  assert problems.count_reasoning_steps("", "math") == 0


def _write(tmp_path, lines):
  path = tmp_path / "set.jsonl"
  path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
  return path


def test_jsonl_autodetect(tmp_path):
  path = _write(tmp_path, [
      json.dumps({"question": "q1", "answer": "step\n#### 1,200"}),
      "",
      json.dumps({"id": 7, "problem": "p", "solution": "so $\\boxed{\\frac12}$"}),
      json.dumps({"problem": "p2", "answer": "x+1", "level": "Level 3", "type": "Algebra"}),
      json.dumps({"question": "q3", "answer": "42"}),
  ])
  loaded = problems.load_problems(f"jsonl:{path}")
  assert [p.id for p in loaded] == ["set-0", "7", "set-2", "set-3"]
  assert [p.dataset for p in loaded] == ["gsm8k", "math", "math", "gsm8k"]
  assert [p.gold for p in loaded] == ["1200", "\\frac12", "x+1", "42"]
  assert loaded[2].meta == {"level": 3, "subject": "Algebra"} and loaded[2].reference_solution is None
  assert loaded[0].meta == {"steps": 1}


@pytest.mark.parametrize("lines, message", [
    (['{"question": "q", "answer": "#### 1"}', '{"question": "q", "answer": '], r"set.jsonl:2: malformed JSON"),
    (['{"question": "q"}'], r"set.jsonl:1: field 'answer' missing"),
    (['{"question": "q", "answer": "no number"}'], r"set.jsonl:1: no gold answer"),
    (['{"problem": "p", "solution": "no box"}'], r"set.jsonl:1: no gold answer"),
    (['{"problem": "p"}'], r"set.jsonl:1: .*'solution' or 'answer'"),
    (['{"text": "p"}'], r"set.jsonl:1: row has neither"),
    (['[1, 2]'], r"set.jsonl:1: expected a JSON object"),
    (['{"id": "a", "question": "q", "answer": "#### 1"}', '',
      '{"id": "a", "question": "q", "answer": "#### 2"}'], r"set.jsonl:3: duplicate id 'a'"),
])
def test_bad_input_names_file_and_line(tmp_path, lines, message):
  path = _write(tmp_path, lines)
  with pytest.raises(ValueError, match=message):
    problems.load_problems(f"jsonl:{path}")


def test_bad_specs(tmp_path):
  with pytest.raises(ValueError, match="unknown evaluation set"):
    problems.load_problems("aime")
  with pytest.raises(ValueError, match="unknown split"):
    problems.load_problems("gsm8k:dev")
  with pytest.raises(FileNotFoundError):
    problems.load_problems(f"jsonl:{tmp_path / 'missing.jsonl'}")


def test_data_dir_from_the_environment_or_beside_a_checkout(monkeypatch, tmp_path):
  """$MATHJAX_DATA_DIR wins; without it a checkout looks beside itself, and an installed copy
  (no checkout) names the variable instead of guessing a folder."""
  from mathjax_sft import paths
  monkeypatch.setenv(paths.DATA_DIR_ENV, str(tmp_path))
  assert paths.data_dir() == tmp_path
  monkeypatch.delenv(paths.DATA_DIR_ENV)
  assert paths.data_dir() == paths.checkout_root().parent / "shared" / "data"
  monkeypatch.setattr(paths, "checkout_root", lambda: None)
  with pytest.raises(FileNotFoundError, match=r"set \$MATHJAX_DATA_DIR .*installed mathjax_sft"):
    paths.data_dir()
  monkeypatch.setenv(paths.DATA_DIR_ENV, str(tmp_path / "missing"))
  with pytest.raises(FileNotFoundError, match="missing does not exist"):
    paths.data_dir()
