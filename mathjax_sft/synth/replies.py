"""Parsing model replies. Replies are untrusted data: only searched with regular expressions,
never evaluated, and bounded in size."""

from __future__ import annotations

import dataclasses
import re

MAX_QUESTION_CHARS = 4000
MIN_QUESTION_WORDS = 5


class ReplyError(ValueError):
  """A reply that cannot be used. `reason` is a short code (counted), `detail` is for humans."""

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason = reason
    self.detail = detail


def extract_tag(text: str, tag: str) -> str | None:
  """Stripped content of the first `<tag>...</tag>` (case-insensitive), else None."""
  m = re.search(rf"<{tag}>(.*?)</{tag}>", text, flags=re.DOTALL | re.IGNORECASE)
  return m.group(1).strip() if m else None


def _require_content(content: str | None) -> str:
  if content is None or not content.strip():
    raise ReplyError("empty_content", "the reply has no text")
  return content


def _check_question(question: str, where: str) -> str:
  if len(question) > MAX_QUESTION_CHARS:
    raise ReplyError("malformed_reply", f"{where}: question longer than {MAX_QUESTION_CHARS} characters")
  if len(question.split()) < MIN_QUESTION_WORDS:
    raise ReplyError("malformed_reply", f"{where}: question shorter than {MIN_QUESTION_WORDS} words")
  if re.search(r"</?(question|verdict|solution|reason|reference_question)>", question, re.IGNORECASE):
    raise ReplyError("malformed_reply", f"{where}: stray tags inside the question")
  return question


def parse_new_question(content: str | None) -> str:
  """Step 1 reply -> the new question (text between <question> tags)."""
  content = _require_content(content)
  question = extract_tag(content, "question")
  if question is None:
    raise ReplyError("malformed_reply", "step 1 reply has no <question>...</question>")
  return _check_question(question, "step 1")


@dataclasses.dataclass(frozen=True)
class Verdict:
  """Step 2 outcome: is the question usable, and its (possibly refined) final text."""

  valid: bool
  reason: str
  question: str
  solution: str
  refined: bool


def parse_verify(content: str | None, original_question: str) -> Verdict:
  """Step 2 reply -> Verdict. A VALID reply without a <question> keeps the original question."""
  content = _require_content(content)
  verdict = extract_tag(content, "verdict")
  if verdict is None:
    raise ReplyError("malformed_reply", "step 2 reply has no <verdict>...</verdict>")
  word = verdict.strip().strip(".*").upper()
  if word not in ("VALID", "INVALID"):
    raise ReplyError("malformed_reply", f"step 2 verdict is neither VALID nor INVALID: {verdict[:40]!r}")
  reason = (extract_tag(content, "reason") or "").strip()[:500]
  solution = extract_tag(content, "solution") or ""
  if word == "INVALID":
    return Verdict(False, reason or "rejected without a reason", original_question, solution, False)
  question = extract_tag(content, "question") or original_question.strip()
  question = _check_question(question, "step 2")
  return Verdict(True, reason, question, solution, question != original_question.strip())


def parse_answer(content: str | None) -> str:
  """Step 3 reply -> the answer text (format checked separately, see `formats`)."""
  return _require_content(content).strip()
