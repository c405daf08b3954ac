"""Benchmark: our Pass@N sampler vs transformers generate(num_return_sequences=N), one run.

  # the real workload, end to end as a user runs it (default): K GSM8K problems x N samples
  python tools/bench_sample.py --num_problems=8 --num_samples=64 --max_new_tokens=320 > bench.json
  # the decode loop alone, one prompt x N
  python tools/bench_sample.py --workload=decode --num_samples=64 --max_new_tokens=96

Prints JSON. `gsm8k`: useful new tokens/s of `tools/sample.py` (a fresh process: start, load,
compile, decode, grade) and of transformers (one prompt at a time, model load included), timed
A-B-A (ours, transformers, ours again: the ratio uses the mean of our two runs, so a drift of the
machine's speed does not land on one side), our utilisation and decode FLOP/s against the matmul
peak measured in the same run (before and after).
`--repo` times another checkout's `tools/sample.py` (a before/after comparison on one machine).
"""

from absl import app, flags

from mathjax_sft.sample import benchmark

_WORKLOAD = flags.DEFINE_enum("workload", "gsm8k", ["gsm8k", "decode"], "gsm8k: K problems x N "
                              "through tools/sample.py; decode: the engine's decode loop alone.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "runs/smollm2-135m", "Converted SmolLM2 checkpoint "
                                  "(`make convert`); the reference reads the same GGUF.")
_PROBLEMS = flags.DEFINE_integer("num_problems", 8, "gsm8k: K, the first K GSM8K test problems.")
_PROMPTS = flags.DEFINE_integer("num_prompts", 1, "decode: GSM8K prompts timed (one more warms up).")
_N = flags.DEFINE_integer("num_samples", 64, "N samples per prompt.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 320, "Token budget per sample.")
_TEMP = flags.DEFINE_float("temperature", 0.7, "Sampling temperature (both sides).")
_THREADS = flags.DEFINE_integer("threads", 2, "torch intra-op threads (XLA uses all cores).")
_DTYPE = flags.DEFINE_enum("compute_dtype", "float32", ["float32", "bfloat16"],
                           "decode: our weights/compute dtype (the reference stays float32).")
_REPO = flags.DEFINE_string("repo", ".", "gsm8k: the checkout whose tools/sample.py is timed.")
_OUT = flags.DEFINE_string("output_dir", None, "gsm8k: keep our run directories here and in "
                           "<output_dir>_after_reference (default: temporary ones); both must be "
                           "new or empty, or tools/sample.py would resume instead of sampling.")
_SKIP = flags.DEFINE_bool("skip_reference", False, "Time only our sampler.")


def main(argv):
  del argv
  if _WORKLOAD.value == "gsm8k":
    result = benchmark.run_workload(_CHECKPOINT.value, _PROBLEMS.value, _N.value, _MAX_NEW.value,
                                    _TEMP.value, _THREADS.value, _REPO.value, _SKIP.value,
                                    _OUT.value)
  else:
    result = benchmark.run(_CHECKPOINT.value, _PROMPTS.value, _N.value, _MAX_NEW.value,
                           _TEMP.value, _THREADS.value, _DTYPE.value, _SKIP.value)
  print(benchmark.to_json(result))


if __name__ == "__main__":
  app.run(main)
