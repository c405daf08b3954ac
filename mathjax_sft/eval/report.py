"""A run's results for a person: per problem the question, the gold answer, how many of the N
samples were right and one right sample (if any), then the headline metrics."""

from __future__ import annotations

import textwrap
from typing import Any, Sequence


def _clip(text: str, width: int) -> str:
  text = " ".join(text.split())
  return text if len(text) <= width else text[:width - 3] + "..."


def problem_lines(record: dict[str, Any], width: int = 100) -> list[str]:
  samples = record["samples"]
  right = [s for s in samples if s.get("correct")]
  question = record.get("question") or record.get("prompt", "")
  lines = [f"{record['id']}: {_clip(question, width)}",
           f"  gold {record['gold']!r}; {len(right)} of {len(samples)} samples right"]
  if right:
    lines.append(textwrap.indent(_clip(right[0]["text"], 2 * width), "  right: "))
  else:
    answers = [s.get("answer") for s in samples if s.get("answer")]
    lines.append(f"  answers given: {', '.join(sorted(set(map(str, answers)))[:6]) or 'none'}")
  return lines


def render(records: Sequence[dict[str, Any]], summary: dict[str, Any], width: int = 100) -> str:
  n = summary["num_samples"]
  out = []
  for rec in records:
    out.extend(problem_lines(rec, width))
  ci = summary.get("ci95", {})

  def pct(key: str, value: float) -> str:
    lo_hi = ci.get(key)
    band = f" (95% CI {100 * lo_hi[0]:.1f}-{100 * lo_hi[1]:.1f})" if lo_hi else ""
    return f"{100 * value:.1f}%{band}"

  out.append(f"Pass@{n} {pct('pass_at_n', summary['pass_at_n'])}: problems with at least one "
             f"right sample; PassRatio@{n} {pct('pass_ratio_at_n', summary['pass_ratio_at_n'])}: "
             f"right samples; maj@{n} {100 * summary['maj_at_k'][str(n)]:.1f}%; "
             f"{summary['num_problems']} problems x {n} samples")
  return "\n".join(out)
