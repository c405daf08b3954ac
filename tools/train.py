"""SFT trainer binary: `tools/train.py --config=configs/sft_smollm2_135m.py [--config.FIELD=VALUE]`.

Resumes automatically when output_dir already holds a checkpoint. Exit status: 0 when the run
finished or was preempted (SIGTERM: a checkpoint was saved), 1 on a non-finite loss.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from mathjax_sft import logs
from mathjax_sft.train.config import field_docs
from mathjax_sft.train.loop import NonFiniteLossError, train

_FIELDS = "\n".join(f"  --config.{k}: {v}" for k, v in field_docs().items())
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "ml_collections config file (configs/*.py); any field below can be set as "
    f"--config.FIELD=VALUE. Fields:\n{_FIELDS}", lock_config=True)
flags.mark_flag_as_required("config")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logs.quiet(logs.absl_verbose())
  try:
    result = train(_CONFIG.value)
  except NonFiniteLossError as e:
    logging.error("%s", e)
    sys.exit(1)
  print(f"done: step {result.step} ({result.stop_reason}), {result.tokens_per_s:.1f} tokens/s, "
        f"MFU {100 * result.mfu:.1f}%; outputs in {_CONFIG.value.output_dir} (checkpoints/, tb/ "
        f"TensorBoard events), export {result.export_dir}")


if __name__ == "__main__":
  app.run(main)
