"""What a new user hits first with tools/sample.py: mistakes named before the model loads,
nothing stale after a change of inputs, nothing half-written after a failure, quiet output."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from mathjax_sft.checkpoint import params as ckpt
from mathjax_sft.model import llama
from mathjax_sft.model.config import preset
from mathjax_sft.sample import run as run_lib
from tests.train import helpers

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_model(byte_tokenizer, tmp_path_factory):
  cfg = preset("tiny", vocab_size=helpers.TINY_VOCAB, bos_token_id=1, eos_token_ids=(2,))
  model = tmp_path_factory.mktemp("first-hour") / "model"
  ckpt.save_params(model, llama.init_params(cfg, jax.random.key(3)), cfg)
  for f in Path(byte_tokenizer).iterdir():
    shutil.copy(f, model / f.name)
  return model


def _cfg(model, data, out, **kw):
  values = dict(checkpoint=str(model), dataset=f"jsonl:{data}", output_dir=str(out),
                num_samples=4, num_problems=3, max_new_tokens=6, temperature=1.0,
                template="alpaca", grader_workers=1, rows=4)
  values.update(kw)
  return run_lib.SampleRunConfig(**values)


def test_inputs_are_checked_before_loading_and_settings_only_written_after(tiny_model, tmp_path):
  """A missing checkpoint, an HF directory, an unknown dataset, an empty problems file: each
  error names the mistake, and the run directory gets no settings.json, so the corrected
  command runs."""
  data = helpers.write_jsonl(tmp_path / "p.jsonl", helpers.arithmetic_rows(3))
  out = tmp_path / "run"
  with pytest.raises(FileNotFoundError, match="--checkpoint=.*no such directory"):
    run_lib.run(_cfg(tmp_path / "nope", data, out), show_progress=False)
  hf = tmp_path / "hf"
  hf.mkdir()
  (hf / "config.json").write_text("{}")
  (hf / "model.safetensors").write_bytes(b"")
  with pytest.raises(FileNotFoundError, match="Hugging Face model directory: convert it"):
    run_lib.run(_cfg(hf, data, out), show_progress=False)
  with pytest.raises(ValueError, match="unknown evaluation set 'gsm9k'"):
    run_lib.run(_cfg(tiny_model, data, out, dataset="gsm9k"), show_progress=False)
  empty = helpers.write_jsonl(tmp_path / "empty.jsonl", [])
  with pytest.raises(ValueError, match="holds no problems"):
    run_lib.run(_cfg(tiny_model, empty, out), show_progress=False)
  assert not (out / run_lib.SETTINGS_FILE).exists()
  summary = run_lib.run(_cfg(tiny_model, data, out), show_progress=False)
  assert summary["num_problems"] == 3 and (out / run_lib.SETTINGS_FILE).exists()


def test_no_stale_samples_after_the_problems_change(tiny_model, tmp_path):
  """Same --output_dir after the problems file changed: refused, naming the changed problem.
  A smaller --num_problems summarises that subset into its own file; summary.json stays."""
  rows = helpers.arithmetic_rows(3)
  data = helpers.write_jsonl(tmp_path / "p.jsonl", rows)
  out = tmp_path / "run"
  run_lib.run(_cfg(tiny_model, data, out), show_progress=False)
  full = (out / run_lib.SUMMARY_FILE).read_text()
  subset = run_lib.run(_cfg(tiny_model, data, out, num_problems=2), show_progress=False)
  assert subset["num_problems"] == 2
  assert (out / run_lib.SUMMARY_FILE).read_text() == full
  assert json.loads((out / "summary.first-2.json").read_text())["num_problems"] == 2
  rows[1] = dict(rows[1], answer=rows[1]["answer"].replace("####", "#### 1"))
  helpers.write_jsonl(data, rows)
  with pytest.raises(ValueError, match=r"differ from the problems file now: .*-1 \(gold\)"):
    run_lib.run(_cfg(tiny_model, data, out), show_progress=False)
  with pytest.raises(ValueError, match="max_new_tokens: 6 .* vs 7"):
    run_lib.run(_cfg(tiny_model, data, out, max_new_tokens=7), show_progress=False)


def test_a_small_run_prints_a_few_lines(tiny_model, tmp_path):
  """tools/sample.py, 2 problems x 4 samples: at most ~15 lines besides the progress bar."""
  data = helpers.write_jsonl(tmp_path / "p.jsonl", helpers.arithmetic_rows(2))
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")   # no libtpu probe
  proc = subprocess.run(
      [sys.executable, "tools/sample.py", f"--checkpoint={tiny_model}", f"--dataset=jsonl:{data}",
       "--num_samples=4", "--max_new_tokens=8", "--template=alpaca", "--grader_workers=1",
       f"--output_dir={tmp_path / 'out'}", f"--compilation_cache={tmp_path / 'cache'}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [l for l in (proc.stdout + proc.stderr).splitlines()
           if l.strip() and "problems:" not in l and "\r" not in l]
  assert len(lines) <= 15, "\n".join(lines)      # the JSON brief and our few log lines
  noise = [l for l in lines if "orbax" in l.lower() or "absl" in l.lower()]
  assert not noise, "\n".join(noise)
  assert '"outputs"' in proc.stdout
  brief = json.loads(proc.stdout[proc.stdout.index("{"):])
  assert brief["num_problems"] == 2 and brief["num_samples"] == 4


def test_a_changed_checkpoint_refuses_to_resume(tiny_model, tmp_path):
  """The same --checkpoint path holding other weights (retrained, re-converted): the run
  directory's samples came from the old weights, so resuming is refused, naming the checkpoint;
  the unchanged checkpoint resumes."""
  model = tmp_path / "model"
  shutil.copytree(tiny_model, model)
  data = helpers.write_jsonl(tmp_path / "p.jsonl", helpers.arithmetic_rows(2))
  out = tmp_path / "run"
  run_lib.run(_cfg(model, data, out, num_problems=2), show_progress=False)
  before = ckpt.fingerprint(model)
  assert ckpt.fingerprint(model) == before   # reading a checkpoint does not change it
  assert run_lib.run(_cfg(model, data, out, num_problems=2),
                     show_progress=False)["num_problems"] == 2
  cfg = ckpt.load_config(model)
  ckpt.save_params(model, llama.init_params(cfg, jax.random.key(4)), cfg)  # same shapes, config
  assert ckpt.fingerprint(model) != before
  with pytest.raises(ValueError, match="other settings: checkpoint_fingerprint"):
    run_lib.run(_cfg(model, data, out, num_problems=2), show_progress=False)


def test_rows_that_cannot_fit_are_named_before_the_weights_load(tiny_model, tmp_path,
                                                                 monkeypatch):
  """On a device that reports its memory (here a pretend 64 KiB), rows whose compiled decode
  cannot fit are named in one line before any weight is read, and no settings.json is written."""
  from mathjax_sft import errors
  from mathjax_sft.sample import programs
  data = helpers.write_jsonl(tmp_path / "p.jsonl", helpers.arithmetic_rows(3))
  out = tmp_path / "run"
  monkeypatch.setattr(programs, "device_memory", lambda device: 2 ** 16)
  monkeypatch.setattr(ckpt, "load_params", lambda *a, **k: pytest.fail("the weights loaded"))
  with pytest.raises(errors.BadInput, match=r"4 rows x 6 new tokens needs .* per device.*"
                                            r"64 KiB.*--rows") as e:
    run_lib.run(_cfg(tiny_model, data, out), show_progress=False)
  assert e.value.flag == "--rows"
  assert not (out / run_lib.SETTINGS_FILE).exists()
