"""Strict equivalence of two parsed answers (the sympy objects math-verify's ``parse`` returns).

Runs inside the grading worker processes (:mod:`grade_worker`), never in the sampler's process.
math-verify's own ``verify`` compares numbers after rounding them to a fixed number of decimals
and compares equations by their simplified residues, so two different values below ~1e-6
(``\\frac{1}{2004!}`` and ``\\frac{1}{2006!}``) count as equal. At Pass@N a per-sample false credit
rate p becomes about 1 - (1 - p)^N per problem, so this module never rounds exact values:

* **Exact values** (integers, rationals, powers, factorials, radicals, pi, e, ...; no decimal
  point on either side): equal only when sympy shows it: the same expression, the same rational
  after evaluation, a difference that simplifies to 0, or (algebraic numbers) a difference whose
  minimal polynomial is ``t``. A 30-digit evaluation that tells the values apart settles "different"
  first, cheaply. Anything unproven is different.
* **Decimals** (a side holds a decimal number): two numbers are equal when they agree within
  half a unit of the 6th significant digit of the larger one (a relative tolerance between
  5e-7 and 5e-6: ``0.333333`` and ``\\frac13`` agree, ``0.33333`` does not, nor do ``1e-7`` and
  ``2e-7``). In an expression with variables a decimal stands for its exact written value.
* **Expressions with variables**: equal when the difference simplifies to 0; an evaluation at a
  few fixed points that tells them apart settles "different" first.
* **Equations**: the same equation when both give the same name equal values (``x = 5`` and
  ``x = \\frac{10}{2}``) or when the residues (lhs - rhs) are proportional with a constant nonzero
  factor (``2x-3y=6`` and ``4x-6y=12``), never by comparing simplified residues alone. A gold that
  gives a name a value (``x = 5``) is answered by that value only: not by ``2x = 10``, nor by the
  problem's own equation (``x = \\sqrt{11-2x} + 4`` has the solution 5). Against a gold value, a
  predicted equation counts by its right-hand side only when its left names the answer or is a
  computation (``x = 5``, ``4 + 1 = 5``; not ``a + 12 = 5``). An identity (residue 0) equals only
  an identity. **Inequalities** in one variable compare as solution sets, the
  prediction's in solved form only (``x \\le 3`` or ``3 \\ge x`` for ``(-\\infty, 3]``, not
  ``2x + 1 \\le 7``); an inequality is compared with a gold interval unless that interval is a
  bare open pair ``(a, b)``, which reads as a point as well.
* **Sets, tuples, intervals, matrices**: member by member (sets in any order, tuples in order,
  intervals with the same open/closed ends); ``\\pm 2`` is the set {-2, 2} and never equals 2.
* Answers that parse to an undefined value (``12:00`` parses to complex infinity) compare only
  as strings.

Every comparison runs under a wall-clock limit (:func:`time_limit`, ``SIGALRM``; the worker's
main thread), raising :class:`ComparisonTimeout`.
"""

from __future__ import annotations

import contextlib
import re
import signal
from typing import Any, Iterator

import sympy
from latex2sympy2_extended import is_expr_of_only_symbols
from sympy import Basic, MatrixBase
from sympy.core.relational import Relational
from sympy.logic.boolalg import And

# A decimal equals a value when they agree to this many significant digits (see module docstring).
SIGNIFICANT_DIGITS = 6
# Relative difference beyond which a 30-digit evaluation proves two exact values different.
_DIFFERENT_RTOL = sympy.Float("1e-20", 30)
_EVAL_DIGITS = 30
# Fixed evaluation points for variables (distinct, positive, away from small integers).
_POINTS = ((sympy.Rational(131, 97), sympy.Rational(173, 89), sympy.Rational(211, 83)),
           (sympy.Rational(229, 103), sympy.Rational(97, 131), sympy.Rational(151, 67)),
           (sympy.Rational(313, 199), sympy.Rational(283, 107), sympy.Rational(89, 151)))


class ComparisonTimeout(BaseException):
  """The comparison ran past its time limit (a BaseException, so that no ``except Exception``
  in sympy or here swallows it)."""


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
  """Raises :class:`ComparisonTimeout` in the block after ``seconds`` (None or <= 0: no limit).
  Uses ``SIGALRM``, so only in a process's main thread."""
  if not seconds or seconds <= 0:
    yield
    return

  def on_alarm(signum, frame):
    del signum, frame
    raise ComparisonTimeout(f"comparison took more than {seconds}s")

  previous = signal.signal(signal.SIGALRM, on_alarm)
  signal.setitimer(signal.ITIMER_REAL, seconds)
  try:
    yield
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


def parsed_answers_equal(gold: list[Any], pred: list[Any]) -> bool:
  """Whether any parsed form of the prediction equals any parsed form of the gold.

  ``gold`` and ``pred`` are math-verify ``parse`` results: sympy objects and/or the extracted
  strings. Two strings are equal when identical and non-empty; two sympy objects by :func:`equal`;
  a word parsed as one name (``\\text{even}``) equals the same word written plainly (``Even``,
  which parses as a product of letters), whatever the case.
  """
  for g in gold:
    for p in pred:
      if isinstance(g, str) and isinstance(p, str):
        if g.strip() and g.strip() == p.strip():
          return True
      elif isinstance(g, str) or isinstance(p, str):
        if _same_word(g, p) or _same_word(p, g):
          return True
      elif equal(g, p):
        return True
  return False


def _same_word(name: Any, written: Any) -> bool:
  """A symbol named with a word, and a string that is that word."""
  if not isinstance(name, sympy.Symbol) or len(name.name) < 2 or not isinstance(written, str):
    return False
  word = re.sub(r"\\(?:text|mathrm|textbf|mbox)\{|[{}\s]", "", written)
  return word.isalpha() and word.lower() == name.name.lower()


def equal(gold: Any, pred: Any) -> bool:
  """Whether two parsed answers are the same answer (rules in the module docstring).

  Not symmetric in one respect, as in math-verify: against a gold that is no equation, a
  prediction that names the answer (``x = 5``, ``a + b = 5``) or computes it (``4 + 1 = 5``) is
  graded by its right-hand side, while any other equation (``a + 12 = 5``) is no answer; a gold
  assignment is unwrapped only for a prediction that is no equation.
  """
  if not isinstance(gold, (Basic, MatrixBase)) or not isinstance(pred, (Basic, MatrixBase)):
    return False
  if _undefined(gold) or _undefined(pred):
    return False
  gold = _prepare(gold)
  pred = _prepare(_unify_symbols(pred, gold))
  return _equal(gold, pred)


# -- preparation ---------------------------------------------------------------------------------

def _undefined(expr: Any) -> bool:
  """Whether complex infinity or nan occurs anywhere in the expression (or matrix)."""
  try:
    if isinstance(expr, MatrixBase):
      return any(_undefined(e) for e in expr)
    return any(a in (sympy.zoo, sympy.nan) for a in sympy.preorder_traversal(expr))
  except Exception:  # pylint: disable=broad-except
    return True


def _prepare(expr: Any) -> Any:
  """Percent forms ``x * UnevaluatedExpr(1/100)`` -> x (answers are compared without their %, as
  the normalised keys are); other unevaluated wrappers evaluated."""
  if isinstance(expr, sympy.MatrixExpr) and not isinstance(expr, MatrixBase):
    try:
      expr = expr.doit()             # A + B of written matrices -> the matrix
    except Exception:  # pylint: disable=broad-except
      return expr
  if not isinstance(expr, Basic):
    return expr
  try:
    percent = sympy.UnevaluatedExpr(sympy.Rational(1, 100))
    expr = expr.replace(lambda e: isinstance(e, sympy.Mul) and len(e.args) == 2
                        and e.args[1] == percent, lambda e: e.args[0])
    return expr.replace(lambda e: isinstance(e, sympy.UnevaluatedExpr), lambda e: e.args[0])
  except Exception:  # pylint: disable=broad-except
    return expr


def _unify_symbols(pred: Any, gold: Any) -> Any:
  """The prediction with each symbol named like a gold symbol replaced by the gold's (the parser
  gives symbols different assumptions depending on the rest of the string)."""
  try:
    by_name = {s.name: s for s in gold.free_symbols if isinstance(s, sympy.Symbol)}
    swap = {s: by_name[s.name] for s in pred.free_symbols
            if isinstance(s, sympy.Symbol) and s.name in by_name and by_name[s.name] != s}
    return pred.xreplace(swap) if swap else pred
  except Exception:  # pylint: disable=broad-except
    return pred


# -- dispatch ------------------------------------------------------------------------------------

def _is_relation(expr: Any) -> bool:
  if isinstance(expr, Relational):
    return True
  return isinstance(expr, And) and len(expr.args) > 0 and all(
      isinstance(a, Relational) for a in expr.args)


def _is_equation(expr: Any) -> bool:
  if isinstance(expr, sympy.Eq):
    return True
  return isinstance(expr, And) and len(expr.args) > 0 and all(
      isinstance(a, sympy.Eq) for a in expr.args)


def _relations(expr: Any) -> list:
  """The relations of a chain in written order (latex2sympy keeps it in ``_unsorted_args``)."""
  if isinstance(expr, And):
    return list(getattr(expr, "_unsorted_args", expr.args))
  return [expr]


def _only_symbols(expr: Any) -> bool:
  """A left-hand side that names the answer: built from symbols alone (``x``, ``f(x)``, ``AB``,
  ``(p, q)``, ``V_1 : V_2``), as math-verify reads an assignment."""
  return bool(is_expr_of_only_symbols(expr))


def _is_assignment(expr: Any) -> bool:
  return _is_equation(expr) and _only_symbols(_relations(expr)[0].lhs)


def _is_computation(expr: Any) -> bool:
  """``4 + 1 = 5``: an equation (chain) whose left-hand sides are all constants."""
  return _is_equation(expr) and all(
      isinstance(r.lhs, sympy.Expr) and not r.lhs.free_symbols for r in _relations(expr))


def _truncate_assignment(expr: Any) -> Any:
  """``x = 2 + 3 = 5`` -> ``x = 5``."""
  rels = _relations(expr)
  return sympy.Eq(rels[0].lhs, rels[-1].rhs, evaluate=False)


def _is_set(expr: Any) -> bool:
  return isinstance(expr, sympy.Set)


def _is_ambiguous_interval(expr: Any) -> bool:
  """``(a, b)`` with finite ends: a point as much as an interval."""
  return (isinstance(expr, sympy.Interval) and expr.left_open and expr.right_open
          and expr.start.is_finite and expr.end.is_finite)


def _functions_as_symbols(expr: Any) -> Any:
  """``f(x)`` -> a symbol ``f_x`` (so that ``0 < f(x) < 1`` is a relation in one variable)."""
  calls = [e for e in sympy.preorder_traversal(expr)
           if isinstance(e, sympy.core.function.AppliedUndef)]
  if not calls:
    return expr
  return expr.xreplace({c: sympy.Symbol(f"{c.func.__name__}_{'_'.join(map(str, c.args))}",
                                        real=True) for c in calls})


def _solved(expr: Any) -> bool:
  """Whether every relation of a chain compares the variable itself (or its negative) with a
  constant (``x \\le 3``, ``-2 \\le x < 5``, ``-x > -1``): an answer, not an equation or
  inequality still to solve (the problem's own ``x^2 \\le 4`` has the gold's solution set, but it
  is no answer)."""

  def variable(side: Any) -> bool:
    return isinstance(side, sympy.Symbol) or (
        isinstance(side, sympy.Mul) and isinstance(-side, sympy.Symbol))

  def constant(side: Any) -> bool:
    return isinstance(side, sympy.Expr) and not side.free_symbols

  expr = _functions_as_symbols(expr)
  for rel in _relations(expr):
    if not isinstance(rel, Relational):
      return False
    if not ((variable(rel.lhs) and constant(rel.rhs)) or (variable(rel.rhs) and constant(rel.lhs))):
      return False
  return True


def _relation_as_set(expr: Any, solved: bool = False) -> Any | None:
  """The solution set of a relation (or chain) in one variable over the reals, else None; with
  ``solved``, only for a relation in solved form (:func:`_solved`)."""
  try:
    if isinstance(expr, sympy.Eq) and isinstance(expr.rhs, sympy.Set):  # "x \\in S"
      return expr.rhs if isinstance(expr.lhs, sympy.Symbol) else None
    if solved and not _solved(expr):
      return None
    expr = _functions_as_symbols(expr)
    if len(expr.free_symbols) != 1:
      return None
    result = expr.as_set()
    return result if isinstance(result, sympy.Set) else None
  except Exception:  # pylint: disable=broad-except
    return None


def _equal(gold: Any, pred: Any) -> bool:
  if _is_assignment(gold):
    gold = _truncate_assignment(gold)
  if _is_assignment(pred):
    pred = _truncate_assignment(pred)
  if _is_equation(pred) and not _is_equation(gold) and not _is_set(gold):
    if not (_is_assignment(pred) or _is_computation(pred)):
      return False                         # "a + 12 = 4" does not say that the answer is 4
    pred = _relations(pred)[-1].rhs        # "x = 5", "4 + 1 = 5": graded by 5
  elif _is_equation(pred) and _is_set(gold):
    as_set = _relation_as_set(pred, solved=True)   # "x \in [2, 5]" against [2, 5]
    pred = as_set if as_set is not None else _relations(pred)[-1].rhs
  elif _is_assignment(gold) and not _is_equation(pred):
    gold = _relations(gold)[-1].rhs        # gold "x = 5" against "5"
  if _is_relation(gold) and _is_set(pred):
    as_set = _relation_as_set(gold)
    if as_set is None:
      return False
    gold = as_set
  elif _is_relation(pred) and _is_set(gold):
    if _is_ambiguous_interval(gold):
      return False
    as_set = _relation_as_set(pred, solved=True)
    if as_set is None:
      return False
    pred = as_set
  if _same(gold, pred):
    return True
  if _is_relation(gold) or _is_relation(pred):
    return _is_relation(gold) and _is_relation(pred) and _relations_equal(gold, pred)
  if isinstance(gold, (sympy.Set, sympy.Tuple)) or isinstance(pred, (sympy.Set, sympy.Tuple)):
    return _collections_equal(gold, pred)
  if isinstance(gold, MatrixBase) or isinstance(pred, MatrixBase):
    return _matrices_equal(gold, pred)
  if isinstance(gold, sympy.Symbol) and isinstance(pred, sympy.Symbol):
    return _names_equal(gold.name, pred.name)
  if isinstance(gold, sympy.Expr) and isinstance(pred, sympy.Expr):
    return _values_equal(gold, pred)
  return False


def _same(a: Any, b: Any) -> bool:
  try:
    return bool(a == b)
  except Exception:  # pylint: disable=broad-except
    return False


def _names_equal(a: str, b: str) -> bool:
  """Names of answers written as text (``\\text{Monday}``); case matters for one letter only."""
  if len(a) > 1 or len(b) > 1:
    return a.lower() == b.lower()
  return a == b


# -- values --------------------------------------------------------------------------------------

def _has_float(expr: Any) -> bool:
  return bool(expr.atoms(sympy.Float))


def _exact_floats(expr: Any) -> Any:
  """Every decimal replaced by its exact written value (0.5 -> 1/2)."""
  floats = expr.atoms(sympy.Float)
  if not floats:
    return expr
  return expr.xreplace({f: sympy.Rational(str(f)) for f in floats})


def _values_equal(gold: Any, pred: Any) -> bool:
  if _has_float(gold) or _has_float(pred):
    if gold.free_symbols or pred.free_symbols:
      return _exact_equal(_exact_floats(gold), _exact_floats(pred))
    return _decimals_close(gold, pred)
  return _exact_equal(gold, pred)


def _evaluate(expr: Any) -> Any | None:
  """A 30-digit complex value of a constant expression, or None (not a finite number)."""
  try:
    value = sympy.N(expr, _EVAL_DIGITS)
    if not value.is_number or value.has(sympy.oo, -sympy.oo, sympy.zoo, sympy.nan):
      return None
    real, imag = value.as_real_imag()
    if not (isinstance(real, sympy.Float) or real.is_zero) or not (
        isinstance(imag, sympy.Float) or imag.is_zero):
      return None
    return sympy.Float(real, _EVAL_DIGITS) + sympy.I * sympy.Float(imag, _EVAL_DIGITS)
  except Exception:  # pylint: disable=broad-except
    return None


def _decimals_close(gold: Any, pred: Any) -> bool:
  """Two constants, at least one written with a decimal: equal within half a unit of the 6th
  significant digit of the larger magnitude."""
  g, p = _evaluate(gold), _evaluate(pred)
  if g is None or p is None:
    return False
  scale = max(abs(g), abs(p))
  if scale == 0:
    return True
  exponent = int(sympy.floor(sympy.log(scale, 10).evalf(_EVAL_DIGITS)))
  tolerance = sympy.Rational(1, 2) * sympy.Integer(10) ** (exponent - (SIGNIFICANT_DIGITS - 1))
  return bool(abs(g - p) <= tolerance * (1 + sympy.Float("1e-12", _EVAL_DIGITS)))


def _clearly_different(a: Any, b: Any) -> bool:
  """Whether 30-digit values of two constants differ beyond any evaluation error."""
  x, y = _evaluate(a), _evaluate(b)
  if x is None or y is None:
    return False
  scale = max(abs(x), abs(y))
  return bool(abs(x - y) > _DIFFERENT_RTOL * scale) if scale != 0 else False


def _doit(expr: Any) -> Any:
  try:
    return expr.doit()
  except Exception:  # pylint: disable=broad-except
    return expr


def _is_zero(expr: Any) -> bool:
  """Whether sympy shows that an expression is 0 (expansion, cancellation, simplification)."""
  if _same(expr, 0):
    return True
  try:
    if expr.is_zero is True:
      return True
  except Exception:  # pylint: disable=broad-except
    pass
  for transform in (sympy.expand, sympy.cancel, sympy.simplify):
    try:
      result = transform(expr)
      if _same(result, 0) or result.is_zero is True:
        return True
    except Exception:  # pylint: disable=broad-except
      pass
  return False


def _algebraic_zero(expr: Any) -> bool:
  """For a constant built from rationals and radicals: whether its minimal polynomial is t."""
  try:
    if not all(isinstance(a, sympy.Rational) for a in expr.atoms(sympy.Number)):
      return False
    if expr.atoms(sympy.Symbol) or expr.has(sympy.pi, sympy.E, sympy.exp, sympy.log):
      return False
    t = sympy.Dummy("t")
    return _same(sympy.minimal_polynomial(expr, t), t)
  except Exception:  # pylint: disable=broad-except
    return False


def _exact_equal(gold: Any, pred: Any) -> bool:
  if _same(gold, pred):
    return True
  if not gold.free_symbols and not pred.free_symbols:
    if _clearly_different(gold, pred):   # numerically first: doit() writes out 10^{10^{10}}
      return False
    g, p = _doit(gold), _doit(pred)
    if _same(g, p):
      return True
    if isinstance(g, sympy.Rational) and isinstance(p, sympy.Rational):
      return False
    difference = g - p
    return _is_zero(difference) or _algebraic_zero(difference)
  if _differ_somewhere(gold, pred):
    return False
  return _is_zero(_doit(gold) - _doit(pred))


def _differ_somewhere(gold: Any, pred: Any) -> bool:
  """Whether the two expressions take clearly different values at one of a few fixed points."""
  symbols = sorted(gold.free_symbols | pred.free_symbols, key=lambda s: str(s))
  if not all(isinstance(s, sympy.Symbol) for s in symbols):
    return False
  for point in _POINTS:
    values = {s: point[k % len(point)] + k // len(point) for k, s in enumerate(symbols)}
    try:
      if _clearly_different(gold.xreplace(values), pred.xreplace(values)):
        return True
    except Exception:  # pylint: disable=broad-except
      continue
  return False


# -- relations -----------------------------------------------------------------------------------

_FLIPPED = {sympy.GreaterThan: sympy.LessThan, sympy.LessThan: sympy.GreaterThan,
            sympy.StrictGreaterThan: sympy.StrictLessThan,
            sympy.StrictLessThan: sympy.StrictGreaterThan}


def _residue(rel: Relational) -> Any:
  return _exact_floats(_doit(rel.lhs - rel.rhs))


def _is_identity(rel: Relational) -> bool:
  """Whether both sides of a relation are the same expression (``x - x = 0``, ``0 = 0``)."""
  lhs, rhs = _exact_floats(rel.lhs), _exact_floats(rel.rhs)
  return _exact_equal(lhs, rhs)


def _constant_ratio(a: Any, b: Any) -> Any | None:
  """c when a = c * b for a nonzero finite constant c, else None (a, b: nonzero residues)."""
  symbols = sorted(a.free_symbols | b.free_symbols, key=str)
  ratios = []
  for point in _POINTS:
    values = {s: point[k % len(point)] + k // len(point) for k, s in enumerate(symbols)}
    x, y = _evaluate(a.xreplace(values)), _evaluate(b.xreplace(values))
    if x is not None and y is not None and y != 0:
      ratios.append(x / y)
  if len(ratios) >= 2 and any(
      abs(r - ratios[0]) > _DIFFERENT_RTOL * max(abs(r), abs(ratios[0])) for r in ratios):
    return None
  try:
    ratio = sympy.cancel(sympy.together(a / b))
    if ratio.free_symbols:
      ratio = sympy.simplify(ratio)
  except Exception:  # pylint: disable=broad-except
    return None
  if ratio.free_symbols or not ratio.is_number:
    return None
  value = _evaluate(ratio)
  if value is None or value == 0:
    return None
  return ratio


def _names_value(rel: Any) -> bool:
  """``x = 5``, ``f(2) = 7``, ``(p, q) = (3, 2)``: one name (or a tuple of names) given a value
  without variables."""
  lhs = rel.lhs
  names = lhs.args if isinstance(lhs, sympy.Tuple) else (lhs,)
  if not all(isinstance(n, (sympy.Symbol, sympy.core.function.AppliedUndef)) for n in names):
    return False
  rhs = _functions_as_symbols(rel.rhs) if isinstance(rel.rhs, Basic) else rel.rhs
  return isinstance(rhs, Basic) and not rhs.free_symbols


def _relations_equal(gold: Any, pred: Any) -> bool:
  g_symbols = _functions_as_symbols(gold).free_symbols
  same_variable = g_symbols == _functions_as_symbols(pred).free_symbols and len(g_symbols) == 1

  def as_sets_equal() -> bool:
    g_set, p_set = _relation_as_set(gold), _relation_as_set(pred, solved=True)
    return same_variable and g_set is not None and p_set is not None and \
        _collections_equal(g_set, p_set)

  if isinstance(gold, sympy.Eq) and isinstance(pred, sympy.Eq):
    same_name = _only_symbols(gold.lhs) and _same(gold.lhs, pred.lhs)
    if same_name and _equal(gold.rhs, pred.rhs):
      return True
    if isinstance(gold.rhs, sympy.Set) or isinstance(pred.rhs, sympy.Set):
      return False
    if _names_value(gold):
      return False    # a value ("x = 5") is answered by that value, not by an equation for it
    g_identity, p_identity = _is_identity(gold), _is_identity(pred)
    if g_identity or p_identity:          # an identity equals only an identity
      return g_identity and p_identity
    return _constant_ratio(_residue(gold), _residue(pred)) is not None
  if isinstance(gold, And) or isinstance(pred, And) or isinstance(gold, sympy.Eq) or \
      isinstance(pred, sympy.Eq):
    if as_sets_equal():
      return True
    g_rels, p_rels = _relations(gold), _relations(pred)
    return len(g_rels) == len(p_rels) > 1 and all(
        _relations_equal(g, p) for g, p in zip(g_rels, p_rels))
  if type(gold) not in _FLIPPED or type(pred) not in _FLIPPED:
    return False
  if same_variable:
    return as_sets_equal()
  # several variables: the same half-plane, written the same way round or flipped
  if type(pred) is _FLIPPED[type(gold)]:
    pred = type(gold)(pred.rhs, pred.lhs, evaluate=False)
  if type(pred) is not type(gold) or _is_identity(gold) or _is_identity(pred):
    return False
  ratio = _constant_ratio(_residue(gold), _residue(pred))
  return ratio is not None and ratio.is_positive is True


# -- sets, tuples, intervals, matrices -----------------------------------------------------------

def _members(expr: Any) -> tuple[list, bool] | None:
  """(members in written order, ordered?) of a finite set or tuple, else None."""
  if isinstance(expr, sympy.Tuple):
    return list(expr.args), True
  if isinstance(expr, sympy.FiniteSet):
    return list(getattr(expr, "_unsorted_args", expr.args)), False
  return None


def _match_unordered(golds: list, preds: list) -> bool:
  if len(golds) != len(preds):
    return False
  left = list(preds)
  for g in golds:
    hit = next((k for k, p in enumerate(left) if _equal(g, p)), None)
    if hit is None:
      return False
    left.pop(hit)
  return True


def _collections_equal(gold: Any, pred: Any) -> bool:
  if isinstance(gold, sympy.Interval) and isinstance(pred, sympy.Interval):
    return (gold.left_open == pred.left_open and gold.right_open == pred.right_open
            and _equal(gold.start, pred.start) and _equal(gold.end, pred.end))
  # "(1, 2)" parses as an open interval; against a pair it is the pair
  if _is_ambiguous_interval(gold) and _members(pred) is not None:
    gold = sympy.Tuple(gold.start, gold.end)
  elif _is_ambiguous_interval(pred) and _members(gold) is not None:
    pred = sympy.Tuple(pred.start, pred.end)
  if isinstance(gold, sympy.Union) and isinstance(pred, sympy.Union):
    return _match_unordered(list(gold.args), list(pred.args))
  g_members, p_members = _members(gold), _members(pred)
  if g_members is None and isinstance(gold, sympy.Expr) and p_members is not None:
    g_members = ([gold], False)              # a value against a one-member set
  if p_members is None and isinstance(pred, sympy.Expr) and g_members is not None:
    p_members = ([pred], False)
  if g_members is not None and p_members is not None:
    (g_list, g_ordered), (p_list, p_ordered) = g_members, p_members
    if g_ordered or p_ordered:
      return len(g_list) == len(p_list) and all(_equal(g, p) for g, p in zip(g_list, p_list))
    return _match_unordered(g_list, p_list)
  if isinstance(gold, sympy.Set) and isinstance(pred, sympy.Set):
    try:
      if gold.has(sympy.Float) or pred.has(sympy.Float):
        return False
      return gold.symmetric_difference(pred).is_empty is True
    except Exception:  # pylint: disable=broad-except
      return False
  return False


def _matrices_equal(gold: Any, pred: Any) -> bool:
  if not isinstance(gold, MatrixBase) or not isinstance(pred, MatrixBase):
    return False
  try:
    gold, pred = gold.doit(), pred.doit()
  except Exception:  # pylint: disable=broad-except
    pass
  if gold.shape != pred.shape:
    return False
  return all(_equal(g, p) for g, p in zip(gold, pred))
