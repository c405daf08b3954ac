"""Typed parameter trees of the LLaMA decoder, their declarations and layout conversions.

A model's weights are a `Weights` whose `layers` is either one layer type holding arrays stacked
over a leading `layers` axis (run with `lax.scan`; the checkpoint layout) or a tuple with one
instance per layer (an unrolled loop). The layer types are the layouts:

  LayerWeights        the train / checkpoint / conversion layout (HF's tensors up to transposes)
  FusedLayerWeights   decode layout with q/k/v and gate/up concatenated (`tensor` unsharded)
  GateUpLayerWeights  decode layout with gate/up stacked on a new leading axis (any sharding)

`param_specs` declares every parameter (shape, logical axes, initializer) and is the one source
of shapes and sharding names; `check_layout` compares a tree against it. `to_tree` / `from_tree`
convert to and from the nested dict that checkpoints and converters store.

Fields are declared in sorted-name order, so a typed tree flattens to its leaves in the order of
the dict tree (random init keys, optimizer state and checkpoint metadata match the dict form).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mathjax_sft.model.config import ModelConfig


class ParamSpec(NamedTuple):
  shape: tuple[int, ...]
  axes: tuple[str | None, ...]
  init: str  # "normal" (std = initializer_range) or "ones"


def _is_spec(x) -> bool:
  return isinstance(x, ParamSpec)


def _pytree(cls):
  return jax.tree_util.register_dataclass(dataclasses.dataclass(frozen=True)(cls))


@_pytree
class LayerWeights:
  """attn_norm, mlp_norm [embed]; wq [embed, heads, head_dim]; wk, wv [embed, kv_heads,
  head_dim]; wo [heads, head_dim, embed]; w_gate, w_up [embed, mlp]; w_down [mlp, embed]."""
  attn_norm: Any
  mlp_norm: Any
  w_down: Any
  w_gate: Any
  w_up: Any
  wk: Any
  wo: Any
  wq: Any
  wv: Any


@_pytree
class FusedLayerWeights:
  """wqkv [embed, heads + 2 kv_heads, head_dim] and w_gateup [embed, 2 mlp] (concatenated)."""
  attn_norm: Any
  mlp_norm: Any
  w_down: Any
  w_gateup: Any
  wo: Any
  wqkv: Any


@_pytree
class GateUpLayerWeights:
  """w_gu [2, embed, mlp]: gate and up stacked (keeps the `mlp` sharding)."""
  attn_norm: Any
  mlp_norm: Any
  w_down: Any
  w_gu: Any
  wk: Any
  wo: Any
  wq: Any
  wv: Any


LAYER_TYPES = (LayerWeights, FusedLayerWeights, GateUpLayerWeights)
# Fused name -> parts, per decode layout.
FUSED = {"wqkv": ("wq", "wk", "wv"), "w_gateup": ("w_gate", "w_up")}
STACKED = {"w_gu": ("w_gate", "w_up")}


def _flatten_weights(w):
  names = ("embed", "final_norm", "layers") + (() if w.tied else ("lm_head",))
  return [(jax.tree_util.GetAttrKey(n), getattr(w, n)) for n in names], w.tied


def _unflatten_weights(tied, children):
  return Weights(*children[:3], lm_head=None if tied else children[3], tied=tied)


@dataclasses.dataclass(frozen=True)
class Weights:
  """embed [vocab, embed]; layers (see module doc); final_norm [embed]; lm_head [embed, vocab].

  `tied` (static; default: lm_head is None): tied embeddings, no lm_head and no leaf for it (the
  tree then matches the dict form)."""
  embed: Any
  final_norm: Any
  layers: Any
  lm_head: Any = None
  tied: bool | None = None

  def __post_init__(self):
    if self.tied is None:
      object.__setattr__(self, "tied", self.lm_head is None)

  @property
  def stacked(self) -> bool:
    return not isinstance(self.layers, (tuple, list))

  @property
  def layer_type(self) -> type:
    return type(self.layers if self.stacked else self.layers[0])


jax.tree_util.register_pytree_with_keys(Weights, _flatten_weights, _unflatten_weights)


# ---- declarations ----------------------------------------------------------------------------

def layer_specs(cfg: ModelConfig) -> LayerWeights:
  e, m, h, k, d = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads,
                   cfg.head_dim)
  return LayerWeights(
      attn_norm=ParamSpec((e,), ("norm",), "ones"),
      wq=ParamSpec((e, h, d), ("embed", "heads", "head_dim"), "normal"),
      wk=ParamSpec((e, k, d), ("embed", "kv_heads", "head_dim"), "normal"),
      wv=ParamSpec((e, k, d), ("embed", "kv_heads", "head_dim"), "normal"),
      wo=ParamSpec((h, d, e), ("heads", "head_dim", "embed"), "normal"),
      mlp_norm=ParamSpec((e,), ("norm",), "ones"),
      w_gate=ParamSpec((e, m), ("embed", "mlp"), "normal"),
      w_up=ParamSpec((e, m), ("embed", "mlp"), "normal"),
      w_down=ParamSpec((m, e), ("mlp", "embed"), "normal"))


def param_specs(cfg: ModelConfig, stacked: bool = True) -> Weights:
  """Shape, logical axes and initializer of every parameter (stacked layer layout by default)."""
  layer = layer_specs(cfg)
  if stacked:
    layers = jax.tree.map(lambda s: ParamSpec((cfg.num_layers,) + s.shape, ("layers",) + s.axes,
                                              s.init), layer, is_leaf=_is_spec)
  else:
    layers = (layer,) * cfg.num_layers
  lm_head = None
  if not cfg.tie_word_embeddings:
    lm_head = ParamSpec((cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), "normal")
  return Weights(embed=ParamSpec((cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), "normal"),
                 layers=layers, final_norm=ParamSpec((cfg.hidden_size,), ("norm",), "ones"),
                 lm_head=lm_head)


def _fuse_spec(parts: list[ParamSpec], concat: bool) -> ParamSpec:
  first = parts[0]
  if concat:
    shape = list(first.shape)
    shape[1] = sum(p.shape[1] for p in parts)
    return ParamSpec(tuple(shape), first.axes, first.init)
  return ParamSpec((len(parts),) + first.shape, (None,) + first.axes, first.init)


def fused_param_specs(cfg: ModelConfig, concat: bool = True) -> Weights:
  """Per-layer decode layout (`fuse_layers(params, concat)`): a concatenated tensor takes the
  axes of its first part, a stacked one gets a new unnamed leading axis."""
  specs = param_specs(cfg, stacked=False)
  layer = _fuse_layer(specs.layers[0], concat, lambda parts, _: _fuse_spec(parts, concat))
  return dataclasses.replace(specs, layers=(layer,) * cfg.num_layers)


def param_axes(cfg: ModelConfig, stacked: bool = True) -> Weights:
  """Tree of logical-axes tuples matching the params."""
  return jax.tree.map(lambda s: s.axes, param_specs(cfg, stacked), is_leaf=_is_spec)


def fused_param_axes(cfg: ModelConfig, concat: bool = True) -> Weights:
  return jax.tree.map(lambda s: s.axes, fused_param_specs(cfg, concat), is_leaf=_is_spec)


def abstract_params(cfg: ModelConfig, stacked: bool = True, shardings: Any = None) -> Weights:
  """Tree of `jax.ShapeDtypeStruct` (optionally with shardings): nothing is allocated."""
  dtype = jnp.dtype(cfg.param_dtype)
  specs = param_specs(cfg, stacked)
  if shardings is None:
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, dtype), specs, is_leaf=_is_spec)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, dtype, sharding=sh), specs,
                      shardings, is_leaf=_is_spec)


INIT_STD = 0.02


def init_params(cfg: ModelConfig, key: jax.Array, shardings: Any = None,
                stacked: bool = True) -> Weights:
  """Random initialisation in one jit, each tensor created directly in its sharding."""
  specs = param_specs(cfg, stacked)
  leaves, treedef = jax.tree.flatten(specs, is_leaf=_is_spec)
  dtype = jnp.dtype(cfg.param_dtype)

  def make(key):
    keys = jax.random.split(key, len(leaves))
    out = [jnp.ones(s.shape, dtype) if s.init == "ones"
           else (INIT_STD * jax.random.normal(k, s.shape, jnp.float32)).astype(dtype)
           for s, k in zip(leaves, keys)]
    return treedef.unflatten(out)

  return jax.jit(make, out_shardings=shardings)(key)


# ---- layout conversions ----------------------------------------------------------------------

def unstack_layers(w: Weights) -> Weights:
  """Stacked layers -> a tuple of per-layer weights (unrolled forward)."""
  if not w.stacked:
    return w
  n = jax.tree.leaves(w.layers)[0].shape[0]
  return dataclasses.replace(w, layers=tuple(jax.tree.map(lambda a: a[i], w.layers)
                                             for i in range(n)))


def stack_layers(w: Weights) -> Weights:
  """Per-layer weights -> stacked `[layers, ...]` (checkpoint / scan layout)."""
  if w.stacked:
    return w
  return dataclasses.replace(w, layers=jax.tree.map(lambda *a: jnp.stack(a), *w.layers))


def _fuse_layer(layer: LayerWeights, concat: bool, join) -> Any:
  """One layer (or stacked layers) in a decode layout; join(parts, name) builds a fused one."""
  if not isinstance(layer, LayerWeights):
    raise TypeError(f"fuse_layers takes LayerWeights, got {type(layer).__name__}")
  groups = FUSED if concat else STACKED
  kept = {f.name: getattr(layer, f.name) for f in dataclasses.fields(layer)
          if all(f.name not in parts for parts in groups.values())}
  fused = {name: join([getattr(layer, p) for p in parts], name) for name, parts in groups.items()}
  return (FusedLayerWeights if concat else GateUpLayerWeights)(**kept, **fused)


def fuse_layer(layer: LayerWeights, concat: bool = True) -> FusedLayerWeights | GateUpLayerWeights:
  """One layer's (unstacked) weights in a decode layout (see `fuse_layers`)."""
  join = ((lambda parts, _: jnp.concatenate(parts, axis=1)) if concat
          else (lambda parts, _: jnp.stack(parts, axis=0)))
  return _fuse_layer(layer, concat, join)


def fuse_layers(w: Weights, concat: bool = True) -> Weights:
  """Decode layout. concat: q/k/v and gate/up concatenated (`FusedLayerWeights`), for unsharded
  `tensor` axes only. Otherwise gate/up stacked (`GateUpLayerWeights`), which keeps any
  sharding. Stacked or per-layer weights stay so."""
  shift = 1 if w.stacked else 0

  def join(parts, _):
    if concat:
      return jnp.concatenate(parts, axis=1 + shift)
    return jnp.stack(parts, axis=shift)

  if w.stacked:
    return dataclasses.replace(w, layers=_fuse_layer(w.layers, concat, join))
  return dataclasses.replace(w, layers=tuple(_fuse_layer(l, concat, join) for l in w.layers))


def layer_to_dict(layer: Any) -> dict[str, Any]:
  return {f.name: getattr(layer, f.name) for f in dataclasses.fields(layer)}


def to_tree(w: Weights) -> dict[str, Any]:
  """The nested dict that checkpoints and converters store: `layers` a dict of stacked arrays or
  a list of per-layer dicts; no `lm_head` with tied embeddings."""
  out = {"embed": w.embed, "final_norm": w.final_norm,
         "layers": layer_to_dict(w.layers) if w.stacked else [layer_to_dict(l) for l in w.layers]}
  if not w.tied:
    out["lm_head"] = w.lm_head
  return out


def _layer_from_dict(d: dict[str, Any], where: str) -> Any:
  names = set(d)
  for cls in LAYER_TYPES:
    if names == {f.name for f in dataclasses.fields(cls)}:
      return cls(**d)
  raise ValueError(f"{where}: keys {sorted(names)} match no layer layout "
                   f"({', '.join(c.__name__ for c in LAYER_TYPES)})")


def from_tree(tree: dict[str, Any]) -> Weights:
  """Inverse of `to_tree` (any layer layout)."""
  if isinstance(tree, Weights):
    return tree
  extra = set(tree) - {"embed", "final_norm", "layers", "lm_head"}
  missing = {"embed", "final_norm", "layers"} - set(tree)
  if extra or missing:
    raise ValueError(f"param tree: missing {sorted(missing)}, unexpected {sorted(extra)}")
  layers = tree["layers"]
  if isinstance(layers, dict):
    layers = _layer_from_dict(layers, "layers")
  else:
    layers = tuple(_layer_from_dict(l, f"layers[{i}]") for i, l in enumerate(layers))
  return Weights(embed=tree["embed"], final_norm=tree["final_norm"], layers=layers,
                 lm_head=tree.get("lm_head"), tied="lm_head" not in tree)


def path_names(path) -> tuple[str, ...]:
  """A tree path as names (dict keys, attribute names, sequence indices as strings)."""
  return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


# ---- checks ----------------------------------------------------------------------------------

def expected_specs(w: Weights, cfg: ModelConfig) -> Weights:
  """The declarations of `w`'s own layout (layer type, stacked or not) under `cfg`."""
  kind = w.layer_type
  if kind is LayerWeights:
    return param_specs(cfg, w.stacked)
  specs = fused_param_specs(cfg, concat=kind is FusedLayerWeights)
  if not w.stacked:
    return specs
  return dataclasses.replace(specs, layers=jax.tree.map(
      lambda s: ParamSpec((cfg.num_layers,) + s.shape, ("layers",) + s.axes, s.init),
      specs.layers[0], is_leaf=_is_spec))


def check_layout(w: Any, cfg: ModelConfig, what: str = "weights") -> Weights:
  """Raises TypeError / ValueError unless `w` is a `Weights` of one layer layout whose every
  shape matches the declarations of `cfg`. Shapes are static: this runs at trace time."""
  if not isinstance(w, Weights):
    raise TypeError(f"{what}: expected Weights, got {type(w).__name__} (a checkpoint's dict "
                    f"tree converts with weights.from_tree)")
  layers = w.layers if not w.stacked else (w.layers,)
  if not layers:
    raise ValueError(f"{what}: no layers")
  kinds = {type(l) for l in layers}
  if len(kinds) != 1 or not kinds <= set(LAYER_TYPES):
    raise TypeError(f"{what}: layers must all be one of "
                    f"{', '.join(c.__name__ for c in LAYER_TYPES)}; got "
                    f"{sorted(k.__name__ for k in kinds)}")
  if w.tied != cfg.tie_word_embeddings:
    raise ValueError(f"{what}: lm_head {'missing' if w.tied else 'present'} but "
                     f"tie_word_embeddings={cfg.tie_word_embeddings}")
  want = jax.tree_util.tree_flatten_with_path(expected_specs(w, cfg), is_leaf=_is_spec)[0]
  got = jax.tree_util.tree_flatten_with_path(w)[0]
  if len(want) != len(got):
    raise ValueError(f"{what}: {len(got)} arrays, the {w.layer_type.__name__} layout of "
                     f"{cfg.num_layers} layers has {len(want)}")
  for (path, spec), (got_path, x) in zip(want, got):
    name = ".".join(path_names(path))
    if path_names(got_path) != path_names(path):
      raise ValueError(f"{what}: {'.'.join(path_names(got_path))} where the "
                       f"{w.layer_type.__name__} layout has {name}")
    if tuple(x.shape) != tuple(spec.shape):
      raise ValueError(f"{what}.{name}: shape {tuple(x.shape)}, the "
                       f"{w.layer_type.__name__} layout of this config has {spec.shape}")
  return w
