"""Subprocess entry for the kill / multi-process tests: `python -m tests.train.worker SPEC.json`.

SPEC: {"config": {field name or dotted path: value, ...} (on top of helpers.tiny_config's),
       "losses": path to write {step: loss} at the end,
       "pause_at_step": k (optional): after step k, write "marker" and sleep until killed}
"""

import json
import sys
import time
from pathlib import Path

from tests.train import helpers


def main(spec_path: str) -> None:
  spec = json.loads(Path(spec_path).read_text())
  fields = dict(spec["config"])
  c = helpers.tiny_config(Path(fields.pop("tokenizer")), Path(fields.pop("train_files")),
                          Path(fields.pop("output_dir")), **fields)
  losses = {}

  def callback(step, metrics):
    losses[step] = metrics["loss"]
    if step == spec.get("pause_at_step"):
      Path(spec["marker"]).write_text(str(step))
      time.sleep(600)

  from mathjax_sft.train.loop import train  # after argument parsing: jax starts here
  result = train(c, step_callback=callback)
  Path(spec["losses"]).write_text(json.dumps({"losses": losses, "step": result.step,
                                              "stop_reason": result.stop_reason,
                                              "param_norm": result.last_metrics.get("param_norm")}))


if __name__ == "__main__":
  main(sys.argv[1])
