"""The near-duplicate index: today's decision rule (exact Jaccard >= 0.8 on word 3-grams) on
labelled pairs, a search cost that levels off as the index grows, and the on-disk copy."""

from __future__ import annotations

import json
import random

import pytest

from mathjax_sft import paths
from mathjax_sft.synth.dedup import DuplicateFilter, exact_key
from mathjax_sft.synth.ngrams import ngram_hashes, words


def _train_questions(n: int) -> list[str]:
  with open(paths.data_file("gsm8k/train.jsonl"), encoding="utf-8") as f:
    return [json.loads(next(f))["question"] for _ in range(n)]


def _jaccard(a: str, b: str) -> float:
  x, y = ngram_hashes(words(a), 3), ngram_hashes(words(b), 3)
  return len(x & y) / len(x | y)


def _edit(text: str, rng: random.Random, edits: int) -> str:
  tokens = text.split()
  for _ in range(edits):
    tokens[rng.randrange(len(tokens))] = rng.choice(tokens)
  return " ".join(tokens)


def test_labelled_pairs_keep_todays_decisions():
  """Pairs (indexed question, edited copy) labelled by exact Jaccard >= 0.8 of their word
  3-grams: the index, holding 1,500 real questions and promoting aggressively (cap 2), decides
  every pair as the label says, and names the right partner."""
  rng = random.Random(0)
  indexed = _train_questions(1500)
  index = DuplicateFilter(ngram=3, threshold=0.8, posting_cap=2)
  for i, question in enumerate(indexed):
    index.add(question, f"q{i}")
  assert index.promotions > 100
  pairs = [(i, _edit(indexed[i], rng, rng.randint(1, 5))) for i in rng.sample(range(1500), 400)]
  labels = [_jaccard(indexed[i], copy) >= 0.8 - 1e-9 for i, copy in pairs]
  assert 100 < sum(labels) < 300          # both sides of the threshold are well represented
  for (i, copy), duplicate in zip(pairs, labels):
    hit = index.check(copy)
    if exact_key(copy) == exact_key(indexed[i]):
      assert hit is not None and hit[0] == "exact_duplicate"
    elif duplicate:
      assert hit is not None and hit[0] == "near_duplicate" and hit[2] >= 0.8 - 1e-9, (i, copy)
      assert hit[2] == pytest.approx(max(_jaccard(indexed[int(hit[1][1:])], copy), _jaccard(indexed[i], copy)))
    else:   # not a duplicate of its own source; may only match another question, and rightly
      assert hit is None or _jaccard(indexed[int(hit[1][1:])], copy) >= 0.8 - 1e-9, (i, copy)


def test_search_cost_levels_off_where_hash_order_grows():
  """Checking the real GSM8K train questions one after another: posting-list entries read per
  check level off under the rarity order, and keep growing under a hash order (no promotion)."""
  questions = _train_questions(4000)

  def reads_per_tenth(cap: int) -> list[float]:
    index, per_check = DuplicateFilter(posting_cap=cap), []
    for i, question in enumerate(questions):
      before = index.postings_read
      index.check_and_add(question, str(i))
      per_check.append(index.postings_read - before)
    n = len(per_check) // 10
    return [sum(per_check[k * n:(k + 1) * n]) / n for k in range(10)]

  rarity, hashed = reads_per_tenth(16), reads_per_tenth(10**9)
  assert rarity[-1] <= 1.4 * rarity[5]           # levels off (bounded by cap x prefix)
  assert hashed[-1] >= 1.5 * hashed[5]           # grows with the index
  assert rarity[-1] <= hashed[-1] / 3


def test_saved_index_reopens_with_the_same_answers(tmp_path):
  questions = _train_questions(300)
  index, extra = DuplicateFilter.open(tmp_path / "index", posting_cap=2)
  assert extra is None and len(index) == 0
  for i, question in enumerate(questions[:200]):
    index.add(question, f"q{i}")
  index.save({"rows_bytes": 123})
  index.add(questions[200], "after the save")      # not in the saved copy
  index.close()
  reopened, extra = DuplicateFilter.open(tmp_path / "index", posting_cap=2)
  assert extra == {"rows_bytes": 123} and len(reopened) == 200
  assert reopened.check(questions[200]) is None
  fresh = DuplicateFilter(posting_cap=2)
  for i, question in enumerate(questions[:200]):
    fresh.add(question, f"q{i}")
  rng = random.Random(1)
  for question in questions[:200] + [_edit(q, rng, 2) for q in questions[:200]] + questions[200:]:
    assert reopened.check(question) == fresh.check(question)
  assert reopened.retain(lambda name: name != "q7") == 1
  assert reopened.check(questions[7]) is None and len(reopened) == 199
  reopened.add(questions[7], "q7 again")
  assert reopened.check(questions[7]) == ("exact_duplicate", "q7 again", 1.0)
  reopened.close()
  other, extra = DuplicateFilter.open(tmp_path / "index", threshold=0.7)   # other settings: rebuilt
  assert extra is None and len(other) == 0
