"""Config trees: frozen dataclasses whose fields carry one default and one doc each.

Every entry point's settings are one such tree (nested dataclasses for sections). This module
walks a tree without absl: its leaves (dotted path, type, default, doc, choices) feed the
generated command line (`mathjax_sft.cli`) and the configuration reference (docs/configuration.md);
`replace_paths` applies dotted overrides; `to_dict` / `from_dict` move a tree to and from JSON.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import types
import typing
from pathlib import Path
from typing import Any

from mathjax_sft import errors

_SCALARS = (bool, int, float, str, Path)


def setting(default: Any = dataclasses.MISSING, doc: str = "", *, choices: tuple | None = None,
            factory: Any = dataclasses.MISSING) -> Any:
  """A dataclass field with its documentation (and allowed values, for a str field)."""
  meta = {"doc": doc, "choices": tuple(choices) if choices is not None else None}
  if factory is not dataclasses.MISSING:
    return dataclasses.field(default_factory=factory, metadata=meta)
  return dataclasses.field(default=default, metadata=meta)


def section(cls: type, doc: str = "") -> Any:
  """A nested section of a tree, defaulting to the section's own defaults."""
  return setting(doc=doc, factory=cls)


@dataclasses.dataclass(frozen=True)
class Leaf:
  """One settable field of a tree, at a dotted path."""
  path: str
  kind: type                 # bool | int | float | str | Path (the element type for a sequence)
  optional: bool             # None is a valid value
  sequence: bool             # tuple[kind, ...]
  default: Any               # dataclasses.MISSING when the field is required
  doc: str
  choices: tuple | None

  @property
  def required(self) -> bool:
    return self.default is dataclasses.MISSING

  def parse(self, text: str) -> Any:
    """A command-line string as this field's value (sequences: comma-separated)."""
    if self.optional and text.strip().lower() in ("", "none"):
      return None
    if self.sequence:
      return tuple(self._scalar(t.strip()) for t in text.split(",") if t.strip())
    return self._scalar(text)

  def _scalar(self, text: str) -> Any:
    if self.kind is bool:
      low = text.strip().lower()
      if low not in ("true", "false", "1", "0"):
        raise ValueError(f"{self.path}: expected true or false, got {text!r}")
      return low in ("true", "1")
    value = self.kind(text)
    if self.choices is not None and value not in self.choices:
      raise ValueError(f"{self.path}: {text!r} is not one of {', '.join(map(str, self.choices))}")
    return value


def _unwrap(tp: Any) -> tuple[Any, bool, bool]:
  """(element type, optional, sequence) of an annotation."""
  optional = False
  origin = typing.get_origin(tp)
  if origin in (typing.Union, types.UnionType):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    optional = len(args) < len(typing.get_args(tp))
    if len(args) != 1:
      raise TypeError(f"unsupported annotation {tp!r}")
    tp = args[0]
    origin = typing.get_origin(tp)
  if origin is tuple:
    args = typing.get_args(tp)
    if len(args) != 2 or args[1] is not Ellipsis:
      raise TypeError(f"only tuple[X, ...] is supported, got {tp!r}")
    return args[0], optional, True
  return tp, optional, False


def leaves(cls: type, prefix: str = "") -> list[Leaf]:
  """Every settable field of the tree `cls`, depth first, in declaration order."""
  hints = typing.get_type_hints(cls)
  out: list[Leaf] = []
  for f in dataclasses.fields(cls):
    path = prefix + f.name
    kind, optional, sequence = _unwrap(hints[f.name])
    if dataclasses.is_dataclass(kind):
      out.extend(leaves(kind, path + "."))
      continue
    if kind not in _SCALARS:
      raise TypeError(f"{cls.__name__}.{f.name}: unsupported field type {kind!r}")
    if f.default is not dataclasses.MISSING:
      default = f.default
    elif f.default_factory is not dataclasses.MISSING:
      default = f.default_factory()
    else:
      default = dataclasses.MISSING
    out.append(Leaf(path, kind, optional, sequence, default, f.metadata.get("doc", ""),
                    f.metadata.get("choices")))
  return out


def get_path(obj: Any, path: str) -> Any:
  for name in path.split("."):
    obj = getattr(obj, name)
  return obj


def replace_paths(obj: Any, updates: dict[str, Any]) -> Any:
  """A copy of the tree `obj` with the dotted paths set (`{"optimizer.learning_rate": 1e-4}`)."""
  own: dict[str, Any] = {}
  nested: dict[str, dict[str, Any]] = {}
  names = {f.name for f in dataclasses.fields(obj)}
  for path, value in updates.items():
    head, _, rest = path.partition(".")
    if head not in names:
      raise KeyError(f"{type(obj).__name__} has no field {head!r}")
    if rest:
      nested.setdefault(head, {})[rest] = value
    else:
      own[head] = value
  for head, sub in nested.items():
    own[head] = replace_paths(own.get(head, getattr(obj, head)), sub)
  return dataclasses.replace(obj, **own)


def to_dict(obj: Any) -> dict[str, Any]:
  """The tree as JSON-ready nested dicts (paths as strings, tuples as lists)."""
  def plain(v):
    if dataclasses.is_dataclass(v):
      return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, (tuple, list)):
      return [plain(x) for x in v]
    if isinstance(v, Path):
      return str(v)
    return v
  return plain(obj)


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
  """The tree `cls` from nested dicts (as `to_dict` writes them); an unknown key is an error
  naming its dotted path."""
  hints = typing.get_type_hints(cls)
  fields = {f.name: f for f in dataclasses.fields(cls)}
  kwargs = {}
  for key, value in data.items():
    if key not in fields:
      raise KeyError(f"unknown config field {where + key!r}")
    kind, optional, sequence = _unwrap(hints[key])
    if dataclasses.is_dataclass(kind) and isinstance(value, dict):
      value = from_dict(kind, value, where + key + ".")
    elif sequence and value is not None:
      value = tuple(kind(v) if kind is Path else v for v in value)
    elif kind is Path and value is not None:
      value = Path(value)
    kwargs[key] = value
  return cls(**kwargs)


def load_file(path: str | Path, expected: type) -> Any:
  """The tree returned by `get_config()` of a Python config file (configs/*.py)."""
  path = Path(path)
  if not path.is_file():
    raise errors.MissingInput(f"config file {path} does not exist", file=path)
  spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise errors.BadInput(f"{path}: defines no get_config()", file=path)
  config = module.get_config()
  if not isinstance(config, expected):
    raise errors.BadInput(f"{path}: get_config() returned {type(config).__name__}, expected "
                    f"{expected.__name__}")
  return config
