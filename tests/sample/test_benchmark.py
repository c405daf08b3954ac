"""The end-to-end sampler benchmark refuses a run directory that would resume instead of sample."""

import pytest

from mathjax_sft.sample import benchmark


@pytest.mark.parametrize("taken", ["run", "run_after_reference"])
def test_workload_refuses_a_used_output_dir(tmp_path, taken):
  (tmp_path / taken).mkdir()
  (tmp_path / taken / "samples.jsonl").write_text("{}\n")
  with pytest.raises(ValueError, match=f"--output_dir: .*{taken} is not empty"):
    benchmark.run_workload("runs/smollm2-135m", out_dir=str(tmp_path / "run"))
