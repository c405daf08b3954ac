"""The rows to make and the three steps of each, as data: task ids, requests, reply parsers and
the output records. Shared by the online and the batch pipelines."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from mathjax_sft.synth import prompts
from mathjax_sft.synth.config import SynthConfig
from mathjax_sft.synth.formats import DatasetFormat
from mathjax_sft.synth.references import Reference
from mathjax_sft.synth.replies import ReplyError, Verdict, parse_answer, parse_verify

NEW_QUESTION, VERIFY, ANSWER = STEPS_IN_ORDER = prompts.STEPS
FILTER = "filter"


@dataclasses.dataclass(frozen=True)
class RowTask:
  """The k-th new question from one reference; `id` = f"{reference.id}-{k}" is stable."""

  id: str
  reference: Reference
  k: int
  temperature: float
  seed: int


def row_seed(base_seed: int, row_id: str) -> int:
  """A per-row sampling seed, stable across runs and different for every row."""
  return (base_seed + int.from_bytes(hashlib.sha1(row_id.encode("utf-8")).digest()[:4], "big")) % (2**31 - 1)


def task_id(reference: Reference, k: int) -> str:
  """The id of the k-th row of `reference`."""
  return f"{reference.id}-{k}"


def iter_tasks(references: list[Reference], config: SynthConfig) -> Iterator[RowTask]:
  """per_reference tasks per reference, k-th one sampled at temperatures[k % len], made as
  they are asked for (a million rows are never all in memory)."""
  temps = config.temperatures
  for ref in references:
    for k in range(config.per_reference):
      row_id = task_id(ref, k)
      yield RowTask(row_id, ref, k, temps[k % len(temps)], row_seed(config.seed, row_id))


def make_tasks(references: list[Reference], config: SynthConfig) -> list[RowTask]:
  """`iter_tasks` as a list."""
  return list(iter_tasks(references, config))


@dataclasses.dataclass(frozen=True)
class StepRequest:
  """One chat request of one step of one row."""

  step: str
  messages: prompts.Messages
  temperature: float
  max_tokens: int
  seed: int | None

  def body(self, model: str) -> dict[str, Any]:
    """The /v1/chat/completions body (used as-is by the Batch API)."""
    body: dict[str, Any] = {"model": model, "messages": self.messages, "temperature": self.temperature,
                            "max_tokens": self.max_tokens}
    if self.seed is not None:
      body["seed"] = self.seed
    return body


def new_question_request(config: SynthConfig, fmt: DatasetFormat, task: RowTask) -> StepRequest:
  return StepRequest(NEW_QUESTION, prompts.new_question_messages(fmt, task.reference, task.k),
                     task.temperature, config.max_tokens_question, task.seed)


def verify_request(config: SynthConfig, fmt: DatasetFormat, task: RowTask, question: str) -> StepRequest:
  return StepRequest(VERIFY, prompts.verify_messages(fmt, question), config.verify_temperature,
                     config.max_tokens_verify, task.seed)


def answer_request(config: SynthConfig, fmt: DatasetFormat, task: RowTask, question: str) -> StepRequest:
  return StepRequest(ANSWER, prompts.answer_messages(fmt, question), config.answer_temperature,
                     config.max_tokens_answer, task.seed)


def verify_parser(question: str) -> Callable[[str | None], Verdict]:
  return lambda content: parse_verify(content, question)


def answer_parser(fmt: DatasetFormat) -> Callable[[str | None], str]:
  """Step 3 parser: non-empty, and in the target format (else ReplyError "answer_format")."""
  def parse(content: str | None) -> str:
    answer = parse_answer(content)
    problem = fmt.check_answer(answer)
    if problem is not None:
      raise ReplyError("answer_format", problem)
    return answer
  return parse


def row_record(fmt: DatasetFormat, task: RowTask, *, question: str, verdict: Verdict, answer: str,
               raw: dict[str, str | None], model: str, usage: dict[str, int]) -> dict[str, Any]:
  """A finished row: the target dataset's own fields first (so the file trains as-is), then
  provenance: reference id, step outputs, model, sampling and usage."""
  record: dict[str, Any] = {
      "id": task.id,
      fmt.question_field: question,
      fmt.answer_field: answer,
  }
  if fmt.name == "math":
    record["type"] = task.reference.subject
    record["reference_level"] = task.reference.level
  record.update({
      "final_answer": fmt.final_answer(answer),
      "reference_id": task.reference.id,
      "k": task.k,
      "model": model,
      "steps": {
          NEW_QUESTION: {"output": raw.get(NEW_QUESTION)},
          VERIFY: {"output": raw.get(VERIFY), "verdict": "VALID", "refined": verdict.refined,
                   "reason": verdict.reason},
          ANSWER: {"output": raw.get(ANSWER)},
      },
      "sampling": {"temperature": task.temperature, "seed": task.seed},
      "usage": usage,
      "created_at": round(time.time(), 3),
  })
  return record


def failure_record(task: RowTask, step: str, reason: str, detail: str, usage: dict[str, int], model: str, *,
                   attempts: int = 1, reply: str | None = None) -> dict[str, Any]:
  """A row that will not be produced, and why: the step it stopped at, the reason (counted),
  the detail, how many samples or HTTP attempts that step made, what the whole row spent
  (`usage`: requests, tokens), and the last reply of the failing step as the server sent it
  (redacted and clipped; None when there was none, e.g. a quality filter's removal)."""
  return {"id": task.id, "reference_id": task.reference.id, "k": task.k, "step": step, "reason": reason,
          "detail": detail, "attempts": attempts, "model": model, "usage": usage, "reply": reply,
          "created_at": round(time.time(), 3)}
