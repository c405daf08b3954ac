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


from mathjax_sft import cli
from mathjax_sft.sample import benchmark

_CONFIG = cli.TreeFlags(benchmark.BenchSampleConfig)


def main(argv):
  del argv
  print(benchmark.to_json(benchmark.run_config(_CONFIG.value())))


if __name__ == "__main__":
  cli.run(main)
