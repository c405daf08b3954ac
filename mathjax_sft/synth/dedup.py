"""Exact and near-duplicate detection over a growing set of questions, at a cost per question that
does not grow with the index, and an on-disk copy so that a resumed run does not rebuild it.

Decision rule: a question is an exact duplicate of an indexed one when their
normalised word sequences are equal (`ngrams.text_key`), and a near-duplicate when the Jaccard
similarity of their sets of hashed word n-grams (default 3-grams) is at least the threshold
(default 0.8). Every candidate is scored exactly, and the search has no false negatives: the
answer is the one a brute-force comparison with every indexed question gives.

How: prefix filtering. Under any fixed global order of n-grams, two sets with Jaccard >= t share an
n-gram among the first p(x) = |x| - ceil(t |x|) + 1 of each; each question is indexed under its
first p n-grams (its posting lists) and a check looks only at the questions listed under its own
first p. The order puts rare n-grams first, so that posting lists stay short: the order is
(tier, hash), every n-gram starts in tier 0, and an n-gram whose posting list reaches
`posting_cap * 2**tier` entries moves up one tier (it is "promoted": it is common). A promotion
only moves one n-gram later in the order, which changes the prefix of exactly the questions whose
prefix held it; those are all on its posting list, and each gets the one n-gram that enters its
prefix indexed too. So the invariant "every question is listed under every n-gram of its current
prefix" holds after every insert, and a check follows the current order. A common n-gram ("how
many") leaves the prefixes after `posting_cap` questions, and a check then reads a few short
lists however many questions are indexed.

Memory: the n-gram hashes of each question (8 bytes each, ~40 per question) in one flat array,
about p postings of 12 bytes, its name and a few bytes more: ~0.5 KiB per question.

On disk (`directory`): append-only files (the questions' keys and sizes, their n-grams, names,
postings, promotions) and `manifest.json`, written atomically by `save`, which names how many
bytes of each file are valid. Loading reads those bytes (anything after them is from after the
last save and is dropped) and sorts the postings once: seconds for a million questions, where
rebuilding from the questions takes minutes. Questions can be retired after loading (`retain`):
a retired question is never matched again (used for questions whose row never got written).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mathjax_sft.synth.intindex import Column, MultiMap
from mathjax_sft.synth.ngrams import ngram_hashes, words

log = logging.getLogger(__name__)
_EPS = 1e-9
_FORMAT = 1
MANIFEST = "manifest.json"
_FILES = ("docs.i64", "grams.i64", "names.jsonl", "postings.i64", "promotions.i64")


def prefix_len(size: int, threshold: float) -> int:
  """How many n-grams of a set of `size` two sets with Jaccard >= threshold must share a prefix of."""
  return size - math.ceil(threshold * size - _EPS) + 1


def exact_key(text: str) -> int:
  """The exact-duplicate key as a 63-bit integer: digest of the normalised word sequence."""
  digest = hashlib.sha1(" ".join(words(text)).encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") >> 1


class DuplicateFilter:
  """Exact and near-duplicate detection over a growing set of questions (see module docstring)."""

  def __init__(self, ngram: int = 3, threshold: float = 0.8, posting_cap: int = 16,
               directory: Path | None = None):
    if not 0.0 < threshold <= 1.0:
      raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if posting_cap < 1:
      raise ValueError(f"posting_cap must be >= 1, got {posting_cap}")
    self.ngram = ngram
    self.threshold = threshold
    self.posting_cap = posting_cap
    self._keys = Column(np.int64)         # exact key per question
    self._starts = Column(np.int64)       # question i's n-grams: _grams[_starts[i]:_starts[i + 1]]
    self._starts.append(0)
    self._grams = Column(np.int64)        # sorted n-gram hashes, question after question
    self._alive = Column(np.bool_)
    self._names: list[str] = []
    self._exact = MultiMap()              # exact key -> questions
    self._postings = MultiMap()           # n-gram -> questions it is a prefix n-gram of
    self._tier: dict[int, int] = {}       # promoted n-grams only
    self._alive_count = 0
    self.postings_read = 0                # posting list entries read, over all checks
    self.candidates_scored = 0            # questions scored exactly, over all checks
    self.checks = 0
    self.promotions = 0
    self.directory = Path(directory) if directory is not None else None
    self._files: dict[str, Any] = {}
    if self.directory is not None:
      self._open_files()

  def __len__(self) -> int:
    return self._alive_count

  # -- the rule --------------------------------------------------------------------------------
  def shingles(self, text: str) -> list[int]:
    """The sorted n-gram hashes of `text`."""
    return sorted(ngram_hashes(words(text), self.ngram))

  def _order_key(self, gram: int) -> tuple[int, int]:
    return self._tier.get(gram, 0), gram

  def _prefix(self, grams: list[int]) -> list[int]:
    return sorted(grams, key=self._order_key)[:prefix_len(len(grams), self.threshold)]

  def check(self, text: str) -> tuple[str, str, float] | None:
    """(kind, name of the earlier question, similarity) if `text` duplicates an indexed question,
    kind being "exact_duplicate" or "near_duplicate"; None if it is new."""
    return self._check(exact_key(text), self.shingles(text))

  def _indexed(self, key: int) -> int | None:
    for doc in self._exact.get(key).tolist():
      if self._alive.view[doc]:
        return doc
    return None

  def _check(self, key: int, grams: list[int]) -> tuple[str, str, float] | None:
    self.checks += 1
    doc = self._indexed(key)
    if doc is not None:
      return "exact_duplicate", self._names[doc], 1.0
    if not grams:
      return None
    docs = self._postings.get_many(self._prefix(grams))
    self.postings_read += int(docs.size)
    if docs.size == 0:
      return None
    docs = np.unique(docs)
    docs = docs[self._alive.view[docs]]
    starts = self._starts.view
    lo, hi = starts[docs], starts[docs + 1]
    sizes = hi - lo
    size = len(grams)
    # Length filter: Jaccard <= min/max of the sizes.
    keep = np.minimum(sizes, size) >= self.threshold * np.maximum(sizes, size) - _EPS
    docs, lo, sizes = docs[keep], lo[keep], sizes[keep]
    if docs.size == 0:
      return None
    self.candidates_scored += int(docs.size)
    ends = np.cumsum(sizes)
    index = np.repeat(lo - (ends - sizes), sizes) + np.arange(int(ends[-1]))
    values = self._grams.view[index]
    query = np.asarray(grams, np.int64)
    pos = np.minimum(np.searchsorted(query, values), size - 1)
    inter = np.add.reduceat((query[pos] == values).astype(np.int64), ends - sizes)
    jaccard = inter / (size + sizes - inter)
    best = int(np.argmax(jaccard))
    if jaccard[best] >= self.threshold - _EPS:
      return "near_duplicate", self._names[int(docs[best])], float(jaccard[best])
    return None

  def add(self, text: str, name: str) -> None:
    """Indexes `text` (no check) unless an identical question is indexed; `name` identifies it
    in later matches."""
    key = exact_key(text)
    if self._indexed(key) is None:
      self._add(key, self.shingles(text), name)

  def _add(self, key: int, grams: list[int], name: str) -> None:
    doc = len(self._names)
    self._keys.append(key)
    self._grams.extend(grams)
    self._starts.append(self._grams.size)
    self._alive.append(True)
    self._alive_count += 1
    self._names.append(name)
    self._exact.add(key, doc)
    self._write("docs.i64", np.asarray([key, len(grams)], np.int64).tobytes())
    self._write("grams.i64", np.asarray(grams, np.int64).tobytes())
    self._write("names.jsonl", (json.dumps(name, ensure_ascii=False) + "\n").encode("utf-8"))
    if grams:
      prefix = self._prefix(grams)
      for gram in prefix:
        self._post(gram, doc)
      self._promote_full(prefix)

  def check_and_add(self, text: str, name: str) -> tuple[str, str, float] | None:
    """`check`, then `add` when new: the test-and-set used by the pipeline."""
    key, grams = exact_key(text), self.shingles(text)
    hit = self._check(key, grams)
    if hit is None:
      self._add(key, grams, name)
    return hit

  # -- promotions ------------------------------------------------------------------------------
  def _post(self, gram: int, doc: int) -> None:
    self._postings.add(gram, doc)
    self._write("postings.i64", np.asarray([gram, doc], np.int64).tobytes())

  def _promote_full(self, grams: list[int]) -> None:
    work = [g for g, n in zip(grams, self._postings.counts(grams))
            if n >= self.posting_cap << self._tier.get(g, 0)]
    while work:
      gram = work.pop()
      if self._postings.counts([gram])[0] < self.posting_cap << self._tier.get(gram, 0):
        continue
      work.extend(self._promote(gram))

  def _promote(self, gram: int) -> list[int]:
    """Moves `gram` one tier later and indexes each question whose prefix lost it under the
    n-gram that entered instead; returns the n-grams whose lists may now be over their cap."""
    old = (self._tier.get(gram, 0), gram)
    self._tier[gram] = old[0] + 1
    self.promotions += 1
    self._write("promotions.i64", np.asarray([gram, old[0] + 1], np.int64).tobytes())
    starts, all_grams, alive = self._starts.view, self._grams.view, self._alive.view
    grown = []
    for doc in np.unique(self._postings.get(gram)).tolist():
      if not alive[doc]:
        continue
      grams = all_grams[starts[doc]:starts[doc + 1]].tolist()
      p = prefix_len(len(grams), self.threshold)
      ordered = sorted(grams, key=self._order_key)
      if gram in ordered[:p]:
        continue                                  # still in the prefix: nothing changes
      entering = ordered[p - 1]
      if old < self._order_key(entering):         # it was in the prefix before: `entering` is new
        self._post(entering, doc)
        grown.append(entering)
    return [g for g, n in zip(grown, self._postings.counts(grown)) if n >= self.posting_cap << self._tier.get(g, 0)]

  # -- lifecycle -------------------------------------------------------------------------------
  def retain(self, keep: Callable[[str], bool]) -> int:
    """Retires every question whose name `keep` refuses; returns how many were retired."""
    alive = self._alive.view
    retired = 0
    for doc, name in enumerate(self._names):
      if alive[doc] and not keep(name):
        alive[doc] = False
        retired += 1
    self._alive_count -= retired
    return retired

  # -- on disk ---------------------------------------------------------------------------------
  def _params(self) -> dict[str, Any]:
    return {"format": _FORMAT, "ngram": self.ngram, "threshold": self.threshold,
            "posting_cap": self.posting_cap}

  def _open_files(self) -> None:
    self.directory.mkdir(parents=True, exist_ok=True)
    for name in _FILES:
      self._files[name] = open(self.directory / name, "ab")

  def _write(self, name: str, data: bytes) -> None:
    if self._files:
      self._files[name].write(data)

  def save(self, extra: dict[str, Any] | None = None) -> None:
    """Makes everything indexed so far durable, with `extra` (e.g. how much of the rows file it
    covers) in the manifest. No-op without a directory."""
    if not self._files:
      return
    sizes = {}
    for name, f in self._files.items():
      f.flush()
      os.fsync(f.fileno())
      sizes[name] = f.tell()
    manifest = {**self._params(), "questions": len(self._names), "bytes": sizes, "extra": extra or {}}
    tmp = self.directory / (MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(manifest, f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, self.directory / MANIFEST)

  def close(self) -> None:
    for f in self._files.values():
      f.close()
    self._files = {}

  @classmethod
  def open(cls, directory: Path, ngram: int = 3, threshold: float = 0.8,
           posting_cap: int = 16) -> tuple[DuplicateFilter, dict[str, Any] | None]:
    """The index saved in `directory` and the `extra` of its last save; a new, empty index
    (and None) when there is none or it was built with other settings."""
    directory = Path(directory)
    index = cls(ngram, threshold, posting_cap)
    manifest = _read_manifest(directory / MANIFEST)
    if manifest is None or {k: manifest.get(k) for k in index._params()} != index._params():
      if manifest is not None:
        log.warning("%s was built with other dedup settings; rebuilding it", directory)
      shutil.rmtree(directory, ignore_errors=True)
      index.directory = directory
      index._open_files()
      return index, None
    sizes = manifest["bytes"]
    for name in _FILES:   # drop what was appended after the last save
      path = directory / name
      if not path.exists() or path.stat().st_size < sizes[name]:
        raise ValueError(f"{path}: shorter than its manifest says; delete {directory} to rebuild")
      with open(path, "rb+") as f:
        f.truncate(sizes[name])
    index._load(directory, manifest["questions"])
    index.directory = directory
    index._open_files()
    return index, manifest.get("extra") or {}

  def _load(self, directory: Path, questions: int) -> None:
    docs = np.fromfile(directory / "docs.i64", np.int64).reshape(-1, 2)
    grams = np.fromfile(directory / "grams.i64", np.int64)
    text = (directory / "names.jsonl").read_text(encoding="utf-8")
    lines = [line for line in text.split("\n") if line]   # not splitlines: names may hold U+2028
    self._names = json.loads("[" + ",".join(lines) + "]")
    if not len(docs) == len(self._names) == questions or int(docs[:, 1].sum()) != grams.size:
      raise ValueError(f"{directory}: files disagree with each other; delete it to rebuild")
    self._keys.extend(docs[:, 0])
    self._starts.extend(np.cumsum(docs[:, 1]))
    self._grams.extend(grams)
    self._alive.extend(np.ones(questions, np.bool_))
    self._alive_count = questions
    self._exact.add_many(docs[:, 0], np.arange(questions, dtype=np.int32))
    postings = np.fromfile(directory / "postings.i64", np.int64).reshape(-1, 2)
    self._postings.add_many(postings[:, 0], postings[:, 1])
    for gram, tier in np.fromfile(directory / "promotions.i64", np.int64).reshape(-1, 2).tolist():
      self._tier[gram] = tier
    self.promotions = len(self._tier)


def _read_manifest(path: Path) -> dict[str, Any] | None:
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return None
