#!/usr/bin/env bash
# Every shipped config compiled for its TPU slice (and 7B also for v4), plus 7B / 70B sampling at
# N = 256 (7B: one v5p host, one v5p chip, one v5e-8 host; 70B: one v5p host): the pod-scale table of docs/benchmarks.md. One JSON line per program in ${1:-docs/results/aot.jsonl}.
# Needs libtpu (pip install -e '.[tpu]'); ~20 minutes on a 2-core CPU host.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-docs/results/aot.jsonl}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$(dirname "$OUT")"
: > "$OUT"
run() { "$PY" tools/aot_check.py --output="$OUT" "$@" 2> >(grep -E "^(train_step|sample_|aot_check)" >&2); }
run --config=configs/sft_llama2_7b.py --programs=train
run --config=configs/sft_llama2_7b.py --programs=train --topology=v4:4x4x4
run --config=configs/sft_llama2_13b.py --programs=train
run --config=configs/sft_llama2_70b.py --programs=train
run --config=configs/sft_llama2_70b.py --programs=train --config.grad_accum_steps=1
# the sampler at N = 256, rows as a run plans them (the most that fit 90% of HBM, at most 256)
run --config=configs/sft_llama2_7b.py --programs=sample --num_samples=256      # one v5p host
run --config=configs/sft_llama2_7b.py --programs=sample --num_samples=256 --sample_mesh_shape=   # one chip
run --config=configs/sft_llama2_7b.py --programs=sample --num_samples=256 --topology=v5e:2x4 --chips_per_host=2,4,1
run --config=configs/sft_llama2_70b.py --programs=sample --num_samples=256     # one v5p host
