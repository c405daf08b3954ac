"""Each tool's command line is generated from its config tree: `--help` lists every field as a
flag with the field's doc and default; every field has a doc, and the configuration reference
generated from the trees is up to date."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mathjax_sft import configtree

REPO = Path(__file__).resolve().parents[1]



def _generator():
  spec = importlib.util.spec_from_file_location("gen_config_docs",
                                                REPO / "tools" / "gen_config_docs.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


GEN = _generator()   # its ENTRY_POINTS: every tool with its config tree and flag prefix
TOOLS = {Path(tool).stem: (spec, prefix) for _, tool, spec, prefix, _ in GEN.ENTRY_POINTS}


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
  spec, prefix = TOOLS[tool]
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, f"tools/{tool}.py", "--help"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  blocks = _flag_blocks(proc.stdout, tool)
  for leaf in configtree.leaves(GEN._tree(spec)):
    flag = GEN.FLAG_NAMES.get((f"tools/{tool}.py", leaf.path), prefix + leaf.path)
    name = flag[2:]
    assert name in blocks, (tool, name)
    assert leaf.doc and re.sub(r"\s+", "", leaf.doc) in blocks[name], (tool, name)
    if not leaf.required and leaf.default not in (None, ()) and name == prefix[2:] + leaf.path:
      assert f"(default:'{_serialized(leaf.default)}')" in blocks[name], (tool, name)


def test_every_field_of_every_tool_is_documented():
  tools = {tool for _, tool, *_ in GEN.ENTRY_POINTS}
  assert tools == {str(p.relative_to(REPO)) for p in (REPO / "tools").glob("*.py")} - {
      "tools/gen_config_docs.py"}
  for _, tool, spec, _, _ in GEN.ENTRY_POINTS:
    undocumented = [l.path for l in configtree.leaves(GEN._tree(spec)) if len(l.doc) < 8]
    assert not undocumented, f"{tool}: {undocumented}"


def test_reference_is_up_to_date():
  assert (REPO / "docs" / "configuration.md").read_text() == GEN.render(), (
      "run python tools/gen_config_docs.py")
