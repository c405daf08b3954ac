"""Synthesize Xwin-Math style SFT rows (new question -> verify -> answer) with any OpenAI-compatible
endpoint. The API key is read only from $OPENAI_API_KEY.

  OPENAI_API_KEY=... python tools/synthesize.py --input=$DATA/gsm8k/train.jsonl \\
      --dataset_format=gsm8k --output_dir=out/synth_gsm8k --model=gpt-4-turbo --per_reference=3

Re-running the same command resumes: finished rows and rows rejected for a quality reason are
not requested again; rows that failed for a transport reason (rate limit, 5xx, timeout,
connection) are pending and are asked again.
Outputs in --output_dir: rows.jsonl, failures.jsonl (each failed row with its reason and the
teacher's last reply), usage.json, synth.log (see mathjax_sft/synth/outputs.py).
`python tools/inspect_failures.py --output_dir=...` shows the most common failure reasons with
a reply each.

Exit status: 0 rows were written (or nothing was left to do); 1 an unexpected error (traceback);
2 a mistake in the flags, the input or the environment (one line); 3 the endpoint refused the
run (wrong key, model or URL) or failed for a transport reason too often: nothing is lost, the
same command resumes; 4 the run asked rows and wrote none of them (one line names the most
common failure reason).
This file only parses flags; the work is in mathjax_sft.synth.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from absl import flags  # noqa: E402

from mathjax_sft import cli, configtree, errors, paths  # noqa: E402
from mathjax_sft.synth.config import SynthConfig  # noqa: E402

_DOCS = {leaf.path: leaf.doc for leaf in configtree.leaves(SynthConfig)}

# Every field is a flag of its own name, but for these two: `--input` sets input_path, and
# `--decontam_files` defaults to the benchmark test sets under the data dir.
_CONFIG = cli.TreeFlags(SynthConfig, exclude=("input_path", "decontam_files"))
_INPUT = flags.DEFINE_string("input", None, _DOCS["input_path"], required=True)
_DECONTAM = flags.DEFINE_list("decontam_files", None, _DOCS["decontam_files"] + " Default: "
                              "gsm8k/test.jsonl and math/test.jsonl under the data dir "
                              "($MATHJAX_DATA_DIR); 'none' disables.")


def _decontam_files() -> tuple[Path, ...]:
  if _DECONTAM.value is None:
    return (paths.data_file("gsm8k/test.jsonl"), paths.data_file("math/test.jsonl"))
  if [f.lower() for f in _DECONTAM.value] in ([], ["none"]):
    return ()
  return tuple(Path(f) for f in _DECONTAM.value)


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise errors.UserError(f"unexpected arguments: {argv[1:]}")
  # Imported here so that --help stays fast.
  from mathjax_sft.synth import run as synth_run
  from mathjax_sft.synth.run import NoRowsWritten
  from mathjax_sft.synth.client import FatalAPIError, MissingKeyError
  from mathjax_sft.synth.outputs import OutputDirBusy
  from mathjax_sft.synth.pipeline import RunAborted
  from mathjax_sft.synth.references import InputError
  from mathjax_sft.jsonl_store import StoreError

  status = 0
  try:
    config = _CONFIG.value(input_path=Path(_INPUT.value), decontam_files=_decontam_files())
    snapshot = synth_run.run(config)
  except NoRowsWritten as e:
    snapshot, status = e.snapshot, 4
    print(f"synthesize: no rows written: {e}", file=sys.stderr)
  except errors.UserError:
    raise   # one line, exit status 2 (cli.run)
  except (ValueError, FileNotFoundError, InputError, MissingKeyError, OutputDirBusy, StoreError) as e:
    print(cli.error_line(e), file=sys.stderr)
    return 2
  except (FatalAPIError, RunAborted) as e:
    print(f"synthesize: stopped: {e}", file=sys.stderr)
    return 3
  except Exception:  # unexpected: show the traceback, but never the key
    import os
    import traceback
    from mathjax_sft.synth.redact import Redactor
    print(Redactor([os.environ.get("OPENAI_API_KEY")])(traceback.format_exc()), file=sys.stderr)
    return 1
  print(json.dumps({"output_files": snapshot["output_files"], "run": snapshot["runs"][-1],
                    "total": snapshot["total"]}, indent=1))
  return status


if __name__ == "__main__":
  cli.run(main)
