"""Reading references and benchmark files: ids, and errors that name file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mathjax_sft.synth.references import InputError, load_benchmark_questions, load_references
from mathjax_sft.synth.steps import make_tasks
from tests.synth.helpers import fast_config, gsm8k_reference, write_jsonl


def test_gsm8k_ids_are_content_hashes_and_stable(tmp_path: Path):
  rows = [gsm8k_reference(i) for i in range(4)]
  a = load_references(write_jsonl(tmp_path / "a.jsonl", rows), "gsm8k")
  b = load_references(write_jsonl(tmp_path / "b.jsonl", rows[::-1] + [rows[0]]), "gsm8k")  # reordered + repeat
  assert len(b) == 4 and {r.id for r in a} == {r.id for r in b}
  assert all(r.id.startswith("gsm8k-") and len(r.id) == len("gsm8k-") + 12 for r in a)
  assert len(load_references(tmp_path / "a.jsonl", "gsm8k", limit=2)) == 2


def test_math_rows_use_unique_id(tmp_path: Path):
  path = write_jsonl(tmp_path / "m.jsonl", [{"problem": "Find $x$.", "solution": "$\\boxed{1}$", "level": "Level 2",
                                             "type": "Algebra", "unique_id": "train/algebra/7.json"}])
  (ref,) = load_references(path, "math")
  assert (ref.id, ref.subject, ref.level) == ("train/algebra/7.json", "Algebra", "Level 2")


def test_task_ids_and_sampling(tmp_path: Path):
  path = write_jsonl(tmp_path / "a.jsonl", [gsm8k_reference(0)])
  refs = load_references(path, "gsm8k")
  tasks = make_tasks(refs, fast_config(path, tmp_path / "o", "http://x", per_reference=4, temperatures=(0.5, 1.0)))
  assert [t.id for t in tasks] == [f"{refs[0].id}-{k}" for k in range(4)]
  assert [t.temperature for t in tasks] == [0.5, 1.0, 0.5, 1.0]
  assert len({t.seed for t in tasks}) == 4
  again = make_tasks(refs, fast_config(path, tmp_path / "o", "http://x", per_reference=4, temperatures=(0.5, 1.0)))
  assert [t.seed for t in again] == [t.seed for t in tasks]


@pytest.mark.parametrize("content, fmt, match", [
    ('{"question": "q1 has words enough", "answer": "a"}\n{"question": "q2"\n', "gsm8k", r"bad\.jsonl:2: malformed JSON"),
    ('{"question": "q1", "answer": "a"}\n\n{"answer": "a"}\n', "gsm8k", r"bad\.jsonl:3: missing field 'question'"),
    ('{"question": "q1"}\n', "math", r"bad\.jsonl:1: missing field 'problem'"),
    ('[1, 2]\n', "gsm8k", r"bad\.jsonl:1: expected a JSON object"),
    ('{"question": 5}\n', "gsm8k", r"bad\.jsonl:1: field 'question' must be a non-empty string"),
    ('', "gsm8k", r"bad\.jsonl: no reference rows"),
])
def test_bad_input_names_file_and_line(tmp_path: Path, content: str, fmt: str, match: str):
  path = tmp_path / "bad.jsonl"
  path.write_text(content)
  with pytest.raises(InputError, match=match):
    load_references(path, fmt)


def test_benchmark_questions(tmp_path: Path):
  path = tmp_path / "t.jsonl"
  path.write_text(json.dumps({"question": "a"}) + "\n" + json.dumps({"problem": "b"}) + "\n")
  assert load_benchmark_questions(path) == ["a", "b"]
  path.write_text(json.dumps({"text": "a"}) + "\n")
  with pytest.raises(InputError, match=r"t\.jsonl:1"):
    load_benchmark_questions(path)
