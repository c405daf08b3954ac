"""Pass@N sampling and grading: N samples per problem, graded, summarised. Resumable.

  python tools/sample.py --checkpoint=runs/smollm2-135m --dataset=gsm8k --num_problems=50 \
      --num_samples=64 --temperature=0.7 --max_new_tokens=512 --output_dir=runs/gsm8k-n64

Writes <output_dir>/samples.jsonl (one graded line per problem), summary.json (Pass@N,
PassRatio@N, pass@k and maj@k for every k, breakdowns, settings, tokens/s) and settings.json.
Re-running the same command after a crash continues where it stopped.

Multi-host: start the same command on every host (with --distributed.coordinator_address,
--distributed.num_processes and --distributed.process_id, or let jax find a TPU/SLURM cluster by
itself). Problem i goes to process i % num_processes; each decodes on its own devices and writes
its own samples file into the shared --output_dir; process 0 writes summary.json.

Every flag but --report (and --stop, another name for --stop_strings) is a field of
mathjax_sft.sample.run.SampleRunConfig, with its doc and default.
"""

import json
import pathlib

from absl import flags

from mathjax_sft import cli, distributed, logs
from mathjax_sft.sample import run as run_lib

# one flag per SampleRunConfig field, with its doc and default
_CONFIG = cli.TreeFlags(run_lib.SampleRunConfig)
flags.DEFINE_alias("stop", "stop_strings")
_REPORT = flags.DEFINE_bool("report", False, "Print per problem the question, the gold answer, "
                            "how many samples were right and one right sample, then the metrics "
                            "(instead of the JSON brief).")


def main(argv):
  del argv
  logs.quiet(logs.absl_verbose())
  cfg = _CONFIG.value()
  cfg.distributed.initialize()
  run_lib.enable_compilation_cache(cfg.compilation_cache)
  summary = run_lib.run(cfg)
  if not distributed.is_main_process():
    return
  if _REPORT.value:
    from mathjax_sft.eval import report  # pylint: disable=import-outside-toplevel
    records = run_lib.read_records(pathlib.Path(cfg.output_dir))
    print(report.render([records[p["id"]] for p in summary["per_problem"]], summary))
    print(f"outputs: {cfg.output_dir}/samples.jsonl (every sample, graded), "
          f"{summary['this_run']['summary_file']}")
    return
  n = summary["num_samples"]
  brief = {k: summary[k] for k in ("num_problems", "num_samples", "pass_at_n", "pass_ratio_at_n",
                                   "no_answer_rate")}
  brief["pass_at_1"] = summary["pass_at_k"]["1"]
  brief[f"maj_at_{n}"] = summary["maj_at_k"][str(n)]
  run = summary["this_run"]
  if run["new_tokens"]:
    brief.update(tokens_per_s=run["tokens_per_s"], utilisation=run["utilisation"],
                 seconds=run["seconds"])
  else:
    brief["note"] = f"nothing left to sample: every problem was already in {cfg.output_dir}"
  brief["outputs"] = {"samples": str(pathlib.Path(cfg.output_dir) / run_lib.SAMPLES_FILE),
                      "summary": run["summary_file"]}
  # one line per field (nested values inline): a dozen lines a person can read, still JSON
  print("{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in brief.items())
        + "\n}")


if __name__ == "__main__":
  cli.run(main)
