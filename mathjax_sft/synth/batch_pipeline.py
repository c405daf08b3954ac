"""Batch mode: the three steps as three waves of OpenAI Batch API jobs (half price, up to 24 h).

For each step, the rows that need it are written into batch input files (at most
`batch_max_requests` requests each), submitted, polled and downloaded; each outcome is appended to
`batch/steps.jsonl` (a parsed step output, or an error) before the next wave. A request that errored
or gave an unusable reply is resubmitted in a later wave with a new seed, up to `batch_max_rounds`
attempts per step, then the row fails with the last reason. Filters run in row order just before
the answer wave. Everything is resumable: batches in flight are re-attached (never resubmitted),
step outputs already downloaded are not requested again, finished rows are skipped.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
from pathlib import Path
from typing import Any

from mathjax_sft.synth import steps
from mathjax_sft.synth.batch import BatchClient, BatchItem
from mathjax_sft.synth.client import RequestFailed
from mathjax_sft.synth.config import SynthConfig
from mathjax_sft.synth.filters import QuestionFilters
from mathjax_sft.synth.formats import DatasetFormat
from mathjax_sft.synth.outputs import OutputDir
from mathjax_sft.synth.replies import ReplyError, Verdict, parse_new_question
from mathjax_sft.jsonl_store import JsonlStore
from mathjax_sft.synth.usage import UsageTracker, progress_line

log = logging.getLogger(__name__)
STEPS_NAME = "steps.jsonl"
STATE_NAME = "state.json"
_SEED_STRIDE = 1000003


class BatchPipeline:
  """Runs row tasks through the steps with the Batch API."""

  def __init__(self, config: SynthConfig, fmt: DatasetFormat, batches: BatchClient, filters: QuestionFilters,
               out: OutputDir, usage: UsageTracker):
    self.config = config
    self.fmt = fmt
    self.batches = batches
    self.filters = filters
    self.out = out
    self.usage = usage
    self.store = JsonlStore(out.path / "batch" / STEPS_NAME, fsync=config.fsync)
    # (row, step) -> the parsed fields of a step output; the raw reply stays on disk ("offset").
    self.ok: dict[tuple[str, str], dict[str, Any]] = {}
    self.errors: dict[tuple[str, str], list[dict[str, Any]]] = collections.defaultdict(list)
    self.row_usage: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for offset, record in self.store.with_offsets():
      self._remember(record, offset)
    self.tasks: dict[str, steps.RowTask] = {}
    self.passed_filters: set[str] = set()

  def _remember(self, record: dict[str, Any], offset: int) -> None:
    key = (record["id"], record["step"])
    if "error" in record:
      self.errors[key].append({"error": record["error"], "detail": record.get("detail", "")})
    else:
      self.ok[key] = {k: v for k, v in record.items() if k not in ("content", "answer", "id", "step", "usage")}
      self.ok[key]["offset"] = offset
    for name in ("requests", "prompt_tokens", "completion_tokens"):
      self.row_usage[record["id"]][name] += record.get("usage", {}).get(name, 0)

  def _append(self, record: dict[str, Any]) -> None:
    self._remember(record, self.store.append(record))

  async def run(self, tasks: list[steps.RowTask]) -> None:
    """Processes every task (the pending ones; finished ones are skipped)."""
    self.tasks = {t.id: t for t in tasks}
    try:
      await self._run_steps()
    finally:
      self.store.close()

  async def _run_steps(self) -> None:
    for name in self.batches.state.unconsumed():
      entry = self.batches.state.batches[name]
      if entry.get("batch_id") or entry.get("input_file_id"):
        log.info("re-attaching batch %s left by a previous run", name)
        await self._finish(name)
      else:
        self.batches.state.update(name, consumed=True, abandoned=True)  # never uploaded
    for step in steps.STEPS_IN_ORDER:
      if step == steps.ANSWER:
        self._filter_stage()
      while todo := self._todo(step):
        names = []
        for start in range(0, len(todo), self.config.batch_max_requests):
          chunk = todo[start:start + self.config.batch_max_requests]
          name = self.batches.state.next_name(step)
          path = self._write_input(name, [self._request_line(task, step) for task in chunk])
          try:
            await self.batches.submit(name, step, path)
          except RequestFailed as failed:
            log.error("could not submit batch %s: %s", name, failed.detail)
            self.batches.state.update(name, consumed=True, abandoned=True)
            for task in chunk:
              self._append({"id": task.id, "step": step, "error": failed.reason, "detail": failed.detail})
            continue
          names.append(name)
        await asyncio.gather(*(self._finish(name) for name in names))
        written = self.usage.flush(interval=self.config.usage_flush_interval)
        if written is not None:
          log.info("progress: %s", progress_line(written["runs"][-1]))

  def _write_input(self, name: str, lines: list[dict[str, Any]]) -> Path:
    """The batch input file, kept under batch/inputs/ (written atomically)."""
    path = self.out.path / "batch" / "inputs" / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
      for line in lines:
        f.write(json.dumps(line, ensure_ascii=False) + "\n")
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
    return path

  # -- what to ask -------------------------------------------------------------------------------
  def _question_for(self, row_id: str, step: str) -> str | None:
    if step == steps.VERIFY:
      rec = self.ok.get((row_id, steps.NEW_QUESTION))
    elif step == steps.ANSWER:
      rec = self.ok.get((row_id, steps.VERIFY))
    else:
      return ""
    return rec["question"] if rec is not None else None

  def _ready(self, task: steps.RowTask, step: str) -> bool:
    if task.id in self.out.done or (task.id, step) in self.ok:
      return False
    if step == steps.VERIFY:
      return (task.id, steps.NEW_QUESTION) in self.ok
    if step == steps.ANSWER:
      return task.id in self.passed_filters
    return True

  def _todo(self, step: str) -> list[steps.RowTask]:
    todo = []
    for task in self.tasks.values():
      if not self._ready(task, step):
        continue
      errors = self.errors.get((task.id, step), [])
      if len(errors) >= self.config.batch_max_rounds:
        last = errors[-1]
        self._fail(task, step, last["error"], last.get("detail", ""))
        continue
      todo.append(task)
    return todo

  def _request_line(self, task: steps.RowTask, step: str) -> dict[str, Any]:
    cfg, fmt = self.config, self.fmt
    if step == steps.NEW_QUESTION:
      req = steps.new_question_request(cfg, fmt, task)
    elif step == steps.VERIFY:
      req = steps.verify_request(cfg, fmt, task, self._question_for(task.id, step))
    else:
      req = steps.answer_request(cfg, fmt, task, self._question_for(task.id, step))
    body = req.body(cfg.model)
    attempt = len(self.errors.get((task.id, step), []))
    if attempt:
      self.usage.retries += 1
      if "seed" in body:
        body["seed"] += attempt * _SEED_STRIDE
    return {"custom_id": f"{step}:{task.id}", "method": "POST", "url": "/v1/chat/completions", "body": body}

  # -- what came back ----------------------------------------------------------------------------
  async def _finish(self, name: str) -> None:
    """Waits for batch `name`, records every outcome, and marks it consumed. A request the batch
    did not answer (failed / expired / cancelled batch) is recorded as error `batch_<status>`."""
    entry = self.batches.state.batches[name]
    try:
      batch_id = await self.batches.submit(name, entry["step"], Path(entry.get("input_path", "")))
      batch = await self.batches.wait(batch_id)
      items = await self.batches.results(batch)
    except (RequestFailed, OSError) as failed:
      detail = failed.detail if isinstance(failed, RequestFailed) else f"{type(failed).__name__}"
      log.error("batch %s lost (%s); its requests will be resubmitted", name, detail)
      self._unanswered(entry, {}, "batch_lost", detail)
      await self.out.drain()
      self.batches.state.update(name, consumed=True, abandoned=True)
      return
    log.info("batch %s (%s): %s, %d results", name, batch_id, batch.status, len(items))
    for item in items.values():
      self._consume(item)
    self._unanswered(entry, items, f"batch_{batch.status}", f"no result in batch {batch_id}")
    await self.out.drain()
    self.batches.state.update(name, consumed=True, status=batch.status)

  def _unanswered(self, entry: dict[str, Any], items: dict[str, BatchItem], reason: str, detail: str) -> None:
    path = Path(entry.get("input_path", ""))
    if not path.is_file():
      return
    with open(path, encoding="utf-8") as f:
      for line in f:
        custom_id = json.loads(line)["custom_id"]
        if custom_id not in items:
          self._consume(BatchItem(custom_id, None, reason, detail))

  def _consume(self, item: BatchItem) -> None:
    step, _, row_id = item.custom_id.partition(":")
    task = self.tasks.get(row_id)
    if task is None or row_id in self.out.done or (row_id, step) in self.ok or step not in steps.STEPS_IN_ORDER:
      return  # not ours, already finished, or a duplicate outcome
    if item.result is None:
      self.usage.record_request(ok=False, failure_class=item.failure)
      self._append({"id": row_id, "step": step, "error": item.failure, "detail": item.detail})
      return
    res = item.result
    self.usage.record_request(ok=True)
    self.usage.record_tokens(step, res.prompt_tokens, res.completion_tokens)
    usage = {"requests": 1, "prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens}
    base = {"id": row_id, "step": step, "usage": usage}
    try:
      if step == steps.NEW_QUESTION:
        self._append({**base, "content": res.content, "model": res.model, "question": parse_new_question(res.content)})
      elif step == steps.VERIFY:
        question = self._question_for(row_id, step)
        verdict = steps.verify_parser(question)(res.content)
        self._append({**base, "content": res.content, "valid": verdict.valid, "question": verdict.question,
                      "reason": verdict.reason, "refined": verdict.refined})
        if not verdict.valid:
          self._fail(task, step, "verify_rejected", verdict.reason)
      else:
        answer = steps.answer_parser(self.fmt)(res.content)
        self._append({**base, "content": res.content, "answer": answer})
        self._write_row(task, res.model)
    except ReplyError as bad:
      self.usage.bad_replies[bad.reason] += 1
      self._append({**base, "error": bad.reason, "detail": f"{step}: {bad.detail}"})

  def _filter_stage(self) -> None:
    for task in self.tasks.values():
      rec = self.ok.get((task.id, steps.VERIFY))
      if task.id in self.out.done or rec is None or not rec.get("valid"):
        continue
      hit = self.filters.check(rec["question"], task.id)
      if hit is not None:
        self._fail(task, steps.FILTER, hit[0], hit[1])
      else:
        self.passed_filters.add(task.id)

  def _write_row(self, task: steps.RowTask, model: str | None) -> None:
    q1 = self.ok[(task.id, steps.NEW_QUESTION)]
    v = self.ok[(task.id, steps.VERIFY)]
    a = self.ok[(task.id, steps.ANSWER)]
    verdict = Verdict(True, v.get("reason", ""), v["question"], "", bool(v.get("refined")))
    stored = {step: self.store.read_at(rec["offset"])
              for step, rec in ((steps.NEW_QUESTION, q1), (steps.VERIFY, v), (steps.ANSWER, a))}
    raw = {step: record.get("content") for step, record in stored.items()}
    self.filters.dedup.add(v["question"], task.id)   # no-op unless it came from a re-attached batch
    self.out.queue_row(steps.row_record(
        self.fmt, task, question=v["question"], verdict=verdict, answer=stored[steps.ANSWER]["answer"], raw=raw,
        model=model or q1.get("model") or self.config.model, usage=dict(self.row_usage[task.id])))

  def _fail(self, task: steps.RowTask, step: str, reason: str, detail: str) -> None:
    self.out.queue_failure(steps.failure_record(task, step, reason, detail, dict(self.row_usage[task.id]),
                                                self.config.model))
