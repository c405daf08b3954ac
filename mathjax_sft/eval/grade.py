"""Answer equivalence: normalised exact match, else a strict comparison in worker processes with
time limits.

The workers parse both answers with math-verify and compare the sympy objects with
:mod:`equivalence`: exactly where both sides are exact (never math-verify's rounding to 6
decimals, which makes any two values below ~1e-6 equal), within a relative tolerance where a side
is a decimal, equations as equations. A false credit per sample of p becomes about 1 - (1 - p)^N
per problem at Pass@N, so the comparison leans to "different" when it cannot show "equal".

Time limits use ``signal.alarm``/``setitimer``, which only work in the main thread of a process
and cannot interrupt C code. The sampler's process has JAX and its threads loaded, so grading
runs elsewhere: :class:`Grader` keeps ``num_workers`` fresh interpreters (``python -m
mathjax_sft.eval.grade_worker``, started with ``subprocess`` = fork+exec, so nothing of the
parent's state or threads is inherited; unlike multiprocessing 'spawn', the parent's ``__main__``
script is not re-imported either). Each worker grades one pair at a time under its own limits,
and the parent enforces a hard wall-clock limit per answer: a worker that exceeds it is killed,
the answer is graded False with reason ``"timeout"``, and a replacement worker is started. A run
never hangs on one answer.

Fast paths that never reach a worker (reason in parentheses):

* no prediction (``None`` or empty after normalisation) -> False (``"no_answer"``);
* equal :func:`answers.normalize_answer` keys -> True (``"exact"``);
* both keys plain decimal numbers, written canonically (no thousands separator left that could
  be a tuple's comma), but different -> False (``"numeric"``; exact decimal compare). Anything
  less certain goes to a worker: the fast path says "different" only when it is sure.

Identical (gold, prediction) pairs are graded once per call, and results are cached across calls.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import selectors
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from mathjax_sft.eval import answers

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding mathjax_sft/


@dataclasses.dataclass(frozen=True)
class Grade:
  """Outcome for one prediction.

  ``reason`` is one of: ``no_answer``, ``exact``, ``numeric``, ``verify``, ``unparsed``,
  ``timeout``, ``error``, ``crash`` (the worker died while grading this answer).
  """
  correct: bool
  reason: str


def fast_grade(gold: str, pred: str | None) -> Grade | None:
  """The grade when it needs no worker, else None (see module docstring)."""
  if pred is None:
    return Grade(False, "no_answer")
  pred_key = answers.normalize_answer(pred)
  if not pred_key:
    return Grade(False, "no_answer")
  gold_key = answers.normalize_answer(gold)
  if pred_key == gold_key:
    return Grade(True, "exact")
  if answers.canonical_number(gold_key) == gold_key and \
      answers.canonical_number(pred_key) == pred_key:
    return Grade(False, "numeric")
  return None


class _Worker:
  """One grading subprocess and the request it is working on."""

  def __init__(self, argv: list[str], env: dict[str, str]):
    self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                 close_fds=True)
    self.fd = self.proc.stdout.fileno()
    self.buffer = b""
    self.ready = False
    self.started = time.monotonic()
    self.task: int | None = None  # index into the call's unique-pair list
    self.task_started = 0.0

  def send(self, message: dict) -> None:
    self.proc.stdin.write((json.dumps(message) + "\n").encode("utf-8"))
    self.proc.stdin.flush()

  def read_messages(self) -> list[dict] | None:
    """Complete messages available now; None at EOF (the worker died)."""
    chunk = os.read(self.fd, 1 << 16)
    if not chunk:
      return None
    self.buffer += chunk
    *lines, self.buffer = self.buffer.split(b"\n")
    return [json.loads(line) for line in lines if line.strip()]

  def kill(self) -> None:
    if self.proc.poll() is None:
      self.proc.kill()
    self.proc.wait()
    for stream in (self.proc.stdin, self.proc.stdout):
      try:
        stream.close()
      except OSError:
        pass

  def shutdown(self, wait_s: float = 2.0) -> None:
    """Polite stop (stdin EOF), then kill."""
    try:
      self.proc.stdin.close()
    except OSError:
      pass
    try:
      self.proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
      pass
    self.kill()


class Grader:
  """Batched answer grading through a pool of worker processes (math-verify's parser, the strict
  comparison of :mod:`equivalence`).

  Use as a context manager (or call :meth:`close`)::

    with Grader(num_workers=2, timeout_s=5) as grader:
      correct = grader.grade(golds, preds, "math")   # list[bool], same length as preds

  Workers start lazily on the first pair that needs one, so GSM8K runs whose answers all
  take the fast path never start one.

  Args:
    num_workers: worker processes grading in parallel.
    timeout_s: hard wall-clock limit per answer, enforced by the parent (kill + replace). Inside
      the worker every parse and comparison gets ``max(1, floor(timeout_s / 2))`` whole seconds,
      so most slow inputs are stopped there without losing the worker.
    verify_fn: ``"module:function"`` run in the worker instead of the default comparison
      (:func:`grade_worker.strict_equal`); called as ``fn(gold, pred, dataset, timeout_seconds)
      -> bool | (bool, reason)``. ``mathjax_sft.eval.grade_worker:math_verify_equal`` is
      math-verify's own ``verify``.
    memory_limit_mb: address-space limit of each worker (0: none).
    startup_timeout_s: a worker that is not ready this long after starting is an error.
    cache_size: results kept across calls (0 disables the cache).
  """

  def __init__(self, num_workers: int = 2, timeout_s: float = 5.0, verify_fn: str | None = None,
               memory_limit_mb: int = 4096, startup_timeout_s: float = 120.0,
               cache_size: int = 200_000):
    if num_workers < 1:
      raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if timeout_s <= 0:
      raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    self.num_workers = num_workers
    self.timeout_s = float(timeout_s)
    self.worker_timeout_s = max(1, math.floor(timeout_s / 2))
    self.startup_timeout_s = startup_timeout_s
    self.cache_size = cache_size
    self._cache: collections.OrderedDict[tuple[str, str, str], Grade] = collections.OrderedDict()
    self._argv = [sys.executable, "-m", "mathjax_sft.eval.grade_worker",
                  f"--timeout_s={self.worker_timeout_s}", f"--memory_limit_mb={memory_limit_mb}"]
    if verify_fn:
      self._argv.append(f"--verify_fn={verify_fn}")
    self._env = dict(os.environ)
    self._env["PYTHONPATH"] = os.pathsep.join(
        [str(_PACKAGE_ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    self._workers: list[_Worker] = []
    self._selector = selectors.DefaultSelector()
    self._closed = False
    self.num_restarts = 0  # workers replaced after a timeout or crash

  def __enter__(self) -> "Grader":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __del__(self) -> None:
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass

  def close(self) -> None:
    """Stops all workers. The grader can not be used afterwards."""
    if self._closed:
      return
    self._closed = True
    for worker in self._workers:
      worker.shutdown()
    self._workers = []
    self._selector.close()

  def grade(self, golds: Sequence[str], preds: Sequence[str | None], dataset: str) -> list[bool]:
    """Whether each prediction equals its gold answer.

    Args:
      golds: gold answer strings, one per prediction.
      preds: extracted predicted answers (None: the sample gave no answer -> False).
      dataset: ``'gsm8k'`` or ``'math'``.
    Returns:
      ``[correct_i]``, same length and order as preds.
    """
    return [g.correct for g in self.grade_detailed(golds, preds, dataset)]

  def grade_detailed(self, golds: Sequence[str], preds: Sequence[str | None],
                     dataset: str) -> list[Grade]:
    """Like :meth:`grade`, with the reason for each decision."""
    if self._closed:
      raise RuntimeError("Grader is closed")
    if len(golds) != len(preds):
      raise ValueError(f"{len(golds)} golds but {len(preds)} predictions")
    if dataset not in answers.DATASETS:
      raise ValueError(f"unknown dataset {dataset!r}; expected one of {answers.DATASETS}")
    results: list[Grade | None] = [None] * len(preds)
    unique: dict[tuple[str, str, str], list[int]] = {}
    for i, (gold, pred) in enumerate(zip(golds, preds)):
      fast = fast_grade(gold, pred)
      if fast is not None:
        results[i] = fast
        continue
      key = (dataset, answers.normalize_answer(gold), answers.normalize_answer(pred))
      cached = self._cache.get(key)
      if cached is not None:
        results[i] = cached
      else:
        unique.setdefault(key, []).append(i)
    if unique:
      keys = list(unique)
      for key, grade in zip(keys, self._run(keys)):
        for i in unique[key]:
          results[i] = grade
        if self.cache_size > 0 and grade.reason != "crash":
          self._cache[key] = grade
          while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
    return results  # type: ignore[return-value]

  # -- worker pool ---------------------------------------------------------------------------

  def _start_worker(self) -> _Worker:
    worker = _Worker(self._argv, self._env)
    self._selector.register(worker.fd, selectors.EVENT_READ, worker)
    self._workers.append(worker)
    return worker

  def _drop_worker(self, worker: _Worker) -> None:
    self._selector.unregister(worker.fd)
    self._workers.remove(worker)
    worker.kill()

  def _run(self, keys: list[tuple[str, str, str]]) -> list[Grade]:
    """Grades unique (dataset, gold, pred) keys on the workers; never blocks past the limits."""
    results: list[Grade | None] = [None] * len(keys)
    pending = collections.deque(range(len(keys)))
    remaining = len(keys)
    failed_starts = 0
    while remaining:
      while len(self._workers) < self.num_workers:
        self._start_worker()
      for worker in list(self._workers):
        if worker.ready and worker.task is None and pending:
          task = pending.popleft()
          dataset, gold, pred = keys[task]
          worker.task, worker.task_started = task, time.monotonic()
          try:
            worker.send({"i": task, "gold": gold, "pred": pred, "dataset": dataset})
          except OSError:  # died between messages; the read loop below notices EOF
            pass
      now = time.monotonic()
      deadlines = [w.task_started + self.timeout_s if w.task is not None
                   else w.started + self.startup_timeout_s for w in self._workers
                   if w.task is not None or not w.ready]
      wait = max(0.0, min(deadlines) - now) if deadlines else None
      for selector_key, _ in self._selector.select(wait):
        worker: _Worker = selector_key.data
        messages = worker.read_messages()
        if messages is None:  # EOF: the worker died
          if worker.task is not None:
            results[worker.task] = Grade(False, "crash")
            remaining -= 1
          elif not worker.ready:
            failed_starts += 1
            if failed_starts >= 3:
              code = worker.proc.poll()
              self._drop_worker(worker)
              raise RuntimeError(f"grading worker {' '.join(self._argv)} exited at startup "
                                 f"(exit code {code}); see its stderr above")
          self._drop_worker(worker)
          self.num_restarts += 1
          continue
        for message in messages:
          if message.get("ready"):
            worker.ready = True
          elif worker.task is not None and message.get("i") == worker.task:
            results[worker.task] = Grade(bool(message["correct"]), str(message["reason"]))
            remaining -= 1
            worker.task = None
      now = time.monotonic()
      for worker in list(self._workers):
        if worker.task is not None and now - worker.task_started > self.timeout_s:
          results[worker.task] = Grade(False, "timeout")
          remaining -= 1
          self._drop_worker(worker)
          self.num_restarts += 1
        elif not worker.ready and now - worker.started > self.startup_timeout_s:
          self._drop_worker(worker)
          raise RuntimeError(f"grading worker not ready after {self.startup_timeout_s:.0f}s")
    return results  # type: ignore[return-value]
