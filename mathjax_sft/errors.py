"""Errors a user can fix: a flag, a file or a line of a file they gave is wrong.

The library raises `UserError` (or a subclass) where it checks its inputs; every tool prints one
as a single line `TOOL: error: MESSAGE` and exits with status 2 (`cli.run`), with no traceback.
Any other exception is a bug and keeps its traceback. The subclasses are also the built-in
error a caller would catch (`MissingInput` is a FileNotFoundError, `BadInput` a ValueError).
"""

from __future__ import annotations

import os

TRACEBACK_ENV = "MATHJAX_TRACEBACK"   # set to 1: tools show the traceback of a user error too


class UserError(Exception):
  """Something the user gave is wrong; the message names it and, where it can, says what to do.

  `flag`, `file` and `line` say what it concerns (None where unknown); the message already
  names them."""

  def __init__(self, message: str = "", *, flag: str | None = None,
               file: str | os.PathLike | None = None, line: int | None = None):
    super().__init__(message)
    self.flag = flag
    self.file = None if file is None else str(file)
    self.line = line


class MissingInput(UserError, FileNotFoundError):
  """A file or directory the user named is not there (or lacks a part it needs)."""


class OutputExists(UserError, FileExistsError):
  """An output the user named is already there (and would be overwritten)."""


class BadInput(UserError, ValueError):
  """A value, file or line the user gave is malformed or does not fit the rest."""


def one_line(error: BaseException) -> str:
  """The error's message with its whitespace (newlines included) collapsed to single spaces."""
  return " ".join(str(error).split()) or type(error).__name__


def traceback_wanted() -> bool:
  """Whether $MATHJAX_TRACEBACK asks for the traceback of a user error."""
  return os.environ.get(TRACEBACK_ENV, "").strip().lower() not in ("", "0", "false", "no")
