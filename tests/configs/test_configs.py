"""Every config under configs/ (but sample*): validates, holds the scriptable fields, and runs
one train step on a tiny shape with the rest of its settings (mesh, dtypes, remat, accumulation)."""

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from mathjax_sft import configtree
from mathjax_sft.checkpoint import params as params_ckpt
from mathjax_sft.model import llama
from mathjax_sft.model.config import preset
from mathjax_sft.train import config as config_lib
from mathjax_sft.train.loop import train
from tests.train import helpers

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "configs"
CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if not p.stem.startswith("sample"))


def _load(name) -> config_lib.TrainConfig:
  return configtree.load_file(CONFIG_DIR / f"{name}.py", config_lib.TrainConfig)


def test_the_required_configs_exist():
  assert {"sft_llama2_7b", "sft_llama2_70b", "sft_smollm2_135m"} <= set(CONFIGS)


BROKEN = [  # (path, a value that breaks it given the config, what the error says)
    ("grad_accum_steps", lambda c: c.batch_size + 1, "grad_accum_steps=.* must divide batch_size"),
    ("batch_size", lambda c: 0, "batch_size must be positive"),
    ("optimizer.learning_rate", lambda c: -c.optimizer.learning_rate,
     "optimizer.learning_rate must be positive"),
    ("data.seq_len", lambda c: 1, "data.seq_len must be >= 2"),
    ("model.compute_dtype", lambda c: "float16", "model.compute_dtype='float16'; expected one of"),
    ("mesh.shape", lambda c: tuple(c.mesh.shape)[:2], "mesh.shape must be"),
    ("data.template", lambda c: "no-such-template", "data.template='no-such-template'"),
    ("optimizer.warmup_ratio", lambda c: 1.0, "optimizer.warmup_ratio must be in"),
    ("data.train_files", lambda c: " ", "data.train_files is empty"),
    ("output_dir", lambda c: "", "output_dir is empty"),
]


@pytest.mark.parametrize("name", CONFIGS)
def test_config_validates(name):
  """Each config validates as written; one broken field does not, and the error names it."""
  c = _load(name)
  config_lib.validate(c)
  for path, bad, message in BROKEN:
    with pytest.raises(ValueError, match=message):
      config_lib.validate(c.replace({path: bad(c)}))
  with pytest.raises(KeyError, match="no field 'lr'"):
    c.replace({"optimizer.lr": 1e-5})


def test_paper_settings():
  c7, c70 = _load("sft_llama2_7b"), _load("sft_llama2_70b")
  for c in (c7, c70):
    assert c.num_epochs == 3 and c.model.compute_dtype == "bfloat16"
    assert c.model.param_dtype == "float32" and c.data.template == "xwin"
  assert c7.optimizer.learning_rate == 2e-5 and c70.optimizer.learning_rate == 1e-5
  small = _load("sft_smollm2_135m")
  assert small.model.init_checkpoint == "runs/smollm2-135m" and small.data.seq_len == 512
  assert small.data.train_files == "data:gsm8k/train.jsonl"


def _train_tool(*args):
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "tools/train.py", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120)


def test_a_misspelled_or_bad_override_is_one_line():
  proc = _train_tool("--config=configs/sft_smollm2_135m.py", "--config.optimizer.lr=1")
  assert proc.returncode != 0
  assert "Unknown command line flag 'config.optimizer.lr'" in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  proc = _train_tool("--config=configs/sft_smollm2_135m.py", "--config.model.remat_policy=some")
  assert proc.returncode != 0 and "'some' is not one of full, dots" in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, byte_tokenizer):
  """A converted-checkpoint-style dir: config.json + params/ + tokenizer files."""
  out = tmp_path_factory.mktemp("tiny_ckpt")
  cfg = preset("tiny", vocab_size=helpers.TINY_VOCAB)
  params_ckpt.save_params(out, llama.init_params(cfg, jax.random.PRNGKey(0)), cfg)
  for f in Path(byte_tokenizer).iterdir():
    shutil.copy(f, out / f.name)
  return out


@pytest.mark.parametrize("name", CONFIGS)
def test_config_runs_one_step_on_a_tiny_shape(name, tiny_checkpoint, tmp_path):
  c = _load(name)
  data = helpers.write_jsonl(tmp_path / "d.jsonl", helpers.arithmetic_rows(24))
  c = c.replace({
      "model.init_checkpoint": str(tiny_checkpoint),
      "data.train_files": str(data),
      "output_dir": str(tmp_path / "run"),
      "data.seq_len": 256, "batch_size": 8, "max_steps": 1,
      "data.eval_fraction": 0.1 if c.data.eval_fraction else 0.0,
      "eval_every_steps": 1 if c.eval_every_steps else 0,
      "data.template": "alpaca",             # the byte tokenizer has no chat template
      "progress_bar": False,
      "peak_flops_per_device": 1e11,
      "compilation_cache_dir": "",
      "mesh.shape": tuple(min(s, 2) if s > 0 else s for s in c.mesh.shape),  # tiny heads: tensor <= 2
  })
  result = train(c)
  assert result.step == 1 and result.stop_reason == "max_steps"
  # the step's loss is the checkpoint's (a random init: near ln(vocab)), whatever the dtypes
  assert math.isfinite(result.last_metrics["loss"])
  assert abs(result.last_metrics["loss"] - math.log(helpers.TINY_VOCAB)) < 0.5
  assert result.export_dir and params_ckpt.is_checkpoint_dir(result.export_dir)
