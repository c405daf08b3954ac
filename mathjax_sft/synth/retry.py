"""Retry policy: which failures are retried, and how long to wait (exponential backoff with
jitter, or the server's Retry-After)."""

from __future__ import annotations

import dataclasses
import email.utils
import math
import random
import time
from collections.abc import Mapping

import openai

# Failure classes (also the failure reasons recorded when retries run out).
RATE_LIMITED = "rate_limited"
SERVER_ERROR = "server_error"
TIMEOUT = "timeout"
CONNECTION_ERROR = "connection_error"
MALFORMED_RESPONSE = "malformed_response"
CLIENT_ERROR = "client_error"        # other 4xx: this request is wrong, retrying will not help
FATAL = "fatal"                      # 401/403/404: the run is misconfigured, stop everything

RETRYABLE = frozenset({RATE_LIMITED, SERVER_ERROR, TIMEOUT, CONNECTION_ERROR, MALFORMED_RESPONSE})


def parse_retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
  """Seconds to wait from `retry-after-ms`, or `retry-after` (seconds or an HTTP date); None if
  absent or unparseable. Negative values become 0."""
  if not headers:
    return None
  lower = {str(k).lower(): str(v) for k, v in headers.items()}
  for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
    value = lower.get(name)
    if value is None:
      continue
    try:
      seconds = float(value) / scale
    except ValueError:
      continue
    if math.isfinite(seconds):
      return max(0.0, seconds)
  value = lower.get("retry-after")
  if value:
    parsed = email.utils.parsedate_tz(value)
    if parsed is not None:
      return max(0.0, email.utils.mktime_tz(parsed) - (time.time() if now is None else now))
  return None


def classify(error: BaseException) -> str:
  """The failure class of an exception raised by the openai client (or by asyncio timeouts)."""
  if isinstance(error, openai.RateLimitError):
    return RATE_LIMITED
  if isinstance(error, (openai.APITimeoutError, TimeoutError)):
    return TIMEOUT
  if isinstance(error, openai.APIConnectionError):
    return CONNECTION_ERROR
  if isinstance(error, openai.APIResponseValidationError):
    return MALFORMED_RESPONSE
  if isinstance(error, openai.APIStatusError):
    status = error.status_code
    if status in (401, 403, 404):
      return FATAL
    if status in (408, 409) or status >= 500:
      return SERVER_ERROR
    return CLIENT_ERROR
  if isinstance(error, (ValueError, TypeError, KeyError, AttributeError)):
    # A 200 whose body is not a chat completion (invalid JSON, missing fields).
    return MALFORMED_RESPONSE
  return CLIENT_ERROR


def server_message(error: BaseException, limit: int = 300) -> str | None:
  """What the server itself said in an HTTP error reply (`{"error": {"message": ...}}` as OpenAI
  and vLLM write it, `{"detail": ...}` as FastAPI servers such as llama-cpp-python do, or a plain
  text body), cut to `limit` characters; None when there is no reply or it is empty."""
  if not isinstance(error, openai.APIStatusError):
    return None
  body: object = error.body
  for key in ("error", "message", "detail"):
    if isinstance(body, dict) and key in body:
      body = body[key]
  if isinstance(body, dict):
    body = body.get("message") or body.get("detail") or body
  if body is None or isinstance(body, (dict, list)):
    try:
      body = error.response.text
    except Exception:  # a streamed or closed reply has no text
      return None
  text = " ".join(str(body).split())
  return text[:limit] or None


def describe_error(error: BaseException, limit: int = 300) -> str:
  """`Class: message`, with an HTTP error's status and the server's own message."""
  if isinstance(error, openai.APIStatusError):
    said = server_message(error, limit)
    return f"{type(error).__name__}: {error.status_code}" + (f" {said}" if said else "")
  cause = error.__cause__ if isinstance(error, openai.APIConnectionError) else None
  because = f" ({type(cause).__name__}: {cause})" if cause is not None and str(cause) else ""
  return f"{type(error).__name__}: {error}{because}"[:limit]


def error_headers(error: BaseException) -> Mapping[str, str] | None:
  """Response headers of an HTTP error, if it has any."""
  response = getattr(error, "response", None)
  return getattr(response, "headers", None)


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
  """At most `max_attempts` attempts. Backoff before attempt a+1 is "equal jitter":
  d = min(max_delay, base_delay * 2**(a-1)); wait d/2 + uniform(0, d/2). A server Retry-After
  is a floor: we wait at least that long (plus up to 10% jitter, so that waiters do not all come
  back at once), capped at `max_retry_after`."""

  max_attempts: int = 6
  base_delay: float = 1.0
  max_delay: float = 60.0
  max_retry_after: float = 300.0

  def should_retry(self, failure_class: str, attempt: int) -> bool:
    """Whether to try again after failed attempt number `attempt` (1-based)."""
    return failure_class in RETRYABLE and attempt < self.max_attempts

  def delay(self, attempt: int, retry_after: float | None = None,
            rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based)."""
    rng = rng or random
    d = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
    backoff = d / 2 + rng.uniform(0.0, d / 2)
    if retry_after is None:
      return backoff
    return max(backoff, min(retry_after, self.max_retry_after) * (1.0 + 0.1 * rng.random()))
