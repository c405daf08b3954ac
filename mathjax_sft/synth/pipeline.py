"""Online mode: each row runs its three steps back to back; `max_concurrency` rows (so at most that
many requests) are in flight, sharing the rate limiter.

Row life: step 1 (new question) -> step 2 (verify; INVALID -> failure `verify_rejected`) -> filters
(`contaminated`, `exact_duplicate`, `near_duplicate`) -> step 3 (answer; bad format after retries ->
`answer_format`) -> one line in rows.jsonl. A request that fails for good records the row in
failures.jsonl with its reason (`rate_limited`, `server_error`, `timeout`, ...). A row interrupted
by a crash has no record and is simply redone by the next run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterable

from mathjax_sft.synth import retry, steps
from mathjax_sft.synth.client import ChatClient, RequestFailed
from mathjax_sft.synth.config import SynthConfig
from mathjax_sft.synth.filter_worker import FilterWorker
from mathjax_sft.synth.formats import DatasetFormat
from mathjax_sft.synth.outputs import OutputDir
from mathjax_sft.synth.replies import parse_new_question
from mathjax_sft.synth.usage import progress_line

log = logging.getLogger(__name__)


class RunAborted(RuntimeError):
  """Too many rows in a row failed for transport reasons: the endpoint looks down."""


@dataclasses.dataclass
class _Breaker:
  """Counts consecutive rows lost to transport failures (not to quality filters)."""

  limit: int
  consecutive: int = 0

  def row_done(self, reason: str | None) -> None:
    if reason is not None and reason in retry.RETRYABLE:
      self.consecutive += 1
      if self.limit and self.consecutive >= self.limit:
        raise RunAborted(f"{self.consecutive} consecutive rows failed for transport reasons "
                         f"(last: {reason}); stopping so the rest can be retried later")
    else:
      self.consecutive = 0


class OnlinePipeline:
  """Runs row tasks through the three steps against a ChatClient."""

  def __init__(self, config: SynthConfig, fmt: DatasetFormat, chat: ChatClient, filters: FilterWorker,
               out: OutputDir):
    self.config = config
    self.fmt = fmt
    self.chat = chat
    self.filters = filters
    self.out = out
    self._breaker = _Breaker(config.max_consecutive_failures)

  async def run(self, tasks: Iterable[steps.RowTask]) -> None:
    """Processes every task; returns when all are recorded (or raises FatalAPIError/RunAborted)."""
    queue = iter(tasks)   # shared by the workers; next() is atomic on the event loop

    async def worker() -> None:
      for task in queue:
        await self.process(task)

    try:
      async with asyncio.TaskGroup() as group:
        for _ in range(self.config.max_concurrency):
          group.create_task(worker())
    except BaseExceptionGroup as group:   # the first worker error stopped the others: raise it
      raise _first(group) from None

  async def process(self, task: steps.RowTask) -> None:
    """The three steps of one row, ending in exactly one record."""
    cfg, fmt, model = self.config, self.fmt, self.config.model
    usage = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
    raw: dict[str, str | None] = {}
    step = steps.NEW_QUESTION

    def add(spent: dict[str, int]) -> None:
      for key in usage:
        usage[key] += spent.get(key, 0)

    try:
      req = steps.new_question_request(cfg, fmt, task)
      question, result, spent = await self.chat.complete_parsed(
          step, req.messages, parse_new_question, model=model, temperature=req.temperature,
          max_tokens=req.max_tokens, seed=req.seed)
      add(spent)
      raw[step] = result.content
      model_used = result.model or model

      step = steps.VERIFY
      req = steps.verify_request(cfg, fmt, task, question)
      verdict, result, spent = await self.chat.complete_parsed(
          step, req.messages, steps.verify_parser(question), model=model, temperature=req.temperature,
          max_tokens=req.max_tokens, seed=req.seed)
      add(spent)
      raw[step] = result.content
      if not verdict.valid:
        return await self._fail(task, step, "verify_rejected", verdict.reason, usage, reply=self.chat.clip(result.content))

      step = steps.FILTER
      hit = await self.filters.check(verdict.question, task.id)
      if hit is not None:
        return await self._fail(task, step, hit[0], hit[1], usage)

      step = steps.ANSWER
      req = steps.answer_request(cfg, fmt, task, verdict.question)
      answer, result, spent = await self.chat.complete_parsed(
          step, req.messages, steps.answer_parser(fmt), model=model, temperature=req.temperature,
          max_tokens=req.max_tokens, seed=req.seed)
      add(spent)
      raw[step] = result.content
    except RequestFailed as failed:
      add({"requests": failed.requests, "prompt_tokens": failed.prompt_tokens,
           "completion_tokens": failed.completion_tokens})
      return await self._fail(task, step, failed.reason, failed.detail, usage, attempts=failed.attempts,
                              reply=failed.reply)

    await self.out.write_row(steps.row_record(fmt, task, question=verdict.question, verdict=verdict, answer=answer,
                                        raw=raw, model=model_used, usage=usage))
    self._after_row(None)

  async def _fail(self, task: steps.RowTask, step: str, reason: str, detail: str, usage: dict[str, int], *,
                  attempts: int = 1, reply: str | None = None) -> None:
    await self.out.write_failure(steps.failure_record(task, step, reason, detail, usage, self.config.model,
                                                      attempts=attempts, reply=reply))
    self._after_row(reason)

  def _after_row(self, reason: str | None) -> None:
    if self.out.usage is not None:
      written = self.out.usage.flush(interval=self.config.usage_flush_interval)
      if written is not None:
        log.info("progress: %s", progress_line(written["runs"][-1]))
    self._breaker.row_done(reason)


def _first(group: BaseExceptionGroup) -> BaseException:
  error = group.exceptions[0]
  return _first(error) if isinstance(error, BaseExceptionGroup) else error
