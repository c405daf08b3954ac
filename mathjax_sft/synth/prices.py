"""List prices of known teacher models, for the cost estimate of a run.

USD per million tokens (prompt, completion), OpenAI's standard (non-batch) tier as published on
https://openai.com/api/pricing, checked 2025-06. Prices change: the run prints the figures it
used, and `--price_prompt_per_million` / `--price_completion_per_million` replace them. A model
that is not in the table (a local vLLM, llama.cpp or sglang server, a fine-tune) gets no dollar
figure unless both prices are given.
"""

from __future__ import annotations

import dataclasses
import re

# model name -> (prompt, completion) USD per 1M tokens
LIST_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4-turbo": (10.0, 30.0),
    "gpt-4-turbo-preview": (10.0, 30.0),
    "gpt-4-1106-preview": (10.0, 30.0),
    "gpt-4-0125-preview": (10.0, 30.0),
    "gpt-4": (30.0, 60.0),
    "gpt-4-0613": (30.0, 60.0),
    "gpt-4o": (2.5, 10.0),
    "gpt-4o-mini": (0.15, 0.6),
    "gpt-4.1": (2.0, 8.0),
    "gpt-4.1-mini": (0.4, 1.6),
    "gpt-4.1-nano": (0.1, 0.4),
    "gpt-3.5-turbo": (0.5, 1.5),
    "o1": (15.0, 60.0),
    "o3": (2.0, 8.0),
    "o3-mini": (1.1, 4.4),
    "o4-mini": (1.1, 4.4),
}
_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")   # gpt-4o-2024-08-06 is priced as gpt-4o


@dataclasses.dataclass(frozen=True)
class Prices:
  """USD per 1M prompt and completion tokens, both None when unknown; `source` says where they
  came from ("list price of MODEL", "flags", "flags and list price of MODEL" or "unknown")."""

  prompt: float | None
  completion: float | None
  source: str

  @property
  def known(self) -> bool:
    return self.prompt is not None and self.completion is not None


def list_price(model: str) -> tuple[float, float] | None:
  """The table's prices of `model` (a dated snapshot counts as its family), or None."""
  name = model.strip().lower()
  return LIST_PRICES.get(name) or LIST_PRICES.get(_SNAPSHOT.sub("", name))


def prices_for(model: str, prompt: float | None = None, completion: float | None = None) -> Prices:
  """The prices a run uses: the given ones, the table's for the rest. Prices are unknown (no
  dollar figure) when the model is not in the table and not both are given."""
  listed = list_price(model)
  if prompt is not None and completion is not None:
    return Prices(prompt, completion, "flags")
  if listed is None:
    return Prices(None, None, "unknown")
  if prompt is None and completion is None:
    return Prices(listed[0], listed[1], f"list price of {model}")
  return Prices(listed[0] if prompt is None else prompt, listed[1] if completion is None else completion,
                f"flags and list price of {model}")
