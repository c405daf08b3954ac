"""LLaMA-family decoder as pure functions over a parameter pytree.

Parameters are a nested dict of arrays whose layout mirrors HF's tensors up to transposes and
reshapes (rotate-half RoPE, so no q/k permutation):

  embed       [vocab, embed]
  layers/     stacked over a leading `layers` axis (or a list of per-layer dicts, see below)
    attn_norm [embed]            wq [embed, heads, head_dim]     wk, wv [embed, kv_heads, head_dim]
    mlp_norm  [embed]            wo [heads, head_dim, embed]
    w_gate, w_up [embed, mlp]    w_down [mlp, embed]
  final_norm  [embed]
  lm_head     [embed, vocab]     (absent with tied embeddings)

`params["layers"]` is either a dict of stacked `[layers, ...]` arrays — the checkpoint layout,
run with `lax.scan` — or a list of per-layer dicts, run as an unrolled Python loop (faster
decode on CPU/GPU); `unstack_layers` / `stack_layers` convert between the two.

Every parameter declares its logical axes (`param_specs`), from which shardings are derived by
`mathjax_sft.sharding.rules`. Activations and caches are pinned by logical names too
(`constrain`: the residual stream at the embedding and at every block boundary, q / k / v and the
attention output, the MLP intermediate, the logits, the KV cache), against whatever mesh is in
context; this file never sees a mesh.

Attention handles three key sources, concatenated before one softmax:
  * the new tokens themselves (training / plain forward: causal + packed-segment mask),
  * a KV cache (`KVCache`, a ring buffer with a per-slot validity mask) for decoding,
  * a shared prefix (`Prefix`): one prompt cache per problem, read by all its samples without
    copies — rows of the batch grouped `[problems, samples_per_problem]`, or a pool of resident
    prompts that each row picks from by index (`Prefix.row_slot`, the sampler's scheduler).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mathjax_sft.model.config import ModelConfig
from mathjax_sft.model.rope import apply_rope, rope_tables
from mathjax_sft.sharding.rules import constrain

Params = dict[str, Any]
NEG_INF = -1e30

# Logical axes of activations (see sharding/rules.py).
RESIDUAL = ("batch", "seq", "act_embed")
Q_AXES = ("batch", "seq", "act_heads", "head_dim")
KV_AXES = ("batch", "seq", "act_kv_heads", "head_dim")
MLP_AXES = ("batch", "seq", "act_mlp")
LOGITS = ("batch", "seq", "act_vocab")
# A decode cache stores keys with time last and values with time second to last (`KVCache`).
CACHE_K_AXES = ("cache_batch", "cache_heads", "head_dim", "cache_time")
CACHE_V_AXES = ("cache_batch", "cache_heads", "cache_time", "head_dim")


# ---- parameter declarations ----------------------------------------------------------------

class ParamSpec(NamedTuple):
  shape: tuple[int, ...]
  axes: tuple[str, ...]
  init: str  # "normal" (std = initializer_range) or "ones"


INIT_STD = 0.02


def param_specs(cfg: ModelConfig, stacked: bool = True) -> Params:
  """Shape, logical axes and initializer of every parameter (stacked layer layout by default)."""
  e, m, h, k, d, v = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads,
                      cfg.head_dim, cfg.vocab_size)
  layer = {
      "attn_norm": ParamSpec((e,), ("norm",), "ones"),
      "wq": ParamSpec((e, h, d), ("embed", "heads", "head_dim"), "normal"),
      "wk": ParamSpec((e, k, d), ("embed", "kv_heads", "head_dim"), "normal"),
      "wv": ParamSpec((e, k, d), ("embed", "kv_heads", "head_dim"), "normal"),
      "wo": ParamSpec((h, d, e), ("heads", "head_dim", "embed"), "normal"),
      "mlp_norm": ParamSpec((e,), ("norm",), "ones"),
      "w_gate": ParamSpec((e, m), ("embed", "mlp"), "normal"),
      "w_up": ParamSpec((e, m), ("embed", "mlp"), "normal"),
      "w_down": ParamSpec((m, e), ("mlp", "embed"), "normal"),
  }
  if stacked:
    layers = {n: ParamSpec((cfg.num_layers,) + s.shape, ("layers",) + s.axes, s.init)
              for n, s in layer.items()}
  else:
    layers = [dict(layer) for _ in range(cfg.num_layers)]
  specs: Params = {
      "embed": ParamSpec((v, e), ("vocab", "embed"), "normal"),
      "layers": layers,
      "final_norm": ParamSpec((e,), ("norm",), "ones"),
  }
  if not cfg.tie_word_embeddings:
    specs["lm_head"] = ParamSpec((e, v), ("embed", "vocab"), "normal")
  return specs


def _is_spec(x) -> bool:
  return isinstance(x, ParamSpec)


def param_axes(cfg: ModelConfig, stacked: bool = True) -> Params:
  """Pytree of logical-axes tuples matching the params."""
  return jax.tree.map(lambda s: s.axes, param_specs(cfg, stacked), is_leaf=_is_spec)


def abstract_params(cfg: ModelConfig, stacked: bool = True, shardings: Any = None) -> Params:
  """Pytree of `jax.ShapeDtypeStruct` (optionally with shardings): nothing is allocated."""
  dtype = jnp.dtype(cfg.param_dtype)
  specs = param_specs(cfg, stacked)
  if shardings is None:
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, dtype), specs, is_leaf=_is_spec)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, dtype, sharding=sh), specs,
                      shardings, is_leaf=_is_spec)


def init_params(cfg: ModelConfig, key: jax.Array, shardings: Any = None,
                stacked: bool = True) -> Params:
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


def unstack_layers(params: Params) -> Params:
  """Stacked `[layers, ...]` dict -> list of per-layer dicts (unrolled forward)."""
  layers = params["layers"]
  if isinstance(layers, (list, tuple)):
    return params
  n = next(iter(layers.values())).shape[0]
  out = dict(params)
  out["layers"] = [{k: v[i] for k, v in layers.items()} for i in range(n)]
  return out


def stack_layers(params: Params) -> Params:
  """List of per-layer dicts -> stacked `[layers, ...]` dict (checkpoint / scan layout)."""
  layers = params["layers"]
  if isinstance(layers, dict):
    return params
  out = dict(params)
  out["layers"] = {k: jnp.stack([layer[k] for layer in layers]) for k in layers[0]}
  return out


# Decode layouts of a layer's weights (`fuse_layers`), fused name -> (parts, axis, how):
#   concatenated, where the `tensor` axis is unsharded: one matmul for q/k/v and one for gate/up
#   stacked, under tensor parallelism: gate/up on a new leading axis, [2, embed, mlp] (the `mlp`
#     sharding is kept). XLA:TPU wants the decode matmul's weight in that physical order; given
#     [embed, mlp] pairs (stacked per step) or [embed, 2, mlp] it copied every layer's weights
#     into it before the decode loop: a second copy of the MLP weights (70B decode on v5p,
#     tensor=4: 31.8 GiB of temporaries per chip, 10 of them KV cache; see README)
FUSED = {"wqkv": ("wq", "wk", "wv"), "w_gateup": ("w_gate", "w_up")}
STACKED = {"w_gu": ("w_gate", "w_up")}


def fused_param_axes(cfg: ModelConfig, concat: bool = True) -> Params:
  """Logical axes of the decode layout (`fuse_layers(params, concat)`): per-layer dicts; a
  concatenated tensor takes the axes of its first part, a stacked one gets a new unnamed axis."""
  axes = param_axes(cfg, stacked=False)
  for layer in axes["layers"]:
    for fused, parts in (FUSED if concat else STACKED).items():
      first = layer[parts[0]]
      layer[fused] = first if concat else (None,) + first
      for part in parts:
        del layer[part]
  return axes


def fuse_layers(params: Params, concat: bool = True) -> Params:
  """Decode layout. concat: q/k/v and gate/up concatenated (`wqkv` [embed, heads + 2 kv_heads,
  head_dim], `w_gateup` [embed, 2 mlp]), for unsharded `tensor` axes only. Otherwise gate/up
  stacked (`w_gu` [2, embed, mlp]), which keeps any sharding."""
  def fuse(layer, axis_shift):
    groups = FUSED if concat else STACKED
    out = {k: v for k, v in layer.items() if all(k not in p for p in groups.values())}
    for name, parts in groups.items():
      if concat:
        out[name] = jnp.concatenate([layer[p] for p in parts], axis=1 + axis_shift)
      else:
        out[name] = jnp.stack([layer[p] for p in parts], axis=axis_shift)
    return out
  layers = params["layers"]
  out = dict(params)
  out["layers"] = ([fuse(l, 0) for l in layers] if isinstance(layers, (list, tuple))
                   else fuse(layers, 1))
  return out


# ---- caches ----------------------------------------------------------------------------------

@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
  """Per-row decode cache, a ring buffer of `slots` entries.

  k:     [layers, batch, kv_heads, head_dim, slots] (stacked) or a tuple of per-layer
         [batch, kv_heads, head_dim, slots] arrays (unrolled forward): time last.
  v:     [layers, batch, kv_heads, slots, head_dim] or per layer [batch, kv_heads, slots,
         head_dim].
         Each is the layout of its matmul in a decode step, where one query row meets its own
         keys: scores contract head_dim against time-last keys, values contract time against
         time-major values. Measured on XLA:CPU (64 rows x 320 slots, 30 layers of SmolLM2 heads,
         2-core AVX2): the ring attention 139 ms with keys time-major as well, 65-69 ms so (the
         keys and values alone are read in ~31-38 ms); values time-last 134 ms.
  valid: [batch, slots] bool — which slots hold a key this row may attend to.
  index: int32 scalar — the slot the next token is written to (mod slots). A multi-token write
         must not wrap around the ring end.
  """
  k: Any
  v: Any
  valid: jax.Array
  index: jax.Array

  @property
  def num_slots(self) -> int:
    return self.valid.shape[1]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Prefix:
  """Keys/values of one prompt per problem (or per slot of a prompt pool).

  k, v:     [layers, problems, kv_heads, prefix_len, head_dim] or a tuple per layer; a pool
            (`row_slot` given) is stored kv heads first, per layer [kv_heads, slots, prefix_len,
            head_dim]: the layout of its matmuls (see `_attend_pool`).
  valid:    [problems, prefix_len] bool.
  row_slot: None: the prompts are shared by `batch // problems` consecutive rows each; else
            int32 [batch]: row r reads prompt `row_slot[r]` (any row, any resident prompt). Each
            row's scores and weighted values are computed per prompt over `prefix_len` keys and
            the row's own prompt selected exactly, so a row's arithmetic does not depend on how
            many prompts the pool holds or where its prompt sits.
  """
  k: Any
  v: Any
  valid: jax.Array
  row_slot: jax.Array | None = None


def cache_shapes(cfg: ModelConfig, batch: int, slots: int) -> tuple[tuple[int, ...], ...]:
  """One layer's (key, value) cache shapes (see `KVCache`)."""
  return ((batch, cfg.num_kv_heads, cfg.head_dim, slots),
          (batch, cfg.num_kv_heads, slots, cfg.head_dim))


def init_cache(cfg: ModelConfig, batch: int, slots: int, stacked: bool = True,
               dtype: str | None = None) -> KVCache:
  """An empty cache; `stacked` must match the params' layer layout (see `unstack_layers`)."""
  dtype = jnp.dtype(dtype or "float32")
  k_shape, v_shape = cache_shapes(cfg, batch, slots)
  if stacked:
    k = jnp.zeros((cfg.num_layers,) + k_shape, dtype)
    v = jnp.zeros((cfg.num_layers,) + v_shape, dtype)
  else:
    k = tuple(jnp.zeros(k_shape, dtype) for _ in range(cfg.num_layers))
    v = tuple(jnp.zeros(v_shape, dtype) for _ in range(cfg.num_layers))
  return KVCache(k=k, v=v, valid=jnp.zeros((batch, slots), bool), index=jnp.zeros((), jnp.int32))


# ---- layers ----------------------------------------------------------------------------------

def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
  """HF LlamaRMSNorm: normalise in float32, cast back, then scale."""
  dtype = x.dtype
  x32 = x.astype(jnp.float32)
  x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return scale.astype(dtype) * x32.astype(dtype)


def _dot(eq: str, x: jax.Array, w: jax.Array, dtype) -> jax.Array:
  return jnp.einsum(eq, x.astype(dtype), w.astype(dtype),
                    preferred_element_type=jnp.float32).astype(dtype)


class _Keys(NamedTuple):
  """One key/value source: k [batch, kv_heads, head_dim, keys] (the cache's layout, see
  `KVCache`), v [batch, kv_heads, keys, head_dim]; mask [batch, seq, keys]."""
  k: jax.Array
  v: jax.Array
  mask: jax.Array


def _row_scores(q: jax.Array, k: jax.Array, dtype) -> jax.Array:
  """q [b, t, kvh, g, d] against each row's own keys k [b, kvh, d, s] -> f32 [b, kvh, g, t, s].

  Written as one matmul per (row, kv head) with the t x g queries as its rows: for a decode step
  (t = 1) every reshape is free. In one einsum over the 5-D query (`btkgd,bkds->bkgts`) XLA:CPU
  ran it 2.4x slower (64 rows, 320 keys, SmolLM2 heads)."""
  b, t, kvh, g, d = q.shape
  s = jnp.einsum("bkrd,bkds->bkrs", q.transpose(0, 2, 1, 3, 4).reshape(b, kvh, t * g, d),
                 k.astype(dtype), preferred_element_type=jnp.float32)
  return s.reshape(b, kvh, t, g, -1).transpose(0, 1, 3, 2, 4)


def _row_values(e: jax.Array, v: jax.Array, dtype) -> jax.Array:
  """Weights e [b, kvh, g, t, s] of each row's own values v [b, kvh, s, d] -> f32 [b, kvh, g, t, d]
  (one matmul per (row, kv head), as `_row_scores`)."""
  b, kvh, g, t, s = e.shape
  o = jnp.einsum("bkrs,bksd->bkrd", e.transpose(0, 1, 3, 2, 4).reshape(b, kvh, t * g, s).astype(dtype),
                 v.astype(dtype), preferred_element_type=jnp.float32)
  return o.reshape(b, kvh, t, g, -1).transpose(0, 1, 3, 2, 4)


def _attend(q: jax.Array, sources: list[_Keys], prefix: tuple | None, dtype) -> jax.Array:
  """q [b, t, heads, d] against several key sources (+ a grouped prefix) -> [b, t, heads, d].

  One softmax over all sources, computed blockwise (shared max and denominator) so the score
  blocks are never concatenated. A prefix [p, kv_heads, tp, d] is read by the b // p consecutive
  rows of each problem through a batched matmul over (problem, kv head): no copies.
  """
  b, t, h, d = q.shape
  kvh = sources[0].k.shape[1]
  g = h // kvh
  q = (q.astype(jnp.float32) * d ** -0.5).astype(dtype).reshape(b, t, kvh, g, d)
  blocks = []   # (scores [b, kvh, g, t, keys] f32, values, kind)
  if prefix is not None and prefix[3] is not None:
    return _attend_pool(q, sources, prefix, dtype)
  if prefix is not None:
    pk, pv, pvalid, _ = prefix                    # [p, kvh, tp, d], [p, tp]
    p = pk.shape[0]
    n = b // p
    qp = q.reshape(p, n, t, kvh, g, d).transpose(0, 3, 1, 4, 2, 5).reshape(p, kvh, n * g * t, d)
    s = jnp.einsum("pkqd,pksd->pkqs", qp, pk.astype(dtype), preferred_element_type=jnp.float32)
    s = jnp.where(pvalid[:, None, None, :], s, NEG_INF)                     # [p, kvh, n g t, tp]
    blocks.append((s, pv, "prefix"))
  for src in sources:
    s = _row_scores(q, src.k, dtype)
    blocks.append((jnp.where(src.mask[:, None, None, :, :], s, NEG_INF), src.v, "rows"))

  def rows_view(x):   # prefix-shaped [p, kvh, n g t, .] -> [b, kvh, g, t, .]
    return x.reshape(p, kvh, n, g, t, -1).transpose(0, 2, 1, 3, 4, 5).reshape(b, kvh, g, t, -1)

  maxes = [rows_view(jnp.max(s, -1, keepdims=True)) if kind == "prefix" else jnp.max(s, -1, keepdims=True)
           for s, _, kind in blocks]
  m = functools.reduce(jnp.maximum, maxes)                                 # [b, kvh, g, t, 1]
  out = jnp.zeros((b, kvh, g, t, d), jnp.float32)
  denom = jnp.zeros((b, kvh, g, t, 1), jnp.float32)
  for s, v, kind in blocks:
    if kind == "prefix":
      e = jnp.exp(s - m.reshape(p, n, kvh, g, t, 1).transpose(0, 2, 1, 3, 4, 5).reshape(
          p, kvh, n * g * t, 1))
      o = jnp.einsum("pkqs,pksd->pkqd", e.astype(dtype), v.astype(dtype),
                     preferred_element_type=jnp.float32)
      out += rows_view(o)
      denom += rows_view(jnp.sum(e, -1, keepdims=True))
    else:
      e = jnp.exp(s - m)
      out += _row_values(e, v, dtype)
      denom += jnp.sum(e, -1, keepdims=True)
  out = out / denom
  return out.astype(dtype).transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


def _attend_pool(q: jax.Array, sources: list[_Keys], prefix: tuple, dtype) -> jax.Array:
  """`_attend` with a prompt pool: q [b, t, kvh, g, d] (scaled), prefix (k, v [kvh, slots, tp, d],
  valid [slots, tp], row_slot [b]).

  Scores of every row against every slot's keys are one matmul (shared keys, no gathers of
  keys), then each row keeps its own slot's scores (a gather of [rows, tp] scores), so the
  softmax work is one prompt per row. The weighted values are contracted per slot over `tp`
  keys, with zero weights for the rows of other slots, and summed over slots (adding exact
  zeros): a row's arithmetic does not depend on how many prompts the pool holds or where its
  prompt sits. Computed with kv heads leading ([kvh, rows, ...], rows kept as their own axis so
  that data-parallel shardings carry through): clean batched matmuls, which XLA:CPU ran ~2x
  faster than row-major einsums (pool of 4 x 192 keys, 64 rows); the pool is stored in that
  order, which saved XLA:CPU a transpose of it per layer and step (30 layers: 46 -> 33 ms)."""
  pk, pv, pvalid, row_slot = prefix
  b, t, kvh, g, d = q.shape
  slots, tp = pk.shape[1], pk.shape[2]
  qk = q.transpose(2, 0, 1, 3, 4).reshape(kvh, b * t * g, d)                  # [kvh, b r, d]
  s = jnp.einsum("krd,kqd->krq", qk, pk.astype(dtype).reshape(kvh, slots * tp, d),
                 preferred_element_type=jnp.float32).reshape(kvh, b, t * g, slots, tp)
  s = jnp.take_along_axis(s, row_slot[None, :, None, None, None], axis=3)[:, :, :, 0]
  s = jnp.where(pvalid[row_slot][None, :, None, :], s, NEG_INF)               # [kvh, b, r, tp]
  m = jnp.max(s, -1)                                                          # [kvh, b, r]
  own = []
  for src in sources:
    x = _row_scores(q, src.k, dtype)
    x = jnp.where(src.mask[:, None, None, :, :], x, NEG_INF)
    own.append(x)
    m = jnp.maximum(m, jnp.max(x, -1).transpose(1, 0, 3, 2).reshape(kvh, b, t * g))
  e = jnp.exp(s - m[..., None])                                               # [kvh, b, r, tp]
  mine = jnp.arange(slots)[:, None] == row_slot[None, :]                      # [slots, b]
  e_slots = jnp.where(mine[None, :, :, None, None], e[:, None], 0.0)          # [kvh, slots, b, r, tp]
  o = jnp.sum(jnp.einsum("kqbrs,kqsd->kqbrd", e_slots.astype(dtype), pv.astype(dtype),
                         preferred_element_type=jnp.float32), axis=1)         # [kvh, b, r, d]
  to_rows = lambda x: x.reshape(kvh, b, t, g, -1).transpose(1, 0, 3, 2, 4)    # [b, kvh, g, t, .]
  out, denom, m = to_rows(o), to_rows(jnp.sum(e, -1)[..., None]), to_rows(m[..., None])
  for src, x in zip(sources, own):
    ex = jnp.exp(x - m)
    out += _row_values(ex, src.v, dtype)
    denom += jnp.sum(ex, -1, keepdims=True)
  out = out / denom
  return out.astype(dtype).transpose(0, 3, 1, 2, 4).reshape(b, t, kvh * g, d)


def _block(lp: Params, x: jax.Array, cos: jax.Array, sin: jax.Array, self_mask: jax.Array | None,
           cache_kv: tuple | None, cache_ctx: tuple | None, prefix_kv: tuple | None,
           cfg: ModelConfig) -> tuple[jax.Array, tuple | None]:
  """One decoder layer. x [b, t, embed]. Returns (x, updated (k, v) cache of this layer)."""
  dtype = x.dtype
  h = rms_norm(x, lp["attn_norm"], cfg.rms_norm_eps)
  if "wqkv" in lp:                                   # fused layout (see `fuse_layers`)
    qkv = _dot("bte,ehd->bthd", h, lp["wqkv"], dtype)
    nh, nk = cfg.num_heads, cfg.num_kv_heads
    q, k, v = qkv[:, :, :nh], qkv[:, :, nh:nh + nk], qkv[:, :, nh + nk:]
  else:
    q = _dot("bte,ehd->bthd", h, lp["wq"], dtype)
    k = _dot("bte,ekd->btkd", h, lp["wk"], dtype)
    v = _dot("bte,ekd->btkd", h, lp["wv"], dtype)
  q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
  q, k, v = constrain(q, Q_AXES, "q"), constrain(k, KV_AXES, "k"), constrain(v, KV_AXES, "v")
  if cache_kv is None and prefix_kv is None:        # full sequence (training, scoring)
    attn = constrain(causal_attention(q, k, v, self_mask, cfg.attention_chunk), Q_AXES, "attn")
    return _mlp_residual(lp, x, attn, cfg), None
  k_t, v_t = k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3)       # [b, kvh, d, t], [b, kvh, t, d]
  pre = None if prefix_kv is None else tuple(prefix_kv)
  if cache_kv is None:
    return _mlp_residual(lp, x, _attend(q, [_Keys(k_t, v_t, self_mask)], pre, dtype), cfg), None
  ck, cv = cache_kv
  write_at, mask, bucket_hot = cache_ctx
  sizes = read_buckets(cv.shape[2], bucket_hot.shape[0])
  ck = jax.lax.dynamic_update_slice_in_dim(ck, k_t.astype(ck.dtype), write_at, axis=3)
  cv = jax.lax.dynamic_update_slice_in_dim(cv, v_t.astype(cv.dtype), write_at, axis=2)
  ck, cv = constrain(ck, CACHE_K_AXES, "k cache"), constrain(cv, CACHE_V_AXES, "v cache")

  def attend_first(n, q, ck, cv, mask, pre):   # keys in slots [0, n) only
    return _attend(q, [_Keys(ck[..., :n], cv[:, :, :n], mask[..., :n])], pre, dtype)

  branches = [functools.partial(attend_first, n) for n in sizes]
  attn = (branches[0](q, ck, cv, mask, pre) if len(branches) == 1
          else jax.lax.switch(jnp.argmax(bucket_hot), branches, q, ck, cv, mask, pre))
  return _mlp_residual(lp, x, constrain(attn, Q_AXES, "attn"), cfg), (ck, cv)


def _mlp_residual(lp: Params, x: jax.Array, attn: jax.Array, cfg: ModelConfig) -> jax.Array:
  """The rest of a layer after attention: x + wo(attn), then x + mlp(norm(x))."""
  dtype = x.dtype
  b, t, nh, hd = attn.shape   # 2-D matmul on a free reshape: a 3-D contraction makes XLA copy wo
  x = constrain(x + _dot("btf,fe->bte", attn.reshape(b, t, nh * hd),
                         lp["wo"].reshape(nh * hd, -1), dtype), RESIDUAL, "residual")
  h = rms_norm(x, lp["mlp_norm"], cfg.rms_norm_eps)
  if "w_gateup" in lp:
    gate, up = jnp.split(_dot("bte,em->btm", h, lp["w_gateup"], dtype), 2, axis=-1)
  elif "w_gu" in lp:                                 # stacked decode layout (tensor parallel)
    gu = constrain(_dot("bte,kem->btkm", h, lp["w_gu"], dtype),
                   MLP_AXES[:2] + (None,) + MLP_AXES[2:], "mlp gate/up")
    gate, up = gu[:, :, 0], gu[:, :, 1]
  else:
    # One matmul over gate and up stacked on a new axis (the `mlp` axis keeps its sharding).
    # With two separate matmuls XLA:CPU recomputed silu(gate) * up under remat in a transposed
    # layout: ~90 ms per layer of a 4 x 512 SmolLM2 train step, ~10 ms this way (profiled); the
    # whole step 21.9 s vs 22.6 s best, 22.8 vs 25.1 s median (A/B in one process, same loss).
    gu = _dot("bte,ekm->btkm", h, jnp.stack([lp["w_gate"], lp["w_up"]], axis=1), dtype)
    gu = constrain(gu, MLP_AXES[:2] + (None,) + MLP_AXES[2:], "mlp gate/up")
    gate, up = gu[:, :, 0], gu[:, :, 1]
  act = constrain(jax.nn.silu(gate) * up, MLP_AXES, "mlp")
  return constrain(x + _dot("btm,me->bte", act, lp["w_down"], dtype), RESIDUAL, "residual")


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                     chunk: int) -> jax.Array:
  """Self-attention of a whole sequence under a causal `mask` [b, t, t] (which may be narrower:
  packed segments, padding). q [b, t, heads, d], k/v [b, t, kv_heads, d] -> [b, t, heads, d].

  Queries go in blocks of `chunk`; block [i, i + chunk) reads keys [0, i + chunk) only, which
  the causal mask makes exact, so the upper triangle of the score matrix is never built. Scores
  and softmax in f32 (`jax.nn.dot_product_attention`, which also picks a fused kernel where the
  platform has one). Measured on CPU at t = 512 (SmolLM2 heads): forward + backward of one layer
  153 ms with chunk 128, 233 ms in one block, 373 ms with `_attend`; a whole train step 1.19x.
  """
  t = q.shape[1]
  step = chunk if 0 < chunk < t else t
  outs = []
  for i in range(0, t, step):
    end = min(i + step, t)
    outs.append(jax.nn.dot_product_attention(q[:, i:end], k[:, :end], v[:, :end],
                                             mask=mask[:, None, i:end, :end]))
  return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)


REMAT_POLICIES = {
    "full": None,                                                    # save nothing
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # save weight-matmul outputs
}


def _remat(fn, cfg: ModelConfig, **kwargs):
  return jax.checkpoint(fn, policy=REMAT_POLICIES[cfg.remat_policy], **kwargs)


def _self_mask(segment_ids: jax.Array) -> jax.Array:
  """[b, t, t] causal mask within packed segments; segment 0 is padding."""
  t = segment_ids.shape[1]
  causal = jnp.tril(jnp.ones((t, t), bool))
  same = segment_ids[:, :, None] == segment_ids[:, None, :]
  return causal[None] & same & (segment_ids[:, None, :] != 0)


def read_buckets(slots: int, n: int) -> tuple[int, ...]:
  """`n` strictly increasing slot counts, multiples of 8 but the last (`slots`): the static
  prefixes of a cache that a decode step may read instead of all of it. Needs n <= slots / 8."""
  return tuple(min(slots, -(-slots * (i + 1) // (n * 8)) * 8) for i in range(n))


def _cache_context(cache: KVCache, token_valid: jax.Array, num_buckets: int = 1) -> tuple:
  """Where the new tokens go and what each may see.

  Returns ((write_at, mask [b, t, slots], bucket_hot [n]), valid [b, slots]). The ring is
  written in order from slot 0, so after this write only slots [0, min(index + t, slots)) can
  hold a key; `bucket_hot` marks the smallest of the n `read_buckets` that covers them (a
  one-hot array, so that n stays static under tracing).
  """
  slots = cache.num_slots
  t = token_valid.shape[1]
  sizes = read_buckets(slots, max(1, min(num_buckets, slots // 8)))
  filled = jnp.minimum(cache.index + t, slots)
  bucket = jnp.sum(filled > jnp.asarray(sizes[:-1], jnp.int32))
  bucket_hot = jnp.arange(len(sizes)) == bucket
  write_at = cache.index % slots
  age = (jnp.arange(slots) - write_at) % slots                     # [slots]; < t: written now
  is_new = age < t
  new_valid = token_valid[:, jnp.minimum(age, t - 1)]               # [b, slots]
  valid = jnp.where(is_new[None, :], new_valid, cache.valid)
  visible_new = is_new[None, :] & (age[None, :] <= jnp.arange(t)[:, None])   # [t, slots]
  mask = jnp.where(is_new[None, None, :], visible_new[None] & new_valid[:, None, :],
                   cache.valid[:, None, :])
  return (write_at, mask, bucket_hot), valid


def forward(params: Params, cfg: ModelConfig, tokens: jax.Array, positions: jax.Array | None = None,
            *, segment_ids: jax.Array | None = None, cache: KVCache | None = None,
            prefix: Prefix | None = None, logits_dtype=jnp.float32,
            return_hidden: bool = False,
            cache_read_buckets: int = 1) -> tuple[jax.Array, KVCache | None]:
  """Logits [batch, seq, vocab] for tokens [batch, seq].

  positions:   [batch, seq] RoPE positions (default 0..seq-1).
  segment_ids: [batch, seq] packed-sequence ids, 0 = padding (default all 1). Without a cache
               they restrict attention to the same segment; with a cache, 0 marks tokens that are
               written but never attended to (left padding).
  cache:       decode cache; the new tokens are written at `cache.index` and attend to the valid
               cache slots (plus each other causally). The updated cache is returned.
  prefix:      shared per-problem prompt keys (rows grouped as [problems, batch // problems]).
  cache_read_buckets: with a cache, attention reads only the written part of the ring, rounded
               up to one of this many static sizes (`lax.switch`): early decode steps read a
               fraction of a long cache. 1 = always read every slot.
  """
  b, t = tokens.shape
  dtype = jnp.dtype(cfg.compute_dtype)
  if positions is None:
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  if segment_ids is None:
    segment_ids = jnp.ones((b, t), jnp.int32)
  cos, sin = rope_tables(positions, cfg)
  # The lookup reads a replicated table (one all-gather of [vocab, embed], in compute dtype):
  # GSPMD cannot gather rows of a vocab x embed-sharded table into batch-sharded rows itself.
  table = constrain(params["embed"].astype(dtype), (None, None), "embedding table")
  x = constrain(jnp.take(table, tokens, axis=0), RESIDUAL, "embedding")

  self_mask = ctx = new_valid = None
  if cache is None:
    self_mask = _self_mask(segment_ids)
  else:
    ctx, new_valid = _cache_context(cache, segment_ids != 0, cache_read_buckets)

  layers = params["layers"]
  unrolled = isinstance(layers, (list, tuple))
  for name, c in (("cache", cache), ("prefix", prefix)):
    if c is not None and isinstance(c.k, (list, tuple)) != unrolled:
      raise ValueError(f"{name} layout ({'per-layer' if isinstance(c.k, (list, tuple)) else 'stacked'})"
                       f" does not match the params ({'per-layer' if unrolled else 'stacked'})")
  new_k, new_v = [], []
  if unrolled:
    for i, lp in enumerate(layers):
      ckv = None if cache is None else (cache.k[i], cache.v[i])
      pkv = None if prefix is None else (prefix.k[i], prefix.v[i], prefix.valid,
                                            prefix.row_slot)
      block = _remat(_block, cfg, static_argnums=(8,)) if cfg.remat else _block
      x, upd = block(lp, x, cos, sin, self_mask, ckv, ctx, pkv, cfg)
      if upd is not None:
        new_k.append(upd[0])
        new_v.append(upd[1])
    stacked_k, stacked_v = tuple(new_k), tuple(new_v)
  else:
    def body(x, xs):
      lp, ck, cv, pk, pv = xs
      ckv = None if ck is None else (ck, cv)
      pkv = None if pk is None else (pk, pv, prefix.valid, prefix.row_slot)
      x, upd = _block(lp, constrain(x, RESIDUAL, "block input"), cos, sin, self_mask, ckv, ctx,
                      pkv, cfg)
      return constrain(x, RESIDUAL, "block output"), (None, None) if upd is None else upd
    if cfg.remat:
      body = _remat(body, cfg)
    xs = (layers,
          None if cache is None else cache.k, None if cache is None else cache.v,
          None if prefix is None else prefix.k, None if prefix is None else prefix.v)
    x, (stacked_k, stacked_v) = jax.lax.scan(body, x, xs)

  x = rms_norm(x, params["final_norm"], cfg.rms_norm_eps)
  new_cache = None
  if cache is not None:
    new_cache = KVCache(k=stacked_k, v=stacked_v, valid=new_valid, index=cache.index + t)
  if return_hidden:
    return x, new_cache
  return constrain(lm_head(params, cfg, x, logits_dtype), LOGITS, "logits"), new_cache


def lm_head(params: Params, cfg: ModelConfig, x: jax.Array, logits_dtype=jnp.float32) -> jax.Array:
  """x [..., embed] -> logits [..., vocab] (tied embeddings use `embed` transposed)."""
  dtype = x.dtype
  if cfg.tie_word_embeddings:
    return jnp.einsum("...e,ve->...v", x, params["embed"].astype(dtype),
                      preferred_element_type=jnp.float32).astype(logits_dtype)
  return jnp.einsum("...e,ev->...v", x, params["lm_head"].astype(dtype),
                    preferred_element_type=jnp.float32).astype(logits_dtype)


def prefix_from_cache(cache: KVCache) -> Prefix:
  """Turns a prefilled cache (one row per problem, written from slot 0) into a shared Prefix
  (keys time-major, like the values: the prefix's scores are one matmul over many rows)."""
  return Prefix(k=jax.tree.map(lambda k: jnp.swapaxes(k, -1, -2), cache.k), v=cache.v,
                valid=cache.valid)


def to_numpy_tree(params: Params) -> Params:
  return jax.tree.map(np.asarray, params)
