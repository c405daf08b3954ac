"""Answer format checks, exact / near-duplicate detection and decontamination."""

from __future__ import annotations

import random

import pytest

from mathjax_sft.synth.filters import Decontaminator, DuplicateFilter, QuestionFilters
from mathjax_sft.synth.formats import check_gsm8k_answer, check_math_answer, gsm8k_final_answer, last_boxed
from mathjax_sft.synth.ngrams import ngram_hashes, words

TEST_QUESTION = ("Marisol's hens lay 18 eggs each day. She uses four of them to bake bread every morning and "
                 "gives three to her neighbour. She sells the rest at the market for $3 per egg. How many "
                 "dollars does she make every day at the market?")


@pytest.mark.parametrize("answer, ok", [
    ("She has 3 + 4 = 7.\n#### 7", True),
    ("Step one.\nStep two.\n####  1,250 \n", True),
    ("Total is 2.5.\n#### -2.5", True),
    ("#### 7", False),                                  # no reasoning
    ("She has 7.", False),                              # no final line
    ("She has 7.\n#### seven", False),
    ("#### 3\nShe has 7.\n#### 7", False),              # two final lines
    ("She has 7.\n#### 7 apples", False),
    ("", False),
])
def test_gsm8k_format(answer: str, ok: bool):
  assert (check_gsm8k_answer(answer) is None) == ok


def test_gsm8k_final_answer():
  assert gsm8k_final_answer("a\n#### 1,250") == "1250"
  assert gsm8k_final_answer("a\n#### x") is None


@pytest.mark.parametrize("answer, ok", [
    ("So $x = \\boxed{\\frac{1}{2}}$.", True),
    ("Thus the answer is $\\boxed {8+4i}$.", True),
    ("The answer is 5.", False),
    ("The answer is $\\boxed{}$.", False),
    ("The answer is $\\boxed{\\frac{1}{2}$.", False),   # unbalanced
])
def test_math_format(answer: str, ok: bool):
  assert (check_math_answer(answer) is None) == ok


def test_last_boxed_takes_the_last_and_nests():
  assert last_boxed("\\boxed{1} then \\boxed{\\sqrt{2}+{3}}") == "\\sqrt{2}+{3}"


def test_exact_duplicate_ignores_case_punctuation_and_spacing():
  f = DuplicateFilter()
  assert f.check_and_add("Tom has 3 apples. How many?", "r0") is None
  hit = f.check_and_add("  tom HAS 3 apples -- how many ", "r1")
  assert hit is not None and hit[0] == "exact_duplicate" and hit[1] == "r0"


def test_near_duplicate_found_and_distinct_question_kept():
  f = DuplicateFilter(ngram=3, threshold=0.8)
  base = ("A bakery sells muffins for 3 dollars each and cookies for 2 dollars each. On Monday it sold 40 "
          "muffins and 65 cookies. How much money did the bakery make on Monday from muffins and cookies?")
  assert f.check_and_add(base, "r0") is None
  near = base.replace("65 cookies", "66 cookies")   # one number changed
  hit = f.check_and_add(near, "r1")
  assert hit is not None and hit[0] == "near_duplicate" and hit[1] == "r0" and 0.8 <= hit[2] < 1.0
  other = ("Ravi walks 3 kilometres to school and 2 kilometres back through the park. How many kilometres "
           "does he walk in 5 school days?")
  assert f.check_and_add(other, "r2") is None
  assert len(f) == 2   # the near duplicate was not indexed


def test_near_duplicate_matches_brute_force():
  """Prefix filtering must find exactly the pairs a brute-force Jaccard finds (no false negatives)."""
  rng = random.Random(0)
  vocab = [f"w{i}" for i in range(30)]
  base = [" ".join(rng.choice(vocab) for _ in range(rng.randint(8, 25))) for _ in range(20)]
  texts = []
  for t in base:
    toks = t.split()
    for _ in range(3):
      variant = list(toks)
      for _ in range(rng.randint(0, 3)):
        variant[rng.randrange(len(variant))] = rng.choice(vocab)
      texts.append(" ".join(variant))
  threshold = 0.6
  f = DuplicateFilter(ngram=2, threshold=threshold)
  kept: list[set[int]] = []
  for i, text in enumerate(texts):
    grams = ngram_hashes(words(text), 2)
    brute = any(len(grams & k) / len(grams | k) >= threshold for k in kept)
    hit = f.check(text)
    assert (hit is not None) == brute, (i, text)
    if hit is None:
      f.add(text, str(i))
      kept.append(grams)
  assert 5 < len(kept) < len(texts)


def test_decontamination_flags_planted_near_copy_not_new_question():
  d = Decontaminator(ngram=13, jaccard_ngram=8, jaccard_threshold=0.5)
  d.add_questions(["Unrelated test question about trains leaving a station at 5 pm.", TEST_QUESTION], "test.jsonl")
  near_copy = TEST_QUESTION.replace("18 eggs", "20 eggs").replace("neighbour", "neighbor")
  hit = d.check(near_copy)
  assert hit is not None and hit.rule == "ngram" and hit.source == "test.jsonl#1"
  assert d.check("Ana buys 4 notebooks at 3 dollars each and a pen for 2 dollars. What does she spend?") is None


def test_decontamination_jaccard_rule_catches_short_questions():
  d = Decontaminator(ngram=13, jaccard_ngram=8, jaccard_threshold=0.5)
  short = "What is the sum of the first ten positive odd integers?"   # 10 words: no 13-gram
  d.add_questions([short], "math_test")
  hit = d.check("What is the sum of the first ten positive odd integers ?")
  assert hit is not None and hit.rule == "jaccard" and hit.score == pytest.approx(1.0)
  assert d.check("What is the product of the first three positive even integers?") is None


def test_question_filters_order_and_reasons():
  d = Decontaminator()
  d.add_questions([TEST_QUESTION], "gsm8k/test.jsonl")
  qf = QuestionFilters(DuplicateFilter(), d)
  assert qf.check(TEST_QUESTION.replace("$3", "$4"), "r0")[0] == "contaminated"
  fresh = "Ana buys 4 notebooks at 3 dollars each and a pen for 2 dollars. How much does she spend in total?"
  assert qf.check(fresh, "r1") is None
  assert qf.check(fresh, "r2") == ("exact_duplicate", "Jaccard 1.00 with r1")
  assert len(qf.dedup) == 1   # the contaminated question was never indexed


def test_decontamination_against_the_real_benchmark_files():
  """With the project's data (fails with a message naming the path without it): a near-copy of a real GSM8K test question is
  caught; training questions mostly are not (GSM8K train has a few genuine near-copies of test
  questions, e.g. train line 21 of test question 632, which this rightly flags)."""
  import json
  from mathjax_sft import paths
  from mathjax_sft.synth.references import load_benchmark_questions
  gsm8k_test, math_test = paths.data_file("gsm8k/test.jsonl"), paths.data_file("math/test.jsonl")
  gsm8k_train = paths.data_file("gsm8k/train.jsonl")
  d = Decontaminator()
  for path in (gsm8k_test, math_test):
    d.add_questions(load_benchmark_questions(path), path.name)
  with open(gsm8k_test) as f:
    question = json.loads(f.readline())["question"]
  words_ = question.split()
  words_[len(words_) // 2] = "purple"                        # change one word in the middle
  hit = d.check(" ".join(words_))
  assert hit is not None and hit.source == "test.jsonl#0"
  with open(gsm8k_train) as f:
    train_questions = [json.loads(next(f))["question"] for _ in range(50)]
  assert sum(d.check(q) is not None for q in train_questions) <= 2
  assert d.check(TEST_QUESTION) is None
