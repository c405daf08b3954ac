"""Scrubbing secrets (the API key) out of any text before it is logged or written."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

REDACTED = "[REDACTED]"
# Key-shaped tokens even when they are not our key (e.g. a server echoing a masked or other key),
# and bearer credentials in echoed headers.
_KEY_PATTERNS = (
    re.compile(r"\bsk-[A-Za-z0-9_\-*.]{6,}"),
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9_\-.~+/*=]{6,}"),
)
_MIN_SECRET_LEN = 4


class Redactor:
  """Replaces each secret (and generic key-shaped tokens) with `[REDACTED]`.

  Secrets shorter than 4 characters are ignored (redacting them would shred ordinary text)."""

  def __init__(self, secrets: Iterable[str | None] = ()):
    self._secrets = sorted({s for s in secrets if s and len(s) >= _MIN_SECRET_LEN}, key=len, reverse=True)

  def __call__(self, text: object) -> str:
    out = str(text)
    for secret in self._secrets:
      out = out.replace(secret, REDACTED)
    for pattern in _KEY_PATTERNS:
      out = pattern.sub(REDACTED, out)
    return out


class RedactingFormatter(logging.Formatter):
  """A logging formatter whose final string (message, arguments and traceback) is redacted."""

  def __init__(self, redactor: Redactor, fmt: str | None = None, datefmt: str | None = None):
    super().__init__(fmt=fmt, datefmt=datefmt)
    self._redactor = redactor

  def format(self, record: logging.LogRecord) -> str:
    return self._redactor(super().format(record))


class RedactingFilter(logging.Filter):
  """A handler filter that rewrites each record in place so that every handler, whatever its
  formatter (absl's, pytest's), only ever sees redacted text."""

  def __init__(self, redactor: Redactor):
    super().__init__()
    self._redactor = redactor

  def filter(self, record: logging.LogRecord) -> bool:
    try:
      message = record.getMessage()
    except Exception:  # a bad format string: log what we have rather than crash
      message = f"{record.msg} {record.args}"
    if record.exc_info and not record.exc_text:
      record.exc_text = logging.Formatter().formatException(record.exc_info)
    record.msg = self._redactor(message)
    record.args = None
    record.exc_info = None
    if record.exc_text:
      record.exc_text = self._redactor(record.exc_text)
    if record.stack_info:
      record.stack_info = self._redactor(record.stack_info)
    return True
