"""Final-answer extraction from model outputs / reference solutions, and answer normalisation.

Two extraction styles, chosen by the dataset name:

* ``gsm8k``: the answer is a number. Looked for, in Xwin-Math's order: the last ``#### ...`` line,
  the last "The answer is ..." (a box inside it first; for "the answer is 20 * 35 = 750" the
  result after the last ``=``), the last ``\\boxed{...}``, else the last number in the text. The
  result is a canonical number string (commas, ``$``, trailing ``.``, unit words and trailing zeros
  removed: ``"$1,000.50 dollars."`` -> ``"1000.5"``), or a fraction string (``3/4``,
  ``\\frac{3}{4}``) when the marked span holds a fraction rather than a plain number.
* ``math``: the answer is LaTeX. After the last "The answer is" (Xwin-Math's marker, also written
  "The answer is:"): the box inside that line, else the line itself; without the marker the
  content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (balanced braces; also ``\\boxed 5``).
  Returned stripped but otherwise raw; graders normalise it with :func:`normalize_answer`.

Every extractor returns ``None`` when the text holds no answer.

:func:`normalize_answer` maps an answer string to a canonical key: two answers with the same key
are treated as the same answer (exact-match fast path of the grader, grouping for maj@k). It removes
the known pitfalls that trip up math-verify: ``$`` / ``\\$``, ``\\%`` / ``%``, degree signs, unit
words or ``\\text{...}`` units after an answer, ``\\dfrac``/``\\tfrac``, ``\\left``/``\\right``,
spacing commands, unicode minus signs, trailing periods, thousands separators (``1,000``,
MATH's ``15,\\!000``, ``1{,}000``, ``1\\,000``), and it writes plain decimal numbers canonically
(``-3.0`` -> ``-3``).
"""

from __future__ import annotations

import decimal
import functools
import re

DATASETS = ("gsm8k", "math")

# A number in running text. The minus is a sign only when it does not follow something that ends an
# operand ("16-3" is a subtraction: it yields 16 and 3); thousands separators only in groups of 3.
_NUMBER_RE = re.compile(
    r"(?:(?<![\w)\]}.])[-\u2212])?(?<![\d.])(?:\d{1,3}(?:,\d{3})+(?![\d])|\d+)(?:\.\d+)?")
_PLAIN_NUMBER_RE = re.compile(r"^-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?$|^-?\.\d+$")
_FRACTION_RE = re.compile(r"^-?(?:\\[dt]?frac\{-?\d+\}\{-?\d+\}|\d+\s*/\s*\d+)")
_GSM8K_MARK_RE = re.compile(r"####")
_ANSWER_IS_RE = re.compile(r"answer\s+is\s*[:：]?", re.IGNORECASE)
_BOX_COMMANDS = ("\\boxed", "\\fbox")
# Xwin-Math's last resort for MATH ("flex" extraction): the last inline formula `$...$` or number
# (a fraction a/b, a decimal, a number with thousands separators) in the text.
_MATH_LAST_RE = re.compile(r"\$(?P<tex>[^$]+)\$|(?P<num>-?\d+\s*/\s*\d+|" + _NUMBER_RE.pattern + ")")

# Unit words that may follow a number in an answer ("18 dollars", "5 cm").
UNIT_WORDS = frozenset("""
  dollar dollars cent cents usd euro euros pound pounds yen
  percent percentage degree degrees
  cm mm km m meter meters metre metres centimeter centimeters kilometer kilometers
  inch inches in ft foot feet yard yards mile miles mi
  g kg gram grams kilogram kilograms lb lbs ounce ounces oz ton tons liter liters litre litres ml l
  gallon gallons quart quarts cup cups
  second seconds sec secs minute minutes min mins hour hours hr hrs day days week weeks month months
  year years
  unit units square sq cubic
""".split())

_MINUS_SIGNS = str.maketrans({"\u2212": "-", "\u2013": "-", "\u2014": "-", "\ufe63": "-",
                              "\uff0d": "-"})


def find_boxed(text: str) -> list[str]:
  """Contents of every ``\\boxed{...}`` / ``\\fbox{...}`` in order, with balanced braces.

  ``\\boxed 5`` (argument without braces) yields ``"5"``. An unclosed box is ignored.
  """
  found: list[tuple[int, str]] = []
  for command in _BOX_COMMANDS:
    start = 0
    while (pos := text.find(command, start)) != -1:
      start = pos + len(command)
      rest = start
      while rest < len(text) and text[rest] == " ":
        rest += 1
      if rest < len(text) and text[rest] == "{":
        depth = 0
        for end in range(rest, len(text)):
          if text[end] == "{":
            depth += 1
          elif text[end] == "}":
            depth -= 1
            if depth == 0:
              found.append((pos, text[rest + 1:end]))
              break
      elif rest > start:  # "\boxed 5": the argument runs to the next space or '$'.
        match = re.match(r"[^\s$]+", text[rest:])
        if match:
          found.append((pos, match.group(0)))
  return [content for _, content in sorted(found)]


def last_boxed(text: str) -> str | None:
  """Stripped content of the last balanced ``\\boxed{}``/``\\fbox{}``, or None if there is none."""
  boxes = [b.strip() for b in find_boxed(text)]
  boxes = [b for b in boxes if b]
  return boxes[-1] if boxes else None


def find_numbers(text: str) -> list[str]:
  """Every number in running text, as canonical strings (see :func:`canonical_number`)."""
  numbers = []
  for match in _NUMBER_RE.finditer(text):
    number = canonical_number(match.group(0))
    if number is not None:
      numbers.append(number)
  return numbers


def canonical_number(text: str) -> str | None:
  """``"1,000.50"`` -> ``"1000.5"``, ``"-3.0"`` -> ``"-3"``; None when text is no plain number."""
  text = text.strip().translate(_MINUS_SIGNS)
  if not _PLAIN_NUMBER_RE.match(text):
    return None
  try:
    value = decimal.Decimal(text.replace(",", ""))
  except decimal.InvalidOperation:
    return None
  if value == 0:
    return "0"
  # normalize() rounds to the context's precision (28 digits by default): give it every digit
  value = value.normalize(decimal.Context(prec=len(value.as_tuple().digits)))
  # format 'f' never uses an exponent: Decimal('1E+3') -> '1000'.
  return format(value, "f")


def _strip_math_delimiters(text: str) -> str:
  text = text.strip()
  for open_, close in (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$")):
    if text.startswith(open_) and text.endswith(close) and len(text) >= len(open_) + len(close):
      text = text[len(open_):len(text) - len(close)].strip()
  return text


def _unwrap_text(text: str) -> str:
  """``\\text{abc}`` (the whole string) -> ``abc``; also ``\\textbf``, ``\\mbox``, ``\\mathrm``."""
  match = re.fullmatch(r"\\(?:text|textbf|mbox|mathrm|mathbf)\{([^{}]*)\}", text)
  return match.group(1).strip() if match else text


def _strip_units(text: str) -> str:
  """``18 dollars`` / ``864 \\mbox{ inches}^2`` / ``5\\text{ cm}`` -> the number alone."""
  match = re.fullmatch(r"(-?[\d.,]*\d)\s*(?:\\(?:text|mbox|mathrm)\{\s*([^{}]*)\}|([A-Za-z][A-Za-z ]*))"
                       r"\s*(?:\^\s*\{?[23]\}?)?", text)
  if not match:
    return text
  if match.group(2) is not None:  # any \text{...} after a number is a unit
    return match.group(1)
  words = match.group(3).lower().split()
  if words and all(w in UNIT_WORDS for w in words):
    return match.group(1)
  return text


def _strip_trailing_text(text: str) -> str:
  """``\\frac{68}{3}\\text{ pounds}`` / ``9\\text{ a.m.}`` -> the expression before the unit."""
  match = re.fullmatch(r"(.*?[^\s{])\s*\\(?:text|mbox|mathrm)\{[^{}]*\}\s*(?:\^\s*\{?[23]\}?)?", text)
  return match.group(1) if match else text


@functools.lru_cache(maxsize=1 << 16)
def normalize_answer(answer: str) -> str:
  """Canonical key of an answer string; equal keys mean the same answer.

  Contract: idempotent (``normalize_answer(normalize_answer(a)) == normalize_answer(a)``); plain
  decimal numbers come out as :func:`canonical_number` writes them; spaces are dropped except a
  single one between two letters (``\\pi r``).
  """
  s = answer.strip().translate(_MINUS_SIGNS)
  s = _strip_math_delimiters(s)
  s = s.replace("\\$", "").replace("$", "")
  # thousands separators written in LaTeX: 15,\!000 (MATH's golds), 1{,}000, 1\,000
  s = re.sub(r"(?<=\d),\s*\\!\s*(?=\d{3})", "", s)
  s = re.sub(r"(?<=\d)\{,\}(?=\d{3})", "", s)
  s = re.sub(r"(?<=\d)\\,(?=\d{3}(?!\d))", "", s)
  s = re.sub(r"\\!", "", s)                       # negative thin space: never a separator
  s = re.sub(r"\\(?:displaystyle|left|right)(?![A-Za-z])|\\[,;:]", " ", s)
  s = re.sub(r"(?<!\\)\\ ", " ", s)            # "\ " (a space), not a "\\" row break
  s = re.sub(r"\\[dt]frac", r"\\frac", s)
  s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|°|\\degree", "", s)
  s = s.replace("\\%", "").replace("%", "")
  s = re.sub(r"\s+", " ", s).strip()
  s = re.sub(r"[.。]+$", "", s).strip()
  s = re.sub(r"[.。]+$", "", _unwrap_text(s)).strip()    # \text{4:30 p.m.} = 4:30 p.m.
  s = _strip_units(s)
  s = _strip_trailing_text(s)
  number = canonical_number(s)
  if number is not None:
    return number
  s = re.sub(r"(?<![A-Za-z]) | (?![A-Za-z])", "", s)
  return s


def number_or_fraction(span: str) -> str | None:
  """The answer in the span following a GSM8K answer marker."""
  span = span.strip()
  boxed = last_boxed(span)
  if boxed is not None:
    span = boxed
  cleaned = normalize_answer(span)
  if canonical_number(cleaned) is not None:
    return cleaned
  fraction = _FRACTION_RE.match(cleaned)
  if fraction:
    return fraction.group(0)
  numbers = find_numbers(span.replace("\\$", " ").replace("$", " "))
  return numbers[0] if numbers else None


def _result_of(span: str) -> str:
  """The result of an expression in an answer span: "20 * 35 = 750 cups" -> " 750 cups" (a span
  with a box, or without ``=``, as it is)."""
  if "=" not in span or last_boxed(span) is not None:
    return span
  return span.rsplit("=", 1)[1]


def extract_gsm8k_answer(text: str) -> str | None:
  """Numeric answer of a GSM8K-style solution or model output; None if there is no number.

  Order (Xwin-Math's): last ``#### x`` line, last "The answer is x", last ``\\boxed{x}``, last
  number in the text. In a marked span an expression with ``=`` is graded by its result.
  """
  marks = list(_GSM8K_MARK_RE.finditer(text))
  if marks:
    answer = number_or_fraction(_result_of(text[marks[-1].end():].split("\n", 1)[0]))
    if answer is not None:
      return answer
  phrases = list(_ANSWER_IS_RE.finditer(text))
  if phrases:
    answer = number_or_fraction(_result_of(text[phrases[-1].end():].split("\n", 1)[0]))
    if answer is not None:
      return answer
  boxed = last_boxed(text)
  if boxed is not None:
    answer = number_or_fraction(boxed)
    if answer is not None:
      return answer
  numbers = find_numbers(text)
  return numbers[-1] if numbers else None


def extract_math_answer(text: str) -> str | None:
  """LaTeX answer of a MATH-style solution or model output; None if there is none.

  Xwin-Math's order ("flex" extraction): after the last "The answer is", the box in that line,
  else the line (surrounding ``$`` and a final period removed); without the marker, the last
  balanced ``\\boxed{}``/``\\fbox{}``; without one, the last inline formula ``$...$`` or number
  in the text.
  """
  phrases = list(_ANSWER_IS_RE.finditer(text))
  if phrases:
    span = text[phrases[-1].end():].split("\n", 1)[0].strip()
    boxed = last_boxed(span)
    if boxed is not None:
      return boxed
    span = re.sub(r"[.。]\s*$", "", span).strip()
    span = _strip_math_delimiters(span)
    span = re.sub(r"[.。]\s*$", "", span).strip()
    if span:
      return span
  boxed = last_boxed(text)
  if boxed is not None:
    return boxed
  matches = list(_MATH_LAST_RE.finditer(text))
  if not matches:
    return None
  last = matches[-1]
  if last.group("tex") is not None:
    return last.group("tex").strip() or None
  return canonical_number(last.group("num")) or re.sub(r"\s+", "", last.group("num"))


def extract_answer(text: str, dataset: str) -> str | None:
  """Dispatch on dataset: ``'gsm8k'`` -> :func:`extract_gsm8k_answer`, ``'math'`` -> MATH style."""
  if dataset == "gsm8k":
    return extract_gsm8k_answer(text)
  if dataset == "math":
    return extract_math_answer(text)
  raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
