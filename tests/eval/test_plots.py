"""Records round trip; tools/plot_passk.py and the reproduction figures write PNG files that plot
the runs' numbers (read back from the figures)."""

from __future__ import annotations

import collections
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from mathjax_sft.eval import metrics, plots, records
from mathjax_sft.eval.problems import Problem
from tests import plot_data

REPO_ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
  assert path.is_file(), f"{path} missing"
  data = path.read_bytes()
  assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
  assert len(data) > 5000, f"{path} is only {len(data)} bytes"


def _synthetic_records(num_problems: int = 40, n: int = 16, seed: int = 0) -> list[dict]:
  rng = random.Random(seed)
  out = []
  for i in range(num_problems):
    p = rng.random()
    samples = []
    for _ in range(n):
      ok = rng.random() < p
      answer = "42" if ok else rng.choice([None, "7", "8"])
      samples.append({"text": f"... {answer}", "answer": answer, "correct": ok})
    out.append({"id": f"p{i}", "meta": {"level": 1 + i % 5, "steps": 2 + i % 4},
                "samples": samples})
  return out


def test_make_records_extracts_and_grades(grader, tmp_path):
  problems = [Problem("g0", "q", "18", "gsm8k"),
              Problem("m0", "q", "\\frac{1}{2}", "math", meta={"level": 2})]
  completions = [["so 9*2 = 18\n#### 18", "The answer is 19.", "nothing"],
                 ["thus $\\boxed{0.5}$", "\\boxed{\\frac{2}{3}}", "I give up"]]
  recs = records.make_records(problems, completions, grader)
  assert [[s["answer"] for s in r["samples"]] for r in recs] == [
      ["18", "19", None], ["0.5", "\\frac{2}{3}", None]]
  assert [[s["correct"] for s in r["samples"]] for r in recs] == [
      [True, False, False], [True, False, False]]
  path = tmp_path / "samples.jsonl"
  records.write_records(path, recs)
  assert records.read_records(path) == recs
  path.write_text('{"id": "x", "samples": [{"text": "t"}]}\n')
  with pytest.raises(ValueError, match="samples.jsonl:1"):
    records.read_records(path)


def _pass_at_k(recs: list[dict], k: int) -> float:
  """Mean over problems of 1 - C(n-c, k) / C(n, k), straight from the records."""
  values = []
  for r in recs:
    n, c = len(r["samples"]), sum(s["correct"] for s in r["samples"])
    values.append(1 - math.comb(n - c, k) / math.comb(n, k))
  return sum(values) / len(values)


def _by_steps(recs: list[dict]) -> tuple[list[int], list[float], list[float]]:
  """Step counts, and Pass@N and PassRatio@N in percent per step count, from the records."""
  by = collections.defaultdict(list)
  for r in recs:
    by[r["meta"]["steps"]].append([s["correct"] for s in r["samples"]])
  steps = sorted(by)
  pass_n = [100 * sum(map(any, by[s])) / len(by[s]) for s in steps]
  ratio = [100 * sum(map(sum, by[s])) / sum(map(len, by[s])) for s in steps]
  return steps, pass_n, ratio


def test_plot_passk_tool_draws_the_summary(tmp_path):
  """tools/plot_passk.py: pass@k against k = 1..N, the histogram of correct counts and Pass@N by
  steps show the records' numbers; --summary redraws the same pass@k figure from the JSON."""
  recs = _synthetic_records()
  samples = tmp_path / "samples.jsonl"
  records.write_records(samples, recs)
  out = tmp_path / "plots"
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), MPLBACKEND="Agg")
  run = lambda *args: subprocess.run(
      [sys.executable, "-m", "tests.plot_data", str(REPO_ROOT / "tools" / "plot_passk.py"), *args],
      cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=120, check=False)
  proc = run(f"--samples={samples}", f"--output_dir={out}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  figures = {}
  for name in ["pass_at_k.png", "correct_histogram.png", "accuracy_by_steps.png"]:
    assert_png(out / name)
    figures[name], = json.loads((out / f"{name}.json").read_text())
  summary = json.loads((out / "summary.json").read_text())
  assert summary["num_problems"] == 40 and summary["num_samples"] == 16

  lines = figures["pass_at_k.png"]["lines"]
  assert set(lines) == {"pass@k", "maj@k"} and figures["pass_at_k.png"]["xscale"] == "log"
  ks = list(range(1, 17))
  assert lines["pass@k"] == [ks, pytest.approx([100 * _pass_at_k(recs, k) for k in ks])]
  assert lines["maj@k"] == [ks, pytest.approx([100 * summary["maj_at_k"][str(k)] for k in ks])]

  bars = figures["correct_histogram.png"]["bars"]
  counts = collections.Counter(sum(s["correct"] for s in r["samples"]) for r in recs)
  assert [x + w / 2 for x, w, _ in bars] == pytest.approx(range(17))
  assert [h for _, _, h in bars] == [counts[c] for c in range(17)]

  steps, pass_n, ratio = _by_steps(recs)
  lines = figures["accuracy_by_steps.png"]["lines"]
  assert lines["Pass@N"] == [steps, pytest.approx(pass_n)]
  assert lines["PassRatio@N"] == [steps, pytest.approx(ratio)]

  # --summary mode redraws from the JSON alone.
  out2 = tmp_path / "plots2"
  proc = run(f"--summary={out / 'summary.json'}", f"--output_dir={out2}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert_png(out2 / "pass_at_k.png")
  assert json.loads((out2 / "pass_at_k.png.json").read_text())[0] == figures["pass_at_k.png"]


def test_reproduction_figures(tmp_path, monkeypatch):
  """Data scaling, accuracy by steps and the pass@k comparison plot each run's numbers at the
  right x positions (a data size of 0 drawn at a quarter of the smallest size)."""
  saved = plot_data.record_saved_figures(monkeypatch)
  sizes = [0, 1000, 7500, 30000]
  recs = [_synthetic_records(seed=s) for s in range(len(sizes))]
  summaries = [(size, metrics.summarize(r)) for size, r in zip(sizes, recs)]
  pass_n = [100 * sum(any(s["correct"] for s in p["samples"]) for p in r) / len(r) for r in recs]
  ratio = [100 * sum(s["correct"] for p in r for s in p["samples"]) / (16 * len(r)) for r in recs]

  assert_png(plots.plot_data_scaling(summaries, tmp_path / "scaling.png"))
  scaling, = saved["scaling.png"]
  assert scaling["xscale"] == "log" and set(scaling["lines"]) == {"Pass@N", "PassRatio@N"}
  assert scaling["lines"]["Pass@N"] == [[250, 1000, 7500, 30000], pytest.approx(pass_n)]
  assert scaling["lines"]["PassRatio@N"] == [[250, 1000, 7500, 30000], pytest.approx(ratio)]
  assert_png(plots.plot_data_scaling([("base", summaries[0][1]), ("sft", summaries[1][1])],
                                     tmp_path / "scaling_labels.png"))
  labels, = saved["scaling_labels.png"]
  assert labels["lines"]["Pass@N"] == [[0, 1], pytest.approx(pass_n[:2])]
  assert labels["lines"]["PassRatio@N"] == [[0, 1], pytest.approx(ratio[:2])]

  labelled = [("base", summaries[0][1]), ("sft", summaries[3][1])]
  assert_png(plots.plot_accuracy_by_steps(labelled, tmp_path / "steps.png"))
  steps, = saved["steps.png"]
  for label, r in (("base", recs[0]), ("sft", recs[3])):
    xs, pass_n, ratio = _by_steps(r)
    assert steps["lines"][f"{label} Pass@N"] == [xs, pytest.approx(pass_n)]
    assert steps["lines"][f"{label} PassRatio@N"] == [xs, pytest.approx(ratio)]
  assert_png(plots.plot_pass_at_k(labelled, tmp_path / "compare.png"))
  compare, = saved["compare.png"]
  ks = list(range(1, 17))
  for label, r, (_, summary) in (("base", recs[0], labelled[0]), ("sft", recs[3], labelled[1])):
    assert compare["lines"][f"{label} pass@k"] == [
        ks, pytest.approx([100 * _pass_at_k(r, k) for k in ks])]
    assert compare["lines"][f"{label} maj@k"] == [
        ks, pytest.approx([100 * summary["maj_at_k"][str(k)] for k in ks])]
  with pytest.raises(ValueError, match="no breakdown"):
    plots.plot_accuracy_by_steps(summaries[0][1], tmp_path / "x.png", key="missing")
