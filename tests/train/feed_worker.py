"""Subprocess entry for the interleaved-feeding test: `python -m tests.train.feed_worker PORT PID OUT`.

Two processes x 4 CPU devices; the mesh's batch axis alternates between them (device order
p0, p1, p0, p1, ...), as `jax.make_mesh` may order a pod's devices. Each process builds the
same global numpy batch, feeds it with `distributed.put_global_batch`, and writes what the
global array holds (gathered back) and the loss of a tiny model on it.
"""

import json
import sys

import jax
import numpy as np


def main(port: str, pid: str, out: str) -> None:
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                             process_id=int(pid))
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

  from mathjax_sft import distributed  # pylint: disable=import-outside-toplevel
  from tests.train import helpers  # pylint: disable=import-outside-toplevel

  by_process = [[d for d in jax.devices() if d.process_index == p] for p in range(2)]
  interleaved = [d for pair in zip(*by_process) for d in pair]
  batch, mesh, loss = helpers.feed_and_loss(interleaved)
  rows = multihost_utils.process_allgather(batch["inputs"], tiled=True)
  held = {d.id: s.index[0].start for d in jax.local_devices()
          for s in batch["inputs"].addressable_shards if s.device == d}
  with open(out, "w", encoding="utf-8") as f:
    json.dump({"inputs": np.asarray(rows).tolist(), "loss": loss,
               "first_rows": {str(k): v for k, v in held.items()},
               "mesh_order": [d.process_index for d in mesh.devices.flat]}, f)
  del distributed


if __name__ == "__main__":
  main(*sys.argv[1:])
