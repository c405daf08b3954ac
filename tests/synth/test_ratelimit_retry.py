"""Token buckets (RPM / TPM), Retry-After parsing, backoff and error classification."""

from __future__ import annotations

import asyncio
import email.utils
import random

import httpx2
import openai
import pytest

from mathjax_sft.synth import retry
from mathjax_sft.synth.ratelimit import RateLimiter, TokenBucket, parse_duration
from mathjax_sft.synth.redact import Redactor


class FakeClock:
  """Virtual time: sleep advances the clock instantly."""

  def __init__(self):
    self.now = 0.0
    self.sleeps: list[float] = []

  def __call__(self) -> float:
    return self.now

  async def sleep(self, seconds: float) -> None:
    self.sleeps.append(seconds)
    self.now += seconds


def test_bucket_bursts_then_paces_at_rate():
  clock = FakeClock()
  bucket = TokenBucket(60, capacity=5, clock=clock, sleep=clock.sleep)   # 1 per second

  async def take(n: int) -> None:
    for _ in range(n):
      await bucket.acquire(1)

  asyncio.run(take(5))
  assert clock.now == 0.0                     # the burst is free
  asyncio.run(take(10))
  assert clock.now == pytest.approx(10.0)     # then one per second


def test_token_bucket_settle_and_clamp():
  clock = FakeClock()
  bucket = TokenBucket(6000, clock=clock, sleep=clock.sleep)            # 100 tokens / s, capacity 6000
  asyncio.run(bucket.acquire(10_000))        # larger than capacity: clamped, no deadlock
  assert bucket.level() == pytest.approx(0)
  bucket.settle(-3000)                       # the estimate was too high: refund
  assert bucket.level() == pytest.approx(3000)
  bucket.settle(4000)                        # the real usage was higher: debt
  assert bucket.level() == pytest.approx(-1000)
  asyncio.run(bucket.acquire(500))
  assert clock.now == pytest.approx(15.0)    # (1000 debt + 500) / 100 per s
  assert TokenBucket(0).unlimited


def test_rate_limiter_pause_burst_and_pacing():
  clock = FakeClock()
  limiter = RateLimiter(requests_per_minute=120, tokens_per_minute=0, burst_seconds=6, clock=clock,
                        sleep=clock.sleep)        # 2 requests / s, bursts of 12
  assert limiter.requests.capacity == 12 and limiter.tokens.unlimited
  limiter.requests._level = 0                   # start empty
  limiter.pause_for(3.0)
  limiter.pause_for(1.0)                        # never shortens a pause

  async def many(n: int) -> list[float]:
    done = []
    async def one():
      await limiter.acquire(100)
      done.append(clock.now)
    await asyncio.gather(*(one() for _ in range(n)))
    return done

  times = asyncio.run(many(8))
  assert times == sorted(times) and min(times) >= 3.0
  assert times.count(3.0) == 6                  # 3 s of refill = 6 requests at the end of the pause
  assert times[-2:] == pytest.approx([3.5, 4.0])  # then paced at 2 / s


@pytest.mark.parametrize("headers, expected", [
    ({"Retry-After": "7"}, 7.0),
    ({"retry-after": "1.5"}, 1.5),
    ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
    ({"Retry-After": "soon"}, None),
    ({}, None),
    (None, None),
])
def test_parse_retry_after(headers, expected):
  assert retry.parse_retry_after(headers) == expected


def test_parse_retry_after_http_date():
  date = email.utils.formatdate(1_000_030, usegmt=True)
  assert retry.parse_retry_after({"Retry-After": date}, now=1_000_000) == pytest.approx(30.0)


def test_backoff_is_exponential_with_bounded_jitter_and_honours_retry_after():
  policy = retry.RetryPolicy(max_attempts=4, base_delay=1.0, max_delay=5.0, max_retry_after=60)
  rng = random.Random(0)
  for attempt, d in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (9, 5.0)):
    delays = [policy.delay(attempt, rng=rng) for _ in range(200)]
    assert d / 2 <= min(delays) and max(delays) <= d
    assert max(delays) - min(delays) > d / 4      # jitter actually spreads
  assert 10.0 <= policy.delay(1, retry_after=10.0, rng=rng) <= 11.0
  assert policy.delay(1, retry_after=1e6, rng=rng) <= 66.0
  assert policy.should_retry(retry.RATE_LIMITED, 3) and not policy.should_retry(retry.RATE_LIMITED, 4)
  assert not policy.should_retry(retry.CLIENT_ERROR, 1) and not policy.should_retry(retry.FATAL, 1)


def _status_error(status: int) -> openai.APIStatusError:
  request = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")
  response = httpx2.Response(status, request=request, headers={"retry-after": "2"})
  cls = {429: openai.RateLimitError, 401: openai.AuthenticationError, 400: openai.BadRequestError,
         404: openai.NotFoundError}.get(status, openai.InternalServerError)
  return cls(f"Error code: {status}", response=response, body=None)


def test_classify():
  request = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")
  assert retry.classify(_status_error(429)) == retry.RATE_LIMITED
  assert retry.classify(_status_error(500)) == retry.SERVER_ERROR
  assert retry.classify(_status_error(503)) == retry.SERVER_ERROR
  assert retry.classify(_status_error(401)) == retry.FATAL
  assert retry.classify(_status_error(404)) == retry.FATAL
  assert retry.classify(_status_error(400)) == retry.CLIENT_ERROR
  assert retry.classify(openai.APITimeoutError(request)) == retry.TIMEOUT
  assert retry.classify(asyncio.TimeoutError()) == retry.TIMEOUT
  assert retry.classify(openai.APIConnectionError(request=request)) == retry.CONNECTION_ERROR
  assert retry.classify(ValueError("Expecting value")) == retry.MALFORMED_RESPONSE
  assert retry.parse_retry_after(retry.error_headers(_status_error(429))) == 2.0


def test_redactor():
  key = "sk-synthTEST-abcdef123456"
  r = Redactor([key, None, "ab"])
  text = r(f"Error: Incorrect API key {key}; header Authorization: Bearer {key}; other sk-proj-XYZ1234567")
  assert key not in text and "sk-proj-XYZ1234567" not in text and text.count("[REDACTED]") == 3
  assert r("ab cab task-force") == "ab cab task-force"     # short secrets and ordinary words untouched


@pytest.mark.parametrize("text, seconds", [
    ("6m0s", 360.0), ("1s", 1.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.5", 0.5), ("", None),
    ("soon", None), ("5x", None), (None, None),
])
def test_parse_duration(text, seconds):
  assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


def test_limiter_follows_the_server_headers_and_caps_them():
  clock = FakeClock()
  limiter = RateLimiter(None, None, burst_seconds=6, clock=clock, sleep=clock.sleep)
  assert limiter.requests.rate == pytest.approx(500 / 60)          # the defaults until told
  assert limiter.tokens.rate == pytest.approx(300_000 / 60)

  async def one(tokens: float):
    return await limiter.acquire(tokens)

  ticket = asyncio.run(one(100))
  asyncio.run(one(100))            # a second request left before the first one's reply came
  limiter.observe({"x-ratelimit-limit-requests": "120", "x-ratelimit-remaining-requests": "3",
                   "x-ratelimit-reset-requests": "1s", "x-ratelimit-limit-tokens": "6000",
                   "x-ratelimit-remaining-tokens": "5000", "x-ratelimit-reset-tokens": "6m0s"}, ticket)
  assert limiter.requests.rate == pytest.approx(2.0) and limiter.requests.capacity == pytest.approx(12)
  assert limiter.tokens.rate == pytest.approx(100.0) and limiter.tokens.capacity == pytest.approx(600)
  assert limiter.requests.level() == pytest.approx(2)     # 3 remaining, less the one sent since
  assert limiter.server_limits == {"requests": 120, "tokens": 6000}
  asyncio.run(one(10)); asyncio.run(one(10))
  assert clock.now == 0.0
  asyncio.run(one(10))                                    # the server's window is empty: wait
  assert clock.now == pytest.approx(0.5)
  # A configured rate caps what the server allows; 0 ignores the server.
  capped = RateLimiter(60, 0, clock=clock, sleep=clock.sleep)
  capped.observe({"x-ratelimit-limit-requests": "120", "x-ratelimit-limit-tokens": "6000"},
                 asyncio.run(capped.acquire(1)))
  assert capped.requests.rate == pytest.approx(1.0) and capped.tokens.unlimited
  # Exhausted with a reset: nothing starts before the next request comes back.
  empty = RateLimiter(None, None, clock=clock, sleep=clock.sleep)
  start = clock.now
  empty.observe({"x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": "0",
                 "x-ratelimit-reset-requests": "20ms"}, asyncio.run(empty.acquire(1)))
  asyncio.run(empty.acquire(1))
  assert clock.now - start >= 0.02 - 1e-9


def test_run_without_rate_flags_paces_to_the_server_headers(tmp_path, gsm8k_input, fake_server):
  """The server allows 2400 requests a minute in bursts of 5 and answers 429 beyond; it says so
  in x-ratelimit headers. With no rate flags the run paces itself to them: after the requests
  sent before the first reply, the bucket is (nearly) never found empty. With the client's limits
  off it runs into the server's limit again and again."""
  from mathjax_sft.synth.run import run
  from tests.synth.helpers import PLANTED_KEY, fast_config, read_jsonl

  def one_run(name: str, **limits):
    server = fake_server(ratelimit_requests=2400, ratelimit_tokens=20_000_000, ratelimit_burst_seconds=0.125)
    config = fast_config(gsm8k_input(10), tmp_path / name, server.base_url, per_reference=1,
                         max_concurrency=6, max_attempts=20, **limits)
    run(config, api_key=PLANTED_KEY)
    assert len(read_jsonl(tmp_path / name / "rows.jsonl")) == 10
    return server.state.rate_limited

  paced = one_run("paced", requests_per_minute=None, tokens_per_minute=None)
  unpaced = one_run("unpaced", requests_per_minute=0, tokens_per_minute=0)
  # The opening burst of 6 against a bucket of 5 (one 429), then at most one more: client and
  # server refill at the same rate, so on a busy machine a request can still come a few ms early.
  # Unpaced, the run hits the limit ~30 times.
  assert paced <= 2
  assert unpaced >= 5 * max(paced, 1)
