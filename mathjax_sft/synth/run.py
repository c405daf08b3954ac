"""One synthesis run: read inputs, open the output directory, build filters and client, run the
online or batch pipeline, total the usage. Re-running the same config resumes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

from mathjax_sft import errors
from mathjax_sft.synth import retry
from mathjax_sft.synth.batch import BatchClient, BatchState
from mathjax_sft.synth.batch_pipeline import STATE_NAME, BatchPipeline
from mathjax_sft.synth.client import (API_KEY_ENV, ChatClient, api_key_from_env, check_reachable,
                                      make_openai_client)
from mathjax_sft.synth.config import SynthConfig
from mathjax_sft.synth.dedup import DuplicateFilter
from mathjax_sft.synth.filter_worker import FilterWorker
from mathjax_sft.synth.filters import Decontaminator, QuestionFilters
from mathjax_sft.synth.formats import get_format
from mathjax_sft.synth.logs import run_logging
from mathjax_sft.synth.outputs import OutputDir
from mathjax_sft.synth.pipeline import OnlinePipeline, RunAborted
from mathjax_sft.synth.prices import Prices, prices_for
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


class NoRowsWritten(RuntimeError):
  """The run asked rows, and every one of them failed: nothing was written. `snapshot` is what
  usage.json holds."""

  def __init__(self, message: str, snapshot: dict[str, Any]):
    super().__init__(message)
    self.snapshot = snapshot


def _prices(config: SynthConfig) -> Prices:
  prices = prices_for(config.model, config.price_prompt_per_million, config.price_completion_per_million)
  given = {f"--{name}": getattr(config, name) for name in ("price_prompt_per_million", "price_completion_per_million")}
  missing = [flag for flag, value in given.items() if value is None]
  if not prices.known and len(missing) == 1:
    raise errors.UserError(f"{missing[0]} is needed too: --model={config.model} has no list price, so "
                           "a cost estimate needs both prices", flag=missing[0])
  return prices


def run(config: SynthConfig, api_key: str | None = None) -> dict[str, Any]:
  """Runs (or resumes) synthesis; returns the usage snapshot (what usage.json holds).

  The key comes from $OPENAI_API_KEY unless given (tests). Raises InputError for bad input,
  OutputDirBusy, MissingKeyError, EndpointUnreachable (no connection to base_url), FatalAPIError
  (endpoint refuses the run), RunAborted, or NoRowsWritten (rows were asked and none was
  written; usage.json is complete)."""
  key_source = "the api_key given to run()" if api_key else f"${API_KEY_ENV}"
  api_key = api_key or api_key_from_env()
  prices = _prices(config)
  redactor = Redactor([api_key])
  fmt = get_format(config.dataset_format)
  references = load_references(config.input_path, config.dataset_format, config.limit_references)
  started = time.monotonic()
  out = OutputDir(config.output_dir, fmt.question_field, fsync=config.fsync,
                  retry_rejected=config.retry_rejected)
  out.read_seconds = time.monotonic() - started
  try:
    with run_logging(out.path, redactor):
      return asyncio.run(_run(config, out, references, api_key, key_source, prices, redactor))
  finally:
    out.close()


async def _run(config: SynthConfig, out: OutputDir, references, api_key: str, key_source: str,
               prices: Prices, redactor: Redactor) -> dict[str, Any]:
  fmt = get_format(config.dataset_format)
  total = len(references) * config.per_reference
  pending_count = retrying = 0
  for ref in references:
    for k in range(config.per_reference):
      row_id = task_id(ref, k)
      if row_id not in out.done:
        pending_count += 1
        retrying += out.asked_again(row_id)
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
  before = out.previous
  log.info("%d references x %d = %d rows; %d already done (%d written, %d failed), %d to do "
           "(%d of them failed before and are asked again)", len(references), config.per_reference, total,
           total - pending_count, before["rows"], before["failures"], pending_count, retrying)
  log.info("output directory read: %d rows, %d failed, %d pending in %.2fs", before["rows"], before["failures"],
           before["pending"], out.read_seconds)
  if prices.known:
    log.info("cost estimate at %s: $%g / $%g per 1M prompt / completion tokens%s", prices.source, prices.prompt,
             prices.completion, f", x{config.batch_discount} in batch mode" if config.mode == "batch" else "")
  else:
    log.info("no cost estimate: --model=%s has no list price; give --price_prompt_per_million and "
             "--price_completion_per_million for one", config.model)
  if out.rows.torn_bytes_removed or out.failures.torn_bytes_removed:
    log.warning("repaired torn last lines: rows.jsonl %d bytes, failures.jsonl %d bytes",
                out.rows.torn_bytes_removed, out.failures.torn_bytes_removed)
  usage = UsageTracker(out.usage_path, mode=config.mode, model=config.model, prices=prices,
                       discount=config.batch_discount if config.mode == "batch" else 1.0,
                       row_states=out.states.counts)
  usage.rows_in = pending_count
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
                        rng=random.Random(config.seed), key_source=key_source)
      await OnlinePipeline(config, fmt, chat, worker, out).run(pending)
    else:
      state = BatchState(out.path / "batch" / STATE_NAME)
      batches = BatchClient(client, policy, redactor, state, poll_interval=config.batch_poll_interval,
                            completion_window=config.batch_completion_window, key_source=key_source,
                            model=config.model)
      try:
        await BatchPipeline(config, fmt, batches, filters, out, usage).run(list(pending))
      finally:
        state.close()
    usage.finished = True
  finally:
    await out.drain()
    worker.close()
    usage.extra["dedup_index_size"] = len(filters.dedup)
    written = usage.flush(force=True)
    if progress is not None:
      progress.close()
    with contextlib.suppress(Exception):
      await client.close()
  summary, files = written["runs"][-1], written["output_files"]
  log.info("run finished: %s; failures by reason %s", progress_line(summary), summary["failures_by_reason"])
  log.info("output directory: %d of %d rows written, %d failed, %d pending", files["rows"], total,
           files["failures"], files["pending"])
  transient = {r: n for r, n in summary["failures_by_reason"].items() if r in retry.RETRYABLE}
  if pending_count and summary["rows_written"] == 0 and sum(transient.values()) == pending_count:
    raise RunAborted(f"every one of the {pending_count} rows of this run failed for a transport "
                     f"reason ({transient}); is --base_url={config.base_url} reachable? They are "
                     "pending: the same command asks them again")
  if transient:
    log.warning("%d rows failed for a transient reason %s and stay pending: re-run the same "
                "command to ask them again", sum(transient.values()), transient)
  failed = summary["rows_failed"] + summary["rows_pending"]
  if failed and summary["rows_written"] == 0:
    raise NoRowsWritten(f"none of the {failed} rows of this run was written: {failure_account(summary, out.path)}",
                        written)
  if failed > config.warn_failure_rate * (failed + summary["rows_written"]):
    log.warning("%d of the %d rows of this run failed: %s", failed, failed + summary["rows_written"],
                failure_account(summary, out.path))
  return written


def failure_account(summary: dict[str, Any], output_dir: Path) -> str:
  """The most common failure reason of a run, where it happened, and how to see the replies."""
  reason, count = max(summary["failures_by_reason"].items(), key=lambda kv: kv[1])
  first = summary["first_failure_by_reason"].get(reason, {})
  step, detail = first.get("step", "?"), first.get("detail", "")
  detail = detail.removeprefix(f"{step}: ")
  return (f"most for {reason} ({count}, at step {step}; e.g. {detail}); the replies: "
          f"python tools/inspect_failures.py --output_dir={output_dir}")
