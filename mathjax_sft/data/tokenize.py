"""Rows -> token ids with a loss mask on the response tokens only.

Prompt and response are tokenized together (so the boundary tokenizes as it will at inference)
and a token belongs to the response when its character span reaches past the end of the prompt
(character offsets from a fast tokenizer). The EOS id is appended to every complete response.

One example is three int32 arrays of equal length n <= seq_len, already shifted for next-token
prediction:

  inputs    ids[:-1]
  targets   ids[1:]
  loss_mask 1 where the target is a response token (or the closing EOS), else 0

A row whose ids do not fit (more than seq_len + 1 tokens) is truncated or dropped
(`long_rows`); a row whose prompt alone fills seq_len is always dropped (nothing to learn from).
Both are counted in `TokenizeStats`, which the trainer logs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mathjax_sft.data import templates
from mathjax_sft.data.sources import Row

LONG_ROW_POLICIES = ("truncate", "drop")
Example = dict[str, np.ndarray]


@dataclasses.dataclass
class TokenizeStats:
  rows: int = 0
  kept: int = 0
  truncated: int = 0          # kept, but cut at seq_len (the response lost its end)
  dropped_long: int = 0       # too long with long_rows="drop"
  dropped_prompt_fills: int = 0  # the prompt alone reaches seq_len: no response token left
  tokens: int = 0             # input tokens of kept examples
  loss_tokens: int = 0

  def merge(self, other: "TokenizeStats") -> "TokenizeStats":
    return TokenizeStats(**{f.name: getattr(self, f.name) + getattr(other, f.name)
                            for f in dataclasses.fields(self)})

  def summary(self) -> dict[str, int]:
    return dataclasses.asdict(self)


def load_tokenizer(path: str | Path) -> Any:
  """A HF fast tokenizer from a checkpoint/tokenizer directory or a .gguf file."""
  from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel
  path = Path(path)
  if path.suffix == ".gguf":
    from mathjax_sft.convert.gguf import gguf_tokenizer  # pylint: disable=import-outside-toplevel
    tok = gguf_tokenizer(path)
  elif path.is_dir():
    tok = AutoTokenizer.from_pretrained(str(path))
  else:
    raise FileNotFoundError(f"tokenizer {path} is neither a directory with tokenizer files nor a "
                            ".gguf file")
  if not getattr(tok, "is_fast", False):
    raise ValueError(f"tokenizer from {path} is not a fast tokenizer (character offsets are "
                     "needed for the loss mask)")
  if tok.eos_token_id is None:
    raise ValueError(f"tokenizer from {path} has no EOS token")
  return tok


def tokenize_rows(rows: Sequence[Row], tokenizer: Any, template: str, seq_len: int,
                  long_rows: str = "truncate", system_prompt: str | None = None,
                  chunk: int = 2048) -> tuple[list[Example], TokenizeStats]:
  """Tokenizes rows into examples (see module doc), in order; dropped rows are counted."""
  templates.check_template(template)
  if long_rows not in LONG_ROW_POLICIES:
    raise ValueError(f"long_rows={long_rows!r}; expected one of {LONG_ROW_POLICIES}")
  if seq_len < 2:
    raise ValueError(f"seq_len must be at least 2, got {seq_len}")
  eos = int(tokenizer.eos_token_id)
  add_special = templates.ADD_SPECIAL_TOKENS[template]
  stats = TokenizeStats()
  examples: list[Example] = []
  for start in range(0, len(rows), chunk):
    part = rows[start:start + chunk]
    prompts = [templates.render_prompt(template, r.prompt, tokenizer, system_prompt) for r in part]
    texts = [p + templates.render_response(template, r.response) for p, r in zip(prompts, part)]
    enc = tokenizer(texts, add_special_tokens=add_special, return_offsets_mapping=True)
    for prompt, ids, offsets in zip(prompts, enc["input_ids"], enc["offset_mapping"]):
      stats.rows += 1
      ids = np.asarray(list(ids) + [eos], np.int32)
      ends = np.asarray([end for _, end in offsets] + [len(prompt) + 1], np.int64)
      is_response = ends > len(prompt)
      if len(ids) > seq_len + 1:
        if long_rows == "drop":
          stats.dropped_long += 1
          continue
        ids, is_response = ids[:seq_len + 1], is_response[:seq_len + 1]
        truncated = True
      else:
        truncated = False
      mask = is_response[1:].astype(np.int32)
      if not mask.any():
        stats.dropped_prompt_fills += 1
        continue
      stats.truncated += truncated
      stats.kept += 1
      stats.tokens += len(ids) - 1
      stats.loss_tokens += int(mask.sum())
      examples.append({"inputs": ids[:-1], "targets": ids[1:], "loss_mask": mask})
  return examples, stats
