"""Chat completions under our own retry policy and rate limits.

The official `openai.AsyncOpenAI` client is built with `max_retries=0`: its built-in retries (which
also handle 429 / 5xx / timeouts) are switched off so that the policy in `retry` is the only one in
force and every attempt passes through the rate limiter and the usage counters. A 200 reply is
still checked: a body that is not a chat completion is a retryable `malformed_response`, and the
caller's parser turns empty or unusable content into `ReplyError`s, which are re-sampled
(`max_reply_retries`) with a new seed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
from collections.abc import Callable
from typing import Any, TypeVar

import httpx2
import openai

from mathjax_sft import errors
from mathjax_sft.synth import retry
from mathjax_sft.synth.outage import Outage
from mathjax_sft.synth.ratelimit import RateLimiter
from mathjax_sft.synth.redact import Redactor
from mathjax_sft.synth.replies import ReplyError
from mathjax_sft.synth.usage import UsageTracker

log = logging.getLogger(__name__)
API_KEY_ENV = "OPENAI_API_KEY"
MAX_REPLY_CHARS = 4000   # of a reply kept in a failure record
T = TypeVar("T")


def clip(text: str, limit: int) -> str:
  """`text`, or its first `limit` characters and how many more there were."""
  if len(text) <= limit:
    return text
  return text[:limit] + f" [... {len(text) - limit} more characters]"


def clip_reply(content: str | None, redact: Callable[[str], str]) -> str | None:
  """A reply as a failure record keeps it: redacted, and its head only when it is long."""
  return None if content is None else clip(redact(content), MAX_REPLY_CHARS)


class MissingKeyError(errors.UserError, RuntimeError):
  """$OPENAI_API_KEY is not set."""


class FatalAPIError(RuntimeError):
  """The endpoint refuses the run itself (bad key, no access, unknown model or path): stop, and
  record nothing against the rows."""


class RequestFailed(RuntimeError):
  """A request that failed for good: retries exhausted or not retryable. `reason` is counted;
  `requests` and the tokens are what the failing step spent (every HTTP attempt), `reply` what
  the server sent last (the unusable reply, or an error body; redacted), `attempts` how many
  samples (reply errors) or HTTP attempts (transport errors) were made."""

  def __init__(self, reason: str, detail: str, prompt_tokens: int = 0, completion_tokens: int = 0, *,
               requests: int = 0, reply: str | None = None, attempts: int = 0):
    super().__init__(f"{reason}: {detail}")
    self.reason = reason
    self.detail = detail
    self.prompt_tokens = prompt_tokens
    self.completion_tokens = completion_tokens
    self.requests = requests
    self.reply = reply
    self.attempts = attempts


def api_key_from_env() -> str:
  """The API key, only ever from $OPENAI_API_KEY."""
  key = os.environ.get(API_KEY_ENV, "")
  if not key.strip():
    raise MissingKeyError(f"${API_KEY_ENV} is not set; the API key is read only from that variable")
  return key.strip()


def refusal(error: BaseException, url: str, key_source: str, step: str, model: str) -> str:
  """One line for a reply that refuses the whole run (401/403/404), with the server's own words,
  the URL, and where the key came from."""
  status = getattr(error, "status_code", None)
  said = retry.server_message(error)
  said = f": {said}" if said else ""
  if status in (401, 403):
    return (f"{url} refused the API key from {key_source} ({status}{said}) at step {step}; set the "
            f"key this server expects, or check --base_url")
  return f"{url} answered {status}{said} at step {step}; check --model={model} and --base_url"


class EndpointUnreachable(errors.UserError):
  """No connection to --base_url could be made (nothing listens there, unknown host)."""


async def check_reachable(client: openai.AsyncOpenAI, policy: retry.RetryPolicy,
                          redactor: Redactor, rng: random.Random | None = None) -> None:
  """Asks the endpoint for its model list once, retried per `policy` while no connection can
  be made; EndpointUnreachable naming the URL when none ever is. Any reply (an error status
  included) or a timeout counts as reachable: the rows' own requests deal with those."""
  attempt = 0
  while True:
    attempt += 1
    try:
      await client.models.list()
      return
    except openai.APITimeoutError:
      return
    except openai.APIConnectionError as error:
      if not policy.should_retry(retry.CONNECTION_ERROR, attempt):
        cause = error.__cause__ or error
        detail = redactor(f"{type(cause).__name__}: {cause}")[:200]
        raise EndpointUnreachable(
            f"--base_url={str(client.base_url).rstrip('/')}: cannot connect ({detail}) after {attempt} "
            "attempt(s); is the server running and the URL right?", flag="--base_url") from error
      await asyncio.sleep(policy.delay(attempt, None, rng))
    except openai.APIError:
      return


def make_openai_client(api_key: str, base_url: str | None, timeout: float) -> openai.AsyncOpenAI:
  """The official async client, with its own retries disabled (see module docstring)."""
  return openai.AsyncOpenAI(api_key=api_key, base_url=base_url or None, timeout=timeout, max_retries=0)


@dataclasses.dataclass(frozen=True)
class ChatResult:
  """One successful completion (content not yet validated) and its token usage."""

  content: str | None
  prompt_tokens: int
  completion_tokens: int
  model: str | None
  finish_reason: str | None
  attempts: int = 1          # HTTP requests it took (failed attempts included)


def estimate_tokens(messages: list[dict[str, str]], max_tokens: int) -> int:
  """What a request counts against a TPM limit: ~4 characters per prompt token + max_tokens."""
  return sum(len(m.get("content", "")) for m in messages) // 4 + 8 * len(messages) + max_tokens


class JsonView:
  """Attribute access over plain JSON, so that one reader handles typed replies and raw ones."""

  def __init__(self, data: dict[str, Any]):
    self._data = data

  @staticmethod
  def wrap(value: Any) -> Any:
    if isinstance(value, dict):
      return JsonView(value)
    if isinstance(value, list):
      return [JsonView.wrap(v) for v in value]
    return value

  def __getattr__(self, name: str) -> Any:
    if name.startswith("_"):
      raise AttributeError(name)
    return JsonView.wrap(self._data.get(name))


def read_completion(response: Any, attempts: int = 1) -> ChatResult:
  """Pulls content and usage out of a reply (the `attempts`-th HTTP request for it); ValueError
  when it is not a chat completion."""
  choices = getattr(response, "choices", None)
  if not isinstance(choices, list) or not choices:
    raise ValueError("reply has no choices")
  message = getattr(choices[0], "message", None)
  content = getattr(message, "content", None)
  if content is not None and not isinstance(content, str):
    raise ValueError("message content is not a string")
  usage = getattr(response, "usage", None)
  prompt_tokens = getattr(usage, "prompt_tokens", 0) or 0
  completion_tokens = getattr(usage, "completion_tokens", 0) or 0
  if not isinstance(prompt_tokens, int) or not isinstance(completion_tokens, int):
    raise ValueError("usage is not integer token counts")
  model = getattr(response, "model", None)
  return ChatResult(content, prompt_tokens, completion_tokens, model if isinstance(model, str) else None,
                    getattr(choices[0], "finish_reason", None), attempts)


class ChatClient:
  """Rate-limited, retried chat completions that count their usage."""

  def __init__(self, client: openai.AsyncOpenAI, limiter: RateLimiter, policy: retry.RetryPolicy,
               usage: UsageTracker, redactor: Redactor, timeout: float, *,
               max_reply_retries: int = 2, rng: random.Random | None = None,
               key_source: str = f"${API_KEY_ENV}"):
    self._client = client
    self.url = str(client.base_url).rstrip("/")
    self._key_source = key_source
    self.outage = Outage(self.url, policy.max_attempts)
    self._limiter = limiter
    self._policy = policy
    self._usage = usage
    self._redact = redactor
    self._timeout = timeout
    self._max_reply_retries = max_reply_retries
    self._rng = rng or random.Random()

  def clip(self, reply: str | None) -> str | None:
    """`clip_reply` with this client's redactor."""
    return clip_reply(reply, self._redact)

  def describe(self, error: BaseException) -> str:
    """A short, redacted description of an error (with the server's own message), safe to log
    and store."""
    return self._redact(retry.describe_error(error))[:300]

  async def complete(self, step: str, messages: list[dict[str, str]], *, model: str,
                     temperature: float, max_tokens: int, seed: int | None) -> ChatResult:
    """One completion, retried per the policy; RequestFailed or FatalAPIError when it gives up."""
    estimate = estimate_tokens(messages, max_tokens)
    attempt = 0
    while True:
      attempt += 1
      ticket = await self._limiter.acquire(estimate)
      sent_at = self.outage.now()
      kwargs: dict[str, Any] = {"model": model, "messages": messages, "temperature": temperature,
                                "max_tokens": max_tokens}
      if seed is not None:
        kwargs["seed"] = seed
      raw = None
      try:
        # The body is posted as it is: the typed `chat.completions.create` spends more CPU on
        # transforming its arguments and building reply models than on the HTTP exchange.
        raw = await asyncio.wait_for(self._client.post("/chat/completions", body=kwargs, cast_to=httpx2.Response),
                                     timeout=self._timeout)
        self._limiter.observe(raw.headers, ticket)
        result = read_completion(JsonView.wrap(raw.json()), attempts=attempt)
      except asyncio.CancelledError:
        raise
      except Exception as error:  # classified below; nothing from the server is evaluated
        failure = retry.classify(error)
        self._usage.record_request(ok=False, failure_class=failure)
        self._limiter.observe(retry.error_headers(error), ticket)
        self._limiter.settle(estimate, 0)
        if failure == retry.FATAL:
          raise FatalAPIError(self._redact(refusal(error, self.url, self._key_source, step, model))) from None
        retry_after = retry.parse_retry_after(retry.error_headers(error))
        if failure == retry.RATE_LIMITED and retry_after:
          self._limiter.pause_for(min(retry_after, self._policy.max_retry_after))
        description = self.describe(error)
        if failure in retry.RETRYABLE:
          self.outage.failed_attempt(failure, description)
        if not self._policy.should_retry(failure, attempt):
          said = retry.server_message(error, MAX_REPLY_CHARS) or (raw.text if raw is not None else None)
          raise RequestFailed(failure, f"{step}: {self.url}: {description} (after {attempt} attempt(s))",
                              requests=attempt, reply=clip_reply(said, self._redact), attempts=attempt) from None
        delay = self._policy.delay(attempt, retry_after, self._rng)
        self._usage.retries += 1
        log.debug("%s: attempt %d failed (%s); retrying in %.2fs", step, attempt, failure, delay)
        await asyncio.sleep(delay)
        continue
      self._usage.record_request(ok=True)
      self._usage.record_tokens(step, result.prompt_tokens, result.completion_tokens)
      self._limiter.settle(estimate, result.prompt_tokens + result.completion_tokens)
      self.outage.succeeded(sent_at)
      return result

  async def complete_parsed(self, step: str, messages: list[dict[str, str]], parse: Callable[[str | None], T],
                            *, model: str, temperature: float, max_tokens: int,
                            seed: int | None) -> tuple[T, ChatResult, dict[str, int]]:
    """`complete`, then `parse` the content; a ReplyError re-samples (new seed) up to
    max_reply_retries times. Returns (parsed, last result, usage of all tries)."""
    spent = {"prompt_tokens": 0, "completion_tokens": 0, "requests": 0}
    tries = 0
    while True:
      tries += 1
      try:
        result = await self.complete(step, messages, model=model, temperature=temperature,
                                     max_tokens=max_tokens, seed=seed)
      except RequestFailed as failed:
        failed.prompt_tokens += spent["prompt_tokens"]
        failed.completion_tokens += spent["completion_tokens"]
        failed.requests += spent["requests"]
        raise
      spent["prompt_tokens"] += result.prompt_tokens
      spent["completion_tokens"] += result.completion_tokens
      spent["requests"] += result.attempts
      try:
        return parse(result.content), result, spent
      except ReplyError as bad:
        self._usage.bad_replies[bad.reason] += 1
        if tries > self._max_reply_retries:
          raise RequestFailed(bad.reason, f"{step}: {self._redact(bad.detail)[:300]} (after {tries} sample(s))",
                              spent["prompt_tokens"], spent["completion_tokens"], requests=spent["requests"],
                              reply=clip_reply(result.content, self._redact), attempts=tries) from None
        seed = None if seed is None else seed + 1000003
