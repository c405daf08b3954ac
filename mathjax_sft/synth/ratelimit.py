"""Client-side rate limiting: token buckets for requests per minute and tokens per minute, paced
to the server's own limits when it announces them.

A request first takes 1 from the request bucket and an *estimate* of its tokens (prompt estimate +
max_tokens, which is how OpenAI counts against the TPM limit) from the token bucket; once the real
usage is known the difference is settled (`settle`). Waiters are served first come, first served.
A 429 from the server can also pause everyone (`pause_for`), since the server's window is shared.

Server limits (`observe`): OpenAI sends `x-ratelimit-limit-{requests,tokens}` (per minute),
`x-ratelimit-remaining-*` and `x-ratelimit-reset-*` (time until the window is full again, e.g.
"6m0s", "1s", "20ms") with every reply. A bucket then refills at the announced limit (never above
the configured cap), holds `burst_seconds` of it, and never holds more than the server says
remains, less what was sent since the reply's request went out (those may not be counted yet). A
server that says nothing is paced at the configured rate, or at the defaults (500 requests and
300,000 tokens a minute) when none is configured. When the server says a window is empty, no new
request starts before the next unit comes back (the reset time, spread over the limit).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class TokenBucket:
  """`rate_per_minute` units per minute, bursts up to `capacity` (default: one minute's worth).

  A rate of 0 means unlimited. An amount above capacity is clamped to it (it waits for a full
  bucket) so that one big request can never deadlock. The level may go negative after `settle`,
  which delays later requests: the debt is paid back over time."""

  def __init__(self, rate_per_minute: float, capacity: float | None = None,
               clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep):
    self.rate = rate_per_minute / 60.0
    self.capacity = capacity if capacity is not None else rate_per_minute
    self._level = self.capacity
    self._clock = clock
    self._sleep = sleep
    self._updated = clock()
    self._lock = asyncio.Lock()

  @property
  def unlimited(self) -> bool:
    return self.rate <= 0

  def _refill(self) -> None:
    now = self._clock()
    self._level = min(self.capacity, self._level + (now - self._updated) * self.rate)
    self._updated = now

  def level(self) -> float:
    """Units available now (may be negative)."""
    self._refill()
    return self._level

  async def acquire(self, amount: float = 1.0) -> float:
    """Waits until `amount` units are available and takes them; returns the seconds waited."""
    if self.unlimited:
      return 0.0
    amount = min(amount, self.capacity)
    waited = 0.0
    async with self._lock:
      while True:
        self._refill()
        if self._level >= amount - 1e-9:   # rounding must not leave a wait too short to advance time
          self._level -= amount
          return waited
        delay = (amount - self._level) / self.rate
        await self._sleep(delay)
        waited += delay

  def settle(self, delta: float) -> None:
    """Takes `delta` more units (negative: gives units back, up to capacity)."""
    if self.unlimited:
      return
    self._refill()
    self._level = min(self.capacity, self._level - delta)

  def set_rate(self, rate_per_minute: float, capacity: float) -> None:
    """A new rate and capacity; what the bucket holds is kept (up to the new capacity)."""
    self._refill()
    was_unlimited = self.unlimited
    self.rate = rate_per_minute / 60.0
    self.capacity = capacity
    self._level = capacity if was_unlimited else min(self._level, capacity)

  def cap_level(self, level: float) -> None:
    """Holds at most `level` units from now on (what the server says remains)."""
    if self.unlimited:
      return
    self._refill()
    self._level = min(self._level, level)


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_SCALE = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(text: str | None) -> float | None:
  """Seconds in OpenAI's reset format ("6m0s", "1s", "20ms", "1h2m3.5s") or a plain number of
  seconds; None when absent or unreadable."""
  if text is None:
    return None
  text = str(text).strip()
  try:
    value = float(text)
    return value if math.isfinite(value) and value >= 0 else None
  except ValueError:
    pass
  parts = _DURATION_PART.findall(text)
  if not parts or "".join(n + u for n, u in parts) != text:
    return None
  return sum(float(n) * _SCALE[u] for n, u in parts)


def _number(text: str | None) -> float | None:
  try:
    value = float(text)
  except (TypeError, ValueError):
    return None
  return value if math.isfinite(value) and value >= 0 else None


@dataclasses.dataclass(frozen=True)
class Ticket:
  """What had been sent when a request went out (to tell what a reply cannot have counted)."""

  requests: float
  tokens: float


class RateLimiter:
  """Requests-per-minute and tokens-per-minute buckets plus a shared pause (server 429s).

  `requests_per_minute` / `tokens_per_minute`: None follows the server (the defaults until it
  announces its limits), a number caps what the server allows, 0 turns the bucket off (and the
  server's headers are ignored for it). Bursts are limited to `burst_seconds` worth of each rate
  (servers enforce their per-minute limits over shorter windows, so a whole minute's burst at
  start-up would draw 429s)."""

  DEFAULT_REQUESTS_PER_MINUTE = 500.0
  DEFAULT_TOKENS_PER_MINUTE = 300_000.0

  def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None,
               burst_seconds: float = 6.0, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep):
    self._caps = {"requests": requests_per_minute, "tokens": tokens_per_minute}
    self._burst = burst_seconds
    rpm = self.DEFAULT_REQUESTS_PER_MINUTE if requests_per_minute is None else requests_per_minute
    tpm = self.DEFAULT_TOKENS_PER_MINUTE if tokens_per_minute is None else tokens_per_minute
    self.requests = TokenBucket(rpm, max(1.0, rpm * burst_seconds / 60), clock=clock, sleep=sleep)
    self.tokens = TokenBucket(tpm, tpm * burst_seconds / 60, clock=clock, sleep=sleep)
    self.server_limits: dict[str, float] = {}    # the limits the server announced, per minute
    self._clock = clock
    self._sleep = sleep
    self._paused_until = 0.0
    self._sent = Ticket(0.0, 0.0)

  def pause_for(self, seconds: float) -> None:
    """No new request starts for `seconds` (extends, never shortens, a running pause)."""
    self._paused_until = max(self._paused_until, self._clock() + seconds)

  async def acquire(self, estimated_tokens: float) -> Ticket:
    """Waits for the pause, a request slot and `estimated_tokens`; returns the ticket to give
    `observe` with the reply's headers."""
    while (pause := self._paused_until - self._clock()) > 0:
      await self._sleep(pause)
    await self.requests.acquire(1.0)
    await self.tokens.acquire(estimated_tokens)
    ticket = self._sent
    self._sent = Ticket(ticket.requests + 1, ticket.tokens + estimated_tokens)
    return ticket

  def settle(self, estimated_tokens: float, actual_tokens: float) -> None:
    """Corrects the token bucket once a request's real usage is known."""
    self.tokens.settle(actual_tokens - estimated_tokens)

  def observe(self, headers: Mapping[str, str] | None, ticket: Ticket) -> None:
    """Paces to the `x-ratelimit-*` headers of a reply to the request that took `ticket`."""
    if not headers:
      return
    for kind, bucket, sent_since in (("requests", self.requests, self._sent.requests - ticket.requests - 1),
                                     ("tokens", self.tokens, self._sent.tokens - ticket.tokens)):
      cap = self._caps[kind]
      if cap == 0:
        continue
      limit = _number(headers.get(f"x-ratelimit-limit-{kind}"))
      remaining = _number(headers.get(f"x-ratelimit-remaining-{kind}"))
      if limit:
        self.server_limits[kind] = limit
        rate = limit if cap is None else min(cap, limit)
        if rate / 60.0 != bucket.rate:
          bucket.set_rate(rate, max(1.0, rate * self._burst / 60))
      if remaining is not None:
        bucket.cap_level(remaining - max(0.0, sent_since))
        reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}"))
        if remaining < 1 and reset:
          self.pause_for(min(reset, 60.0 / limit) if limit else reset)
