"""The loss curve of a training run (its metrics.jsonl) as a PNG."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from matplotlib.figure import Figure

from mathjax_sft.configtree import setting
from mathjax_sft.plotting import save_figure
from mathjax_sft.train import metrics as metrics_lib

Records = Mapping[int, Mapping[str, Any]]


@dataclasses.dataclass(frozen=True)
class PlotTrainConfig:
  """Settings of tools/plot_train.py."""
  run_dir: str = setting(doc="Training output_dir (holds metrics.jsonl).")
  output: str | None = setting(None, "PNG path (default <run_dir>/loss.png).")
  window: int = setting(10, "Steps in the moving average drawn over the raw loss.")


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
  """Trailing mean over up to `window` values (the first points average what exists)."""
  csum = np.cumsum(np.insert(np.asarray(values, np.float64), 0, 0.0))
  idx = np.arange(1, len(values) + 1)
  lo = np.maximum(idx - window, 0)
  return (csum[idx] - csum[lo]) / (idx - lo)


def plot_loss(train: Records, path: str | Path, evals: Records | None = None, window: int = 10,
              title: str = "") -> Path:
  """Train loss per step (raw and a `window`-step moving average) and eval loss if any."""
  if not train:
    raise ValueError("no train records to plot")
  steps = np.array(sorted(train))
  loss = np.array([train[s]["loss"] for s in steps], np.float64)
  fig = Figure(figsize=(6.4, 4.0))
  ax = fig.add_subplot()
  ax.plot(steps, loss, color="tab:blue", alpha=0.3, lw=1, label="train loss")
  ax.plot(steps, moving_average(loss, window), color="tab:blue", lw=2,
          label=f"train loss ({window}-step mean)")
  if evals:
    esteps = sorted(evals)
    ax.plot(esteps, [evals[s]["loss"] for s in esteps], "o-", color="tab:orange", label="eval loss")
  ax.set_xlabel("step")
  ax.set_ylabel("loss (mean CE per response token)")
  ax.grid(alpha=0.3)
  ax.legend()
  if title:
    ax.set_title(title)
  return save_figure(fig, path)


def plot_run(run_dir: str | Path, path: str | Path, window: int = 10) -> Path:
  """plot_loss from `run_dir`/metrics.jsonl (train and eval records)."""
  metrics_path = Path(run_dir) / "metrics.jsonl"
  if not metrics_path.is_file():
    raise FileNotFoundError(f"{metrics_path} not found (is {run_dir} a training output_dir?)")
  return plot_loss(metrics_lib.read_metrics(metrics_path, "train"), path,
                   metrics_lib.read_metrics(metrics_path, "eval"), window,
                   title=Path(run_dir).name)
