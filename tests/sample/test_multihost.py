"""tools/sample.py on two processes (jax.distributed over loopback, gloo; 2 CPU devices each):
problems are split between the processes, each writes its own samples file, and process 0's
summary equals a one-process run's."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import jax

from mathjax_sft.checkpoint import params as ckpt
from mathjax_sft.model import llama
from mathjax_sft.model.config import preset
from mathjax_sft.sample import run as run_lib
from tests.train import helpers

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _cmd(ckpt_dir, data, out, *extra):
  return [sys.executable, "tools/sample.py", f"--checkpoint={ckpt_dir}", f"--dataset=jsonl:{data}",
          "--num_problems=10", "--num_samples=4", "--max_new_tokens=8", "--rows=4",
          "--temperature=1.0", "--template=alpaca", "--mesh_shape=-1,1,1",
          "--grader_workers=1", f"--output_dir={out}", *extra]


def test_two_processes_split_problems_and_agree_with_one(byte_tokenizer, tmp_path):
  cfg = preset("tiny", vocab_size=helpers.TINY_VOCAB, bos_token_id=1, eos_token_ids=(2,))
  model = tmp_path / "model"
  ckpt.save_params(model, llama.init_params(cfg, jax.random.key(3)), cfg)
  for f in Path(byte_tokenizer).iterdir():
    shutil.copy(f, model / f.name)
  data = helpers.write_jsonl(tmp_path / "problems.jsonl", helpers.arithmetic_rows(10))
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  port = _free_port()
  multi = tmp_path / "multi"
  procs = [subprocess.Popen(
      _cmd(model, data, multi, f"--distributed.coordinator_address=127.0.0.1:{port}",
           "--distributed.num_processes=2", f"--distributed.process_id={pid}"), cwd=REPO, env=env,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for pid in range(2)]
  outs = [p.communicate(timeout=400) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-4000:]
  assert "pass_at_n" in outs[0][0] and "pass_at_n" not in outs[1][0]   # only process 0 prints
  files = sorted(f.name for f in multi.glob("samples*.jsonl"))
  assert files == ["samples.00000-of-00002.jsonl", "samples.00001-of-00002.jsonl"]
  ids = [[json.loads(l)["id"] for l in (multi / f).read_text().splitlines()] for f in files]
  assert len(ids[0]) == 5 and len(ids[1]) == 5 and not set(ids[0]) & set(ids[1])   # i % 2

  single = tmp_path / "single"
  one = subprocess.run(_cmd(model, data, single), cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=400)
  assert one.returncode == 0, one.stderr[-4000:]
  a = json.loads((multi / run_lib.SUMMARY_FILE).read_text())
  b = json.loads((single / run_lib.SUMMARY_FILE).read_text())
  assert a.pop("this_run")["processes"] == 2 and b.pop("this_run")["processes"] == 1
  assert a == b and a["num_problems"] == 10
  # the samples themselves, problem by problem
  recs = run_lib.read_records(multi)
  assert recs == run_lib.read_records(single)
