"""Quality filters on generated questions: exact / near-duplicate removal (`dedup`) and
decontamination against benchmark test sets. (The answer format check lives with the formats, in
`formats`.)

Decontamination: a question is contaminated when it shares any word 13-gram with a benchmark
test question (the GPT-3 / Llama rule), or when the Jaccard similarity of its word 8-grams with one
test question reaches a threshold (catches short GSM8K questions that have few or no 13-grams).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable

from mathjax_sft.synth.dedup import DuplicateFilter
from mathjax_sft.synth.ngrams import ngram_hashes, words

_EPS = 1e-9


@dataclasses.dataclass(frozen=True)
class Contamination:
  """Why a question counts as contaminated."""

  rule: str          # "ngram" (shared long n-gram) or "jaccard"
  source: str        # e.g. "gsm8k/test.jsonl#12" (0-based question index)
  score: float       # shared n-grams (ngram rule) or Jaccard similarity

  def describe(self) -> str:
    if self.rule == "ngram":
      return f"shares {int(self.score)} long n-gram(s) with {self.source}"
    return f"n-gram Jaccard {self.score:.2f} with {self.source}"


class Decontaminator:
  """Flags questions that overlap benchmark test questions."""

  def __init__(self, ngram: int = 13, jaccard_ngram: int = 8, jaccard_threshold: float = 0.5):
    self.ngram = ngram
    self.jaccard_ngram = jaccard_ngram
    self.jaccard_threshold = jaccard_threshold
    self._long: dict[int, int] = {}                       # long n-gram -> test question index
    self._postings: dict[int, list[int]] = defaultdict(list)  # short n-gram -> test question indices
    self._sizes: list[int] = []
    self._sources: list[str] = []

  def __len__(self) -> int:
    return len(self._sources)

  def add_questions(self, questions: Iterable[str], source: str) -> None:
    """Indexes benchmark questions; `source` (e.g. a file name) labels matches."""
    for i, question in enumerate(questions):
      tokens = words(question)
      index = len(self._sources)
      self._sources.append(f"{source}#{i}")
      for gram in ngram_hashes(tokens, self.ngram) if len(tokens) >= self.ngram else ():
        self._long.setdefault(gram, index)
      short = ngram_hashes(tokens, self.jaccard_ngram)
      self._sizes.append(len(short))
      for gram in short:
        self._postings[gram].append(index)

  def check(self, text: str) -> Contamination | None:
    """The first reason `text` is contaminated, else None."""
    tokens = words(text)
    if len(tokens) >= self.ngram:
      hits: dict[int, int] = defaultdict(int)
      for gram in ngram_hashes(tokens, self.ngram):
        if gram in self._long:
          hits[self._long[gram]] += 1
      if hits:
        index, count = max(hits.items(), key=lambda kv: kv[1])
        return Contamination("ngram", self._sources[index], float(count))
    short = ngram_hashes(tokens, self.jaccard_ngram)
    shared: dict[int, int] = defaultdict(int)
    for gram in short:
      for index in self._postings.get(gram, ()):
        shared[index] += 1
    best: Contamination | None = None
    for index, inter in shared.items():
      jaccard = inter / (len(short) + self._sizes[index] - inter)
      if jaccard >= self.jaccard_threshold - _EPS and (best is None or jaccard > best.score):
        best = Contamination("jaccard", self._sources[index], jaccard)
    return best


class QuestionFilters:
  """The filter stage between verification and answering: decontamination first (a contaminated
  question is never indexed), then exact / near-duplicate test-and-set."""

  def __init__(self, dedup: DuplicateFilter, decontam: Decontaminator | None = None):
    self.dedup = dedup
    self.decontam = decontam

  def check(self, question: str, name: str) -> tuple[str, str] | None:
    """(reason, detail) when `question` must be dropped, else None (and it is now indexed)."""
    if self.decontam is not None and len(self.decontam):
      hit = self.decontam.check(question)
      if hit is not None:
        return "contaminated", hit.describe()
    dup = self.dedup.check_and_add(question, name)
    if dup is not None:
      kind, other, similarity = dup
      return kind, f"Jaccard {similarity:.2f} with {other}"
    return None
