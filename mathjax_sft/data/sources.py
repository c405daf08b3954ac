"""Training rows from JSONL files and tensorflow-datasets, with file:line errors and mixing weights.

A source list is one comma-separated string (the `train_files` config field):

  data:gsm8k/train.jsonl            a file under the benchmark data root (paths.data_dir())
  runs/synth/gsm8k.jsonl@0.7        a path (relative to the working directory) with a weight
  tfds:gsm8k  /  tfds:gsm8k:test    a tensorflow-datasets name and split (lazy import)

Without weights the sources are concatenated (each row once per epoch); with weights (all or
none) they are sampled in those proportions.

Each JSONL line is one JSON object. The question is the first present field of `prompt_fields`
(GSM8K `question`, MATH `problem`, ...), the worked answer the first of `response_fields`.
A malformed line, a missing field or an empty value is an error naming the file and line, or,
with `on_bad_row="skip"`, a skip counted by reason (never a silent drop).
"""

from __future__ import annotations

import collections
import dataclasses
import json
from pathlib import Path
from typing import Any, Iterable, Sequence

from mathjax_sft import errors, paths

DEFAULT_PROMPT_FIELDS = ("question", "problem", "instruction", "query", "prompt")
DEFAULT_RESPONSE_FIELDS = ("answer", "solution", "response", "output", "completion")
BAD_ROW_POLICIES = ("error", "skip")


class DataError(errors.BadInput):
  """Bad training data; the message names the file (or dataset) and line (or row).

  `reason` is the short kind of problem ("malformed JSON", "missing response field", ...) by
  which skipped rows are counted.
  """

  def __init__(self, message: str, reason: str | None = None):
    super().__init__(message)
    self.reason = reason or message


@dataclasses.dataclass(frozen=True)
class Row:
  prompt: str
  response: str
  origin: str  # "path:line" or "tfds:name:split#index", for error messages


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  kind: str            # "jsonl" | "tfds"
  name: str            # resolved file path, or tfds dataset name
  split: str = "train"
  weight: float | None = None

  @property
  def label(self) -> str:
    return f"tfds:{self.name}:{self.split}" if self.kind == "tfds" else self.name


@dataclasses.dataclass
class ReadStats:
  """What reading one source did: rows kept, and skips by reason with a few example origins."""
  source: str
  rows: int = 0
  blank_lines: int = 0
  skipped: dict[str, int] = dataclasses.field(default_factory=lambda: collections.Counter())
  examples: list[str] = dataclasses.field(default_factory=list)

  def skip(self, reason: str, origin: str) -> None:
    self.skipped[reason] += 1
    if len(self.examples) < 5:
      self.examples.append(f"{origin}: {reason}")

  @property
  def num_skipped(self) -> int:
    return sum(self.skipped.values())

  def summary(self) -> dict[str, Any]:
    return {"source": self.source, "rows": self.rows, "skipped": dict(self.skipped),
            "blank_lines": self.blank_lines, "skip_examples": list(self.examples)}


def _split_fields(fields: str | Sequence[str]) -> tuple[str, ...]:
  if isinstance(fields, str):
    fields = fields.split(",")
  out = tuple(f.strip() for f in fields if f.strip())
  if not out:
    raise errors.BadInput("field list is empty")
  return out


def parse_sources(spec: str) -> list[SourceSpec]:
  """Parses the comma-separated `train_files` string (see module doc). Files must exist."""
  entries = [e.strip() for e in spec.split(",") if e.strip()]
  if not entries:
    raise errors.BadInput("no training sources given (train_files is empty)")
  out = []
  for entry in entries:
    weight = None
    if "@" in entry:
      entry, _, w = entry.rpartition("@")
      try:
        weight = float(w)
      except ValueError:
        raise errors.BadInput(f"source {entry!r}: weight {w!r} is not a number") from None
      if not weight > 0:
        raise errors.BadInput(f"source {entry!r}: weight must be positive, got {weight}")
    if entry.startswith("tfds:"):
      name, _, split = entry[len("tfds:"):].partition(":")
      if not name:
        raise errors.BadInput(f"source {entry!r}: empty tfds dataset name")
      out.append(SourceSpec("tfds", name, split or "train", weight))
      continue
    if entry.startswith("data:"):
      path = paths.data_file(entry[len("data:"):])
    else:
      path = Path(entry)
      if not path.is_file():
        raise errors.MissingInput(f"training file {path} not found (from train_files entry "
                                  f"{entry!r})", file=path)
    out.append(SourceSpec("jsonl", str(path), "train", weight))
  weighted = [s.weight is not None for s in out]
  if any(weighted) and not all(weighted):
    raise errors.BadInput(f"give a weight to every source or to none: {spec!r}")
  return out


def _pick(obj: dict, fields: tuple[str, ...]) -> tuple[str | None, Any]:
  for f in fields:
    if f in obj:
      return f, obj[f]
  return None, None


def row_from_record(obj: Any, origin: str, prompt_fields: tuple[str, ...],
                    response_fields: tuple[str, ...]) -> Row:
  """One record -> Row; raises DataError(reason) for a bad record."""
  if not isinstance(obj, dict):
    raise DataError(f"not a JSON object ({type(obj).__name__})", "not a JSON object")
  for role, fields in (("prompt", prompt_fields), ("response", response_fields)):
    name, value = _pick(obj, fields)
    if name is None:
      raise DataError(f"missing {role} field (one of {', '.join(fields)}); has {sorted(obj)}",
                      f"missing {role} field")
    if isinstance(value, bytes):
      value = value.decode("utf-8")
    if not isinstance(value, str):
      raise DataError(f"{role} field {name!r} is {type(value).__name__}, not a string",
                      f"non-string {role} field")
    if not value.strip():
      raise DataError(f"empty {role} field {name!r}", f"empty {role}")
  return Row(prompt=_pick(obj, prompt_fields)[1], response=_pick(obj, response_fields)[1],
             origin=origin)


def _as_text(v: Any) -> Any:
  return v.decode("utf-8") if isinstance(v, bytes) else v


def _records(records: Iterable[tuple[str, Any]], source: str, prompt_fields, response_fields,
             on_bad_row: str) -> tuple[list[Row], ReadStats]:
  """(origin, parsed record or DataError) pairs -> rows, applying the bad-row policy."""
  if on_bad_row not in BAD_ROW_POLICIES:
    raise errors.BadInput(f"on_bad_row={on_bad_row!r}; expected one of {BAD_ROW_POLICIES}")
  stats = ReadStats(source)
  rows = []
  for origin, obj in records:
    try:
      if isinstance(obj, DataError):
        raise obj
      rows.append(row_from_record(obj, origin, prompt_fields, response_fields))
    except DataError as e:
      if on_bad_row == "error":
        raise DataError(f"{origin}: {e} (pass --config.data.on_bad_row=skip to skip and count such rows)") from None
      stats.skip(e.reason, origin)
  stats.rows = len(rows)
  return rows, stats


def read_jsonl(path: str | Path, prompt_fields: str | Sequence[str] = DEFAULT_PROMPT_FIELDS,
               response_fields: str | Sequence[str] = DEFAULT_RESPONSE_FIELDS,
               on_bad_row: str = "error") -> tuple[list[Row], ReadStats]:
  """All rows of one JSONL file. Blank lines are not rows (they are counted, not reported)."""
  path = Path(path)
  pf, rf = _split_fields(prompt_fields), _split_fields(response_fields)
  blank = 0

  def records():
    nonlocal blank
    with open(path, "rb") as f:
      for lineno, raw in enumerate(f, start=1):
        origin = f"{path}:{lineno}"
        try:
          text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
          yield origin, DataError(f"not valid UTF-8 ({e.reason} at byte {e.start})", "not UTF-8")
          continue
        if not text.strip():
          blank += 1
          continue
        try:
          yield origin, json.loads(text)
        except json.JSONDecodeError as e:
          yield origin, DataError(f"malformed JSON ({e.msg} at column {e.colno})", "malformed JSON")

  rows, stats = _records(records(), str(path), pf, rf, on_bad_row)
  stats.blank_lines = blank
  return rows, stats


# TFDS downloads from Google Cloud Storage first; without a network its retries take minutes.
NETWORK_PROBE = ("storage.googleapis.com", 443)
NETWORK_PROBE_TIMEOUT_S = 5.0


def check_network(what: str) -> None:
  """Fails within NETWORK_PROBE_TIMEOUT_S naming `what` when NETWORK_PROBE (host, port) cannot be
  reached, instead of letting a download retry for minutes."""
  import socket  # pylint: disable=import-outside-toplevel
  host, port = NETWORK_PROBE
  try:
    socket.create_connection((host, port), timeout=NETWORK_PROBE_TIMEOUT_S).close()
  except OSError as e:
    raise ConnectionError(
        f"{what} needs the network, but {host}:{port} cannot be reached ({e}); prepare the "
        "dataset on a machine with network access (tfds data_dir) or give JSONL files "
        "(see the README's 'Your first hour')") from None


def read_tfds(name: str, split: str = "train", data_dir: str | None = None,
              prompt_fields: str | Sequence[str] = DEFAULT_PROMPT_FIELDS,
              response_fields: str | Sequence[str] = DEFAULT_RESPONSE_FIELDS,
              on_bad_row: str = "error", download: bool = False) -> tuple[list[Row], ReadStats]:
  """Rows of a prepared tensorflow-datasets dataset (array_record format, no TensorFlow needed).

  With `download=False` (the default) a dataset that is not prepared under `data_dir` is an
  error: without a network TFDS's download hangs for minutes before failing.
  """
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    import tensorflow_datasets.text  # noqa: F401  (registers gsm8k)  pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
        f"train source tfds:{name} needs tensorflow-datasets, which is not installed ({e}); "
        "install it with `pip install 'mathjax_sft[tfds]'` or give a JSONL path instead "
        "(GSM8K: data:gsm8k/train.jsonl)") from None
  builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  if not builder.is_prepared():
    if not download:
      raise errors.MissingInput(
          f"tfds dataset {name} is not prepared under {builder.data_dir}; prepare it once with "
          f"tfds.builder({name!r}, file_format='array_record').download_and_prepare() on a "
          "machine with network access, or set tfds_download=True")
    check_network(f"--config.data.tfds_download=true (tfds:{name})")
    builder.download_and_prepare()
  source = builder.as_data_source(split=split)
  label = f"tfds:{name}:{split}"
  pf, rf = _split_fields(prompt_fields), _split_fields(response_fields)
  records = ((f"{label}#{i}", {k: _as_text(v) for k, v in source[i].items()})
             for i in range(len(source)))
  return _records(records, label, pf, rf, on_bad_row)


def read_source(spec: SourceSpec, prompt_fields=DEFAULT_PROMPT_FIELDS,
                response_fields=DEFAULT_RESPONSE_FIELDS, on_bad_row: str = "error",
                tfds_data_dir: str | None = None,
                tfds_download: bool = False) -> tuple[list[Row], ReadStats]:
  if spec.kind == "tfds":
    rows, stats = read_tfds(spec.name, spec.split, tfds_data_dir or None, prompt_fields,
                            response_fields, on_bad_row, tfds_download)
  else:
    rows, stats = read_jsonl(spec.name, prompt_fields, response_fields, on_bad_row)
  if not rows:
    raise DataError(f"{spec.label}: no usable rows ({stats.summary()})")
  return rows, stats
