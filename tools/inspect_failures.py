"""Why rows of a synthesis run failed: the most common failure reasons, each with the step, one
row's detail and the raw reply the teacher sent, from an output directory of tools/synthesize.py.

  python tools/inspect_failures.py --output_dir=out/synth_gsm8k            # the 5 most common
  python tools/inspect_failures.py --output_dir=out/synth_gsm8k --top=20 --max_reply_chars=500

Read-only: it may run while the synthesis run is still writing the directory. Each row counts
once, in its latest state (a row asked again and written is not a failure).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from mathjax_sft import cli, errors  # noqa: E402
from mathjax_sft.synth import failure_report  # noqa: E402

_CONFIG = cli.TreeFlags(failure_report.InspectConfig)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise errors.UserError(f"unexpected arguments: {argv[1:]}")
  c = _CONFIG.value()
  groups = failure_report.failure_groups(c.output_dir)
  print(failure_report.format_groups(groups, c.output_dir, c.top, c.max_reply_chars))


if __name__ == "__main__":
  cli.run(main)
