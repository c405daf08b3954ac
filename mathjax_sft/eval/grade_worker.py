"""Grading worker process: compares (gold, prediction) pairs sent by :mod:`grade`.

The default comparison, :func:`strict_equal`, parses both answers with math-verify and compares
the sympy objects with :mod:`equivalence` (exact where both sides are exact; no decimal rounding).
:func:`math_verify_equal` is math-verify's own ``verify``, kept for comparisons
(``--verify_fn=mathjax_sft.eval.grade_worker:math_verify_equal``).

Run as ``python -m mathjax_sft.eval.grade_worker --timeout_s=N [--verify_fn=module:function]
[--memory_limit_mb=M]`` by :class:`mathjax_sft.eval.grade.Grader`; never imported by the parent
(it only needs math-verify/sympy, never JAX).

Protocol (one JSON object per line; requests on stdin, replies on the original stdout, which is
reserved for the protocol: anything else printing to stdout goes to stderr):

* worker -> parent, once after imports: ``{"ready": true}``
* parent -> worker: ``{"i": int, "gold": str, "pred": str, "dataset": "gsm8k"|"math"}``
* worker -> parent: ``{"i": int, "correct": bool, "reason": str}``; reason is ``"verify"``,
  ``"unparsed"`` (prediction parses to nothing), ``"timeout"`` (a time limit fired)
  or ``"error"`` (the verify function raised).

Stdin EOF ends the worker. Time limits here are ``SIGALRM`` limits (math-verify's own in whole
seconds for parsing, :func:`equivalence.time_limit` for the comparison; they work because this is
the main thread of its own process); the parent adds a hard wall-clock limit and kills the worker
if these do not fire (e.g. hung inside C code).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import re
import sys
from typing import Callable

VerifyFn = Callable[[str, str, str, int], "bool | tuple[bool, str]"]


class _TimeoutFlag(logging.Handler):
  """Records whether math-verify logged a timeout while grading the current pair."""

  def __init__(self) -> None:
    super().__init__(logging.WARNING)
    self.fired = False

  def emit(self, record: logging.LogRecord) -> None:
    if "timeout" in record.getMessage().lower():
      self.fired = True


_TIMEOUT_FLAG = _TimeoutFlag()
_GOLD_CACHE: dict[str, list] = {}


def _wrap(answer: str) -> str:
  return "\\boxed{" + answer + "}"


def _parse(answer: str, timeout_s: int) -> list:
  from math_verify import parse  # pylint: disable=import-outside-toplevel
  return parse(_wrap(answer), parsing_timeout=timeout_s)


def _parse_gold(gold: str, timeout_s: int) -> list:
  parsed = _GOLD_CACHE.get(gold)
  if parsed is None:
    parsed = _parse(gold, timeout_s)
    if len(_GOLD_CACHE) > 10000:
      _GOLD_CACHE.clear()
    _GOLD_CACHE[gold] = parsed
  return parsed


def math_verify_equal(gold: str, pred: str, dataset: str, timeout_s: int) -> tuple[bool, str]:
  """math-verify as it is: ``verify(parse(\\boxed{gold}), parse(\\boxed{pred}))``.

  Both answers arrive already extracted and normalised; wrapping them in ``\\boxed{}`` makes
  math-verify treat the whole string as the answer. Each parse/verify call is limited to
  ``timeout_s`` whole seconds by math-verify itself. Rounds numbers to 6 decimals: a reference,
  not the default.
  """
  del dataset  # both styles use the same LaTeX/expression extraction
  from math_verify import verify  # pylint: disable=import-outside-toplevel
  gold_parsed = _parse_gold(gold, timeout_s)
  pred_parsed = _parse(pred, timeout_s)
  if not pred_parsed:
    return False, "unparsed"
  if not gold_parsed:  # unparsable gold: only an identical string can match
    return gold.strip() == pred.strip(), "verify"
  return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout_s)), "verify"


# "=" that is no part of <=, >=, != or a LaTeX command
_EQUALS_RE = re.compile(r"(?<![<>!\\])=")


def _trusted(parsed: list) -> list:
  """Drops a sympy object that stands for part of the answer only: when the full LaTeX of an
  equation fails to parse, math-verify parses the text after its last ``=`` instead, so
  ``3x-y+13=0`` could come back as ``0``; then only the string is kept."""
  strings = [p for p in parsed if isinstance(p, str)]
  if not any(_EQUALS_RE.search(s) for s in strings):
    return parsed
  from sympy import Eq  # pylint: disable=import-outside-toplevel
  kept = []
  for p in parsed:
    if isinstance(p, str) or getattr(p, "has", None) is not None and p.has(Eq):
      kept.append(p)
  return kept


# a numeral with its base: 1202_3, 25_{6}, 152A_{11}
_BASE_RE = re.compile(r"(?<![A-Za-z\\])[0-9A-Z]+_\{?(\d+)\}?")


def _bases(answer: str) -> list[str]:
  return sorted(_BASE_RE.findall(answer))


def strict_equal(gold: str, pred: str, dataset: str, timeout_s: int) -> tuple[bool, str]:
  """Default verify function: math-verify's parse, then :func:`equivalence.parsed_answers_equal`
  (exact comparison of exact values, a relative tolerance for decimals, equations compared as
  equations). Numerals written with a base on both sides (``1202_3``) need the same bases: the
  parser drops them. Parsing is limited to ``timeout_s`` whole seconds by math-verify, the
  comparison to ``timeout_s`` seconds by :func:`equivalence.time_limit`."""
  del dataset
  gold_bases, pred_bases = _bases(gold), _bases(pred)
  if gold_bases and pred_bases and gold_bases != pred_bases:
    return False, "verify"
  from mathjax_sft.eval import equivalence  # pylint: disable=import-outside-toplevel
  gold_parsed = _trusted(_parse_gold(gold, timeout_s))
  pred_parsed = _trusted(_parse(pred, timeout_s))
  if not pred_parsed:
    return False, "unparsed"
  if not gold_parsed:  # unparsable gold: only an identical string can match
    return gold.strip() == pred.strip(), "verify"
  with equivalence.time_limit(timeout_s):
    return equivalence.parsed_answers_equal(gold_parsed, pred_parsed), "verify"


def load_verify_fn(path: str | None) -> VerifyFn:
  """``"package.module:function"`` -> the function; None -> :func:`strict_equal`."""
  if not path:
    return strict_equal
  module_name, _, attr = path.partition(":")
  if not attr:
    raise ValueError(f"verify_fn must look like 'package.module:function', got {path!r}")
  return getattr(importlib.import_module(module_name), attr)


def grade_one(fn: VerifyFn, gold: str, pred: str, dataset: str, timeout_s: int) -> tuple[bool, str]:
  """Calls fn, mapping exceptions to ``(False, "error")`` and logged timeouts to ``"timeout"``."""
  _TIMEOUT_FLAG.fired = False
  try:
    result = fn(gold, pred, dataset, timeout_s)
  except (KeyboardInterrupt, SystemExit):
    raise
  except BaseException as e:  # pylint: disable=broad-except  (math-verify's TimeoutException)
    timed_out = _TIMEOUT_FLAG.fired or "timeout" in type(e).__name__.lower()
    return False, "timeout" if timed_out else "error"
  correct, reason = result if isinstance(result, tuple) else (bool(result), "verify")
  if not correct and _TIMEOUT_FLAG.fired:
    reason = "timeout"
  return bool(correct), reason


def main(argv: list[str] | None = None) -> None:
  """Serve grading requests from stdin until EOF."""
  parser = argparse.ArgumentParser()
  parser.add_argument("--timeout_s", type=int, default=5)
  parser.add_argument("--verify_fn", default="")
  parser.add_argument("--memory_limit_mb", type=int, default=0)
  args = parser.parse_args(argv)
  # Keep the protocol channel private: stray prints from libraries go to stderr.
  protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", buffering=1)
  os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
  if args.memory_limit_mb > 0:
    import resource  # pylint: disable=import-outside-toplevel
    limit = args.memory_limit_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
  mv_logger = logging.getLogger("math_verify")
  mv_logger.addHandler(_TIMEOUT_FLAG)
  mv_logger.setLevel(logging.WARNING)
  mv_logger.propagate = False  # no "Timeout during comparison" spam on stderr
  fn = load_verify_fn(args.verify_fn)
  if fn in (strict_equal, math_verify_equal):  # warm up lazy imports before taking requests
    grade_one(fn, "\\frac{1}{2}", "0.5", "math", args.timeout_s)
  protocol.write(json.dumps({"ready": True}) + "\n")
  for line in sys.stdin:
    if not line.strip():
      continue
    request = json.loads(line)
    correct, reason = grade_one(fn, request["gold"], request["pred"], request["dataset"],
                                args.timeout_s)
    protocol.write(json.dumps({"i": request["i"], "correct": correct, "reason": reason}) + "\n")


if __name__ == "__main__":
  main()
