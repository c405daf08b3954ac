"""Compile every program a run executes for its TPU slice, on this (CPU) host, and say if it fits.

  python tools/aot_check.py --config=configs/sft_llama2_7b.py                # the config's slice
  python tools/aot_check.py --config=configs/sft_llama2_7b.py --topology=v4:4x4x4
  python tools/aot_check.py --config=configs/sft_llama2_7b.py --programs=sample --num_samples=256

No weight is allocated and no TPU is needed: libtpu's topology API describes the slice
(`pip install -e '.[tpu]'`), and `--topology=cpu:8` compiles for 8 simulated CPU devices instead.
Programs: `train` (the train step with the config's batch, seq_len, grad accumulation, mesh,
dtypes, scan / remat) and `sample` (prefill and decode of one sampler batch on one host's
devices). One JSON line per program on stdout (per-device argument / temporary / output bytes, HBM,
fits, XLA's and the model's FLOPs per device, compile seconds); a readable line per program on
stderr. Exit status 1 when a program does not fit (or lacks `--headroom`).

The model comes from the config's model.init_checkpoint (its config.json) when that is converted,
else from its model.preset.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from absl import flags  # noqa: E402

from mathjax_sft import cli, configtree, errors  # noqa: E402
from mathjax_sft.aot_config import AotCheckConfig  # noqa: E402
from mathjax_sft.train.config import TrainConfig  # noqa: E402

# the train config file, with --config.PATH overrides; everything else is an AotCheckConfig field
_CONFIG_FILE = flags.DEFINE_string("config", None, "Train config file (configs/*.py); its model, "
                                   "batch, mesh and topology are checked.", required=True)
_OVERRIDES = cli.TreeFlags(TrainConfig, prefix="config.", overrides_only=True)
_CHECK = cli.TreeFlags(AotCheckConfig)


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f"unexpected arguments: {argv[1:]}")
  c = _OVERRIDES.value(configtree.load_file(_CONFIG_FILE.value, TrainConfig))
  a = _CHECK.value()
  topology = a.topology or c.mesh.topology
  if not topology:
    raise errors.UserError("no --topology and the config names none (its mesh.topology)")
  if topology.startswith("cpu"):
    count = topology.split(":", 1)[1] if ":" in topology else "8"
    os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={count}")
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_platforms", "cpu")   # compile for the target; run nothing here

  from mathjax_sft import aot  # pylint: disable=import-outside-toplevel
  from mathjax_sft.sample.engine import EngineConfig  # pylint: disable=import-outside-toplevel
  from mathjax_sft.train import model_setup  # pylint: disable=import-outside-toplevel

  from mathjax_sft.checkpoint import params as params_ckpt  # pylint: disable=import-outside-toplevel

  m = c.model
  if m.init_checkpoint and not params_ckpt.is_checkpoint_dir(m.init_checkpoint):
    if not m.preset:
      raise errors.UserError(f"model.init_checkpoint {m.init_checkpoint} is not converted yet and "
                             "the config names no model.preset for its shape")
    print(f"aot_check: {m.init_checkpoint} is not converted here: using the shape of "
          f"model.preset={m.preset}", file=sys.stderr)
    c = c.replace({"model.init_checkpoint": ""})
  tgt = aot.target(topology, a.chips_per_host)
  cfg = model_setup.model_config(c.model)
  reports = []
  if "train" in a.programs:
    reports.append(aot.check_train(cfg, tgt, tuple(c.mesh.shape), c.batch_size, c.data.seq_len,
                                   c.grad_accum_steps))
    _emit(reports[-1], aot, a.output)
  if "sample" in a.programs:
    dtype = a.sample_dtype
    scfg = cfg.replace(param_dtype=dtype, compute_dtype=dtype, scan_layers=False, remat=False)
    mesh = a.sample_mesh_shape or None
    ecfg = EngineConfig(max_new_tokens=a.max_new_tokens, rows=a.rows,
                        prefix_slots=a.prefix_slots, chunk_steps=a.chunk_steps)
    for r in aot.check_sample(scfg, tgt, mesh, ecfg, a.num_samples, a.prompt_len):
      reports.append(r)
      _emit(r, aot, a.output)
  bad = [r.program for r in reports if r.hbm_bytes is not None
         and not aot.fits_with_headroom(r, a.headroom)]
  if bad:
    print(f"aot_check: {', '.join(bad)} leave less than {100 * a.headroom:.0f}% of HBM free "
          f"on {topology}", file=sys.stderr)
    sys.exit(1)


def _emit(report, aot, output: str | None) -> None:
  line = json.dumps({"config": _CONFIG_FILE.value,
                     **report.to_json()})
  print(line, flush=True)
  print(aot.human(report), file=sys.stderr, flush=True)
  if output:
    with open(output, "a", encoding="utf-8") as f:
      f.write(line + "\n")


if __name__ == "__main__":
  cli.run(main)
