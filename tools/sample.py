"""Pass@N sampling and grading: N samples per problem, graded, summarised. Resumable.

  python tools/sample.py --checkpoint=runs/smollm2-135m --dataset=gsm8k --num_problems=50 \
      --num_samples=64 --temperature=0.7 --max_new_tokens=512 --output_dir=runs/gsm8k-n64

Writes <output_dir>/samples.jsonl (one graded line per problem), summary.json (Pass@N,
PassRatio@N, pass@k and maj@k for every k, breakdowns, settings, tokens/s) and settings.json.
Re-running the same command after a crash continues where it stopped.

Multi-host: start the same command on every host (with --coordinator_address, --num_processes
and --process_id, or let jax find a TPU/SLURM cluster by itself). Problem i goes to process
i % num_processes; each decodes on its own devices and writes its own samples file into the
shared --output_dir; process 0 writes summary.json.
"""

import dataclasses
import json
import pathlib

from absl import app, flags

from mathjax_sft import distributed, logs
from mathjax_sft.sample import run as run_lib

# every default comes from the config dataclass (one home per setting)
_D = {f.name: f.default for f in dataclasses.fields(run_lib.SampleRunConfig)
      if f.default is not dataclasses.MISSING}

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", "runs/smollm2-135m", "mathjax_sft checkpoint directory (config.json, params/, "
    "tokenizer), or any step of a training run (OUT/checkpoints/<step>). Default: the embedded SmolLM2-135M-Instruct, converted by `make convert`.")
_DATASET = flags.DEFINE_string(
    "dataset", "gsm8k", "Problems: gsm8k | math | math500 (test splits under $MATHJAX_DATA_DIR), "
    "'gsm8k:train' / 'math:train', or jsonl:PATH (GSM8K or MATH style rows).")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Run directory (created; reused to resume).",
                                  required=True)
_NUM_PROBLEMS = flags.DEFINE_integer("num_problems", None, "Only the first K problems (default all).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", _D["num_samples"], "N: samples per problem.")
_TEMPERATURE = flags.DEFINE_float("temperature", _D["temperature"], "Sampling temperature; 0 = greedy.")
_TOP_P = flags.DEFINE_float("top_p", _D["top_p"], "Nucleus sampling mass (1.0 = off).")
_TOP_K = flags.DEFINE_integer("top_k", _D["top_k"], "Keep the k most likely tokens (0 = off).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", _D["max_new_tokens"], "Longest sample, in tokens.")
_SEED = flags.DEFINE_integer("seed", _D["seed"], "Sample j of problem p depends only on (seed, p, j).")
_TEMPLATE = flags.DEFINE_enum("template", None, ["chat", "alpaca", "xwin"],
                              "Prompt format: the tokenizer's chat template, Alpaca, or Xwin-Math's. "
                              "Default: the one the checkpoint was fine-tuned with (its "
                              "prompt_format.json), else chat; a value that contradicts the "
                              "checkpoint's is used with a warning.")
_SYSTEM = flags.DEFINE_string("system_prompt", None, "System turn for --template=chat (default: "
                              "the template's own).")
_STOP = flags.DEFINE_list("stop", [], "Extra stop strings (comma-separated), besides EOS and the "
                         "template's own (xwin: </s>, USER, ASSISTANT, Question, Instruction, "
                         "Response; alpaca: ### Instruction, ### Response).")
_ROWS = flags.DEFINE_integer("rows", _D["rows"], "Decode rows in the pool, shared by all problems "
                            "(default: what fits the device next to the model, at most 64 on a "
                            "CPU, never more than problems x N). Does not change the samples.")
_SLOTS = flags.DEFINE_integer("prefix_slots", _D["prefix_slots"], "Prompts resident at once "
                             "(default rows // N + 3). Does not change the samples.")
_CHUNK = flags.DEFINE_integer("chunk_steps", _D["chunk_steps"], "Decode steps per compiled call; "
                              "the host schedules work and matches stop strings between calls. "
                              "Does not change the samples.")
_TAIL = flags.DEFINE_integer("min_tail_rows", _D["min_tail_rows"], "Once every sample has "
                             "started, the live rows move into a pool a power of two smaller "
                             "whenever they fit, down to this many rows (0: never; each size is "
                             "one more compiled decode program). Does not change the samples.")
_DTYPE = flags.DEFINE_enum("compute_dtype", _D["compute_dtype"], ["float32", "bfloat16"], "Matmul dtype.")
_PDTYPE = flags.DEFINE_enum("param_dtype", None, ["float32", "bfloat16"],
                            "Cast weights to this dtype when loading (default: as stored).")
_MESH = flags.DEFINE_list("mesh_shape", [], "data,fsdp,tensor mesh sizes (-1 = the rest) over "
                          "this process's devices; empty = one device. Problems are split over "
                          "data x fsdp.")
_WORKERS = flags.DEFINE_integer("grader_workers", _D["grader_workers"], "math-verify worker processes.")
_GRADE_TIMEOUT = flags.DEFINE_float("grade_timeout_s", _D["grade_timeout_s"], "Time limit per graded answer.")
_REPORT = flags.DEFINE_bool("report", False, "Print per problem the question, the gold answer, "
                            "how many samples were right and one right sample, then the metrics "
                            "(instead of the JSON brief).")
_CACHE = flags.DEFINE_string("compilation_cache", None, "Persistent XLA compilation cache dir "
                             "(default ~/.cache/mathjax_sft/jax or $MATHJAX_COMPILATION_CACHE).")
_COORD = flags.DEFINE_string("coordinator_address", "", "Multi-host: host:port of process 0's "
                             "coordinator (empty: auto-detected on TPU/SLURM, else one process).")
_NPROC = flags.DEFINE_integer("num_processes", 0, "Multi-host: number of processes (0 = detect).")
_PID = flags.DEFINE_integer("process_id", -1, "Multi-host: this process's index (-1 = detect).")
_DIST = flags.DEFINE_enum("distributed", "auto", ["auto", "yes", "no"], "Start jax.distributed: "
                          "auto = when --coordinator_address or a cluster is found.")


def main(argv):
  del argv
  logs.quiet(logs.absl_verbose())
  distributed.initialize(_COORD.value, _NPROC.value, _PID.value, _DIST.value)
  run_lib.enable_compilation_cache(_CACHE.value)
  cfg = run_lib.SampleRunConfig(
      checkpoint=_CHECKPOINT.value, dataset=_DATASET.value, output_dir=_OUTPUT_DIR.value,
      num_samples=_NUM_SAMPLES.value, num_problems=_NUM_PROBLEMS.value,
      temperature=_TEMPERATURE.value, top_p=_TOP_P.value, top_k=_TOP_K.value,
      max_new_tokens=_MAX_NEW.value, seed=_SEED.value, template=_TEMPLATE.value,
      system_prompt=_SYSTEM.value, stop_strings=tuple(_STOP.value),
      rows=_ROWS.value, prefix_slots=_SLOTS.value, chunk_steps=_CHUNK.value,
      min_tail_rows=_TAIL.value,
      compute_dtype=_DTYPE.value,
      param_dtype=_PDTYPE.value,
      mesh_shape=tuple(int(x) for x in _MESH.value) if _MESH.value else None,
      grader_workers=_WORKERS.value, grade_timeout_s=_GRADE_TIMEOUT.value)
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
  app.run(main)
