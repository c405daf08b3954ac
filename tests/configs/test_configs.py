"""Every config under configs/ (but sample*): validates, holds the scriptable fields, and runs
one train step on a tiny shape with the rest of its settings (mesh, dtypes, remat, accumulation)."""

import importlib.util
import math
import shutil
from pathlib import Path

import jax
import pytest

from mathjax_sft.checkpoint import params as params_ckpt
from mathjax_sft.model import llama
from mathjax_sft.model.config import preset
from mathjax_sft.train import config as config_lib
from mathjax_sft.train.loop import train
from tests.train import helpers

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if not p.stem.startswith("sample"))


def _load(name):
  spec = importlib.util.spec_from_file_location(name, CONFIG_DIR / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_the_required_configs_exist():
  assert {"sft_llama2_7b", "sft_llama2_70b", "sft_smollm2_135m"} <= set(CONFIGS)


BROKEN = [  # (field, a value that breaks it given the config, what the error says)
    ("grad_accum_steps", lambda c: c.batch_size + 1, "grad_accum_steps=.* must divide batch_size"),
    ("batch_size", lambda c: 0, "batch_size must be positive"),
    ("learning_rate", lambda c: -c.learning_rate, "learning_rate must be positive"),
    ("seq_len", lambda c: 1, "seq_len must be >= 2"),
    ("compute_dtype", lambda c: "float16", "compute_dtype must be in"),
    ("mesh_shape", lambda c: tuple(c.mesh_shape)[:2], "mesh_shape must be"),
    ("template", lambda c: "no-such-template", "unknown prompt template"),
    ("warmup_ratio", lambda c: 1.0, "warmup_ratio must be in"),
]


@pytest.mark.parametrize("name", CONFIGS)
def test_config_validates(name):
  """Each config validates as written; one broken field, or a missing required one, does not."""
  c = _load(name)
  config_lib.validate(c)
  for field in config_lib.REQUIRED_FIELDS:
    assert field in c
  for field, bad, message in BROKEN:
    broken = _load(name)
    setattr(broken, field, bad(broken))
    with pytest.raises(ValueError, match=message):
      config_lib.validate(broken)
  for field in ("seed", "learning_rate"):
    broken = _load(name)
    del broken[field]
    with pytest.raises(ValueError, match=f"missing field '{field}'"):
      config_lib.validate(broken)


def test_paper_settings():
  c7, c70 = _load("sft_llama2_7b"), _load("sft_llama2_70b")
  for c in (c7, c70):
    assert c.num_epochs == 3 and c.compute_dtype == "bfloat16" and c.param_dtype == "float32"
  assert c7.learning_rate == 2e-5 and c70.learning_rate == 1e-5
  small = _load("sft_smollm2_135m")
  assert small.init_checkpoint == "runs/smollm2-135m" and small.seq_len == 512
  assert small.train_files == "data:gsm8k/train.jsonl"


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
  c.init_checkpoint = str(tiny_checkpoint)
  c.train_files = str(data)
  c.output_dir = str(tmp_path / "run")
  c.seq_len, c.batch_size, c.max_steps = 256, 8, 1
  c.eval_fraction = 0.1 if c.eval_fraction else 0.0
  c.eval_every_steps = 1 if c.eval_every_steps else 0
  c.template = "alpaca"            # the byte tokenizer has no chat template
  c.progress_bar = False
  c.peak_flops_per_device = 1e11
  c.compilation_cache_dir = ""
  c.mesh_shape = tuple(min(s, 2) if s > 0 else s for s in c.mesh_shape)  # tiny heads: tensor <= 2
  result = train(c)
  assert result.step == 1 and result.stop_reason == "max_steps"
  # the step's loss is the checkpoint's (a random init: near ln(vocab)), whatever the dtypes
  assert math.isfinite(result.last_metrics["loss"])
  assert abs(result.last_metrics["loss"] - math.log(helpers.TINY_VOCAB)) < 0.5
  assert result.export_dir and params_ckpt.is_checkpoint_dir(result.export_dir)
