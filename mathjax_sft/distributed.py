"""Multi-host plumbing: `jax.distributed` start-up, feeding each host's rows, agreeing on flags.

Every host builds the same global batch (the data pipeline is deterministic and cheap next to a
step) and hands each of its own devices exactly the block of it that the sharding puts there
(`jax.make_array_from_callback`). Nothing assumes a host's devices are contiguous along the
batch axis: on a pod `jax.make_mesh` orders devices by topology, so a host's rows can be
interleaved with other hosts' rows.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

from mathjax_sft.configtree import setting

# Environment variables by which jax.distributed.initialize() can find its cluster by itself.
_CLUSTER_ENV = ("TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS", "SLURM_JOB_ID",
                "OMPI_COMM_WORLD_SIZE", "JAX_COORDINATOR_ADDRESS")


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
  """How a process joins a multi-host job (the same command runs on every host)."""
  mode: str = setting("auto", "Start jax.distributed: auto = when coordinator_address is set or a "
                      "TPU / SLURM / MPI cluster is detected; yes = always; no = never.",
                      choices=("auto", "yes", "no"))
  coordinator_address: str = setting("", "host:port of process 0's coordinator (empty: "
                                     "auto-detected on a cluster, else one process).")
  num_processes: int = setting(0, "Number of processes (0 = detect).")
  process_id: int = setting(-1, "This process's index (-1 = detect).")

  def initialize(self) -> bool:
    return initialize(self.coordinator_address, self.num_processes, self.process_id, self.mode)


def initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1,
               mode: str = "auto") -> bool:
  """Starts jax.distributed when asked for or when a cluster is detected. Returns whether it did.

  mode "yes": always (explicit coordinator or jax's auto-detection), "no": never, "auto": when a
  coordinator address is given or a cluster environment variable is set.
  """
  if mode == "no":
    return False
  if jax.distributed.is_initialized():
    return True
  explicit = bool(coordinator_address)
  if mode == "auto" and not explicit and not any(v in os.environ for v in _CLUSTER_ENV):
    return False
  kwargs = {}
  if explicit:
    kwargs = dict(coordinator_address=coordinator_address,
                  num_processes=num_processes or None,
                  process_id=None if process_id < 0 else process_id)
  jax.distributed.initialize(**kwargs)
  return True


def is_main_process() -> bool:
  return jax.process_index() == 0


def put_global_batch(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Global numpy batch (the same on every host) -> global jax arrays: each device of this
  process gets the block `sharding` assigns to it, wherever it lies in the global array."""
  return {key: jax.make_array_from_callback(value.shape, sharding, lambda index, v=value: v[index])
          for key, value in batch.items()}


def any_process(flag: bool) -> bool:
  """True when `flag` is set on any process (a collective: call it on every process)."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(np.asarray(multihost_utils.process_allgather(np.int32(flag))).any())
