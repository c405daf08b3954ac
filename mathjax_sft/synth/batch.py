"""OpenAI Batch API helper: upload a JSONL of chat requests, create the batch, poll it, download
its output and error files; with a small state file so that a crash never submits a batch twice.

State (`batch/state.jsonl`, an append-only log) records each batch by name before anything is
sent: its step, local input file (`batch/inputs/<name>.jsonl`) and estimated prompt tokens, then
the uploaded `input_file_id`, then the `batch_id`, then `consumed`. After a crash, a batch with an
id is polled again instead of resubmitted; one with an uploaded file but no id is looked up by its
input file in the batch list (it may have been created just before the crash) and created only if
absent. A batch the API refused (failed validation) is never taken for one in flight; its id is
kept under `refused`, and the same uploaded file can be submitted again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import openai

from mathjax_sft.jsonl_store import JsonlStore
from mathjax_sft.synth import retry
from mathjax_sft.synth.client import (API_KEY_ENV, ChatResult, FatalAPIError, JsonView, RequestFailed,
                                      read_completion, refusal)
from mathjax_sft.synth.redact import Redactor

log = logging.getLogger(__name__)
T = TypeVar("T")
TERMINAL = ("completed", "failed", "expired", "cancelled")
ENDPOINT = "/v1/chat/completions"


class BatchState:
  """The batches of this output directory: an append-only log of updates (one JSON line each,
  replayed when opened), so that thousands of batches cost one short write per change."""

  def __init__(self, path: Path):
    self.path = Path(path)
    self.batches: dict[str, dict[str, Any]] = {}
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._store = JsonlStore(self.path)
    for record in self._store:
      self.batches.setdefault(record["name"], {}).update(record["fields"])

  def update(self, name: str, **fields: Any) -> None:
    self.batches.setdefault(name, {}).update(fields)
    self._store.append({"name": name, "fields": fields})

  def close(self) -> None:
    self._store.close()

  def unconsumed(self) -> list[str]:
    return [name for name, b in self.batches.items() if not b.get("consumed")]

  def next_name(self, step: str) -> str:
    return f"{len(self.batches):05d}-{step}"


@dataclasses.dataclass(frozen=True)
class BatchItem:
  """The outcome of one request inside a batch: a result, or a failure class and detail."""

  custom_id: str
  result: ChatResult | None
  failure: str | None = None
  detail: str = ""


class BatchClient:
  """Batch API calls, each retried under the same policy as chat requests."""

  def __init__(self, client: openai.AsyncOpenAI, policy: retry.RetryPolicy, redactor: Redactor,
               state: BatchState, *, poll_interval: float, completion_window: str = "24h",
               key_source: str = f"${API_KEY_ENV}", model: str = ""):
    self._client = client
    self._policy = policy
    self.redact = redactor
    self.url = str(client.base_url).rstrip("/")
    self._key_source = key_source
    self._model = model
    self.state = state
    self._poll_interval = poll_interval
    self._window = completion_window

  async def _call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
    attempt = 0
    while True:
      attempt += 1
      try:
        return await fn()
      except asyncio.CancelledError:
        raise
      except Exception as error:
        failure = retry.classify(error)
        detail = self.redact(f"{what}: {self.url}: {retry.describe_error(error)}")[:300]
        if failure == retry.FATAL:
          raise FatalAPIError(self.redact(refusal(error, self.url, self._key_source, what, self._model))) from None
        if not self._policy.should_retry(failure, attempt):
          raise RequestFailed(failure, detail) from None
        delay = self._policy.delay(attempt, retry.parse_retry_after(retry.error_headers(error)))
        log.warning("%s failed (%s); retrying in %.1fs", what, failure, delay)
        await asyncio.sleep(delay)

  async def submit(self, name: str, step: str, input_path: Path) -> str:
    """Uploads the request file `input_path` and creates the batch; returns the batch id.
    Idempotent per name across crashes (see module docstring)."""
    entry = self.state.batches.get(name, {})
    if entry.get("batch_id"):
      return entry["batch_id"]
    if not entry:
      self.state.update(name, step=step, input_path=str(input_path))
    file_id = entry.get("input_file_id")
    if not file_id:
      payload = Path(input_path).read_bytes()
      uploaded = await self._call("upload batch input", lambda: self._client.files.create(
          file=(f"{name}.jsonl", io.BytesIO(payload), "application/jsonl"), purpose="batch"))
      file_id = uploaded.id
      self.state.update(name, input_file_id=file_id)
    else:
      existing = await self._find_by_input_file(file_id, set(entry.get("refused", ())))
      if existing is not None:
        self.state.update(name, batch_id=existing)
        return existing
    batch = await self._call("create batch", lambda: self._client.batches.create(
        input_file_id=file_id, endpoint=ENDPOINT, completion_window=self._window,
        metadata={"synth_name": name}))
    self.state.update(name, batch_id=batch.id)
    log.info("batch %s submitted as %s (step %s)", name, batch.id, step)
    return batch.id

  async def _find_by_input_file(self, file_id: str, skip: set[str]) -> str | None:
    page = await self._call("list batches", lambda: self._client.batches.list(limit=100))
    async for batch in page:
      if batch.input_file_id == file_id and batch.id not in skip and batch.status != "failed":
        return batch.id
    return None

  async def wait(self, batch_id: str) -> Any:
    """Polls until the batch reaches a terminal status; returns the Batch object."""
    while True:
      batch = await self._call("poll batch", lambda: self._client.batches.retrieve(batch_id))
      if batch.status in TERMINAL:
        return batch
      counts = getattr(batch, "request_counts", None)
      log.info("batch %s: %s %s", batch_id, batch.status,
               f"({counts.completed}/{counts.total})" if counts is not None else "")
      await asyncio.sleep(self._poll_interval)

  async def _download(self, file_id: str | None) -> list[dict[str, Any]]:
    if not file_id:
      return []
    content = await self._call("download batch file", lambda: self._client.files.content(file_id))
    out = []
    for line_no, line in enumerate(content.text.split("\n"), start=1):
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except ValueError:
        log.warning("batch file %s line %d is not JSON; ignored", file_id, line_no)
        continue
      if isinstance(obj, dict) and isinstance(obj.get("custom_id"), str):
        out.append(obj)
    return out

  async def results(self, batch: Any) -> dict[str, BatchItem]:
    """Outcomes by custom_id from the batch's output and error files."""
    items: dict[str, BatchItem] = {}
    for obj in await self._download(batch.output_file_id) + await self._download(batch.error_file_id):
      items[obj["custom_id"]] = _item(obj, self.redact)
    return items


def _item(obj: dict[str, Any], redact: Redactor) -> BatchItem:
  custom_id = obj["custom_id"]
  response = obj.get("response") or {}
  error = obj.get("error")
  status = response.get("status_code") if isinstance(response, dict) else None
  if error or status != 200:
    detail = redact(json.dumps(error or (response or {}).get("body"), ensure_ascii=False))[:300]
    if status == 429:
      failure = retry.RATE_LIMITED
    elif isinstance(status, int) and status < 500 and status != 408:
      failure = retry.CLIENT_ERROR
    else:
      failure = retry.SERVER_ERROR
    return BatchItem(custom_id, None, failure, f"batch request failed (status {status}): {detail}")
  try:
    return BatchItem(custom_id, read_completion(JsonView.wrap(response.get("body"))))
  except (TypeError, ValueError, AttributeError) as e:
    return BatchItem(custom_id, None, retry.MALFORMED_RESPONSE, f"unreadable batch response: {type(e).__name__}")
