"""Synthesize Xwin-Math style SFT rows (new question -> verify -> answer) with any OpenAI-compatible
endpoint. The API key is read only from $OPENAI_API_KEY.

  OPENAI_API_KEY=... python tools/synthesize.py --input=$DATA/gsm8k/train.jsonl \\
      --dataset_format=gsm8k --output_dir=out/synth_gsm8k --model=gpt-4-turbo --per_reference=3

Re-running the same command resumes: finished rows and rows rejected for a quality reason are
not requested again; rows that failed for a transport reason (rate limit, 5xx, timeout,
connection) are pending and are asked again.
Outputs in --output_dir: rows.jsonl, failures.jsonl, usage.json, synth.log (see
mathjax_sft/synth/outputs.py). This file only parses flags; the work is in mathjax_sft.synth.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from absl import app, flags  # noqa: E402

from mathjax_sft import paths  # noqa: E402
from mathjax_sft.synth.config import DATASET_FORMATS, MODES, SynthConfig  # noqa: E402

_D = {f.name: f.default for f in dataclasses.fields(SynthConfig) if f.default is not dataclasses.MISSING}

flags.DEFINE_string("input", None, "JSONL file of reference rows (GSM8K: question/answer; MATH: "
                    "problem/solution/type/level/unique_id).", required=True)
flags.DEFINE_enum("dataset_format", None, list(DATASET_FORMATS), "Format of the references and of the "
                  "generated rows: gsm8k (answer ends with '#### n') or math (solution with \\boxed{}).",
                  required=True)
flags.DEFINE_string("output_dir", None, "Directory for rows.jsonl (finished rows), failures.jsonl "
                    "(id, step, reason), usage.json (requests, tokens, cost, removals) and synth.log. "
                    "Re-use it to resume.", required=True)
flags.DEFINE_string("base_url", None, "OpenAI-compatible API base URL, e.g. http://127.0.0.1:8000/v1 "
                    "(default: the openai client's default, api.openai.com).")
flags.DEFINE_string("model", None, "Model name sent with every request, e.g. gpt-4-turbo.", required=True)
flags.DEFINE_integer("per_reference", _D["per_reference"], "New questions (rows) per reference: K; the "
                     "k-th uses temperature temperatures[k % len] and its own seed.")
flags.DEFINE_integer("max_concurrency", _D["max_concurrency"], "Online mode: rows in flight at once, "
                     "hence the most requests in flight.")
flags.DEFINE_enum("mode", _D["mode"], list(MODES), "online: chat requests as we go; batch: OpenAI Batch "
                  "API (upload, poll, download per step; half price, up to 24 h per step).")
flags.DEFINE_integer("limit_references", _D["limit_references"], "Use only the first N distinct "
                     "references (0 = all).")
flags.DEFINE_list("temperatures", [str(t) for t in _D["temperatures"]], "Step-1 sampling temperatures, "
                  "cycled over k.")
flags.DEFINE_float("verify_temperature", _D["verify_temperature"], "Step-2 (verify) temperature.")
flags.DEFINE_float("answer_temperature", _D["answer_temperature"], "Step-3 (answer) temperature.")
flags.DEFINE_integer("seed", _D["seed"], "Base of the per-row sampling seeds (seed + hash of row id).")
flags.DEFINE_integer("max_tokens_question", _D["max_tokens_question"], "max_tokens of step 1.")
flags.DEFINE_integer("max_tokens_verify", _D["max_tokens_verify"], "max_tokens of step 2.")
flags.DEFINE_integer("max_tokens_answer", _D["max_tokens_answer"], "max_tokens of step 3.")
flags.DEFINE_float("requests_per_minute", _D["requests_per_minute"], "Client-side request rate limit "
                   "(token bucket; 0 = none).")
flags.DEFINE_float("tokens_per_minute", _D["tokens_per_minute"], "Client-side token rate limit: prompt "
                   "estimate + max_tokens per request, settled with real usage (0 = none).")
flags.DEFINE_float("request_timeout", _D["request_timeout"], "Seconds before a request counts as timed "
                   "out (then retried).")
flags.DEFINE_integer("max_attempts", _D["max_attempts"], "HTTP attempts per request on 429 / 5xx / "
                     "timeout / connection error / malformed body before the row fails.")
flags.DEFINE_float("backoff_base", _D["backoff_base"], "Exponential backoff base in seconds (equal "
                   "jitter); a server Retry-After replaces it.")
flags.DEFINE_float("backoff_max", _D["backoff_max"], "Longest backoff between attempts, seconds.")
flags.DEFINE_float("max_retry_after", _D["max_retry_after"], "Longest server Retry-After honoured, "
                   "seconds.")
flags.DEFINE_integer("max_reply_retries", _D["max_reply_retries"], "Re-samples (new seed) when a reply "
                     "is empty, unparseable or fails the answer format check.")
flags.DEFINE_integer("max_consecutive_failures", _D["max_consecutive_failures"], "Abort (exit 3) when "
                     "this many rows in a row fail for transport reasons (0 = never).")
flags.DEFINE_bool("retry_rejected", _D["retry_rejected"], "Also ask again rows that failed for a "
                  "quality reason (verify rejected, duplicate, contaminated, answer format); rows "
                  "that failed for a transport reason are always asked again.")
flags.DEFINE_float("price_prompt_per_million", _D["price_prompt_per_million"], "USD per 1M prompt "
                   "tokens for the cost estimate (default: GPT-4 Turbo).")
flags.DEFINE_float("price_completion_per_million", _D["price_completion_per_million"], "USD per 1M "
                   "completion tokens for the cost estimate.")
flags.DEFINE_float("batch_discount", _D["batch_discount"], "Price factor applied in batch mode.")
flags.DEFINE_integer("dedup_ngram", _D["dedup_ngram"], "Word n-gram size for near-duplicate Jaccard.")
flags.DEFINE_float("dedup_threshold", _D["dedup_threshold"], "Jaccard at or above which a generated "
                   "question is a near-duplicate of an earlier one.")
flags.DEFINE_bool("dedup_against_references", _D["dedup_against_references"], "Also drop questions "
                  "that (near-)copy a reference question.")
flags.DEFINE_list("decontam_files", None, "Benchmark test JSONL files (question or problem field) to "
                  "decontaminate against; default: gsm8k/test.jsonl and math/test.jsonl under the data "
                  "dir ($MATHJAX_DATA_DIR); 'none' disables.")
flags.DEFINE_integer("decontam_ngram", _D["decontam_ngram"], "Shared word n-gram length that marks a "
                     "question contaminated (13 as in GPT-3 / Llama).")
flags.DEFINE_integer("decontam_jaccard_ngram", _D["decontam_jaccard_ngram"], "Word n-gram size for the "
                     "Jaccard contamination rule (catches short questions).")
flags.DEFINE_float("decontam_jaccard_threshold", _D["decontam_jaccard_threshold"], "Jaccard with any "
                   "test question at or above which a question is contaminated.")
flags.DEFINE_float("batch_poll_interval", _D["batch_poll_interval"], "Batch mode: seconds between polls.")
flags.DEFINE_integer("batch_max_requests", _D["batch_max_requests"], "Batch mode: requests per batch "
                     "file (API limit 50000).")
flags.DEFINE_integer("batch_max_rounds", _D["batch_max_rounds"], "Batch mode: attempts per step for a "
                     "row whose request errored or whose reply was unusable.")
flags.DEFINE_string("batch_completion_window", _D["batch_completion_window"], "Batch mode: completion "
                    "window sent to the API.")
flags.DEFINE_bool("progress", _D["progress"], "Show a progress bar (rows done, failures, tokens).")
flags.DEFINE_bool("fsync", _D["fsync"], "fsync after every output line (crash-safe; leave on).")
flags.DEFINE_float("usage_flush_interval", _D["usage_flush_interval"], "Seconds between usage.json "
                   "snapshots.")

FLAGS = flags.FLAGS
_CONFIG_FLAGS = [f.name for f in dataclasses.fields(SynthConfig)
                 if f.name not in ("input_path", "output_dir", "temperatures", "decontam_files", "base_url")]


def _decontam_files() -> tuple[Path, ...]:
  if FLAGS.decontam_files is None:
    return (paths.data_file("gsm8k/test.jsonl"), paths.data_file("math/test.jsonl"))
  if [f.lower() for f in FLAGS.decontam_files] in ([], ["none"]):
    return ()
  return tuple(Path(f) for f in FLAGS.decontam_files)


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Imported here so that --help stays fast.
  from mathjax_sft.synth import run as synth_run
  from mathjax_sft.synth.client import FatalAPIError, MissingKeyError
  from mathjax_sft.synth.outputs import OutputDirBusy
  from mathjax_sft.synth.pipeline import RunAborted
  from mathjax_sft.synth.references import InputError
  from mathjax_sft.jsonl_store import StoreError

  try:
    config = SynthConfig(
        input_path=Path(FLAGS.input), output_dir=Path(FLAGS.output_dir), base_url=FLAGS.base_url,
        temperatures=tuple(float(t) for t in FLAGS.temperatures), decontam_files=_decontam_files(),
        **{name: getattr(FLAGS, name) for name in _CONFIG_FLAGS})
    snapshot = synth_run.run(config)
  except (ValueError, FileNotFoundError, InputError, MissingKeyError, OutputDirBusy, StoreError) as e:
    print(f"synthesize: error: {e}", file=sys.stderr)
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
  return 0


if __name__ == "__main__":
  app.run(main)
