"""Loss-curve plotting from a metrics.jsonl, and tools/plot_train.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mathjax_sft.train import plots
from tests import plot_data

REPO_ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _trailing_mean(values, window):
  return [float(np.mean(values[max(0, i + 1 - window):i + 1])) for i in range(len(values))]


def _write_metrics(run_dir):
  """29 train steps with loss 2/step, one eval record at step 10, and a record of another kind."""
  lines = [{"kind": "train", "step": s, "loss": 2.0 / s} for s in range(1, 30)]
  lines += [{"kind": "eval", "step": 10, "loss": 0.5}, {"kind": "result", "step": 29, "loss": 9.0}]
  run_dir.mkdir(parents=True, exist_ok=True)
  (run_dir / "metrics.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
  steps = list(range(1, 30))
  return steps, [2.0 / s for s in steps]


def test_moving_average_is_a_trailing_mean():
  np.testing.assert_allclose(plots.moving_average(np.array([1.0, 3.0, 5.0, 7.0]), 2),
                             [1.0, 2.0, 4.0, 6.0])


def test_plot_run_reads_train_and_eval_records(tmp_path, monkeypatch):
  """The figure holds the raw train loss per step, its 10-step trailing mean and the eval loss;
  records of other kinds are left out."""
  saved = plot_data.record_saved_figures(monkeypatch)
  steps, loss = _write_metrics(tmp_path)
  out = plots.plot_run(tmp_path, tmp_path / "loss.png")
  assert out.read_bytes()[:8] == PNG_MAGIC
  fig, = saved["loss.png"]
  assert fig["title"] == tmp_path.name
  assert fig["lines"] == {
      "train loss": [steps, pytest.approx(loss)],
      "train loss (10-step mean)": [steps, pytest.approx(_trailing_mean(loss, 10))],
      "eval loss": [[10], [0.5]]}
  with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
    plots.plot_run(tmp_path / "nope", tmp_path / "x.png")
  with pytest.raises(ValueError, match="no train records"):
    plots.plot_loss({}, tmp_path / "y.png")


def test_plot_train_tool_writes_the_loss_curve(tmp_path):
  """tools/plot_train.py --run_dir --window: <run_dir>/loss.png by default, its path printed,
  the mean drawn over --window steps."""
  run_dir = tmp_path / "run"
  steps, loss = _write_metrics(run_dir)
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), MPLBACKEND="Agg")
  proc = subprocess.run([sys.executable, "-m", "tests.plot_data", "tools/plot_train.py",
                         f"--run_dir={run_dir}", "--window=3"], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split() == [str(run_dir / "loss.png")]
  assert (run_dir / "loss.png").read_bytes()[:8] == PNG_MAGIC
  fig, = json.loads((run_dir / "loss.png.json").read_text())
  assert fig["lines"] == {
      "train loss": [steps, pytest.approx(loss)],
      "train loss (3-step mean)": [steps, pytest.approx(_trailing_mean(loss, 3))],
      "eval loss": [[10], [0.5]]}
