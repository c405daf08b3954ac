"""Trouble with the endpoint, logged once when it starts and once when it ends.

Every failed attempt that will be retried (connection refused, timeout, 5xx, 429, a broken body)
is retried quietly; the first one of a spell logs one warning naming the URL and the error, and
the first success of a request sent after the last failure logs one line saying how long the
spell lasted and how many attempts failed in it. Requests that were already in flight when the
trouble began do not end it, so concurrent rows do not make the spell flicker on and off. A spell
that begins within `QUIET_SECONDS` of the end of the previous one (429s at a busy rate limit come
and go) is logged at debug level only, so the log holds at most two such lines a minute."""

from __future__ import annotations

import collections
import logging
import time

log = logging.getLogger(__name__)
QUIET_SECONDS = 60.0


class Outage:
  """The state of the current spell of failed attempts against one endpoint."""

  def __init__(self, url: str, max_attempts: int, clock=time.monotonic):
    self.url = url
    self.max_attempts = max_attempts
    self._clock = clock
    self.started: float | None = None          # when the spell began (None: no spell)
    self.last_failure = 0.0
    self.failed: collections.Counter[str] = collections.Counter()
    self.spells = 0
    self._level = logging.WARNING                # of the current spell's lines
    self._quiet_until = float("-inf")

  def now(self) -> float:
    """The clock a request's send time is read from, to pass to `succeeded`."""
    return self._clock()

  def failed_attempt(self, failure_class: str, description: str) -> None:
    """A retryable attempt failed with `failure_class` (`description`: the redacted error)."""
    now = self._clock()
    self.last_failure = now
    self.failed[failure_class] += 1
    if self.started is None:
      self.started = now
      self.spells += 1
      self._level = logging.DEBUG if now < self._quiet_until else logging.WARNING
      log.log(self._level, "%s is failing (%s: %s); requests are retried with backoff, up to %d attempt(s) each; "
                  "one line follows when it answers again", self.url, failure_class, description,
                  self.max_attempts)

  def succeeded(self, sent_at: float) -> None:
    """A request sent at `sent_at` (from `now`) was answered."""
    if self.started is None or sent_at < self.last_failure:
      return
    counts = ", ".join(f"{name} {n}" for name, n in sorted(self.failed.items()))
    now = self._clock()
    log.log(min(self._level, logging.INFO), "%s answers again after %.1fs; %d attempts failed meanwhile (%s)",
            self.url, now - self.started, sum(self.failed.values()), counts)
    self.started = None
    self._quiet_until = now + QUIET_SECONDS
    self.failed.clear()
