"""The printed run report: per problem question, gold, right-of-N and one right sample; then the
headline Pass@N, PassRatio@N and maj@N."""

from mathjax_sft.eval import metrics, report

LONG_QUESTION = ("A train leaves at 9 am and travels 60 miles per hour for 3 hours, then rests "
                 "for an hour and travels 40 miles per hour for 2 more hours. How far did it go?")


def _sample(text, answer, correct):
  return {"text": text, "answer": answer, "correct": correct}


def _records():
  return [
      {"id": "p1", "question": "Tom has 3 apples\nand buys 4 more. How many apples now?",
       "gold": "7", "samples": [_sample("3 + 5 = 8\n#### 8", "8", False),
                                _sample("3 + 4 = 7\n#### 7", "7", True),
                                _sample("seven\n#### 7", "7", True),
                                _sample("no idea", None, False)]},
      {"id": "p2", "question": "What is 3 times 4?", "gold": "12",
       "samples": [_sample("#### 10", "10", False), _sample("#### 11", "11", False),
                   _sample("#### 10", "10", False), _sample("3 * 4 = 12 #### 12", "12", True)]},
      {"id": "p3", "question": LONG_QUESTION, "gold": "5",
       "samples": [_sample("hmm", None, False), _sample("#### 6", "6", False),
                   _sample("#### 6", "6", False), _sample("#### 9", "9", False)]},
  ]


def test_render_lists_each_problem_then_the_headline_metrics():
  """Counts and metrics worked out by hand: right samples 2, 1, 0 of 4; Pass@4 = 2/3,
  PassRatio@4 = 3/12, maj@4 = 1/3 (p1's majority 7 is right, p2's 10 is wrong; maj@1 is 0)."""
  records = _records()
  summary = metrics.summarize(records)
  ci = summary["ci95"]
  band = lambda key: f"(95% CI {100 * ci[key][0]:.1f}-{100 * ci[key][1]:.1f})"
  assert report.render(records, summary).splitlines() == [
      "p1: Tom has 3 apples and buys 4 more. How many apples now?",
      "  gold '7'; 2 of 4 samples right",
      "  right: 3 + 4 = 7 #### 7",
      "p2: What is 3 times 4?",
      "  gold '12'; 1 of 4 samples right",
      "  right: 3 * 4 = 12 #### 12",
      f"p3: {LONG_QUESTION[:97]}...",
      "  gold '5'; 0 of 4 samples right",
      "  answers given: 6, 9",
      f"Pass@4 66.7% {band('pass_at_n')}: problems with at least one right sample; "
      f"PassRatio@4 25.0% {band('pass_ratio_at_n')}: right samples; maj@4 33.3%; "
      "3 problems x 4 samples",
  ]


def test_render_headline_from_a_given_summary():
  """The headline prints the summary's numbers as percentages, without a band when the summary
  has no intervals, and N is the summary's num_samples."""
  summary = {"num_samples": 8, "num_problems": 5, "pass_at_n": 0.8, "pass_ratio_at_n": 0.375,
             "maj_at_k": {"1": 0.1, "4": 0.2, "8": 0.6}}
  record = {"id": "q", "prompt": "Solve it.", "gold": "1",
            "samples": [_sample("#### 2", "2", False)] * 8}
  assert report.render([record], summary).splitlines() == [
      "q: Solve it.",
      "  gold '1'; 0 of 8 samples right",
      "  answers given: 2",
      "Pass@8 80.0%: problems with at least one right sample; PassRatio@8 37.5%: right samples; "
      "maj@8 60.0%; 5 problems x 8 samples",
  ]
