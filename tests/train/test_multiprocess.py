"""Two processes on loopback (jax.distributed, gloo), 4 CPU devices each, run sharded train steps
on a (data=2, fsdp=2, tensor=2) mesh and agree with each other and with one process."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from mathjax_sft.train.loop import train
from tests.train import helpers

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_agree(byte_tokenizer, tmp_path):
  data = helpers.write_jsonl(tmp_path / "d.jsonl", helpers.arithmetic_rows(40))
  fields = dict(max_steps=2, every_steps=2, shape=[2, 2, 2], num_devices=0,
                tokenizer=str(byte_tokenizer), train_files=str(data))
  port = _free_port()
  env = dict(os.environ, PYTHONPATH=str(REPO),
             XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  procs = []
  for pid in range(2):
    spec = {"config": dict(fields, output_dir=str(tmp_path / "mp"),
                           coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                           process_id=pid),
            "losses": str(tmp_path / f"losses{pid}.json")}
    (tmp_path / f"spec{pid}.json").write_text(json.dumps(spec))
    procs.append(subprocess.Popen([sys.executable, "-m", "tests.train.worker",
                                   str(tmp_path / f"spec{pid}.json")], cwd=REPO, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
  for p in procs:
    _, err = p.communicate(timeout=280)
    assert p.returncode == 0, err.decode()[-4000:]
  out = [json.loads((tmp_path / f"losses{pid}.json").read_text()) for pid in range(2)]
  assert out[0] == out[1] and sorted(out[0]["losses"]) == ["1", "2"]
  # one process, the same (2, 2, 2) mesh over its own 8 devices
  c = helpers.tiny_config(byte_tokenizer, data, tmp_path / "sp", max_steps=2, every_steps=2,
                          num_devices=0, shape=(2, 2, 2))
  single = {}
  result = train(c, step_callback=lambda s, m: single.__setitem__(str(s), m["loss"]))
  np.testing.assert_allclose([out[0]["losses"][k] for k in ("1", "2")],
                             [single[k] for k in ("1", "2")], rtol=1e-5)
  np.testing.assert_allclose(out[0]["param_norm"], result.last_metrics["param_norm"], rtol=1e-5)
  assert (tmp_path / "mp" / "checkpoints" / "2").is_dir()


def test_feeding_over_interleaved_devices(tmp_path):
  """The batch axis alternates between two processes (p0, p1, p0, ...): each device still gets
  its own rows, and the global batch and loss equal one process's."""
  port = _free_port()
  env = dict(os.environ, PYTHONPATH=str(REPO),
             XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen([sys.executable, "-m", "tests.train.feed_worker", str(port), str(pid),
                             str(tmp_path / f"out{pid}.json")], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for pid in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=200)
    assert p.returncode == 0, err.decode()[-4000:]
  out = [json.loads((tmp_path / f"out{pid}.json").read_text()) for pid in range(2)]
  assert out[0]["mesh_order"] == [0, 1] * 4
  # process 0 holds rows 0-1, 4-5, 8-9, 12-13: not a contiguous range
  assert sorted(out[0]["first_rows"].values()) == [0, 4, 8, 12]
  assert sorted(out[1]["first_rows"].values()) == [2, 6, 10, 14]
  import jax
  batch, _, loss = helpers.feed_and_loss(jax.devices())
  np.testing.assert_array_equal(np.asarray(out[0]["inputs"]), np.asarray(batch["inputs"]))
  np.testing.assert_array_equal(np.asarray(out[1]["inputs"]), np.asarray(batch["inputs"]))
  np.testing.assert_allclose([out[0]["loss"], out[1]["loss"]], [loss, loss], rtol=1e-5)
