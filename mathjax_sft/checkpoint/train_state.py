"""Full train-state checkpoints: orbax CheckpointManager over (state, data iterator, meta).

  OUTPUT_DIR/checkpoints/<step>/state/       TrainState (params, optimizer state, step), sharded
  OUTPUT_DIR/checkpoints/<step>/data_state/  the data iterator position (JSON)
  OUTPUT_DIR/checkpoints/<step>/meta/        run facts (JSON): step, model config, data stats

Saves are asynchronous (device arrays are copied to host before `save` returns, so the state can
be donated right after) and only finalised checkpoints are listed, so a run killed mid-save
resumes from the previous one. Restoring reads every array straight into its sharding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

CHECKPOINTS_SUBDIR = "checkpoints"


class TrainCheckpointer:
  def __init__(self, output_dir: str | Path, keep: int = 3, async_save: bool = True):
    self.directory = Path(output_dir).absolute() / CHECKPOINTS_SUBDIR
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "data_state", "meta"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict, meta: dict, force: bool = False) -> bool:
    return self._manager.save(
        step, force=force,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                data_state=ocp.args.JsonSave(data_state),
                                meta=ocp.args.JsonSave(meta)))

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict, dict]:
    """(state, data_state, meta) of `step` (default: the latest). `abstract_state` carries the
    target shapes, dtypes and shardings."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no finished checkpoint under {self.directory}")
    out = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                      data_state=ocp.args.JsonRestore(),
                                      meta=ocp.args.JsonRestore()))
    return out["state"], out["data_state"], out["meta"]

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> "TrainCheckpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
