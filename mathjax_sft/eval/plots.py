"""PNG figures from :func:`mathjax_sft.eval.metrics.summarize` summaries.

Figures are drawn on ``matplotlib.figure.Figure`` with the Agg canvas directly, so no pyplot state
or global backend switch is involved (safe to call from training/sampling processes).

* :func:`plot_pass_at_k`: pass@k and maj@k against k = 1..N on a log-2 axis;
* :func:`plot_correct_histogram`: how many problems have c = 0..N correct samples;
* :func:`plot_data_scaling`: Pass@N and PassRatio@N against SFT data size (the reproduction plot);
* :func:`plot_accuracy_by_steps`: Pass@N and PassRatio@N against the number of reasoning steps in
  the reference solution (``summary["by"]["steps"]``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

from matplotlib.figure import Figure

from mathjax_sft.configtree import setting
from mathjax_sft.plotting import save_figure

Summary = Mapping[str, Any]
Labelled = Sequence[tuple[str, Summary]]


@dataclasses.dataclass(frozen=True)
class PlotPassKConfig:
  """Settings of tools/plot_passk.py: one of samples or summary, and the output folder."""
  output_dir: str = setting(doc="where the PNG files go")
  samples: str | None = setting(None, "graded samples.jsonl (one record per problem)")
  summary: str | None = setting(None, "summary.json written by metrics.summarize")


def _as_labelled(summaries: Summary | Labelled) -> list[tuple[str, Summary]]:
  if isinstance(summaries, Mapping):
    return [("", summaries)]
  return [(str(label), s) for label, s in summaries]


def _curve(mapping: Mapping[str, float]) -> tuple[list[int], list[float]]:
  ks = sorted(int(k) for k in mapping)
  return ks, [100.0 * mapping[str(k)] for k in ks]


def plot_pass_at_k(summaries: Summary | Labelled, path: str | Path, title: str = "") -> Path:
  """pass@k (solid, with its 95% bootstrap band when the summary has one) and maj@k (dashed) in
  percent against k, log-2 x axis; one pair per summary.

  Args:
    summaries: one summary, or ``[(label, summary), ...]`` to compare runs.
    path: output PNG.
  """
  fig = Figure(figsize=(6.4, 4.4))
  ax = fig.add_subplot()
  for label, summary in _as_labelled(summaries):
    prefix = f"{label} " if label else ""
    ks, values = _curve(summary["pass_at_k"])
    line, = ax.plot(ks, values, marker="o" if len(ks) <= 16 else None, ms=3,
                    label=f"{prefix}pass@k")
    band = (summary.get("ci95") or {}).get("pass_at_k")
    if band:     # 95% bootstrap interval over problems
      ax.fill_between(ks, [100.0 * band[str(k)][0] for k in ks],
                      [100.0 * band[str(k)][1] for k in ks], color=line.get_color(), alpha=0.15,
                      linewidth=0, label=f"{prefix}pass@k 95% CI")
    if summary.get("maj_at_k"):
      ks, values = _curve(summary["maj_at_k"])
      ax.plot(ks, values, linestyle="--", color=line.get_color(), label=f"{prefix}maj@k")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("k (samples)")
  ax.set_ylabel("accuracy (%)")
  ax.set_ylim(0, 100)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(loc="lower right", fontsize="small")
  ax.set_title(title or "pass@k (unbiased estimator) and maj@k (first k samples)")
  return save_figure(fig, path)


def plot_correct_histogram(summary: Summary, path: str | Path, title: str = "") -> Path:
  """Histogram of per-problem correct-sample counts c (0..N) from ``summary["per_problem"]``."""
  per_problem = summary["per_problem"]
  counts = [p["c"] for p in per_problem]
  n_max = max(p["n"] for p in per_problem)
  fig = Figure(figsize=(6.4, 4.4))
  ax = fig.add_subplot()
  bins = min(n_max + 1, 64)
  ax.hist(counts, bins=bins, range=(-0.5, n_max + 0.5), edgecolor="black", linewidth=0.3)
  ax.set_xlabel(f"correct samples per problem (of {n_max})")
  ax.set_ylabel("problems")
  ax.set_title(title or f"Pass@N {100 * summary['pass_at_n']:.1f}%, "
               f"PassRatio@N {100 * summary['pass_ratio_at_n']:.1f}%")
  return save_figure(fig, path)


def plot_data_scaling(points: Sequence[tuple[str | float, Summary]], path: str | Path,
                      title: str = "") -> Path:
  """Pass@N and PassRatio@N (percent) against SFT data size.

  Args:
    points: ``[(size_or_label, summary), ...]`` in plotting order. Numeric sizes give a log x
      axis (a size of 0, e.g. the base model, is drawn at the left end and labelled); string
      labels give evenly spaced categories.
  """
  labels = [p[0] for p in points]
  numeric = all(isinstance(x, (int, float)) for x in labels)
  fig = Figure(figsize=(6.4, 4.4))
  ax = fig.add_subplot()
  if numeric and any(x > 0 for x in labels):
    positive = [x for x in labels if x > 0]
    floor = min(positive) / 4
    xs = [x if x > 0 else floor for x in labels]
    ax.set_xscale("log")
    ax.set_xlabel("SFT examples")
  else:
    xs = list(range(len(labels)))
    ax.set_xticks(xs, [str(x) for x in labels])
    ax.set_xlabel("SFT data")
  for x, label in zip(xs, labels):
    if numeric and label == 0:
      ax.annotate("0", (x, 0), xytext=(0, 3), textcoords="offset points", ha="center")
  ax.plot(xs, [100 * s["pass_at_n"] for _, s in points], marker="o", label="Pass@N")
  ax.plot(xs, [100 * s["pass_ratio_at_n"] for _, s in points], marker="s",
          label="PassRatio@N")
  ax.set_ylabel("accuracy (%)")
  ax.set_ylim(0, 100)
  ax.grid(True, alpha=0.3)
  ax.legend(loc="lower right")
  ax.set_title(title or "Pass@N and PassRatio@N vs SFT data size")
  return save_figure(fig, path)


def plot_accuracy_by_steps(summaries: Summary | Labelled, path: str | Path, key: str = "steps",
                           min_problems: int = 5, title: str = "") -> Path:
  """Pass@N and PassRatio@N against reference-solution step count (``summary["by"][key]``).

  Buckets with fewer than ``min_problems`` problems are left out (their means are noise).
  """
  fig = Figure(figsize=(6.4, 4.4))
  ax = fig.add_subplot()
  for label, summary in _as_labelled(summaries):
    buckets = summary.get("by", {}).get(key)
    if not buckets:
      raise ValueError(f"summary has no breakdown by {key!r}; problems need meta[{key!r}]")
    steps = sorted((int(v), b) for v, b in buckets.items() if b["num_problems"] >= min_problems)
    xs = [s for s, _ in steps]
    prefix = f"{label} " if label else ""
    line, = ax.plot(xs, [100 * b["pass_at_n"] for _, b in steps], marker="o",
                    label=f"{prefix}Pass@N")
    ax.plot(xs, [100 * b["pass_ratio_at_n"] for _, b in steps], marker="s", linestyle="--",
            color=line.get_color(), label=f"{prefix}PassRatio@N")
  ax.set_xlabel("reasoning steps in the reference solution")
  ax.set_ylabel("accuracy (%)")
  ax.set_ylim(0, 100)
  ax.grid(True, alpha=0.3)
  ax.legend(loc="lower left", fontsize="small")
  ax.set_title(title or "accuracy vs reference CoT length")
  return save_figure(fig, path)


def plot_summary(summary: Summary, output_dir: str | Path) -> list[Path]:
  """Every single-run figure: ``pass_at_k.png``, ``correct_histogram.png`` and, when the problems
  carry step counts, ``accuracy_by_steps.png``. Returns the written paths."""
  output_dir = Path(output_dir)
  written = [plot_pass_at_k(summary, output_dir / "pass_at_k.png"),
             plot_correct_histogram(summary, output_dir / "correct_histogram.png")]
  if summary.get("by", {}).get("steps"):
    written.append(plot_accuracy_by_steps(summary, output_dir / "accuracy_by_steps.png",
                                          min_problems=1))
  return written
