"""tools/sample.py end to end: samples.jsonl + summary.json; SIGKILL then resume == uninterrupted."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from absl import flags

from mathjax_sft import cli
from mathjax_sft.sample import run as run_lib
from mathjax_sft.jsonl_store import JsonlStore

REPO = Path(__file__).resolve().parents[2]


def _cmd(ckpt, out, cache, rows=4, chunk=4):
  return [sys.executable, "tools/sample.py", f"--checkpoint={ckpt}", "--dataset=gsm8k",
          "--num_problems=6", "--num_samples=3", "--max_new_tokens=16", f"--rows={rows}",
          f"--chunk_steps={chunk}", "--temperature=0.7", "--seed=5", f"--output_dir={out}",
          "--grader_workers=1", f"--compilation_cache={cache}"]


def _comparable(summary):
  return {k: v for k, v in summary.items() if k != "this_run"}


def test_kill_and_resume_gives_the_same_summary(smollm2_checkpoint, tmp_path):
  """SIGKILL mid-run, a torn last line, then the same command with another pool / chunk size:
  the summary equals an uninterrupted run's; the printed summary reports utilisation."""
  cache = tmp_path / "xla-cache"
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  full = subprocess.run(_cmd(smollm2_checkpoint, tmp_path / "full", cache), cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)
  assert full.returncode == 0, full.stderr[-3000:]
  printed = json.loads(full.stdout[full.stdout.index("{"):])
  assert printed["num_problems"] == 6 and printed["num_samples"] == 3
  assert 0 < printed["utilisation"] <= 1 and printed["seconds"]["decode"] > 0
  assert printed["outputs"]["summary"].endswith("summary.json")

  out = tmp_path / "killed"
  proc = subprocess.Popen(_cmd(smollm2_checkpoint, out, cache), cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  samples = out / run_lib.SAMPLES_FILE
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if samples.exists() and samples.read_text().count("\n") >= 2:
      break
    time.sleep(0.05)
  assert proc.poll() is None, "the run finished before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  written = samples.read_text().count("\n")
  assert 2 <= written < 6
  with samples.open("a") as f:          # a torn last line, as a crash mid-write leaves
    f.write('{"id": "gsm8k-test-4", "samp')
  # resumed with another pool and chunk size: the same samples
  resumed = subprocess.run(_cmd(smollm2_checkpoint, out, cache, rows=5, chunk=3), cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  a = json.loads((tmp_path / "full" / run_lib.SUMMARY_FILE).read_text())
  b = json.loads((out / run_lib.SUMMARY_FILE).read_text())
  assert _comparable(a) == _comparable(b)
  ids = [r["id"] for r in JsonlStore(samples)]
  assert sorted(ids) == sorted(f"gsm8k-test-{i}" for i in range(6))   # each once
  rec = next(iter(JsonlStore(samples)))
  assert {"id", "prompt", "samples", "gold"} <= set(rec)
  assert {"text", "answer", "correct", "num_tokens"} <= set(rec["samples"][0])
  assert len(rec["samples"]) == 3 and "<|im_start|>user" in rec["prompt"]


def test_changed_settings_refuse_to_mix_runs(tmp_path):
  (tmp_path / run_lib.SETTINGS_FILE).write_text(json.dumps({"temperature": 0.2}))
  with pytest.raises(ValueError, match="holds a run with other settings"):
    run_lib._check_settings(tmp_path, {"temperature": 0.7})


def _tool(*args):
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "tools/sample.py", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("arg, named", [("--temprature=0.5", "temprature"),
                                        ("--distributed.mode=maybe", "--distributed.mode")])
def test_a_command_line_mistake_is_one_line_naming_the_flag(arg, named, tmp_path):
  proc = _tool(f"--output_dir={tmp_path}", arg)
  assert proc.returncode != 0 and not proc.stdout
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and named in lines[0], proc.stderr


def _parsed(*args):
  fv = flags.FlagValues()
  tree = cli.TreeFlags(run_lib.SampleRunConfig, flag_values=fv)
  fv(["prog", "--output_dir=o", *args])
  return tree.value()


def test_flags_build_the_config_as_before():
  """The old flag spellings give the same config (mesh and stop strings comma-separated)."""
  cfg = _parsed("--mesh_shape=1,1,-1", "--stop_strings=Q:,A:", "--rows=8", "--template=xwin",
                "--distributed.num_processes=2", "--compilation_cache=/c")
  assert cfg == run_lib.SampleRunConfig(
      output_dir="o", mesh_shape=(1, 1, -1), stop_strings=("Q:", "A:"), rows=8, template="xwin",
      distributed=run_lib.DistributedConfig(num_processes=2), compilation_cache="/c")
  assert cfg.checkpoint == "runs/smollm2-135m" and cfg.dataset == "gsm8k"
  assert _parsed("--mesh_shape=").mesh_shape is None
  assert _parsed() == run_lib.SampleRunConfig(output_dir="o")


def test_settings_keep_their_keys():
  """A run directory written before keeps resuming: settings() has the same fields."""
  cfg = run_lib.SampleRunConfig(checkpoint="ck", output_dir="o", stop_strings=("Q:",),
                                mesh_shape=(2,), compilation_cache="/c")
  assert cfg.settings() == {
      "checkpoint": str(Path("ck").absolute()), "dataset": "gsm8k", "num_samples": 64,
      "temperature": 0.7, "top_p": 1.0, "top_k": 0, "max_new_tokens": 512, "seed": 0,
      "template": None, "system_prompt": None, "stop_strings": ["Q:"],
      "compute_dtype": "float32", "param_dtype": None}
