"""Client-side rate limiting: token buckets for requests per minute and tokens per minute.

A request first takes 1 from the request bucket and an *estimate* of its tokens (prompt estimate +
max_tokens, which is how OpenAI counts against the TPM limit) from the token bucket; once the real
usage is known the difference is settled (`settle`). Waiters are served first come, first served.
A 429 from the server can also pause everyone (`pause_for`), since the server's window is shared.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

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
        if self._level >= amount:
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


class RateLimiter:
  """Requests-per-minute and tokens-per-minute buckets plus a shared pause (server 429s).

  Bursts are limited to `burst_seconds` worth of each rate (servers enforce their per-minute
  limits over shorter windows, so a whole minute's burst at start-up would draw 429s)."""

  def __init__(self, requests_per_minute: float, tokens_per_minute: float, burst_seconds: float = 6.0,
               clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep):
    self.requests = TokenBucket(requests_per_minute, max(1.0, requests_per_minute * burst_seconds / 60),
                                clock=clock, sleep=sleep)
    self.tokens = TokenBucket(tokens_per_minute, tokens_per_minute * burst_seconds / 60, clock=clock, sleep=sleep)
    self._clock = clock
    self._sleep = sleep
    self._paused_until = 0.0

  def pause_for(self, seconds: float) -> None:
    """No new request starts for `seconds` (extends, never shortens, a running pause)."""
    self._paused_until = max(self._paused_until, self._clock() + seconds)

  async def acquire(self, estimated_tokens: float) -> float:
    """Waits for the pause, a request slot and `estimated_tokens`; returns the seconds waited."""
    waited = 0.0
    while (pause := self._paused_until - self._clock()) > 0:
      await self._sleep(pause)
      waited += pause
    waited += await self.requests.acquire(1.0)
    waited += await self.tokens.acquire(estimated_tokens)
    return waited

  def settle(self, estimated_tokens: float, actual_tokens: float) -> None:
    """Corrects the token bucket once a request's real usage is known."""
    self.tokens.settle(actual_tokens - estimated_tokens)
