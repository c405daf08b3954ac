"""Config trees and the command lines generated from them."""

import dataclasses
from pathlib import Path

import pytest
from absl import flags

from mathjax_sft import cli, configtree
from mathjax_sft.configtree import section, setting


@dataclasses.dataclass(frozen=True)
class Opt:
  lr: float = setting(1e-3, "Peak learning rate.")
  betas: tuple[float, ...] = setting((0.9, 0.99), "Adam betas.")


@dataclasses.dataclass(frozen=True)
class Cfg:
  out: Path = setting(doc="Output dir.")
  opt: Opt = section(Opt, "Optimizer.")
  mode: str = setting("a", "Mode.", choices=("a", "b"))
  rows: int | None = setting(None, "Rows.")
  switch: bool = setting(True, "A switch.")


def test_leaves_walk_sections_in_order_with_docs():
  got = [(l.path, l.kind, l.optional, l.sequence, l.required) for l in configtree.leaves(Cfg)]
  assert got == [("out", Path, False, False, True), ("opt.lr", float, False, False, False),
                 ("opt.betas", float, False, True, False), ("mode", str, False, False, False),
                 ("rows", int, True, False, False), ("switch", bool, False, False, False)]
  assert configtree.leaves(Cfg)[1].doc == "Peak learning rate."


def test_every_field_is_a_typed_flag():
  fv = flags.FlagValues()
  tree = cli.TreeFlags(Cfg, flag_values=fv)
  fv(["prog", "--out=/x", "--opt.lr=0.5", "--opt.betas=1,2", "--rows=3", "--noswitch",
      "--mode=b"])
  assert tree.value() == Cfg(out=Path("/x"), opt=Opt(0.5, (1.0, 2.0)), mode="b", rows=3,
                             switch=False)
  assert "Peak learning rate." in fv.get_help() and "One of: a, b." in fv.get_help()


def test_defaults_come_from_the_tree_and_required_fields_are_required():
  fv = flags.FlagValues()
  tree = cli.TreeFlags(Cfg, flag_values=fv)
  with pytest.raises(flags.IllegalFlagValueError, match="out"):
    fv(["prog"])
  fv(["prog", "--out=o"])
  assert tree.value() == Cfg(out=Path("o"))


@pytest.mark.parametrize("arg, message", [("--mode=c", "'c' is not one of a, b"),
                                          ("--opt.lr=fast", "could not convert"),
                                          ("--rows=1.5", "invalid literal")])
def test_a_bad_value_names_the_flag(arg, message):
  fv = flags.FlagValues()
  cli.TreeFlags(Cfg, flag_values=fv)
  with pytest.raises(flags.IllegalFlagValueError, match=message):
    fv(["prog", "--out=o", arg])


def test_overrides_apply_only_what_the_command_line_gives():
  fv = flags.FlagValues()
  tree = cli.TreeFlags(Cfg, prefix="config.", overrides_only=True, flag_values=fv)
  fv(["prog", "--config.opt.lr=0.5", "--config.rows=none"])
  base = Cfg(out=Path("/base"), rows=4, mode="b")
  assert tree.value(base) == Cfg(out=Path("/base"), opt=Opt(lr=0.5), rows=None, mode="b")


def test_dict_round_trip_and_unknown_keys():
  c = Cfg(out=Path("/x"), opt=Opt(0.5, (1.0,)))
  assert configtree.from_dict(Cfg, configtree.to_dict(c)) == c
  assert configtree.to_dict(c)["opt"] == {"lr": 0.5, "betas": [1.0]}
  with pytest.raises(KeyError, match="'opt.beta'"):
    configtree.from_dict(Cfg, {"out": "/x", "opt": {"beta": [1.0]}})
  with pytest.raises(KeyError, match="no field 'optim'"):
    configtree.replace_paths(c, {"optim.lr": 1.0})
