"""Everything the trainer reads: sources -> rows -> (held-out split) -> tokenized examples + counts."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from mathjax_sft.data import sources as sources_lib
from mathjax_sft.data.tokenize import Example, TokenizeStats, tokenize_rows


@dataclasses.dataclass
class SftData:
  train: list[list[Example]]          # one list per source
  weights: list[float] | None         # mixing weights (None: concatenate)
  eval: list[Example]
  labels: list[str]
  read_stats: list[sources_lib.ReadStats]
  train_stats: TokenizeStats
  eval_stats: TokenizeStats

  def summary(self) -> dict[str, Any]:
    return {"sources": [dict(s.summary(), examples=len(t)) for s, t in zip(self.read_stats,
                                                                             self.train)],
            "weights": self.weights, "train": self.train_stats.summary(),
            "eval": self.eval_stats.summary(), "eval_examples": len(self.eval)}


def split_holdout(rows: Sequence[sources_lib.Row], fraction: float,
                  seed: int) -> tuple[list[sources_lib.Row], list[sources_lib.Row]]:
  """(train, held out): a seeded random `fraction` of rows (at least one) is held out."""
  if fraction <= 0:
    return list(rows), []
  n_eval = max(1, int(round(fraction * len(rows))))
  if n_eval >= len(rows):
    raise ValueError(f"eval_fraction={fraction} leaves no training rows out of {len(rows)}")
  order = np.random.default_rng(seed).permutation(len(rows))
  held = set(order[:n_eval].tolist())
  return ([r for i, r in enumerate(rows) if i not in held],
          [r for i, r in enumerate(rows) if i in held])


def load_sft_data(train_files: str, tokenizer: Any, template: str, seq_len: int, *,
                  prompt_fields: str = ",".join(sources_lib.DEFAULT_PROMPT_FIELDS),
                  response_fields: str = ",".join(sources_lib.DEFAULT_RESPONSE_FIELDS),
                  long_rows: str = "truncate", on_bad_row: str = "error",
                  system_prompt: str | None = None, eval_files: str = "",
                  eval_fraction: float = 0.0, seed: int = 0, tfds_data_dir: str = "",
                  tfds_download: bool = False) -> SftData:
  read = dict(prompt_fields=prompt_fields, response_fields=response_fields,
              on_bad_row=on_bad_row, tfds_data_dir=tfds_data_dir, tfds_download=tfds_download)
  tok = dict(tokenizer=tokenizer, template=template, seq_len=seq_len, long_rows=long_rows,
             system_prompt=system_prompt)
  specs = sources_lib.parse_sources(train_files)
  train, read_stats, labels = [], [], []
  held_rows: list[sources_lib.Row] = []
  train_stats, eval_stats = TokenizeStats(), TokenizeStats()
  for i, spec in enumerate(specs):
    rows, stats = sources_lib.read_source(spec, **read)
    rows, held = split_holdout(rows, eval_fraction, seed + i)
    held_rows += held
    examples, tstats = tokenize_rows(rows, **tok)
    if not examples:
      raise ValueError(f"{spec.label}: no example is left after tokenization ({tstats.summary()}); "
                       f"is seq_len={seq_len} too short?")
    train.append(examples)
    read_stats.append(stats)
    labels.append(spec.label)
    train_stats = train_stats.merge(tstats)
  if eval_files:
    for spec in sources_lib.parse_sources(eval_files):
      held_rows += sources_lib.read_source(spec, **read)[0]
  eval_examples: list[Example] = []
  if held_rows:
    eval_examples, eval_stats = tokenize_rows(held_rows, **tok)
  weights = None if specs[0].weight is None else [s.weight for s in specs]
  return SftData(train=train, weights=weights, eval=eval_examples, labels=labels,
                 read_stats=read_stats, train_stats=train_stats, eval_stats=eval_stats)
