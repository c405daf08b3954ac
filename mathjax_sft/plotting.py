"""Writing a matplotlib figure to a file without a display (the Agg canvas, no pyplot state)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def save_figure(fig: Figure, path: str | Path) -> Path:
  """Saves `fig` as `path` (its folder created), 120 dpi, tight bounding box; returns the path."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  FigureCanvasAgg(fig)
  fig.savefig(path, dpi=120, bbox_inches="tight")
  return path
