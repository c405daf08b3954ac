"""Each tool's command line is generated from its config tree: `--help` lists every field as a
flag with the field's doc and default."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mathjax_sft import configtree

REPO = Path(__file__).resolve().parents[1]

# tool -> (module:class of its config, {field path: flag name} where they differ)
TOOLS = {
    "synthesize": ("mathjax_sft.synth.config:SynthConfig", {"input_path": "input"}),
    "aot_check": ("mathjax_sft.aot_config:AotCheckConfig", {}),
    "reproduce": ("mathjax_sft.reproduce:ReproduceConfig", {}),
    "bench_sample": ("mathjax_sft.sample.benchmark:BenchSampleConfig", {}),
    "bench_train": ("mathjax_sft.train.benchmark:BenchTrainConfig", {}),
    "bench_grade": ("mathjax_sft.eval.grade_bench:GradeBenchConfig", {}),
    "convert_hf_to_flax": ("mathjax_sft.convert.api:ImportConfig", {}),
    "convert_flax_to_hf": ("mathjax_sft.convert.api:ExportConfig", {}),
    "grade": ("mathjax_sft.eval.regrade:RegradeConfig", {}),
    "plot_train": ("mathjax_sft.train.plots:PlotTrainConfig", {}),
    "plot_passk": ("mathjax_sft.eval.plots:PlotPassKConfig", {}),
}


def _config_class(spec: str) -> type:
  module, name = spec.split(":")
  return getattr(__import__(module, fromlist=[name]), name)


def _flag_blocks(help_text: str, tool: str) -> dict[str, str]:
  """Flag name -> its help block (doc and default), whitespace removed (absl wraps lines)."""
  section = help_text.split(f"tools/{tool}.py:\n", 1)[1]
  section = re.split(r"\n(?=\S)", section, maxsplit=1)[0]
  blocks = re.findall(r"^  --(?:\[no\])?([\w.]+): (.*?)(?=^  --|\Z)", section, re.S | re.M)
  return {name: re.sub(r"\s+", "", text) for name, text in blocks}


def _serialized(value) -> str:
  if isinstance(value, tuple):
    return ",".join(str(v) for v in value)
  return str(value).lower() if isinstance(value, bool) else str(value)


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_help_lists_every_field_with_its_doc_and_default(tool):
  spec, renamed = TOOLS[tool]
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, f"tools/{tool}.py", "--help"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  blocks = _flag_blocks(proc.stdout, tool)
  for leaf in configtree.leaves(_config_class(spec)):
    name = renamed.get(leaf.path, leaf.path)
    assert name in blocks, (tool, name)
    assert leaf.doc and re.sub(r"\s+", "", leaf.doc) in blocks[name], (tool, name)
    if not leaf.required and leaf.default not in (None, ()) and name == leaf.path:
      assert f"(default:'{_serialized(leaf.default)}')" in blocks[name], (tool, name)
