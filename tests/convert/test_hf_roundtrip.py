"""HF safetensors -> checkpoint -> HF: bit-exact, loads in transformers, logits match; bad input."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from mathjax_sft.checkpoint import params as ckpt
from mathjax_sft.convert import api, hf as hf_io
from mathjax_sft.model import llama, weights
from mathjax_sft.model.config import preset
from tests.hf_reference import hf_logits, random_hf_model

REPO = Path(__file__).resolve().parents[2]


def _save_hf(cfg, path, dtype="float32", shard="20KB", seed=0):
  import torch
  model = random_hf_model(cfg, seed)
  model = model.to(getattr(torch, dtype))
  model.save_pretrained(str(path), max_shard_size=shard)
  return model


def _all_tensors(path: Path) -> dict:
  out = {}
  for f in sorted(path.glob("*.safetensors")):
    out.update(load_file(str(f)))
  return out


@pytest.mark.parametrize("name,dtype", [("tiny", "bfloat16"), ("tiny-mha", "float32")])
def test_round_trip_bit_exact_and_loads_in_transformers(tmp_path, name, dtype):
  import torch
  import transformers
  cfg = preset(name)
  src = tmp_path / "hf"
  model = _save_hf(cfg, src, dtype)
  assert (src / hf_io.INDEX_NAME).exists(), "test wants a sharded source"
  api.import_checkpoint(src, tmp_path / "ckpt", show_progress=False, require_tokenizer=False)
  report = api.export_checkpoint(tmp_path / "ckpt", tmp_path / "out", max_shard_bytes=30_000,
                                 show_progress=False)
  assert len(report["files"]) > 1 and (tmp_path / "out" / hf_io.INDEX_NAME).exists()
  a, b = _all_tensors(src), _all_tensors(tmp_path / "out")
  assert sorted(a) == sorted(b)
  for k in a:
    assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
    assert a[k].tobytes() == b[k].tobytes(), f"{k} differs after the round trip"
  loaded, info = transformers.AutoModelForCausalLM.from_pretrained(
      str(tmp_path / "out"), output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
  assert loaded.config.tie_word_embeddings == cfg.tie_word_embeddings
  tokens = np.random.RandomState(0).randint(0, cfg.vocab_size, (1, 12))
  with torch.no_grad():
    want = model.float()(torch.as_tensor(tokens)).logits.numpy()
    got = loaded.float()(torch.as_tensor(tokens)).logits.numpy()
  np.testing.assert_allclose(got, want, atol=1e-5)  # same weights; torch buffers may differ by ulps
  # and our model on the imported checkpoint matches transformers
  params, cfg2 = ckpt.load_params(tmp_path / "ckpt", param_dtype="float32")
  ours = llama.forward_logits(params, cfg2, tokens)
  assert np.abs(np.asarray(ours) - want).max() < 1e-4


def test_tools_run_end_to_end(tmp_path):
  cfg = preset("tiny")
  _save_hf(cfg, tmp_path / "hf", "float32", shard="5GB")
  run = lambda *a: subprocess.run([sys.executable, *a], cwd=REPO, capture_output=True, text=True)
  r = run("tools/convert_hf_to_flax.py", f"--hf_path={tmp_path / 'hf'}",
          f"--output_dir={tmp_path / 'ckpt'}", "--dtype=bfloat16", "--allow_missing_tokenizer")
  assert r.returncode == 0, r.stderr
  assert json.loads(r.stdout)["params"] == cfg.num_params()
  assert ckpt.load_config(tmp_path / "ckpt").param_dtype == "bfloat16"
  r = run("tools/convert_flax_to_hf.py", f"--checkpoint={tmp_path / 'ckpt'}",
          f"--output_dir={tmp_path / 'out'}")
  assert r.returncode == 0, r.stderr
  assert (tmp_path / "out" / "model.safetensors").exists()
  assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
  r = run("tools/convert_hf_to_flax.py", "--output_dir=x")
  assert r.returncode != 0 and "exactly one of --hf_path or --gguf" in r.stderr


# ---- bad input ---------------------------------------------------------------------------------

@pytest.fixture
def hf_dir(tmp_path):
  _save_hf(preset("tiny"), tmp_path / "hf", "float32", shard="20KB")
  return tmp_path / "hf"


def _import(src, tmp_path):   # these HF dirs hold weights and config only
  return api.import_checkpoint(src, tmp_path / "ckpt", show_progress=False,
                               require_tokenizer=False)


def test_failed_conversion_leaves_nothing_and_full_dirs_are_refused(hf_dir, tmp_path):
  """A truncated second shard: the error names the file and no half-written checkpoint is left.
  A non-empty output directory (another model) is refused unless overwrite, and an HF directory
  without tokenizer files is refused before any tensor is read."""
  shards = sorted(hf_dir.glob("*.safetensors"))
  assert len(shards) > 1
  data = shards[1].read_bytes()
  shards[1].write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match=shards[1].name):
    _import(hf_dir, tmp_path)
  assert not (tmp_path / "ckpt").exists()
  assert not list(tmp_path.glob(".ckpt.partial-*"))
  shards[1].write_bytes(data)
  other = tmp_path / "ckpt"
  other.mkdir()
  (other / "config.json").write_text("{}")
  with pytest.raises(FileExistsError, match="not empty"):
    _import(hf_dir, tmp_path)
  assert (other / "config.json").read_text() == "{}"          # untouched
  api.import_checkpoint(hf_dir, other, show_progress=False, require_tokenizer=False,
                        overwrite=True)
  assert ckpt.is_checkpoint_dir(other)
  with pytest.raises(FileNotFoundError, match="no tokenizer files"):
    api.import_checkpoint(hf_dir, tmp_path / "new", show_progress=False)
  assert not (tmp_path / "new").exists()


def test_missing_shard_names_the_file(hf_dir, tmp_path):
  victim = sorted(hf_dir.glob("model-*.safetensors"))[1]
  victim.unlink()
  with pytest.raises(FileNotFoundError, match=victim.name):
    _import(hf_dir, tmp_path)


def test_shape_mismatch_names_tensor_and_file(hf_dir, tmp_path):
  cfg_path = hf_dir / "config.json"
  hf = json.loads(cfg_path.read_text())
  hf["intermediate_size"] = 96
  cfg_path.write_text(json.dumps(hf))
  with pytest.raises(ValueError, match=r"model-\d+-of-\d+\.safetensors: tensor 'model\.layers\.0\.mlp\.\w+_proj\.weight' has shape"):
    _import(hf_dir, tmp_path)


def test_unsupported_architecture(hf_dir, tmp_path):
  cfg_path = hf_dir / "config.json"
  hf = json.loads(cfg_path.read_text())
  hf["architectures"], hf["model_type"] = ["MistralForCausalLM"], "mistral"
  cfg_path.write_text(json.dumps(hf))
  with pytest.raises(ValueError, match=r"config\.json: unsupported architecture \['MistralForCausalLM'\]"):
    _import(hf_dir, tmp_path)


def test_unknown_rope_scaling(hf_dir, tmp_path):
  cfg_path = hf_dir / "config.json"
  hf = json.loads(cfg_path.read_text())
  hf["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}
  cfg_path.write_text(json.dumps(hf))
  with pytest.raises(ValueError, match=r"config\.json: unsupported rope_scaling type 'yarn'"):
    _import(hf_dir, tmp_path)


def test_unknown_missing_and_duplicate_tensors(tmp_path):
  cfg = preset("tiny")
  src = tmp_path / "hf"
  _save_hf(cfg, src, "float32", shard="5GB")
  tensors = load_file(str(src / "model.safetensors"))
  extra = dict(tensors, **{"model.layers.0.self_attn.q_proj.bias": np.zeros(64, np.float32)})
  save_file(extra, str(src / "model.safetensors"))
  with pytest.raises(ValueError, match=r"model\.safetensors: unknown tensor 'model\.layers\.0\.self_attn\.q_proj\.bias'"):
    _import(src, tmp_path)
  missing = {k: v for k, v in tensors.items() if k != "model.layers.1.mlp.up_proj.weight"}
  save_file(missing, str(src / "model.safetensors"))
  with pytest.raises(ValueError, match=r"missing tensors: model\.layers\.1\.mlp\.up_proj\.weight"):
    _import(src, tmp_path)
  save_file(tensors, str(src / "model.safetensors"))
  save_file({"model.norm.weight": tensors["model.norm.weight"]}, str(src / "model-extra.safetensors"))
  with pytest.raises(ValueError, match=r"model\.norm\.weight appears in both"):
    _import(src, tmp_path)


def test_no_config_and_no_weights(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="has no config.json"):
    _import(tmp_path / "empty", tmp_path)
  with pytest.raises(FileNotFoundError, match="not a mathjax_sft checkpoint"):
    ckpt.load_params(tmp_path / "empty")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_export_reads_parameters_into_host_memory(tmp_path, dtype):
  """Export streams each stored tensor through host memory: numpy arrays, equal to what was
  saved, and no device buffer is created while reading (a stacked 70B tensor exceeds a chip)."""
  cfg = preset("tiny", param_dtype=dtype)
  params = llama.init_params(cfg, jax.random.PRNGKey(0))
  ckpt.save_params(tmp_path / "c", params, cfg)
  expected = {weights.path_names(path): np.asarray(v)
              for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  del params
  before = len(jax.live_arrays())
  got = {}
  for path, value in ckpt.iter_params_numpy(tmp_path / "c"):
    assert isinstance(value, np.ndarray) and len(jax.live_arrays()) == before
    got[path] = value
  assert got.keys() == expected.keys()
  for path, value in got.items():
    assert value.dtype == expected[path].dtype
    np.testing.assert_array_equal(value, expected[path])
