"""The configuration reference is generated from the config trees and is up to date; every field
of every tool's tree has a doc."""

import importlib.util
from pathlib import Path

from mathjax_sft import configtree

REPO = Path(__file__).resolve().parents[1]


def _generator():
  spec = importlib.util.spec_from_file_location("gen_config_docs", REPO / "tools" / "gen_config_docs.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_every_field_of_every_tool_is_documented():
  gen = _generator()
  tools = {tool for _, tool, *_ in gen.ENTRY_POINTS}
  assert tools == {str(p.relative_to(REPO)) for p in (REPO / "tools").glob("*.py")} - {
      "tools/gen_config_docs.py"}
  for _, tool, spec, _, _ in gen.ENTRY_POINTS:
    undocumented = [l.path for l in configtree.leaves(gen._tree(spec)) if len(l.doc) < 8]
    assert not undocumented, f"{tool}: {undocumented}"


def test_reference_is_up_to_date():
  gen = _generator()
  assert (REPO / "docs" / "configuration.md").read_text() == gen.render(), (
      "run python tools/gen_config_docs.py")
