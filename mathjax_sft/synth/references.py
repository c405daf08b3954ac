"""Reading input JSONL: the reference rows to synthesise from, and benchmark questions to avoid.

Reference ids: MATH rows carry `unique_id` (e.g. `train/algebra/0.json`), used verbatim. GSM8K rows
have no id, so theirs is `gsm8k-` + the first 12 hex digits of SHA-1 of the question text (after
stripping surrounding whitespace): stable across reordering, subsetting and sharding of the input,
unlike a line index. A row may also carry its own `id` field, which then wins. Repeated ids in one
input (the same question twice) are kept once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mathjax_sft import errors
from mathjax_sft.synth.formats import get_format

log = logging.getLogger(__name__)


class InputError(errors.BadInput):
  """Malformed input; the message names the file and the 1-based line number."""


@dataclasses.dataclass(frozen=True)
class Reference:
  """One reference row: where new questions come from."""

  id: str
  question: str
  answer: str | None = None
  subject: str | None = None   # MATH `type`, e.g. "Algebra"
  level: str | None = None     # MATH `level`, e.g. "Level 3"


def _iter_json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
  """(1-based line number, object) for each non-blank line; InputError on anything else."""
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise InputError(f"{path}:{line_no}: malformed JSON ({e.msg} at column {e.colno})") from None
      if not isinstance(obj, dict):
        raise InputError(f"{path}:{line_no}: expected a JSON object, got {type(obj).__name__}")
      yield line_no, obj


def _text_field(path: Path, line_no: int, obj: dict[str, Any], name: str, required: bool) -> str | None:
  value = obj.get(name)
  if value is None:
    if required:
      raise InputError(f"{path}:{line_no}: missing field {name!r} (fields present: {sorted(obj)})")
    return None
  if not isinstance(value, str) or (required and not value.strip()):
    raise InputError(f"{path}:{line_no}: field {name!r} must be a non-empty string")
  return value


def content_reference_id(dataset_format: str, question: str) -> str:
  """The stable id of a row without its own id: `<format>-<sha1(question)[:12]>`."""
  return f"{dataset_format}-" + hashlib.sha1(question.strip().encode("utf-8")).hexdigest()[:12]


def load_references(path: Path, dataset_format: str, limit: int = 0) -> list[Reference]:
  """Reads reference rows in `dataset_format` (gsm8k: question/answer; math: problem/solution/
  type/level/unique_id). `limit` > 0 keeps the first `limit` distinct references."""
  fmt = get_format(dataset_format)
  path = Path(path)
  if not path.is_file():
    raise InputError(f"{path}: input file not found")
  refs: list[Reference] = []
  seen: set[str] = set()
  repeated = 0
  for line_no, obj in _iter_json_lines(path):
    question = _text_field(path, line_no, obj, fmt.question_field, required=True)
    answer = _text_field(path, line_no, obj, fmt.answer_field, required=False)
    own_id = obj.get("id", obj.get("unique_id"))
    if own_id is not None and (not isinstance(own_id, (str, int)) or not str(own_id).strip()):
      raise InputError(f"{path}:{line_no}: id must be a non-empty string or integer")
    ref_id = str(own_id) if own_id is not None else content_reference_id(dataset_format, question)
    if ref_id in seen:
      repeated += 1
      continue
    seen.add(ref_id)
    refs.append(Reference(id=ref_id, question=question, answer=answer,
                          subject=obj.get("type") if isinstance(obj.get("type"), str) else None,
                          level=obj.get("level") if isinstance(obj.get("level"), str) else None))
    if limit and len(refs) >= limit:
      break
  if repeated:
    log.warning("%s: %d repeated reference id(s) skipped", path, repeated)
  if not refs:
    raise InputError(f"{path}: no reference rows")
  return refs


def load_benchmark_questions(path: Path) -> list[str]:
  """Questions of a benchmark test file, for decontamination: the `question` (GSM8K) or
  `problem` (MATH, MATH500) field of every line."""
  path = Path(path)
  if not path.is_file():
    raise InputError(f"{path}: decontamination file not found")
  out = []
  for line_no, obj in _iter_json_lines(path):
    for name in ("question", "problem"):
      if isinstance(obj.get(name), str):
        out.append(obj[name])
        break
    else:
      raise InputError(f"{path}:{line_no}: neither 'question' nor 'problem' field")
  return out
