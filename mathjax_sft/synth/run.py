"""One synthesis run: read inputs, open the output directory, build filters and client, run the
online or batch pipeline, total the usage. Re-running the same config resumes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from typing import Any

from mathjax_sft.synth import retry
from mathjax_sft.synth.batch import BatchClient, BatchState
from mathjax_sft.synth.batch_pipeline import STATE_NAME, BatchPipeline
from mathjax_sft.synth.client import (ChatClient, api_key_from_env, check_reachable,
                                      make_openai_client)
from mathjax_sft.synth.config import SynthConfig
from mathjax_sft.synth.dedup import DuplicateFilter
from mathjax_sft.synth.filter_worker import FilterWorker
from mathjax_sft.synth.filters import Decontaminator, QuestionFilters
from mathjax_sft.synth.formats import get_format
from mathjax_sft.synth.logs import run_logging
from mathjax_sft.synth.outputs import OutputDir
from mathjax_sft.synth.pipeline import OnlinePipeline, RunAborted
from mathjax_sft.synth.ratelimit import RateLimiter
from mathjax_sft.synth.redact import Redactor
from mathjax_sft.synth.references import Reference, load_benchmark_questions, load_references
from mathjax_sft.synth.steps import iter_tasks, task_id
from mathjax_sft.synth.usage import UsageTracker, progress_line

log = logging.getLogger(__name__)


REFERENCE_PREFIX = "reference "
INDEX_DIR = "dedup_index"


def build_filters(config: SynthConfig, out: OutputDir, references: list[Reference]) -> QuestionFilters:
  """Dedup index holding the questions of finished rows (so it holds across resume) and,
  optionally, the reference questions (a "new" question must not copy its reference);
  decontamination index over the configured benchmark files.

  The dedup index saved in the output directory is loaded and brought up to date: questions of
  rows that were never written are retired, rows written after its last save are added. Without
  a saved index every row is read."""
  started = time.monotonic()
  dedup, saved = DuplicateFilter.open(out.path / INDEX_DIR, config.dedup_ngram, config.dedup_threshold)
  start = 0
  if saved is not None:
    keep_references = config.dedup_against_references
    retired = dedup.retain(lambda name: out.is_row(name) or (keep_references and name.startswith(REFERENCE_PREFIX)))
    start = int(saved.get("rows_bytes", 0))
    if start > out.rows.size():
      start = 0
    log.info("dedup index loaded: %d questions (%d retired) in %.2fs; rows from byte %d on are added",
             len(dedup), retired, time.monotonic() - started, start)
  added = 0
  for name, question in out.row_questions(start):
    dedup.add(question, name)
    added += 1
  if config.dedup_against_references:
    for ref in references:
      dedup.add(ref.question, REFERENCE_PREFIX + ref.id)
  log.info("dedup index ready: %d questions (%d rows read from rows.jsonl) in %.2fs", len(dedup), added,
           time.monotonic() - started)
  decontam = None
  if config.decontam_files:
    decontam = Decontaminator(config.decontam_ngram, config.decontam_jaccard_ngram,
                              config.decontam_jaccard_threshold)
    for path in config.decontam_files:
      decontam.add_questions(load_benchmark_questions(path), source=f"{path.parent.name}/{path.name}")
  else:
    log.warning("no decontamination files: generated questions are not checked against test sets")
  return QuestionFilters(dedup, decontam)


def run(config: SynthConfig, api_key: str | None = None) -> dict[str, Any]:
  """Runs (or resumes) synthesis; returns the usage snapshot (what usage.json holds).

  The key comes from $OPENAI_API_KEY unless given (tests). Raises InputError for bad input,
  OutputDirBusy, MissingKeyError, EndpointUnreachable (no connection to base_url), FatalAPIError
  (endpoint refuses the run) or RunAborted."""
  api_key = api_key or api_key_from_env()
  redactor = Redactor([api_key])
  fmt = get_format(config.dataset_format)
  references = load_references(config.input_path, config.dataset_format, config.limit_references)
  started = time.monotonic()
  out = OutputDir(config.output_dir, fmt.question_field, fsync=config.fsync,
                  retry_rejected=config.retry_rejected)
  out.read_seconds = time.monotonic() - started
  try:
    with run_logging(out.path, redactor):
      return asyncio.run(_run(config, out, references, api_key, redactor))
  finally:
    out.close()


async def _run(config: SynthConfig, out: OutputDir, references, api_key: str,
               redactor: Redactor) -> dict[str, Any]:
  fmt = get_format(config.dataset_format)
  total = len(references) * config.per_reference
  pending_count = retrying = 0
  for ref in references:
    for k in range(config.per_reference):
      row_id = task_id(ref, k)
      if row_id not in out.done:
        pending_count += 1
        retrying += row_id in out.pending_retry
  pending = (t for t in iter_tasks(references, config) if t.id not in out.done)
  policy = retry.RetryPolicy(config.max_attempts, config.backoff_base, config.backoff_max, config.max_retry_after)
  if pending_count:   # a wrong URL is named now, before any row is asked
    probe = make_openai_client(api_key, config.base_url, config.request_timeout)
    try:
      await check_reachable(probe, policy, redactor, random.Random(config.seed))
    finally:
      with contextlib.suppress(Exception):
        await probe.close()
  log.info("synthesis run: %s", json.dumps(config.to_json(), sort_keys=True))
  log.info("%d references x %d = %d rows; %d already done (%d rows, %d final failures), %d to do "
           "(%d of them failed for a transient reason before)", len(references),
           config.per_reference, total, total - pending_count, out.previous_rows,
           sum(out.previous_failures.values()), pending_count, retrying)
  log.info("output directory read: %d rows, %d failures in %.2fs", out.previous_rows,
           sum(out.previous_failures.values()), out.read_seconds)
  if out.rows.torn_bytes_removed or out.failures.torn_bytes_removed:
    log.warning("repaired torn last lines: rows.jsonl %d bytes, failures.jsonl %d bytes",
                out.rows.torn_bytes_removed, out.failures.torn_bytes_removed)
  usage = UsageTracker(out.usage_path, mode=config.mode, model=config.model,
                       price_prompt_per_million=config.price_prompt_per_million,
                       price_completion_per_million=config.price_completion_per_million,
                       discount=config.batch_discount if config.mode == "batch" else 1.0)
  usage.rows_in = pending_count
  usage.rows_before = out.previous_rows
  usage.failures_before.update(out.previous_failures)
  usage.extra["rows_done_before"] = total - pending_count
  out.usage = usage
  filters = build_filters(config, out, references)
  worker = FilterWorker(filters, config.dedup_save_interval, lambda: out.rows_durable_bytes)
  client = make_openai_client(api_key, config.base_url, config.request_timeout)
  progress = None
  if config.progress:
    from tqdm.auto import tqdm
    progress = tqdm(total=total, initial=total - pending_count, unit="row", desc="synthesize")
  out.progress = progress
  try:
    if config.mode == "online":
      chat = ChatClient(client, RateLimiter(config.requests_per_minute, config.tokens_per_minute), policy, usage,
                        redactor, config.request_timeout, max_reply_retries=config.max_reply_retries,
                        rng=random.Random(config.seed))
      await OnlinePipeline(config, fmt, chat, worker, out).run(pending)
    else:
      state = BatchState(out.path / "batch" / STATE_NAME)
      batches = BatchClient(client, policy, redactor, state, poll_interval=config.batch_poll_interval,
                            completion_window=config.batch_completion_window)
      try:
        await BatchPipeline(config, fmt, batches, filters, out, usage).run(list(pending))
      finally:
        state.close()
    usage.finished = True
  finally:
    await out.drain()
    worker.close()
    usage.extra["dedup_index_size"] = len(filters.dedup)
    transient = sum(n for r, n in usage.failures_by_reason.items() if r in retry.RETRYABLE)
    usage.extra["pending_retry"] = transient            # asked again by the next run
    usage.extra["final_failures"] = usage.rows_failed - transient
    written = usage.flush(force=True)
    if progress is not None:
      progress.close()
    with contextlib.suppress(Exception):
      await client.close()
  summary = written["runs"][-1]
  log.info("run finished: %s; failures by reason %s", progress_line(summary), summary["failures_by_reason"])
  transient = {r: n for r, n in summary["failures_by_reason"].items() if r in retry.RETRYABLE}
  if pending_count and summary["rows_written"] == 0 and sum(transient.values()) == pending_count:
    raise RunAborted(f"every one of the {pending_count} rows of this run failed for a transport "
                     f"reason ({transient}); is --base_url={config.base_url} reachable? They are "
                     "pending: the same command asks them again")
  if transient:
    log.warning("%d rows failed for a transient reason %s and stay pending: re-run the same "
                "command to ask them again", sum(transient.values()), transient)
  return written
