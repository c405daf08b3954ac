"""The sample book of a sampling run, host side: every sample's tokens, then its text and end.

Samples are addressed by id (`problem index * N + sample index`, see `pool`). Tokens are appended
as decode chunks report them. With a detokenizer, a sample's text is searched for stop strings as
it grows (only the text not searched yet, `stops.StopStrings`), and a sample that ends is cut at
the first stop string in its text. A problem's `Samples` are complete once its N samples ended.
"""

from __future__ import annotations

import dataclasses
import enum

import numpy as np

from mathjax_sft.sample.stops import Detokenize, StopStrings


class SampleEnd(enum.IntEnum):
  """How a token the decode program draws stands to its sample (its per-token end code)."""
  CONTINUES = 0       # the token is part of the sample, which goes on
  STOP_TOKEN = 1      # a stop token (EOS, a stop id): the sample is finished, without this token
  MAX_TOKENS = 2      # the sample's last token: max_new_tokens reached (the sample is unfinished)


@dataclasses.dataclass
class Samples:
  """One problem's N samples: `tokens[j]` is sample j (EOS excluded; cut at a stop string)."""
  tokens: list[list[int]]
  finished: list[bool]          # ended by EOS / a stop string (False: hit max_new_tokens)
  texts: list[str] | None = None   # decoded (with `detokenize`), cut at the stop string


@dataclasses.dataclass
class SampleBook:
  """Per sample of a run ([problem][sample index]): tokens so far, then once it ends, whether
  it finished and its text."""
  num_samples: int                   # N, samples per problem
  tokens: list[list[list[int]]]
  finished: list[list[bool]]
  texts: list[list[str | None]]
  ended: np.ndarray                  # bool [problems, N]
  searched: np.ndarray               # int64 [problems, N]: text length searched for stop strings
  remaining: int                     # samples not ended yet
  detokenize: Detokenize | None = None   # None: no texts, no stop strings
  stops: StopStrings | None = None

  @classmethod
  def create(cls, num_problems: int, num_samples: int, detokenize: Detokenize | None = None,
             stops: StopStrings | None = None) -> SampleBook:
    n = num_samples
    return cls(num_samples=n, tokens=[[[] for _ in range(n)] for _ in range(num_problems)],
               finished=[[False] * n for _ in range(num_problems)],
               texts=[[None] * n for _ in range(num_problems)],
               ended=np.zeros((num_problems, n), bool),
               searched=np.zeros((num_problems, n), np.int64), remaining=num_problems * n,
               detokenize=detokenize, stops=stops)

  @property
  def matches_stop_strings(self) -> bool:
    return bool(self.stops)

  def is_ended(self, sample_id: int) -> bool:
    return bool(self.ended[divmod(sample_id, self.num_samples)])

  def append(self, sample_id: int, token: int) -> None:
    p, j = divmod(sample_id, self.num_samples)
    self.tokens[p][j].append(token)

  def find_stop(self, sample_id: int) -> tuple[int, str] | None:
    """(tokens to keep, text cut at the string) if a stop string occurs in the sample's text
    not searched yet; else None, and the whole text counts as searched."""
    p, j = divmod(sample_id, self.num_samples)
    keep, text = self.stops.find(self.tokens[p][j], int(self.searched[p, j]))
    if keep is None:
      self.searched[p, j] = len(text)
      return None
    return keep, text

  def end(self, sample_id: int, finished: bool, found: tuple[int, str] | None = None) -> int:
    """Ends a sample (`finished`: by a stop token, else by the token budget). With a
    detokenizer its text is decoded and, unless `found` (a `find_stop` result already made on
    these tokens) is given, its unsearched text is searched for a stop string; one found cuts
    the sample there and makes it finished. Returns its useful tokens: the tokens kept, plus
    one (the stop token or string) if it finished."""
    p, j = divmod(sample_id, self.num_samples)
    tokens = self.tokens[p][j]
    text = None
    if self.detokenize is not None:
      keep, text = found or (self.stops.find(tokens, int(self.searched[p, j])) if self.stops
                             else (None, self.detokenize(tokens)))
      if keep is not None:
        del tokens[keep:]
        finished = True
    self.texts[p][j] = text
    self.finished[p][j] = finished
    self.ended[p, j] = True
    self.remaining -= 1
    return len(tokens) + int(finished)

  def samples(self, problem: int) -> Samples:
    """The problem's samples (complete once all N ended)."""
    return Samples(tokens=self.tokens[problem], finished=self.finished[problem],
                   texts=None if self.detokenize is None else self.texts[problem])
