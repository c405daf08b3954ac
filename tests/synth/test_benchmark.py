"""The synthesis benchmark's reading of a resumed run's log (tools/bench_synth.py extrapolates
resume time to a million rows from it)."""

from __future__ import annotations

from mathjax_sft.synth import benchmark
from mathjax_sft.synth.run import run
from tests.synth.helpers import PLANTED_KEY, fast_config


def test_resume_parts_come_from_the_tools_own_start_lines(tmp_path, gsm8k_input, fake_server):
  server = fake_server()
  out = tmp_path / "out"
  config = fast_config(gsm8k_input(3), out, server.base_url, per_reference=2, dedup_save_interval=0)
  run(config, api_key=PLANTED_KEY)
  start = (out / "synth.log").stat().st_size
  run(config, api_key=PLANTED_KEY)                 # every row done: a start, and nothing to ask
  parts = benchmark._resume_parts(out, start)
  assert parts["records"] == 6 and parts["output_read_s"] >= 0
  assert parts["index_questions_loaded"] == 6 + 3  # the rows' questions and the references'
  assert parts["rows_indexed_after_save"] == 0
