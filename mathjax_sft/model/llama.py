"""LLaMA-family decoder as pure functions over typed weights (`mathjax_sft.model.weights`).

Three entry points, one per mode:
  forward      a whole sequence (training, scoring): causal + packed-segment mask -> hidden
  prefill      a prompt written into a `KVCache` -> (hidden, cache)
  decode_step  new tokens of every row against its cache and a shared `Prefix` -> (logits, cache)
`lm_head` turns hidden states into logits. Each takes `Weights` of any layer layout (stacked:
`lax.scan`; per layer: an unrolled loop, faster decode on CPU/GPU) and checks it against the
config at trace time; caches and prefixes must be stacked or per layer like the weights.

Every parameter declares its logical axes (`weights.param_specs`), from which shardings are
derived by `mathjax_sft.sharding.rules`. Activations and caches are pinned by logical names too
(`constrain`: the residual stream at the embedding and at every block boundary, q / k / v and the
attention output, the MLP intermediate, the logits, the KV cache), against whatever mesh is in
context; this file never sees a mesh.

Decode attention reads several key sources, concatenated before one softmax:
  * the new tokens themselves and a KV cache (`KVCache`, a ring buffer with a per-slot validity
    mask),
  * a shared prefix (`Prefix`): one prompt cache per problem, read by all its samples without
    copies — rows of the batch grouped `[problems, samples_per_problem]`, or a pool of resident
    prompts that each row picks from by index (`Prefix.row_slot`, the sampler's scheduler).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mathjax_sft.model.config import ModelConfig
from mathjax_sft.model.rope import apply_rope, rope_tables
from mathjax_sft.model.weights import (FusedLayerWeights, GateUpLayerWeights, LayerWeights,
                                       Weights, check_layout)
# The parameter API, declared in `weights`, re-exported for callers of the model.
from mathjax_sft.model.weights import (ParamSpec, abstract_params, fuse_layers,  # noqa: F401
                                       init_params, param_axes, param_specs, stack_layers,
                                       unstack_layers)
from mathjax_sft.sharding.rules import constrain

Params = Weights   # the model's parameter tree
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


def _attend(q: jax.Array, sources: list[_Keys], prefix: LayerPrefix | None, dtype) -> jax.Array:
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


def _attend_pool(q: jax.Array, sources: list[_Keys], prefix: LayerPrefix, dtype) -> jax.Array:
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


class Rope(NamedTuple):
  """RoPE tables of the tokens in flight, [b, t, head_dim // 2] each."""
  cos: jax.Array
  sin: jax.Array


class LayerCache(NamedTuple):
  """One layer's ring: k [b, kvh, d, slots], v [b, kvh, slots, d] (see `KVCache`)."""
  k: jax.Array
  v: jax.Array


class LayerPrefix(NamedTuple):
  """One layer's shared prompt keys and values with the prefix's `valid` and `row_slot`."""
  k: jax.Array
  v: jax.Array
  valid: jax.Array
  row_slot: jax.Array | None


class CacheContext(NamedTuple):
  """Where a cached step writes and what it reads (`_cache_context`)."""
  write_at: jax.Array      # int32 scalar: first slot written
  mask: jax.Array          # [b, t, slots] bool: which slots each new token sees
  bucket_hot: jax.Array    # [n] bool: the read bucket (see `read_buckets`)


AnyLayer = LayerWeights | FusedLayerWeights | GateUpLayerWeights


def _qkv(lw: AnyLayer, x: jax.Array, rope: Rope, cfg: ModelConfig) -> tuple[jax.Array, ...]:
  """Normed, projected and rotated q [b, t, heads, d], k / v [b, t, kv_heads, d]."""
  dtype = x.dtype
  h = rms_norm(x, lw.attn_norm, cfg.rms_norm_eps)
  if isinstance(lw, FusedLayerWeights):
    qkv = _dot("bte,ehd->bthd", h, lw.wqkv, dtype)
    nh, nk = cfg.num_heads, cfg.num_kv_heads
    q, k, v = qkv[:, :, :nh], qkv[:, :, nh:nh + nk], qkv[:, :, nh + nk:]
  else:
    q = _dot("bte,ehd->bthd", h, lw.wq, dtype)
    k = _dot("bte,ekd->btkd", h, lw.wk, dtype)
    v = _dot("bte,ekd->btkd", h, lw.wv, dtype)
  q, k = apply_rope(q, rope.cos, rope.sin), apply_rope(k, rope.cos, rope.sin)
  return constrain(q, Q_AXES, "q"), constrain(k, KV_AXES, "k"), constrain(v, KV_AXES, "v")


def _train_block(lw: AnyLayer, x: jax.Array, rope: Rope, mask: jax.Array,
                 cfg: ModelConfig) -> jax.Array:
  """One decoder layer over whole sequences, x [b, t, embed], causal `mask` [b, t, t]."""
  q, k, v = _qkv(lw, x, rope, cfg)
  attn = constrain(causal_attention(q, k, v, mask, cfg.attention_chunk), Q_AXES, "attn")
  return _mlp_residual(lw, x, attn, cfg)


def _cached_block(lw: AnyLayer, x: jax.Array, rope: Rope, cache: LayerCache, ctx: CacheContext,
                  prefix: LayerPrefix | None, cfg: ModelConfig) -> tuple[jax.Array, LayerCache]:
  """One decoder layer of new tokens x [b, t, embed]: their keys are written into this layer's
  ring at `ctx.write_at`, then they attend to the ring (and the prefix). Returns (x, ring)."""
  dtype = x.dtype
  q, k, v = _qkv(lw, x, rope, cfg)
  k_t, v_t = k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3)       # [b, kvh, d, t], [b, kvh, t, d]
  sizes = read_buckets(cache.v.shape[2], ctx.bucket_hot.shape[0])
  ck = jax.lax.dynamic_update_slice_in_dim(cache.k, k_t.astype(cache.k.dtype), ctx.write_at, axis=3)
  cv = jax.lax.dynamic_update_slice_in_dim(cache.v, v_t.astype(cache.v.dtype), ctx.write_at, axis=2)
  ck, cv = constrain(ck, CACHE_K_AXES, "k cache"), constrain(cv, CACHE_V_AXES, "v cache")

  def attend_first(n, q, ck, cv, mask, pre):   # keys in slots [0, n) only
    return _attend(q, [_Keys(ck[..., :n], cv[:, :, :n], mask[..., :n])], pre, dtype)

  branches = [functools.partial(attend_first, n) for n in sizes]
  args = (q, ck, cv, ctx.mask, prefix)
  attn = (branches[0](*args) if len(branches) == 1
          else jax.lax.switch(jnp.argmax(ctx.bucket_hot), branches, *args))
  return _mlp_residual(lw, x, constrain(attn, Q_AXES, "attn"), cfg), LayerCache(ck, cv)


def _gate_up(lw: AnyLayer, h: jax.Array) -> tuple[jax.Array, jax.Array]:
  dtype = h.dtype
  if isinstance(lw, FusedLayerWeights):
    return tuple(jnp.split(_dot("bte,em->btm", h, lw.w_gateup, dtype), 2, axis=-1))
  if isinstance(lw, GateUpLayerWeights):             # stacked decode layout (tensor parallel)
    gu = _dot("bte,kem->btkm", h, lw.w_gu, dtype)
  else:
    # One matmul over gate and up stacked on a new axis (the `mlp` axis keeps its sharding).
    # With two separate matmuls XLA:CPU recomputed silu(gate) * up under remat in a transposed
    # layout: ~90 ms per layer of a 4 x 512 SmolLM2 train step, ~10 ms this way (profiled); the
    # whole step 21.9 s vs 22.6 s best, 22.8 vs 25.1 s median (A/B in one process, same loss).
    gu = _dot("bte,ekm->btkm", h, jnp.stack([lw.w_gate, lw.w_up], axis=1), dtype)
  gu = constrain(gu, MLP_AXES[:2] + (None,) + MLP_AXES[2:], "mlp gate/up")
  return gu[:, :, 0], gu[:, :, 1]


def _mlp_residual(lw: AnyLayer, x: jax.Array, attn: jax.Array, cfg: ModelConfig) -> jax.Array:
  """The rest of a layer after attention: x + wo(attn), then x + mlp(norm(x))."""
  dtype = x.dtype
  b, t, nh, hd = attn.shape   # 2-D matmul on a free reshape: a 3-D contraction makes XLA copy wo
  x = constrain(x + _dot("btf,fe->bte", attn.reshape(b, t, nh * hd),
                         lw.wo.reshape(nh * hd, -1), dtype), RESIDUAL, "residual")
  gate, up = _gate_up(lw, rms_norm(x, lw.mlp_norm, cfg.rms_norm_eps))
  act = constrain(jax.nn.silu(gate) * up, MLP_AXES, "mlp")
  return constrain(x + _dot("btm,me->bte", act, lw.w_down, dtype), RESIDUAL, "residual")


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


def _cache_context(cache: KVCache, token_valid: jax.Array,
                   num_buckets: int = 1) -> tuple[CacheContext, jax.Array]:
  """Where the new tokens go and what each may see.

  Returns (CacheContext, valid [b, slots]). The ring is
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
  return CacheContext(write_at, mask, bucket_hot), valid


def _run_layers(block: Callable, x: jax.Array, w: Weights, xs: tuple,
                cfg: ModelConfig) -> tuple[jax.Array, Any]:
  """x through every layer: block(layer weights, x, layer inputs) -> (x, layer outputs).

  xs: per-layer inputs, each a stacked array, a per-layer tuple (as the weights) or None.
  Returns (x, outputs stacked, or per field a tuple per layer). Stacked weights run under
  `lax.scan` with the residual pinned at block boundaries, per-layer ones as a Python loop."""
  if w.stacked:
    def body(x, step_xs):
      lw, layer_xs = step_xs
      x, ys = block(lw, constrain(x, RESIDUAL, "block input"), layer_xs)
      return constrain(x, RESIDUAL, "block output"), ys
    return jax.lax.scan(_remat(body, cfg) if cfg.remat else body, x, (w.layers, xs))
  block = _remat(block, cfg) if cfg.remat else block
  ys = []
  for i, lw in enumerate(w.layers):
    x, y = block(lw, x, tuple(None if s is None else s[i] for s in xs))
    ys.append(y)
  return x, jax.tree.map(lambda *a: tuple(a), *ys)


def _embed(w: Weights, cfg: ModelConfig, tokens: jax.Array) -> jax.Array:
  # The lookup reads a replicated table (one all-gather of [vocab, embed], in compute dtype):
  # GSPMD cannot gather rows of a vocab x embed-sharded table into batch-sharded rows itself.
  table = constrain(w.embed.astype(jnp.dtype(cfg.compute_dtype)), (None, None), "embedding table")
  return constrain(jnp.take(table, tokens, axis=0), RESIDUAL, "embedding")


def _inputs(tokens: jax.Array, positions: jax.Array | None, segment_ids: jax.Array | None,
            cfg: ModelConfig) -> tuple[Rope, jax.Array]:
  """(RoPE tables, segment ids) with the defaults: positions 0..t-1, one segment."""
  b, t = tokens.shape
  if positions is None:
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  if segment_ids is None:
    segment_ids = jnp.ones((b, t), jnp.int32)
  return Rope(*rope_tables(positions, cfg)), segment_ids


def forward(w: Weights, cfg: ModelConfig, tokens: jax.Array, positions: jax.Array | None = None,
            *, segment_ids: jax.Array | None = None) -> jax.Array:
  """Final hidden states [batch, seq, embed] of whole sequences tokens [batch, seq] (training,
  scoring); `lm_head` makes logits of them.

  positions:   [batch, seq] RoPE positions (default 0..seq-1).
  segment_ids: [batch, seq] packed-sequence ids, 0 = padding (default all 1): a token attends
               to the earlier tokens of its own segment.
  """
  check_layout(w, cfg)
  rope, segment_ids = _inputs(tokens, positions, segment_ids, cfg)
  x = _embed(w, cfg, tokens)
  mask = _self_mask(segment_ids)
  x, _ = _run_layers(lambda lw, x, _: (_train_block(lw, x, rope, mask, cfg), None), x, w, (), cfg)
  return rms_norm(x, w.final_norm, cfg.rms_norm_eps)


def forward_logits(w: Weights, cfg: ModelConfig, tokens: jax.Array,
                   positions: jax.Array | None = None, *, segment_ids: jax.Array | None = None,
                   logits_dtype=jnp.float32) -> jax.Array:
  """Logits [batch, seq, vocab] of `forward`."""
  hidden = forward(w, cfg, tokens, positions, segment_ids=segment_ids)
  return constrain(lm_head(w, cfg, hidden, logits_dtype), LOGITS, "logits")


def _check_sources(w: Weights, cache: KVCache, prefix: Prefix | None) -> None:
  """A cache and a prefix must be stacked or per layer like the weights (and as many layers)."""
  n = (len(w.layers) if not w.stacked else jax.tree.leaves(w.layers)[0].shape[0])
  for name, c in (("cache", cache), ("prefix", prefix)):
    if c is None:
      continue
    per_layer = isinstance(c.k, (list, tuple))
    if per_layer == w.stacked:
      raise ValueError(f"{name} layout ({'per-layer' if per_layer else 'stacked'}) does not "
                       f"match the weights ({'stacked' if w.stacked else 'per-layer'})")
    if (len(c.k) if per_layer else c.k.shape[0]) != n:
      raise ValueError(f"{name} holds {len(c.k) if per_layer else c.k.shape[0]} layers, the "
                       f"weights {n}")


def _cached_layers(w: Weights, cfg: ModelConfig, tokens: jax.Array, positions: jax.Array | None,
                   cache: KVCache, segment_ids: jax.Array | None, prefix: Prefix | None,
                   cache_read_buckets: int) -> tuple[jax.Array, KVCache]:
  """Final hidden states of new tokens written into `cache` (and reading `prefix`)."""
  check_layout(w, cfg)
  _check_sources(w, cache, prefix)
  rope, segment_ids = _inputs(tokens, positions, segment_ids, cfg)
  x = _embed(w, cfg, tokens)
  ctx, new_valid = _cache_context(cache, segment_ids != 0, cache_read_buckets)

  def block(lw, x, layer_xs):
    ck, cv, pk, pv = layer_xs
    pre = None if prefix is None else LayerPrefix(pk, pv, prefix.valid, prefix.row_slot)
    return _cached_block(lw, x, rope, LayerCache(ck, cv), ctx, pre, cfg)

  xs = (cache.k, cache.v) + ((None, None) if prefix is None else (prefix.k, prefix.v))
  x, new = _run_layers(block, x, w, xs, cfg)
  x = rms_norm(x, w.final_norm, cfg.rms_norm_eps)
  return x, KVCache(k=new.k, v=new.v, valid=new_valid, index=cache.index + tokens.shape[1])


def prefill(w: Weights, cfg: ModelConfig, tokens: jax.Array, cache: KVCache, *,
            positions: jax.Array | None = None,
            segment_ids: jax.Array | None = None) -> tuple[jax.Array, KVCache]:
  """Prompts tokens [batch, seq] into `cache` (written at `cache.index`, attending to its valid
  slots and to each other causally). Returns (final hidden states [batch, seq, embed], cache).

  segment_ids: 0 marks tokens that are written but never attended to (padding).
  """
  return _cached_layers(w, cfg, tokens, positions, cache, segment_ids, None, 1)


def decode_step(w: Weights, cfg: ModelConfig, tokens: jax.Array, positions: jax.Array,
                cache: KVCache, *, segment_ids: jax.Array | None = None,
                prefix: Prefix | None = None, cache_read_buckets: int = 1,
                logits_dtype=jnp.float32) -> tuple[jax.Array, KVCache]:
  """Next-token logits [batch, t, vocab] of tokens [batch, t] (one per row when decoding) at
  `positions`, written into `cache`; each row also reads the shared `prefix` (rows grouped as
  [problems, batch // problems], or by `prefix.row_slot`). Returns (logits, cache).

  segment_ids: 0 marks rows whose tokens are written but never attended to (idle rows).
  cache_read_buckets: attention reads only the written part of the ring, rounded up to one of
               this many static sizes (`lax.switch`): early steps read a fraction of a long
               cache. 1 = always read every slot.
  """
  x, cache = _cached_layers(w, cfg, tokens, positions, cache, segment_ids, prefix,
                            cache_read_buckets)
  return constrain(lm_head(w, cfg, x, logits_dtype), LOGITS, "logits"), cache


def lm_head(w: Weights, cfg: ModelConfig, x: jax.Array, logits_dtype=jnp.float32) -> jax.Array:
  """x [..., embed] -> logits [..., vocab] (tied embeddings use `embed` transposed)."""
  dtype = x.dtype
  if cfg.tie_word_embeddings:
    return jnp.einsum("...e,ve->...v", x, w.embed.astype(dtype),
                      preferred_element_type=jnp.float32).astype(logits_dtype)
  return jnp.einsum("...e,ev->...v", x, w.lm_head.astype(dtype),
                    preferred_element_type=jnp.float32).astype(logits_dtype)


def prefix_from_cache(cache: KVCache) -> Prefix:
  """Turns a prefilled cache (one row per problem, written from slot 0) into a shared Prefix
  (keys time-major, like the values: the prefix's scores are one matmul over many rows)."""
  return Prefix(k=jax.tree.map(lambda k: jnp.swapaxes(k, -1, -2), cache.k), v=cache.v,
                valid=cache.valid)


def to_numpy_tree(params: Any) -> Any:
  return jax.tree.map(np.asarray, params)
