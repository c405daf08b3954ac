"""SFT trainer binary: `tools/train.py --config=configs/sft_smollm2_135m.py [--config.FIELD=VALUE]`.

Resumes automatically when output_dir already holds a checkpoint. Exit status: 0 when the run
finished or was preempted (SIGTERM: a checkpoint was saved), 1 on a non-finite loss.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from mathjax_sft.train.loop import NonFiniteLossError, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file (configs/*.py)",
                                          lock_config=True)
flags.mark_flag_as_required("config")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    result = train(_CONFIG.value)
  except NonFiniteLossError as e:
    logging.error("%s", e)
    sys.exit(1)
  logging.info("done: step %d (%s), %.1f tokens/s, MFU %.1f%%, export %s", result.step,
               result.stop_reason, result.tokens_per_s, 100 * result.mfu, result.export_dir)


if __name__ == "__main__":
  app.run(main)
