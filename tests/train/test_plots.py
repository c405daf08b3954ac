"""Loss-curve plotting from a metrics.jsonl."""

import json

import numpy as np
import pytest

from mathjax_sft.train import plots


def test_moving_average_is_a_trailing_mean():
  np.testing.assert_allclose(plots.moving_average(np.array([1.0, 3.0, 5.0, 7.0]), 2),
                             [1.0, 2.0, 4.0, 6.0])


def test_plot_run_reads_train_and_eval_records(tmp_path):
  lines = [{"kind": "train", "step": s, "loss": 2.0 / s} for s in range(1, 30)]
  lines += [{"kind": "eval", "step": 10, "loss": 0.5}, {"kind": "result", "step": 29}]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
  out = plots.plot_run(tmp_path, tmp_path / "loss.png")
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
    plots.plot_run(tmp_path / "nope", tmp_path / "x.png")
  with pytest.raises(ValueError, match="no train records"):
    plots.plot_loss({}, tmp_path / "y.png")
