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
  fields = dict(max_steps=2, checkpoint_every_steps=2, mesh_shape=[2, 2, 2], num_devices=0,
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
  c = helpers.tiny_config(byte_tokenizer, data, tmp_path / "sp", max_steps=2,
                          checkpoint_every_steps=2, num_devices=0)
  c.mesh_shape = (2, 2, 2)
  single = {}
  result = train(c, step_callback=lambda s, m: single.__setitem__(str(s), m["loss"]))
  np.testing.assert_allclose([out[0]["losses"][k] for k in ("1", "2")],
                             [single[k] for k in ("1", "2")], rtol=1e-5)
  np.testing.assert_allclose(out[0]["param_norm"], result.last_metrics["param_norm"], rtol=1e-5)
  assert (tmp_path / "mp" / "checkpoints" / "2").is_dir()
