"""Records round trip, tools/plot_passk.py and the reproduction figures write real PNG files."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from mathjax_sft.eval import metrics, plots, records
from mathjax_sft.eval.problems import Problem

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


def test_plot_passk_tool_writes_pngs(tmp_path):
  samples = tmp_path / "samples.jsonl"
  records.write_records(samples, _synthetic_records())
  out = tmp_path / "plots"
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), MPLBACKEND="Agg")
  proc = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "plot_passk.py"),
                         f"--samples={samples}", f"--output_dir={out}"],
                        capture_output=True, text=True, env=env, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  for name in ["pass_at_k.png", "correct_histogram.png", "accuracy_by_steps.png"]:
    assert_png(out / name)
  summary = json.loads((out / "summary.json").read_text())
  assert summary["num_problems"] == 40 and summary["num_samples"] == 16
  # --summary mode redraws from the JSON alone.
  out2 = tmp_path / "plots2"
  proc = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "plot_passk.py"),
                         f"--summary={out / 'summary.json'}", f"--output_dir={out2}"],
                        capture_output=True, text=True, env=env, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert_png(out2 / "pass_at_k.png")


def test_reproduction_figures(tmp_path):
  summaries = [(size, metrics.summarize(_synthetic_records(seed=s)))
               for s, size in enumerate([0, 1000, 7500, 30000])]
  assert_png(plots.plot_data_scaling(summaries, tmp_path / "scaling.png"))
  assert_png(plots.plot_data_scaling([("base", summaries[0][1]), ("sft", summaries[1][1])],
                                     tmp_path / "scaling_labels.png"))
  labelled = [("base", summaries[0][1]), ("sft", summaries[3][1])]
  assert_png(plots.plot_accuracy_by_steps(labelled, tmp_path / "steps.png"))
  assert_png(plots.plot_pass_at_k(labelled, tmp_path / "compare.png"))
  with pytest.raises(ValueError, match="no breakdown"):
    plots.plot_accuracy_by_steps(summaries[0][1], tmp_path / "x.png", key="missing")
