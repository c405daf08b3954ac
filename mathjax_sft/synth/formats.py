"""Target dataset formats (GSM8K, MATH): field names, the rules given to the model, and the
answer format check applied to step-3 replies."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

from mathjax_sft.eval.answers import last_boxed

_GSM8K_FINAL = re.compile(r"^####\s*(-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)\s*$")


def gsm8k_final_answer(answer: str) -> str | None:
  """The number after `####` on the last non-blank line (commas removed), else None."""
  lines = [line.strip() for line in answer.strip().splitlines() if line.strip()]
  if not lines:
    return None
  m = _GSM8K_FINAL.match(lines[-1])
  return m.group(1).replace(",", "") if m else None


def check_gsm8k_answer(answer: str) -> str | None:
  """None when `answer` is reasoning lines then a last line `#### <number>`; else why not."""
  lines = [line.strip() for line in answer.strip().splitlines() if line.strip()]
  if not lines:
    return "empty answer"
  if gsm8k_final_answer(answer) is None:
    return "last line is not '#### <number>'"
  if sum(line.startswith("####") for line in lines) != 1:
    return "more than one '####' line"
  if len(lines) < 2:
    return "no reasoning before the final answer"
  return None


def check_math_answer(answer: str) -> str | None:
  """None when `answer` is a solution with a non-empty, brace-balanced `\\boxed{}`; else why not."""
  if not answer.strip():
    return "empty answer"
  boxed = last_boxed(answer)
  if boxed is None:
    return "no balanced \\boxed{...}"
  if not boxed.strip():
    return "empty \\boxed{}"
  return None


@dataclasses.dataclass(frozen=True)
class DatasetFormat:
  """What a dataset's rows look like and how a model is told to write them."""

  name: str                 # "gsm8k" | "math"
  display_name: str         # used in prompts
  question_field: str
  answer_field: str
  question_rules: str       # appended to steps 1 and 2
  answer_rules: str         # step 3
  check_answer: Callable[[str], str | None]
  final_answer: Callable[[str], str | None]


GSM8K = DatasetFormat(
    name="gsm8k",
    display_name="GSM8K",
    question_field="question",
    answer_field="answer",
    question_rules=(
        "a grade-school math word problem in plain English (no LaTeX, no multiple choice), one short "
        "paragraph that ends with a single question, solvable with 2 to 8 steps of basic arithmetic, "
        "whose final answer is a single number."),
    answer_rules=(
        "Reason step by step in plain text, one short sentence or computation per line. End with a "
        "last line of exactly the form `#### <number>` holding only the final numerical answer "
        "(no units, no words, no dollar sign)."),
    check_answer=check_gsm8k_answer,
    final_answer=gsm8k_final_answer,
)

MATH = DatasetFormat(
    name="math",
    display_name="MATH",
    question_field="problem",
    answer_field="solution",
    question_rules=(
        "a competition mathematics problem in the style of the MATH dataset (AMC 10/12, AIME), "
        "with mathematics written in LaTeX between $...$, asking for one exact final answer (a number, "
        "expression, interval or set) rather than a proof."),
    answer_rules=(
        "Write a clear, rigorous step-by-step solution, with mathematics in LaTeX between $...$. State "
        "the final answer exactly once, in simplest exact form, inside \\boxed{} at the end of the "
        "solution."),
    check_answer=check_math_answer,
    final_answer=last_boxed,
)

_FORMATS = {f.name: f for f in (GSM8K, MATH)}


def get_format(name: str) -> DatasetFormat:
  """The format called `name`; ValueError for an unknown one."""
  try:
    return _FORMATS[name]
  except KeyError:
    raise ValueError(f"unknown dataset format {name!r}; expected one of {sorted(_FORMATS)}") from None
