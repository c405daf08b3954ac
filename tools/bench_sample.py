"""Benchmark: our Pass@N sampler vs transformers generate(num_return_sequences=N), one run.

  python tools/bench_sample.py --num_samples=64 --max_new_tokens=256 > bench_sample.json

Prints JSON: new tokens/s of each, the speedup, and our achieved FLOP/s against a matmul peak
measured in the same run.
"""

from absl import app, flags

from mathjax_sft.sample import benchmark

_CHECKPOINT = flags.DEFINE_string("checkpoint", "runs/smollm2-135m", "Converted SmolLM2 checkpoint "
                                  "(`make convert`); the reference reads the same GGUF.")
_PROMPTS = flags.DEFINE_integer("num_prompts", 1, "GSM8K test prompts timed (one more warms up).")
_N = flags.DEFINE_integer("num_samples", 64, "N samples per prompt.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 256, "Token budget per sample.")
_TEMP = flags.DEFINE_float("temperature", 0.7, "Sampling temperature (both sides).")
_THREADS = flags.DEFINE_integer("threads", 2, "torch intra-op threads (XLA uses all cores).")
_DTYPE = flags.DEFINE_enum("compute_dtype", "float32", ["float32", "bfloat16"],
                           "Our weights/compute dtype (the reference stays float32).")
_SKIP = flags.DEFINE_bool("skip_reference", False, "Time only our sampler.")


def main(argv):
  del argv
  print(benchmark.to_json(benchmark.run(
      _CHECKPOINT.value, _PROMPTS.value, _N.value, _MAX_NEW.value, _TEMP.value, _THREADS.value,
      _DTYPE.value, _SKIP.value)))


if __name__ == "__main__":
  app.run(main)
