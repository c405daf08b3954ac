"""Injectable worker verify functions for the grader time-limit tests (run inside the worker)."""

from __future__ import annotations

import os
import signal
import time


def hang_on_slow(gold: str, pred: str, dataset: str, timeout_s: int) -> bool:
  """Hangs (ignoring SIGALRM, like C code would) when pred contains 'SLOW'; dies on 'CRASH'.

  Otherwise: whether pred is an anagram of gold ("a+b" ~ "b+a"), a stand-in for equivalence that
  the grader's exact-match fast path cannot decide, so it really runs in the worker.
  """
  del dataset, timeout_s
  if "SLOW" in pred:
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    time.sleep(3600)
  if "CRASH" in pred:
    os._exit(3)  # pylint: disable=protected-access
  return sorted(gold) == sorted(pred)
