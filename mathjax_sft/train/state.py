"""The train state (step, params, optimizer state) and its shardings.

Parameter shardings come from the model's logical axes and the rule table. Optimizer-state
shardings are derived from them: every optimizer leaf whose tree path ends with a parameter's
path and has that parameter's shape (Adam's mu and nu) gets the parameter's sharding; anything
else (step counters) is replicated.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mathjax_sft.model import llama
from mathjax_sft.model.config import ModelConfig
from mathjax_sft.sharding import rules as sharding_rules


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
  step: jax.Array          # int32 scalar: optimizer steps taken
  params: llama.Params     # master weights (param_dtype)
  opt_state: Any


def param_shardings(cfg: ModelConfig, mesh: Mesh, stacked: bool,
                    rules=sharding_rules.DEFAULT_RULES) -> llama.Params:
  specs = llama.param_specs(cfg, stacked)
  shapes = jax.tree.map(lambda s: s.shape, specs, is_leaf=lambda x: isinstance(x, llama.ParamSpec))
  return sharding_rules.tree_shardings(mesh, llama.param_axes(cfg, stacked), shapes, rules)


def _path_key(path) -> tuple:
  return tuple(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def opt_state_shardings(abstract_opt_state: Any, params_abstract: Any, params_shardings: Any,
                        mesh: Mesh) -> Any:
  """Shardings for an optimizer state, matched to the params by tree-path suffix and shape."""
  replicated = NamedSharding(mesh, PartitionSpec())
  by_path = {}
  for (path, leaf), sh in zip(jax.tree_util.tree_flatten_with_path(params_abstract)[0],
                              jax.tree.leaves(params_shardings)):
    by_path[_path_key(path)] = (tuple(leaf.shape), sh)

  def pick(path, leaf):
    key = _path_key(path)
    for i in range(len(key)):
      hit = by_path.get(key[i:])
      if hit is not None and hit[0] == tuple(leaf.shape):
        return hit[1]
    return replicated

  return jax.tree_util.tree_map_with_path(pick, abstract_opt_state)


def state_shardings(params_abstract: Any, params_shardings: Any, tx: optax.GradientTransformation,
                    mesh: Mesh) -> TrainState:
  opt_abstract = jax.eval_shape(tx.init, params_abstract)
  return TrainState(step=NamedSharding(mesh, PartitionSpec()), params=params_shardings,
                    opt_state=opt_state_shardings(opt_abstract, params_abstract, params_shardings,
                                                  mesh))


def abstract_state(params_abstract: Any, tx: optax.GradientTransformation,
                   shardings: TrainState) -> TrainState:
  """ShapeDtypeStructs with shardings: the restore target of a train checkpoint."""
  state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params_abstract,
                     opt_state=jax.eval_shape(tx.init, params_abstract))
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state,
                      shardings)


def create_state(params: Any, tx: optax.GradientTransformation, shardings: TrainState) -> TrainState:
  """Step 0 state; the optimizer state is created directly in its sharding."""
  def init(p):
    return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p))
  return jax.jit(init, out_shardings=shardings, donate_argnums=0)(params)
