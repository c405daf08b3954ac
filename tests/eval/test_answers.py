"""Answer extraction and normalisation on hand-written model outputs."""

from __future__ import annotations

import pytest

from mathjax_sft.eval import answers


@pytest.mark.parametrize("text, expected", [
    ("She makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18", "18"),
    ("so the total is\n#### $1,000.", "1000"),
    ("#### 12 dollars\nsome trailing text 99", "12"),
    ("#### −3", "-3"),
    ("#### -3.50", "-3.5"),
    ("The answer is 42.", "42"),
    ("blah 7 apples. The answer is: $1,234.", "1234"),
    ("First 3 then 5, so The answer is 8 and not 9", "8"),
    ("So we get \\boxed{17} in total; check 3 + 4", "17"),
    ("16 - 3 - 4 = 9 eggs, 9 * 2 = 18 dollars", "18"),
    ("The temperature drops 16-3 to reach it", "3"),
    ("x = -7 at the end", "-7"),
    ("#### 3/4", "3/4"),
    ("#### \\frac{3}{4}", "\\frac{3}{4}"),
    ("no digits here at all", None),
    ("", None),
])
def test_extract_gsm8k(text, expected):
  assert answers.extract_gsm8k_answer(text) == expected
  assert answers.extract_answer(text, "gsm8k") == expected


@pytest.mark.parametrize("text, expected", [
    ("so $x = \\boxed{\\frac{14}{3}}$.", "\\frac{14}{3}"),
    ("first \\boxed{1} then \\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.",
     "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("nested \\boxed{\\sqrt{\\frac{a}{b}}} end", "\\sqrt{\\frac{a}{b}}"),
    ("old style \\fbox{7}", "7"),
    ("no brace \\boxed 5$ done", "5"),
    ("The answer is $\\frac{1}{2}$.", "\\frac{1}{2}"),
    ("Thus the answer is: 2\\sqrt{2}.\nExtra line", "2\\sqrt{2}"),
    # Xwin-Math's last resort (flex): the last inline formula or number of the text
    ("unclosed \\boxed{12 and nothing else", "12"),
    ("We computed 12 and 13.", "13"),
    ("The maximum number of values that can be obtained is 4.", "4"),
    ("so the area is $3\\sqrt{13}$ square units", "3\\sqrt{13}"),
    ("a total of 1,500 and then 3/4 of it", "3/4"),
    ("which equals 48 inches", "48"),
    ("no number here at all", None),
])
def test_extract_math(text, expected):
  assert answers.extract_math_answer(text) == expected
  assert answers.extract_answer(text, "math") == expected


def test_extract_unknown_dataset():
  with pytest.raises(ValueError, match="unknown dataset"):
    answers.extract_answer("1", "aime")


@pytest.mark.parametrize("raw, key", [
    ("1,000", "1000"), ("$1,000.00$", "1000"), ("\\$18", "18"), ("18 dollars", "18"),
    ("50\\%", "50"), ("50%", "50"), ("−3", "-3"), ("-3.0", "-3"), ("10.", "10"),
    ("90^\\circ", "90"), ("864 \\mbox{ inches}^2", "864"), ("15\\text{ cm}", "15"),
    ("\\dfrac{3}{4}", "\\frac{3}{4}"), ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
    ("\\text{(C)}", "(C)"), ("5x", "5x"), ("5 x", "5x"), ("\\pi r^2", "\\pi r^2"), ("0.0", "0"),
    ("1267650600228229401496703205376", "1267650600228229401496703205376"),   # all 31 digits
    ("1,267,650,600,228,229,401,496,703,205,376.50", "1267650600228229401496703205376.5"),
])
def test_normalize_answer(raw, key):
  assert answers.normalize_answer(raw) == key
  assert answers.normalize_answer(key) == key  # idempotent
