"""Stop strings matched on decoded text, incrementally (the host side of the sampler).

A stop string is searched in the text of a sample's tokens, not as a token sequence: tokenizers
merge a string with its neighbours (`".\\n\\nQuestion"` is rarely the tokens of `"Question"`), so
token matching misses it. When one is found the sample ends exactly where the string starts:
its text is cut there and it keeps the fewest tokens whose text covers the cut text (a token that
straddles the start of the string is kept; its text past the cut is not). Each check searches only
text that is new since the last check (plus the longest string's length, so a string split over
two checks is found).
"""

from __future__ import annotations

from typing import Callable, Sequence

Detokenize = Callable[[Sequence[int]], str]


class StopStrings:
  """`find(tokens, start)`: the first stop string in `detokenize(tokens)` at or after `start`."""

  def __init__(self, strings: Sequence[str], detokenize: Detokenize):
    self.strings = tuple(s for s in dict.fromkeys(strings) if s)
    self.detokenize = detokenize
    self.margin = max((len(s) for s in self.strings), default=0) + 4   # + a partial character

  def __bool__(self) -> bool:
    return bool(self.strings)

  def find(self, tokens: Sequence[int], start: int = 0) -> tuple[int | None, str]:
    """(tokens to keep, text cut at the string) if a stop string occurs in the text from char
    `start - margin` on, else (None, the whole text: its length is the next `start`)."""
    text = self.detokenize(tokens)
    lo = max(0, start - self.margin)
    hits = [i for i in (text.find(s, lo) for s in self.strings) if i >= 0]
    if not hits:
      return None, text
    cut = min(hits)
    keep = len(tokens)
    while keep > 0 and len(self.detokenize(tokens[:keep - 1])) >= cut:
      keep -= 1
    return keep, text[:cut]
