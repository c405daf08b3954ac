"""Batch mode: the three steps as three waves of OpenAI Batch API jobs (half price, up to 24 h).

For each step, the rows that need it are written into batch input files that stay within the
API's limits (`batch_max_requests` requests, `batch_max_bytes` bytes, and `batch_max_enqueued_tokens`
estimated prompt tokens), which are submitted as the queue allows: the prompt tokens of the
batches submitted and not yet finished never exceed `batch_max_enqueued_tokens` (the model's
enqueued-token limit), so a step of a million rows goes out as many files, each submitted when
earlier ones finish. A batch the API refuses for that limit anyway (`token_limit_exceeded`) is
submitted again, from the same uploaded file, once another batch has finished.

Each outcome is appended to `batch/steps.jsonl` (a parsed step output, or an error) and is
durable before its batch is marked consumed. A request that errored or gave an unusable reply is
resubmitted in a later wave with a new seed, up to `batch_max_rounds` attempts per step, then the
row fails with the last reason. Filters run in row order just before the answer wave.
Everything is resumable: batches in flight are re-attached (never resubmitted), step outputs
already downloaded are not requested again, finished rows are skipped.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
from pathlib import Path
from typing import Any

from mathjax_sft.group_commit import GroupCommit
from mathjax_sft.jsonl_store import JsonlStore
from mathjax_sft.synth import steps
from mathjax_sft.synth.batch import BatchClient, BatchItem
from mathjax_sft.synth.client import RequestFailed, clip_reply, estimate_tokens
from mathjax_sft.synth.config import SynthConfig
from mathjax_sft.synth.filters import QuestionFilters
from mathjax_sft.synth.formats import DatasetFormat
from mathjax_sft.synth.outputs import OutputDir
from mathjax_sft.synth.replies import ReplyError, Verdict, parse_new_question
from mathjax_sft.synth.usage import UsageTracker, progress_line

log = logging.getLogger(__name__)
STEPS_NAME = "steps.jsonl"
STATE_NAME = "state.jsonl"
_SEED_STRIDE = 1000003
_REFUSED_FOR_CAP = "refused_for_cap"
CAP_ERROR = "token_limit_exceeded"


def _refused_for_cap(batch: Any) -> bool:
  """Whether a finished batch failed validation for the enqueued-token limit."""
  if batch.status != "failed":
    return False
  errors = getattr(batch, "errors", None)
  data = getattr(errors, "data", None) or []
  return any(getattr(e, "code", None) == CAP_ERROR for e in data)


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
    (out.path / "batch").mkdir(parents=True, exist_ok=True)
    self.store = JsonlStore(out.path / "batch" / STEPS_NAME, fsync=config.fsync)
    # (row, step) -> the parsed fields of a step output; the raw reply stays on disk ("offset").
    self.ok: dict[tuple[str, str], dict[str, Any]] = {}
    self.errors: dict[tuple[str, str], list[dict[str, Any]]] = collections.defaultdict(list)
    self.row_usage: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for offset, record in self.store.with_offsets():
      self._remember(record, offset)
    self.tasks: dict[str, steps.RowTask] = {}
    self.passed_filters: set[str] = set()
    self._commit = GroupCommit(self.store)

  def _remember(self, record: dict[str, Any], offset: int) -> None:
    key = (record["id"], record["step"])
    if "error" in record:
      self.errors[key].append({"error": record["error"], "detail": record.get("detail", ""),
                               "reply": clip_reply(record.get("content"), self.batches.redact)})
    else:
      self.ok[key] = {k: v for k, v in record.items() if k not in ("content", "answer", "id", "step", "usage")}
      self.ok[key]["offset"] = offset
    for name in ("requests", "prompt_tokens", "completion_tokens"):
      self.row_usage[record["id"]][name] += record.get("usage", {}).get(name, 0)

  def _append(self, record: dict[str, Any]) -> None:
    """Queues `record` on steps.jsonl (durable after `_drain`)."""
    offset, _ = self._commit.submit(record)
    self._remember(record, offset)

  async def _drain(self) -> None:
    await self._commit.drain()
    await self.out.drain()

  async def run(self, tasks: list[steps.RowTask]) -> None:
    """Processes every task (the pending ones; finished ones are skipped)."""
    self.tasks = {t.id: t for t in tasks}
    try:
      await self._run_steps()
    finally:
      self._commit.close()

  async def _run_steps(self) -> None:
    left = []
    for name in self.batches.state.unconsumed():
      entry = self.batches.state.batches[name]
      if entry.get("batch_id") or entry.get("input_file_id"):
        log.info("re-attaching batch %s left by a previous run", name)
        left.append(name)
      else:
        self.batches.state.update(name, consumed=True, abandoned=True)  # never uploaded
    if left:
      await self._submit_all(left, [])
    for step in steps.STEPS_IN_ORDER:
      if step == steps.ANSWER:
        self._filter_stage()
      while todo := self._todo(step):
        await self._submit_all([], self._files(step, todo))
        written = self.usage.flush(interval=self.config.usage_flush_interval)
        if written is not None:
          log.info("progress: %s", progress_line(written["runs"][-1]))

  def _files(self, step: str, todo: list[steps.RowTask]) -> list[tuple[str, list[dict[str, Any]], int]]:
    """The request lines of `todo`, cut into files within the request, byte and enqueued-token
    limits: (step, lines, estimated prompt tokens) each. A request over a limit on its own goes
    alone (the API then refuses it, and the row fails after its rounds)."""
    cfg = self.config
    files, lines, size, tokens = [], [], 0, 0
    for task in todo:
      line = self._request_line(task, step)
      line_size = len(json.dumps(line, ensure_ascii=False).encode("utf-8")) + 1
      line_tokens = estimate_tokens(line["body"]["messages"], 0)
      if lines and (len(lines) >= cfg.batch_max_requests or size + line_size > cfg.batch_max_bytes
                    or tokens + line_tokens > cfg.batch_max_enqueued_tokens):
        files.append((step, lines, tokens))
        lines, size, tokens = [], 0, 0
      lines.append(line)
      size += line_size
      tokens += line_tokens
    if lines:
      files.append((step, lines, tokens))
    return files

  async def _submit_all(self, attached: list[str], files: list[tuple[str, list[dict[str, Any]], int]]) -> None:
    """Runs batches until all are consumed: `attached` (already in the state, e.g. left by a
    killed run) and new `files`, each written and submitted when its tokens fit under the
    enqueued-token limit beside the batches in flight (or when none is in flight). A batch refused
    for that limit waits for another to finish and goes again."""
    cap = self.config.batch_max_enqueued_tokens
    state = self.batches.state
    waiting = collections.deque(attached)        # names in the state, not in flight
    new = collections.deque(files)
    running: dict[asyncio.Task, str] = {}
    enqueued = 0

    def tokens_of(name: str) -> int:
      return int(state.batches[name].get("tokens", 0))

    def start(name: str) -> None:
      nonlocal enqueued
      enqueued += tokens_of(name)
      running[asyncio.create_task(self._finish(name))] = name

    for name in list(waiting):                   # already submitted: in flight whatever the cap
      if state.batches[name].get("batch_id"):
        waiting.remove(name)
        start(name)
    while waiting or new or running:
      while waiting and (not running or enqueued + tokens_of(waiting[0]) <= cap):
        start(waiting.popleft())
      while not waiting and new and (not running or enqueued + new[0][2] <= cap):
        step, lines, tokens = new.popleft()
        name = state.next_name(step)
        path = self._write_input(name, lines)
        state.update(name, step=step, input_path=str(path), tokens=tokens)
        start(name)
      if not running:
        continue
      done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
      refused = []
      for task in done:
        name = running.pop(task)
        enqueued -= tokens_of(name)
        if task.result() == _REFUSED_FOR_CAP:
          refused.append(name)
      if refused and not running:              # the queue is held by something else: wait a poll
        await asyncio.sleep(self.config.batch_poll_interval)
      waiting.extend(refused)

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
        self._fail(task, step, last["error"], last.get("detail", ""), attempts=len(errors), reply=last["reply"])
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
  async def _finish(self, name: str) -> str:
    """Submits batch `name` (unless it is in flight), waits for it, records every outcome and
    marks it consumed; returns "consumed", or `_REFUSED_FOR_CAP` when the API refused it for the
    enqueued-token limit (it is then ready to be submitted again). A request the batch did not
    answer (failed / expired / cancelled batch) is recorded as error `batch_<status>`."""
    entry = self.batches.state.batches[name]
    try:
      batch_id = await self.batches.submit(name, entry["step"], Path(entry.get("input_path", "")))
      batch = await self.batches.wait(batch_id)
      if _refused_for_cap(batch):
        log.info("batch %s (%s) refused for the enqueued-token limit; it goes again later", name, batch_id)
        self.batches.state.update(name, batch_id=None, refused=entry.get("refused", []) + [batch_id])
        return _REFUSED_FOR_CAP
      items = await self.batches.results(batch)
    except (RequestFailed, OSError) as failed:
      detail = failed.detail if isinstance(failed, RequestFailed) else f"{type(failed).__name__}"
      log.error("batch %s lost (%s); its requests will be resubmitted", name, detail)
      self._unanswered(entry, {}, "batch_lost", detail)
      await self._drain()
      self.batches.state.update(name, consumed=True, abandoned=True)
      return "consumed"
    log.info("batch %s (%s): %s, %d results", name, batch_id, batch.status, len(items))
    for item in items.values():
      self._consume(item)
    self._unanswered(entry, items, f"batch_{batch.status}", f"no result in batch {batch_id}")
    await self._drain()
    self.batches.state.update(name, consumed=True, status=batch.status)
    return "consumed"

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
      self._append({"id": row_id, "step": step, "error": item.failure, "detail": item.detail,
                    "usage": {"requests": 1}})
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
          self._fail(task, step, "verify_rejected", verdict.reason,
                     reply=clip_reply(res.content, self.batches.redact))
      else:
        answer = steps.answer_parser(self.fmt)(res.content)
        self._append({**base, "content": res.content, "answer": answer})
        self._write_row(task, res.model, res.content, answer)
    except ReplyError as bad:
      self.usage.bad_replies[bad.reason] += 1
      self._append({**base, "content": res.content, "error": bad.reason, "detail": f"{step}: {bad.detail}"})

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

  def _write_row(self, task: steps.RowTask, model: str | None, content: str | None, answer: str) -> None:
    """The row of `task`, whose answer (`content`, parsed as `answer`) just came back; the
    earlier steps' replies are read back from steps.jsonl (durable since their wave)."""
    q1 = self.ok[(task.id, steps.NEW_QUESTION)]
    v = self.ok[(task.id, steps.VERIFY)]
    verdict = Verdict(True, v.get("reason", ""), v["question"], "", bool(v.get("refined")))
    raw = {step: self.store.read_at(rec["offset"]).get("content")
           for step, rec in ((steps.NEW_QUESTION, q1), (steps.VERIFY, v))}
    raw[steps.ANSWER] = content
    self.filters.dedup.add(v["question"], task.id)   # no-op unless it came from a re-attached batch
    self.out.queue_row(steps.row_record(
        self.fmt, task, question=v["question"], verdict=verdict, answer=answer, raw=raw,
        model=model or q1.get("model") or self.config.model, usage=dict(self.row_usage[task.id])))

  def _fail(self, task: steps.RowTask, step: str, reason: str, detail: str, *, attempts: int = 1,
            reply: str | None = None) -> None:
    self.out.queue_failure(steps.failure_record(task, step, reason, detail, dict(self.row_usage[task.id]),
                                                self.config.model, attempts=attempts, reply=reply))
