"""Near-misses are never credited, their right-answer twins always are.

At Pass@N a per-sample false credit rate p becomes about 1 - (1 - p)^N per problem (N = 256,
p = 0.001: 23%), so the grader must not credit an answer that is almost the gold. Each case is a
gold, a wrong answer that differs from it in one small way, and a right answer written
differently from the gold; both are written as a model writes them and go through the path of a
user's samples: extraction, then the Grader (fast paths and the worker's comparison).
"""

from __future__ import annotations

import pytest

from mathjax_sft.eval import answers


def said(answer: str) -> str:
  return f"We simplify step by step. Therefore, the answer is $\\boxed{{{answer}}}$."


# class -> [(gold, near-miss sample text, twin sample text)]
CASES = {
    "tiny_values": [
        ("\\frac{1}{2006!}", said("\\frac{1}{2004!}"), said("\\frac{1}{2006 \\cdot 2005!}")),
        ("\\frac{1}{2^{99}}", said("\\frac{1}{2^{98}}"), said("2^{-99}")),
        ("\\frac{2^{2005}+1}{3 \\cdot 2^{2006}}", said("\\frac{1}{3 \\cdot 2^{2006}}"),
         said("\\frac{1+2^{2005}}{3 \\cdot 2^{2006}}")),
        ("\\frac{2^{2005}+1}{3 \\cdot 2^{2006}}", said("\\frac{1}{6}"),
         said("\\frac{1}{6}+\\frac{1}{3 \\cdot 2^{2006}}")),
        ("10^{-8}", said("10^{-9}"), said("0.00000001")),
        ("\\frac{\\sqrt{3}}{10^{7}}", said("\\frac{\\sqrt{2}}{10^{7}}"),
         said("\\sqrt{3} \\times 10^{-7}")),
        ("1 \\times 10^{-7}", said("2 \\times 10^{-7}"), said("10^{-7}")),
        ("0.0000001", said("0.0000002"), said("1 \\times 10^{-7}")),
        ("\\frac{1}{3}", said("0.33333"), said("0.333333")),
        ("\\frac{1}{6}", said("0.1667"), said("0.166667")),
        ("\\frac{2}{3}", said("0.66667"), said("0.666667")),
        ("\\frac{3}{4}", said("0.76"), said("0.75")),
        ("0.75", said("\\frac{3}{5}"), said("\\frac34")),
    ],
    # numbers past 28 digits (decimal's default precision) keep every digit
    "large_values": [
        ("2^{100}", said("2^{100}+1"), said("1267650600228229401496703205376")),
        ("1267650600228229401496703205376", said("1267650600228229401496703205377"),
         said("2^{100}")),
        ("1267650600228229401496703205376", said("1267650600228229401496703205376.5"),
         said("1,267,650,600,228,229,401,496,703,205,376")),
        ("\\frac{1}{2^{100}}", said("\\frac{1}{1267650600228229401496703205377}"),
         said("\\frac{1}{1267650600228229401496703205376}")),
    ],
    "sign_and_pm": [
        ("\\pm 2021", said("2021"), said("2021, -2021")),
        ("2021", said("\\pm 2021"), said("2021")),
        ("2 \\pm \\sqrt{3}", said("2 + \\sqrt{3}"), said("2 + \\sqrt{3}, 2 - \\sqrt{3}")),
        ("1 - \\frac{1}{e}", said("1 + \\frac{1}{e}"), said("\\frac{e - 1}{e}")),
        ("-\\frac{3}{4}", said("\\frac{3}{4}"), said("-0.75")),
        ("-\\sqrt{2}", said("\\sqrt{2}"), said("-\\frac{2}{\\sqrt{2}}")),
    ],
    "tuples_intervals_lists": [
        ("(1, 2, 3)", said("(1, 2, 4)"), said("\\left( 1, 2, 3 \\right)")),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", said("(3, \\frac{\\pi}{3})"),
         said("(3, \\frac{\\pi}{2})")),
        ("(2, -3)", said("(-3, 2)"), said("(2,-3)")),
        ("n = 2, 3, 4", said("n = 1, 2, 3"), said("n = 4, 3, 2")),
        ("D = (0, 1)", said("D = (0, 1.5)"), said("(0, 1)")),
        ("19, 46, \\text{ and } 82", said("21, 36, \\text{ and } 82"), said("82, 46, 19")),
        ("1, 2, 3", said("1, 2, 4"), said("3, 2, 1")),
        ("[-2, 5)", said("[-2, 5]"), said("-2 \\le x < 5")),
        ("(-\\infty, 3]", said("(-\\infty, 4]"), said("x \\le 3")),
        ("(-\\infty, -4) \\cup (4, \\infty)", said("(-\\infty, -4) \\cup (5, \\infty)"),
         said("(-\\infty,-4)\\cup(4,\\infty)")),
        ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", said("\\begin{pmatrix} 1 \\\\ 3 \\end{pmatrix}"),
         said("\\begin{pmatrix} 1 \\\\ \\frac{4}{2} \\end{pmatrix}")),
    ],
    "equations": [
        ("3x - y + 13 = 0", said("3x + 4y + 14 = 0"), said("y = 3x + 13")),
        ("y = 2x + 1", said("y = 2x - 1"), said("2x - y + 1 = 0")),
        ("2x - 3y = 6", said("2x - 3y = 7"), said("4x - 6y = 12")),
        ("x^2 + y^2 = 25", said("x^2 + y^2 = 5"), said("x^2 + y^2 - 25 = 0")),
        ("x + y = 1", said("x - x = 0"), said("y = 1 - x")),
        ("x + 2y = 3", said("0 = 0"), said("2x + 4y = 6")),
        ("y = -\\frac{1}{2}x + \\frac{3}{4}", said("y = -\\frac{1}{2}x + \\frac{3}{5}"),
         said("2x + 4y - 3 = 0")),
        ("x = 5", said("x = 6"), said("x = \\frac{10}{2}")),
    ],
    # the problem's equation restated has the gold's solutions but is no answer
    "unsolved_equations": [
        ("x = 5", said("x = \\sqrt{11 - 2x} + 4"), said("x = \\frac{10}{2}")),
        ("x = 5", said("x = (11 - 2x) + 4"), said("5")),
        ("-2, 2", said("x^2 = 4"), said("x = \\pm 2")),
        ("[-2, 2]", said("x^2 \\le 4"), said("-2 \\le x \\le 2")),
        ("x \\le 3", said("2x + 1 \\le 7"), said("3 \\ge x")),
        # an equation stands for its right-hand side only where its left names the answer or is
        # a computation
        ("4", said("a + 12 = 4"), said("a + b = 4")),
        ("5", said("2x = 5"), said("4 + 1 = 5")),
    ],
    "expressions": [
        ("x^2 + 2x + 1", said("x^2 + 2x + 2"), said("(x+1)^2")),
        ("\\frac{x+2}{7}", said("\\frac{x+3}{7}"), said("\\frac{x}{7}+\\frac{2}{7}")),
        ("2\\sqrt{2}", said("2\\sqrt{3}"), said("\\sqrt{8}")),
        ("\\frac{\\sqrt{3}}{2}", said("\\frac{\\sqrt{2}}{2}"), said("\\frac{1}{2}\\sqrt{3}")),
        ("3\\pi - 2", said("3\\pi - 1"), said("-2 + 3\\pi")),
        ("\\sqrt{3+2\\sqrt{2}}", said("\\sqrt{3+2\\sqrt{3}}"), said("1 + \\sqrt{2}")),
        ("e^{2} + 1", said("e^{3} + 1"), said("1 + e^2")),
        ("1010_2", said("1010_3"), said("1010_{2}")),
    ],
    # the right answer as models write it around the box
    "written_forms": [
        ("13", said("\\text{14}"), said("\\text{13}")),
        ("\\text{13}", said("14"), said("13")),
        ("\\frac{1}{2^{99}}", "So $\\boxed{\\boxed{\\frac{1}{2^{98}}}}$.",
         "So $\\boxed{\\boxed{\\frac{1}{2^{99}}}}$."),
        ("\\frac{1}{2^{99}}", "First $\\boxed{\\frac{1}{2^{99}}}$, so the answer is "
         "$\\boxed{\\frac{1}{2^{98}}}$.", "First $\\boxed{\\frac{1}{2^{98}}}$, checked: the answer "
         "is $\\boxed{\\frac{1}{2^{99}}}$."),
        ("12,\\!000", said("12,001"), said("12,000")),
        ("12000", said("12{,}001"), said("12{,}000")),
        ("73", "We get 437 + 468 = 905 and 122 + 294 + 489 = 905.\n\nFinal Answer: **74**",
         "We get 437 + 468 = 905 and 122 + 294 + 489 = 905.\n\nFinal Answer: **73**"),
    ],
}

GSM8K_CASES = [
    ("1267650600228229401496703205376", "#### 1267650600228229401496703205377",
     "#### 1,267,650,600,228,229,401,496,703,205,376"),
    ("73", "We get 437 + 468 = 905 and 122 + 294 + 489 = 905.\n\nFinal Answer: **74**",
     "We get 437 + 468 = 905 and 122 + 294 + 489 = 905.\n\nFinal Answer: **73**"),
    ("12000", "So she pays 12,000 + 1 dollars.\n#### 12,001", "So she pays 12,000 dollars.\n#### 12,000"),
    ("0.75", "The answer is \\boxed{\\frac{3}{5}}", "The answer is \\boxed{\\frac{3}{4}}"),
]


def _grade(grader, dataset, golds, texts):
  preds = [answers.extract_answer(t, dataset) for t in texts]
  return preds, grader.grade_detailed(list(golds), preds, dataset)


@pytest.mark.parametrize("name", sorted(CASES))
def test_near_misses_not_credited_twins_credited(grader, name):
  golds, misses, twins = zip(*CASES[name])
  preds, grades = _grade(grader, "math", golds, misses)
  credited = [(g, p, r.reason) for g, p, r in zip(golds, preds, grades) if r.correct]
  assert not credited, f"near-misses credited (gold, pred, reason): {credited}"
  preds, grades = _grade(grader, "math", golds, twins)
  missed = [(g, p, r.reason) for g, p, r in zip(golds, preds, grades) if not r.correct]
  assert not missed, f"right answers not credited (gold, pred, reason): {missed}"


def test_gsm8k_near_misses_and_twins(grader):
  golds, misses, twins = zip(*GSM8K_CASES)
  _, grades = _grade(grader, "gsm8k", golds, misses)
  assert not any(g.correct for g in grades)
  _, grades = _grade(grader, "gsm8k", golds, twins)
  assert all(g.correct for g in grades), grades
