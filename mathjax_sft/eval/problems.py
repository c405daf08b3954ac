"""Evaluation sets as lists of :class:`Problem`, loaded from a spec string.

Specs:

* ``gsm8k`` / ``gsm8k:train``: ``<data_dir>/gsm8k/{test,train}.jsonl``; ids ``gsm8k-<split>-<index>``.
* ``math`` / ``math:train``: ``<data_dir>/math/{test,train}.jsonl``; ids are the ``unique_id``s.
* ``math500``: ``<data_dir>/math500/test.jsonl``; gold is the file's ``answer`` field.
* ``jsonl:PATH``: any JSONL file. A row with ``question`` + ``answer`` is GSM8K style (the answer
  ends with ``#### n``, or is itself a plain number); a row with ``problem`` + ``solution`` and/or
  ``answer`` is MATH style (gold = ``answer`` if present, else the last ``\\boxed{}`` of the
  solution). The id is the row's ``id`` (else ``unique_id``) field, else ``<file stem>-<index>``.

Blank lines are skipped; ``index`` counts the non-blank rows from 0. Malformed input raises
ValueError naming the file and the 1-based line number.

``meta`` holds ``level`` (int; MATH's ``"Level N"`` string is converted, ``"Level ?"`` dropped),
``subject`` (MATH ``type`` / MATH500 ``subject``) and ``steps`` (:func:`count_reasoning_steps` of
the reference solution) where available.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from mathjax_sft import errors, paths
from mathjax_sft.eval import answers

_NAMED_SETS = {
    "gsm8k": "gsm8k/{split}.jsonl",
    "math": "math/{split}.jsonl",
    "math500": "math500/test.jsonl",
}


@dataclasses.dataclass(frozen=True)
class Problem:
  """One evaluation problem.

  Attributes:
    id: stable identifier (``gsm8k-test-17``, ``test/algebra/1.json``, or the file's ``id``).
    question: the prompt text shown to the model (GSM8K ``question`` / MATH ``problem``).
    gold: the extracted gold answer string (a canonical number for GSM8K, raw LaTeX for MATH).
    dataset: answer style, ``'gsm8k'`` or ``'math'`` (selects extraction and grading rules).
    meta: JSON-serialisable extras: ``level`` (int), ``subject`` (str), ``steps`` (int).
    reference_solution: the worked reference solution, when the source has one.
  """
  id: str
  question: str
  gold: str
  dataset: str
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)
  reference_solution: str | None = None


def count_reasoning_steps(solution: str, dataset: str) -> int:
  """Number of reasoning steps in a reference solution (for accuracy-vs-CoT-length plots).

  Rules:
    * ``gsm8k``: the number of non-empty lines before the ``####`` line (the whole text if absent).
    * ``math``: the number of sentences. ``[asy]...[/asy]`` pictures are dropped; every math span
      (``$...$``, ``$$...$$``, ``\\[...\\]``, ``\\(...\\)``, ``\\begin{..}...\\end{..}``) becomes one
      word (keeping a final ``.``, ``!`` or ``?`` written inside it); then the text is split at
      blank lines and after ``.``/``!``/``?`` followed by whitespace or the end; single newlines
      join. Pieces with no letter or digit are not counted.

  Returns: a count >= 0.
  """
  if dataset == "gsm8k":
    body = solution.split("####", 1)[0]
    return sum(1 for line in body.split("\n") if line.strip())
  if dataset != "math":
    raise errors.BadInput(f"unknown dataset {dataset!r}")
  text = re.sub(r"\[asy\].*?\[/asy\]", " ", solution, flags=re.DOTALL)

  def placeholder(match: re.Match) -> str:
    inner = match.group(0).rstrip("$").rstrip()
    inner = re.sub(r"(\\\]|\\\)|\\end\{[^}]*\})$", "", inner).rstrip()
    end = inner[-1] if inner and inner[-1] in ".!?" else ""
    return " M" + end + " "

  text = re.sub(r"\\begin\{([^}]*)\}.*?\\end\{\1\}|\$\$.*?\$\$|\\\[.*?\\\]|\\\(.*?\\\)|\$.*?\$",
                placeholder, text, flags=re.DOTALL)
  count = 0
  for paragraph in re.split(r"\n\s*\n", text):
    for sentence in re.split(r"(?<=[.!?])\s+", paragraph.replace("\n", " ")):
      if re.search(r"[A-Za-z0-9]", sentence):
        count += 1
  return count


def _level(value: Any) -> int | None:
  if isinstance(value, bool):
    return None
  if isinstance(value, int):
    return value
  if isinstance(value, str):
    match = re.fullmatch(r"\s*(?:Level\s*)?(\d+)\s*", value)
    if match:
      return int(match.group(1))
  return None


def _require_str(row: dict, key: str, where: str) -> str:
  value = row.get(key)
  if not isinstance(value, str):
    raise errors.BadInput(f"{where}: field {key!r} missing or not a string")
  return value


def _row_to_problem(row: Any, index: int, where: str, id_prefix: str) -> Problem:
  """One JSON row -> Problem; ``where`` is ``"path:line"`` for error messages."""
  if not isinstance(row, dict):
    raise errors.BadInput(f"{where}: expected a JSON object, got {type(row).__name__}")
  meta: dict[str, Any] = {}
  if "question" in row:
    dataset = "gsm8k"
    question = _require_str(row, "question", where)
    solution = _require_str(row, "answer", where)
    if "####" in solution:
      gold = answers.number_or_fraction(solution.rsplit("####", 1)[1].split("\n", 1)[0])
      reference: str | None = solution
    else:
      gold = answers.canonical_number(solution)
      reference = None
    if gold is None:
      raise errors.BadInput(f"{where}: no gold answer extractable from 'answer' "
                            f"{solution[-80:]!r}")
  elif "problem" in row:
    dataset = "math"
    question = _require_str(row, "problem", where)
    if "solution" not in row and "answer" not in row:
      raise errors.BadInput(f"{where}: MATH-style row needs a 'solution' or 'answer' field")
    reference = _require_str(row, "solution", where) if "solution" in row else None
    gold = None
    if "answer" in row:
      gold = _require_str(row, "answer", where).strip() or None
    elif reference is not None:
      gold = answers.last_boxed(reference)
    if gold is None:
      raise errors.BadInput(f"{where}: no gold answer extractable (empty 'answer' or no "
                            "\\boxed{} in 'solution')")
  else:
    raise errors.BadInput(f"{where}: row has neither 'question' (GSM8K style) nor 'problem' "
                          f"(MATH style); keys: {sorted(row)}")
  level = _level(row.get("level"))
  if level is not None:
    meta["level"] = level
  subject = row.get("subject", row.get("type"))
  if isinstance(subject, str) and subject:
    meta["subject"] = subject
  if reference is not None:
    meta["steps"] = count_reasoning_steps(reference, dataset)
  if "id" in row:
    problem_id = str(row["id"])
  elif isinstance(row.get("unique_id"), str):
    problem_id = row["unique_id"]
  else:
    problem_id = f"{id_prefix}-{index}"
  return Problem(id=problem_id, question=question, gold=gold, dataset=dataset, meta=meta,
                 reference_solution=reference)


def load_jsonl_problems(path: str | Path, id_prefix: str | None = None,
                        num_problems: int | None = None) -> list[Problem]:
  """Problems from one JSONL file (field auto-detection as in the module docstring).

  Args:
    path: the JSONL file.
    id_prefix: ids of rows without an id field are ``<id_prefix>-<index>`` (default: file stem).
    num_problems: keep only the first K problems (None: all).
  """
  path = Path(path)
  if not path.is_file():
    raise errors.MissingInput(f"evaluation file {path} not found", file=path)
  prefix = id_prefix if id_prefix is not None else path.stem
  problems: list[Problem] = []
  seen: dict[str, int] = {}
  with path.open(encoding="utf-8") as f:
    for lineno, line in enumerate(f, start=1):
      if num_problems is not None and len(problems) >= num_problems:
        break
      if not line.strip():
        continue
      where = f"{path}:{lineno}"
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise errors.BadInput(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from e
      problem = _row_to_problem(row, len(problems), where, prefix)
      if problem.id in seen:
        raise errors.BadInput(f"{where}: duplicate id {problem.id!r} (first on line "
                              f"{seen[problem.id]})")
      seen[problem.id] = lineno
      problems.append(problem)
  return problems


def load_problems(spec: str, num_problems: int | None = None, flag: str | None = None
                  ) -> list[Problem]:
  """Evaluation set from a spec: ``gsm8k[:split]``, ``math[:split]``, ``math500``, ``jsonl:PATH``.

  Args:
    spec: which set (see module docstring).
    num_problems: keep only the first K problems in file order (None or negative: all).
    flag: the command-line flag that gave `spec`, named by the error for an unknown spec.

  Raises:
    FileNotFoundError: the data file is missing (message names $MATHJAX_DATA_DIR).
    ValueError: unknown spec, or malformed rows (message names file and line).
  """
  if num_problems is not None and num_problems < 0:
    num_problems = None
  if spec.startswith("jsonl:"):
    return load_jsonl_problems(spec[len("jsonl:"):], num_problems=num_problems)
  name, _, split = spec.partition(":")
  given = f"{flag}={spec}: " if flag else ""
  if name not in _NAMED_SETS:
    raise errors.BadInput(f"{given}unknown evaluation set {spec!r}; expected gsm8k[:split], "
                          "math[:split], math500 or jsonl:PATH", flag=flag)
  if name == "math500" and split not in ("", "test"):
    raise errors.BadInput(f"{given}math500 has only a test split, got {spec!r}", flag=flag)
  split = split or "test"
  if split not in ("train", "test"):
    raise errors.BadInput(f"{given}unknown split {split!r} in {spec!r}; expected train or test",
                          flag=flag)
  path = paths.data_file(_NAMED_SETS[name].format(split=split))
  prefix = f"gsm8k-{split}" if name == "gsm8k" else name
  return load_jsonl_problems(path, id_prefix=prefix, num_problems=num_problems)
