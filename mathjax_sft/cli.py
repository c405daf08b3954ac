"""Command lines generated from config trees: one typed absl flag per field.

A tool declares `FLAGS_ = cli.TreeFlags(SampleRunConfig)` and gets `--num_samples`,
`--temperature`, ... with the field's doc, default and allowed values in `--help`; a nested
section's fields are `--section.field`. With `prefix="config."` and a base tree read from a
config file (the trainer), only the flags given on the command line override the file.
Values are parsed by the field's own type: `none` sets an optional field to None, a tuple
field takes comma-separated values, a str field with choices rejects anything else.
Every tool starts its main with `run(main)`: a mistake on the command line, or a `UserError`
the library raises for a flag, file or line the user gave, ends the tool with one line on stderr
(`TOOL: error: MESSAGE`) and exit status 2; any other exception keeps its traceback.
Only the tools import this module (the library itself does not need absl).
"""

from __future__ import annotations

import errno
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from absl import app, flags

from mathjax_sft import configtree, errors


class _LeafParser(flags.ArgumentParser):
  def __init__(self, leaf: configtree.Leaf):
    self.leaf = leaf

  def parse(self, argument: Any) -> Any:
    return self.leaf.parse(argument) if isinstance(argument, str) else argument

  def flag_type(self) -> str:
    return ("list of " if self.leaf.sequence else "") + self.leaf.kind.__name__


class _LeafSerializer(flags.ArgumentSerializer):
  def serialize(self, value: Any) -> str:
    if value is None:
      return "none"
    if isinstance(value, (tuple, list)):
      return ",".join(str(v) for v in value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def _help(leaf: configtree.Leaf) -> str:
  text = leaf.doc or leaf.path
  if leaf.choices is not None:
    text += f" One of: {', '.join(map(str, leaf.choices))}."
  if leaf.optional:
    text += " `none` for unset."
  if leaf.sequence:
    text += " Comma-separated."
  return text


def _calling_module() -> str:
  name = sys._getframe(2).f_globals.get("__name__", "__main__")  # pylint: disable=protected-access
  return sys.argv[0] if name == "__main__" else name


class TreeFlags:
  """The flags of one config tree; `value()` builds the tree from the parsed command line."""

  def __init__(self, cls: type, *, prefix: str = "", exclude: tuple[str, ...] = (),
               overrides_only: bool = False, flag_values: flags.FlagValues = flags.FLAGS):
    """exclude: fields the tool sets itself (not flags). overrides_only: no field is required
    and `value(base)` applies only the flags present on the command line."""
    self.cls = cls
    self.prefix = prefix
    self.leaves = [l for l in configtree.leaves(cls) if l.path not in exclude]
    self._fv = flag_values
    module = _calling_module()
    for leaf in self.leaves:
      name = prefix + leaf.path
      default = None if leaf.required else leaf.default
      required = leaf.required and not overrides_only
      if leaf.kind is bool and not leaf.sequence and not leaf.optional:
        flags.DEFINE_bool(name, default, _help(leaf), flag_values=flag_values,
                          module_name=module, required=required)
      else:
        flags.DEFINE(_LeafParser(leaf), name, default, _help(leaf), flag_values=flag_values,
                     serializer=_LeafSerializer(), module_name=module, required=required)

  def flag(self, path: str) -> flags.Flag:
    return self._fv[self.prefix + path]

  def present(self) -> dict[str, Any]:
    """The fields given on the command line, by dotted path."""
    return {l.path: self.flag(l.path).value for l in self.leaves if self.flag(l.path).present}

  def value(self, base: Any = None, **fixed: Any) -> Any:
    """The tree: `base` with the present flags applied, or (no base) every flag's value;
    `fixed` sets the excluded fields. A value the tree's own checks refuse is a UserError."""
    try:
      return self._value(base, fixed)
    except errors.UserError:
      raise
    except ValueError as e:
      raise errors.BadInput(str(e)) from e

  def _value(self, base: Any, fixed: dict[str, Any]) -> Any:
    if base is not None:
      return configtree.replace_paths(base, {**self.present(), **fixed})
    values = {l.path: self.flag(l.path).value for l in self.leaves}
    values.update(fixed)
    nested: dict[str, Any] = {}
    for path, v in values.items():
      *heads, last = path.split(".")
      node = nested
      for h in heads:
        node = node.setdefault(h, {})
      node[last] = v
    return configtree.from_dict(self.cls, nested)


def tool_name() -> str:
  return Path(sys.argv[0]).name


def error_line(message: Any) -> str:
  """`TOOL: error: MESSAGE` on one line."""
  return f"{tool_name()}: error: {errors.one_line(message)}"


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a command-line mistake as one line naming the flag (no usage
  text, no traceback)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(error_line(f"{e} (--help lists the flags)"), file=sys.stderr, flush=True)
    sys.exit(2)


def _traceback_wanted() -> bool:
  """--verbosity=1 (or more) or $MATHJAX_TRACEBACK: a user error shows its traceback too."""
  return errors.traceback_wanted() or (flags.FLAGS.is_parsed() and flags.FLAGS.verbosity >= 1)


def _user_error(error: Any) -> None:
  if _traceback_wanted():
    traceback.print_exc()
  print(error_line(error), file=sys.stderr, flush=True)
  sys.exit(2)


def run(main: Callable[[list[str]], Any]) -> None:
  """`absl.app.run(main)` with `parse_flags`; a `UserError` (or a full disk) raised by main
  ends the tool with one line on stderr (`TOOL: error: MESSAGE`) and exit status 2. Any other
  exception keeps its traceback."""

  def guarded(argv: list[str]) -> Any:
    try:
      return main(argv)
    except errors.UserError as e:
      _user_error(e)
    except OSError as e:
      if e.errno != errno.ENOSPC:
        raise
      _user_error(f"no space left on the device holding {e.filename or 'an output'}: free some "
                  "or write elsewhere")

  app.run(guarded, flags_parser=parse_flags)
