"""The numbers a saved matplotlib figure shows (line points, bar rectangles), read back from the
figure objects, in this process or from a tool run in a subprocess.

  python -m tests.plot_data tools/plot_train.py --run_dir=...   # also writes <png>.json per figure
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure


def figure_data(fig: Figure) -> list[dict[str, Any]]:
  """Per axes: title, x scale, {label: [xs, ys]} of its lines, [x, width, height] of its bars."""
  out = []
  for ax in fig.axes:
    out.append({
        "title": ax.get_title(), "xscale": ax.get_xscale(),
        "lines": {line.get_label(): [np.asarray(line.get_xdata(), np.float64).tolist(),
                                     np.asarray(line.get_ydata(), np.float64).tolist()]
                  for line in ax.get_lines()},
        "bars": [[p.get_x(), p.get_width(), p.get_height()] for p in ax.patches],
    })
  return out


def record_saved_figures(monkeypatch) -> dict[str, list[dict[str, Any]]]:
  """{file name: figure_data} of every figure saved while the test runs (filled as they are)."""
  saved: dict[str, list[dict[str, Any]]] = {}
  original = Figure.savefig

  def savefig(fig, fname, *args, **kwargs):
    saved[Path(fname).name] = figure_data(fig)
    return original(fig, fname, *args, **kwargs)

  monkeypatch.setattr(Figure, "savefig", savefig)
  return saved


def main() -> None:
  """Runs the script sys.argv[1] with the remaining arguments; every figure it saves to X.png also
  gets X.png.json holding its figure_data."""
  original = Figure.savefig

  def savefig(fig, fname, *args, **kwargs):
    Path(f"{fname}.json").write_text(json.dumps(figure_data(fig)))
    return original(fig, fname, *args, **kwargs)

  Figure.savefig = savefig
  sys.argv = sys.argv[1:]
  runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
  main()
