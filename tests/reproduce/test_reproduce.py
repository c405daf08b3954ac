"""tools/reproduce.py pipeline end to end on a tiny model: base -> SFT at two sizes -> figures."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from mathjax_sft import reproduce
from mathjax_sft.checkpoint import params as ckpt
from mathjax_sft.model import llama
from mathjax_sft.model.config import preset
from tests.train import helpers

REPO = Path(__file__).resolve().parents[2]


def test_pipeline_runs_every_stage_and_resumes(tmp_path, byte_tokenizer):
  cfg = preset("tiny", vocab_size=helpers.TINY_VOCAB, bos_token_id=1, eos_token_ids=(2,))
  base = tmp_path / "base_ckpt"
  ckpt.save_params(base, llama.init_params(cfg, jax.random.key(0)), cfg)
  ckpt.copy_tokenizer_files(byte_tokenizer, base)
  recipe = tmp_path / "recipe.py"
  recipe.write_text(
      "from mathjax_sft.train.config import TrainConfig\n"
      "def get_config():\n"
      "  return TrainConfig().replace({\n"
      "      'data.template': 'alpaca', 'data.seq_len': 1024, 'batch_size': 2,\n"
      "      'mesh.num_devices': 1, 'optimizer.learning_rate': 1e-3,\n"
      "      'checkpoint.every_steps': 100, 'progress_bar': False, 'model.scan_layers': False})\n")
  rc = reproduce.ReproduceConfig(
      output_dir=str(tmp_path / "out"), base_checkpoint=str(base), train_config=str(recipe),
      sizes=(4, 8), num_epochs=1, max_steps=2, num_problems=2, num_samples=3,
      max_new_tokens=6, sample_dtype="float32", rows=4)
  out = tmp_path / "out"
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  proc = subprocess.run(     # the command line with the same settings as rc
      [sys.executable, "tools/reproduce.py", f"--output_dir={out}", f"--base_checkpoint={base}",
       f"--train_config={recipe}", "--sizes=4,8", "--num_epochs=1", "--max_steps=2",
       "--num_problems=2", "--num_samples=3", "--max_new_tokens=6", "--sample_dtype=float32",
       "--rows=4"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  printed_table, printed_json = proc.stdout.split("\n[", 1)
  rows = json.loads("[" + printed_json)
  assert rows == json.loads((out / "results.json").read_text())
  assert printed_table.strip() == (out / "results.md").read_text().strip()
  assert [r["sft_rows"] for r in rows] == [0, 4, 8]
  for row, stage in zip(rows, ("base", "sft_4/eval", "sft_8/eval")):   # each row is its stage's
    summary = json.loads((out / stage / "summary.json").read_text())
    assert (row["num_problems"], row["num_samples"]) == (2, 3)
    assert row["pass_at_n"] == summary["pass_at_n"]
    assert row["pass_ratio_at_n"] == summary["pass_ratio_at_n"]
    assert row["maj_at_n"] == summary["maj_at_k"]["3"]
  assert len((out / "data" / "gsm8k_train_8.jsonl").read_text().splitlines()) == 8
  for name in ("pass_vs_data.png", "accuracy_by_steps.png"):
    assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  table = (out / "results.md").read_text()
  assert "| SFT 8 | 8 |" in table and "PassRatio@3" in table
  # fine-tuning changed the weights that were sampled
  tuned, _ = ckpt.load_params(out / "sft_4" / "final")
  base_params, _ = ckpt.load_params(base)
  assert not np.allclose(tuned.layers.wq, base_params.layers.wq)
  # a second run finds every stage done and gives the same table
  mtime = (out / "sft_4" / "eval" / "summary.json").stat().st_mtime
  assert reproduce.run(rc) == json.loads((out / "results.json").read_text())
  assert (out / "sft_4" / "eval" / "summary.json").stat().st_mtime == mtime


def test_table_rows_come_from_each_stage_summary():
  """A row holds its stage's Pass@N, PassRatio@N, pass@1 and maj@N (not another metric's)."""
  summary = {"pass_at_n": 0.5, "pass_ratio_at_n": 0.25, "pass_at_k": {"1": 0.2, "3": 0.5},
             "maj_at_k": {"1": 0.2, "3": 0.4}, "num_problems": 2, "num_samples": 3}
  row = reproduce._row("SFT 4", 4, summary, {"sample_s": 7})
  assert row == {"model": "SFT 4", "sft_rows": 4, "pass_at_n": 0.5, "pass_ratio_at_n": 0.25,
                 "pass_at_1": 0.2, "maj_at_n": 0.4, "num_problems": 2, "num_samples": 3,
                 "sample_s": 7}
  table = reproduce.table_markdown([row]).splitlines()
  assert table[0] == "| model | SFT rows | Pass@3 | PassRatio@3 | pass@1 | maj@3 |"
  assert table[2] == "| SFT 4 | 4 | 50.0% | 25.0% | 20.0% | 40.0% |"
