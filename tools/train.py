"""SFT trainer binary: `tools/train.py --config=configs/sft_smollm2_135m.py [--config.PATH=VALUE]`.

The config file's `get_config()` returns a `TrainConfig` tree (mathjax_sft/train/config.py);
every field of it can be overridden as `--config.PATH=VALUE` (e.g. `--config.max_steps=200`,
`--config.optimizer.learning_rate=1e-5`, `--config.mesh.shape=1,-1,2`); `--help` lists them all.
Resumes automatically when output_dir already holds a checkpoint. Exit status: 0 when the run
finished or was preempted (SIGTERM: a checkpoint was saved), 1 on a non-finite loss.
"""

import sys

from absl import flags, logging

from mathjax_sft import cli, configtree, errors, logs
from mathjax_sft.train.config import TrainConfig
from mathjax_sft.train.loop import NonFiniteLossError, train

_CONFIG_FILE = flags.DEFINE_string("config", None, "Config file (configs/*.py) whose get_config() "
                                   "returns a TrainConfig; the --config.PATH flags override it.",
                                   required=True)
_OVERRIDES = cli.TreeFlags(TrainConfig, prefix="config.", overrides_only=True)


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f"unexpected arguments: {argv[1:]}")
  logs.quiet(logs.absl_verbose())
  config = _OVERRIDES.value(configtree.load_file(_CONFIG_FILE.value, TrainConfig))
  try:
    result = train(config)
  except NonFiniteLossError as e:
    logging.error("%s", e)
    sys.exit(1)
  print(f"done: step {result.step} ({result.stop_reason}), {result.tokens_per_s:.1f} tokens/s, "
        f"MFU {100 * result.mfu:.1f}%; outputs in {config.output_dir} (checkpoints/, tb/ "
        f"TensorBoard events), export {result.export_dir}")


if __name__ == "__main__":
  cli.run(main)
