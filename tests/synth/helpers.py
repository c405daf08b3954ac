"""Shared helpers of the synthesis tests: the planted key, invented inputs, fast configs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mathjax_sft.synth.config import SynthConfig

# A distinctive key: tests grep every output for it.
PLANTED_KEY = "sk-synthTEST-9f3a7c51e2d84b06"

NAMES = ("Lena", "Marco", "Sofia", "Tariq", "Yuki", "Omar", "Nadia", "Pavel", "Rhea", "Sven", "Ines", "Kofi")
OBJECTS = ("stamps", "oranges", "coins", "beads", "tickets", "candles")


def gsm8k_reference(i: int) -> dict[str, str]:
  """An invented GSM8K-format reference row (not taken from the data set)."""
  name, obj = NAMES[i % len(NAMES)], OBJECTS[i % len(OBJECTS)]
  a, b = 3 + i, 5 + 2 * i
  return {"question": f"{name} collects {a} {obj} on Monday and {b} {obj} on Tuesday. "
                      f"Reference number {i}. How many {obj} does {name} collect in total?",
          "answer": f"{name} collects {a} + {b} = <<{a}+{b}={a + b}>>{a + b} {obj}.\n#### {a + b}"}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
  path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
  return path


def fast_config(input_path: Path, output_dir: Path, base_url: str, **overrides: Any) -> SynthConfig:
  """A config with test-speed timings (tiny backoff, short timeout, no progress bar)."""
  values: dict[str, Any] = dict(
      input_path=input_path, dataset_format="gsm8k", output_dir=output_dir, model="gpt-4-turbo",
      base_url=base_url, per_reference=2, max_concurrency=4, backoff_base=0.01, backoff_max=0.05,
      request_timeout=2.0, progress=False, requests_per_minute=0, tokens_per_minute=0,
      batch_poll_interval=0.02, usage_flush_interval=0.0)
  values.update(overrides)
  return SynthConfig(**values)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
