"""Quality filters on generated questions: exact / near-duplicate removal and decontamination
against benchmark test sets. (The answer format check lives with the formats, in `formats`.)

Near-duplicates: Jaccard similarity of word n-gram sets (default 3-grams, threshold 0.8), found
exactly (no MinHash, no false negatives) with prefix filtering: under a fixed global order of
n-grams (their hash), two sets with Jaccard >= t must share an n-gram among the first
|x| - ceil(t |x|) + 1 of each, so only those are indexed and probed; candidates are then scored
exactly. Memory is roughly 0.5-1.5 KB per indexed question (about 1-1.5 GB for a million).

Decontamination: a question is contaminated when it shares any word 13-gram with a benchmark
test question (the GPT-3 / Llama rule), or when the Jaccard similarity of its word 8-grams with one
test question reaches a threshold (catches short GSM8K questions that have few or no 13-grams).
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Iterable

import numpy as np

from mathjax_sft.synth.ngrams import ngram_hashes, text_key, words

_EPS = 1e-9


def _prefix_len(size: int, threshold: float) -> int:
  return size - math.ceil(threshold * size - _EPS) + 1


class DuplicateFilter:
  """Exact and near-duplicate detection over a growing set of questions."""

  def __init__(self, ngram: int = 3, threshold: float = 0.8):
    if not 0.0 < threshold <= 1.0:
      raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    self.ngram = ngram
    self.threshold = threshold
    self._exact: dict[bytes, str] = {}
    self._sets: list[np.ndarray] = []          # sorted unique int64 n-gram hashes per question
    self._names: list[str] = []
    self._postings: dict[int, list[int]] = defaultdict(list)

  def __len__(self) -> int:
    return len(self._exact)

  def _shingles(self, text: str) -> np.ndarray:
    return np.array(sorted(ngram_hashes(words(text), self.ngram)), dtype=np.int64)

  def check(self, text: str) -> tuple[str, str, float] | None:
    """(kind, name of the earlier question, similarity) if `text` duplicates an indexed question,
    kind being "exact_duplicate" or "near_duplicate"; None if it is new."""
    key = text_key(text)
    if key in self._exact:
      return "exact_duplicate", self._exact[key], 1.0
    shingles = self._shingles(text)
    if shingles.size == 0:
      return None
    size = shingles.size
    best: tuple[float, int] | None = None
    seen: set[int] = set()
    for gram in shingles[:_prefix_len(size, self.threshold)].tolist():
      for doc in self._postings.get(gram, ()):
        if doc in seen:
          continue
        seen.add(doc)
        other = self._sets[doc]
        # Length filter: Jaccard <= min/max of the sizes.
        if min(size, other.size) < self.threshold * max(size, other.size) - _EPS:
          continue
        inter = np.intersect1d(shingles, other, assume_unique=True).size
        jaccard = inter / (size + other.size - inter)
        if jaccard >= self.threshold - _EPS and (best is None or jaccard > best[0]):
          best = (jaccard, doc)
    if best is not None:
      return "near_duplicate", self._names[best[1]], best[0]
    return None

  def add(self, text: str, name: str) -> None:
    """Indexes `text` (no check); `name` identifies it in later matches."""
    key = text_key(text)
    if key in self._exact:
      return
    self._exact[key] = name
    shingles = self._shingles(text)
    if shingles.size == 0:
      return
    doc = len(self._sets)
    self._sets.append(shingles)
    self._names.append(name)
    for gram in shingles[:_prefix_len(shingles.size, self.threshold)].tolist():
      self._postings[gram].append(doc)

  def check_and_add(self, text: str, name: str) -> tuple[str, str, float] | None:
    """`check`, then `add` when new: the test-and-set used by the pipeline."""
    hit = self.check(text)
    if hit is None:
      self.add(text, name)
    return hit


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
