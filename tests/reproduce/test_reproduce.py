"""tools/reproduce.py pipeline end to end on a tiny model: base -> SFT at two sizes -> figures."""

import json

import jax
import numpy as np

from mathjax_sft import reproduce
from mathjax_sft.checkpoint import params as ckpt
from mathjax_sft.model import llama
from mathjax_sft.model.config import preset
from tests.train import helpers


def test_pipeline_runs_every_stage_and_resumes(tmp_path, byte_tokenizer):
  cfg = preset("tiny", vocab_size=helpers.TINY_VOCAB, bos_token_id=1, eos_token_ids=(2,))
  base = tmp_path / "base_ckpt"
  ckpt.save_params(base, llama.init_params(cfg, jax.random.key(0)), cfg)
  ckpt.copy_tokenizer_files(byte_tokenizer, base)
  recipe = tmp_path / "recipe.py"
  recipe.write_text(
      "from mathjax_sft.train.config import default_config\n"
      "def get_config():\n"
      "  c = default_config()\n"
      "  c.template, c.seq_len, c.batch_size, c.num_devices = 'alpaca', 1024, 2, 1\n"
      "  c.learning_rate, c.checkpoint_every_steps, c.progress_bar = 1e-3, 100, False\n"
      "  c.scan_layers = False\n"
      "  return c\n")
  rc = reproduce.ReproduceConfig(
      output_dir=str(tmp_path / "out"), base_checkpoint=str(base), train_config=str(recipe),
      sizes=(4, 8), num_epochs=1, max_steps=2, num_problems=2, num_samples=3,
      max_new_tokens=6, sample_dtype="float32", rows=4)
  rows = reproduce.run(rc)
  assert [r["sft_rows"] for r in rows] == [0, 4, 8]
  out = tmp_path / "out"
  assert len((out / "data" / "gsm8k_train_8.jsonl").read_text().splitlines()) == 8
  for name in ("pass_vs_data.png", "accuracy_by_steps.png"):
    assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  table = (out / "results.md").read_text()
  assert "| SFT 8 | 8 |" in table and "PassRatio@3" in table
  # fine-tuning changed the weights that were sampled
  tuned, _ = ckpt.load_params(out / "sft_4" / "final")
  base_params, _ = ckpt.load_params(base)
  assert not np.allclose(tuned["layers"]["wq"], base_params["layers"]["wq"])
  # a second run finds every stage done and gives the same table
  mtime = (out / "sft_4" / "eval" / "summary.json").stat().st_mtime
  assert reproduce.run(rc) == json.loads((out / "results.json").read_text())
  assert (out / "sft_4" / "eval" / "summary.json").stat().st_mtime == mtime
