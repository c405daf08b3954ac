"""The model a run starts from: a converted checkpoint dir loaded into its shardings, or a random
init from a preset; in the layer layout the config asks for (stacked for scan, or a list)."""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh

from mathjax_sft.checkpoint import params as params_ckpt
from mathjax_sft.model import llama
from mathjax_sft.model.config import ModelConfig, preset
from mathjax_sft.sharding import rules as sharding_rules
from mathjax_sft.train import state as state_lib
from mathjax_sft.train.config import ModelSettings


def _overrides(m: ModelSettings) -> dict:
  """The run's settings that replace the checkpoint's (dtypes, layer layout, remat)."""
  return dict(param_dtype=m.param_dtype, compute_dtype=m.compute_dtype,
              scan_layers=m.scan_layers, remat=m.remat, remat_policy=m.remat_policy)


def model_config(m: ModelSettings) -> ModelConfig:
  """The run's ModelConfig (from the checkpoint's config.json or the preset) with dtypes etc."""
  overrides = _overrides(m)
  if m.init_checkpoint:
    return params_ckpt.load_config(m.init_checkpoint, **overrides)
  if m.vocab_size:
    overrides["vocab_size"] = m.vocab_size
  return preset(m.preset, **overrides)


def relayout(params: llama.Params, stacked: bool, shardings: Any) -> llama.Params:
  """Stacked <-> per-layer weights, inside one jit so every tensor lands in its sharding."""
  fn = llama.stack_layers if stacked else llama.unstack_layers
  if params.stacked == stacked:
    return params
  return jax.jit(fn, out_shardings=shardings)(params)


def load_model(m: ModelSettings, seed: int, mesh: Mesh, rules=sharding_rules.DEFAULT_RULES
               ) -> tuple[llama.Params, ModelConfig]:
  """(params in the run's layout and shardings, model config); a preset's random init uses
  `seed`."""
  cfg = model_config(m)
  stacked = cfg.scan_layers
  shardings = state_lib.param_shardings(cfg, mesh, stacked, rules)
  if m.init_checkpoint:
    params, _ = params_ckpt.load_params(m.init_checkpoint, mesh, rules, **_overrides(m))
    params = relayout(params, stacked, shardings)
  else:
    params = llama.init_params(cfg, jax.random.PRNGKey(seed), shardings, stacked=stacked)
  return params, cfg
