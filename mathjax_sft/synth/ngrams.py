"""Word n-grams of normalised text, hashed to integers: the shared currency of the filters."""

from __future__ import annotations

import hashlib
import re
import unicodedata

_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
  """Lower-cased alphanumeric words (NFKC-normalised); punctuation, LaTeX backslashes and
  whitespace differences disappear, numbers stay (they make a question)."""
  return _WORD.findall(unicodedata.normalize("NFKC", text).lower())


def _hash(gram: str) -> int:
  # Stable across processes (unlike hash()), 63 bits so numpy int64 holds it.
  return int.from_bytes(hashlib.blake2b(gram.encode("utf-8"), digest_size=8).digest(), "big") >> 1


def ngram_hashes(tokens: list[str], n: int) -> set[int]:
  """Hashes of all word n-grams; a text shorter than n words is one n-gram (itself); empty -> {}."""
  if not tokens:
    return set()
  if len(tokens) < n:
    return {_hash(" ".join(tokens))}
  return {_hash(" ".join(tokens[i:i + n])) for i in range(len(tokens) - n + 1)}


def text_key(text: str) -> bytes:
  """Exact-duplicate key: digest of the normalised word sequence."""
  return hashlib.sha1(" ".join(words(text)).encode("utf-8")).digest()
