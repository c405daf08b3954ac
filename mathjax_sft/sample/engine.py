"""Pass@N sampling engine: prefill each prompt once, decode N samples sharing its KV cache.

For a batch of P problems:
  1. prefill   [P, prompt_bucket] -> a `Prefix` (keys/values per problem) + last-token logits.
  2. decode    rows [P * S] (S slots per problem) read their problem's prefix without copies
               and keep only their own generated keys in a ring-buffer cache of
               `max_new_tokens` slots. When a row's sample ends, the row takes the problem's
               next pending sample (continuous batching), until all N are drawn. The loop is one
               `lax.while_loop` inside one jit; it exits when no row has work left.
Sample j of problem `key` draws its t-th token with the uniform
`fold_in(fold_in(fold_in(seed, key), j), t)`, so a sample does not depend on which other
problems or samples share its batch.

Shapes are bucketed (prompt length to a power of two, rows fixed by the config), so a run
compiles a handful of programs; `Engine.compiled_shapes` lists them.

Memory: the engine holds one copy of the weights, in its decode layout (per-layer; q/k/v and
gate/up concatenated when `tensor` is 1, gate/up stacked as [2, embed, mlp] otherwise). `prepare_params` builds it one tensor at a time; with
`donate=True` each stacked input buffer is freed as soon as its slices exist, so the peak is the
weights plus one stacked tensor, not twice the weights. Under a mesh, decode rows, prompts and
KV caches are sharded by the rule table's `batch` / `cache_*` axes (traced under
`rules.with_mesh`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import zlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from mathjax_sft.model import llama
from mathjax_sft.model.config import ModelConfig
from mathjax_sft.sample.strategies import SamplingParams, sample_many, sample_tokens
from mathjax_sft.sharding import rules as sharding_rules

log = logging.getLogger(__name__)

MIN_PROMPT_BUCKET = 64


@dataclasses.dataclass(frozen=True)
class EngineConfig:
  max_new_tokens: int = 512
  problems_per_batch: int = 4       # P: prompts prefilled together
  slots_per_problem: int = 64       # S: decode rows per problem, refilled until N are drawn
  stop_token_ids: tuple[int, ...] = ()        # besides the model's EOS ids
  stop_sequences: tuple[tuple[int, ...], ...] = ()   # token-id sequences that end a sample
  max_prompt_len: int | None = None
  cache_read_buckets: int = 4       # attention reads the written part of the ring, rounded up
                                    # to one of this many sizes (1: always every slot)

  def __post_init__(self):
    for name in ("max_new_tokens", "problems_per_batch", "slots_per_problem",
                 "cache_read_buckets"):
      if getattr(self, name) <= 0:
        raise ValueError(f"EngineConfig.{name} must be positive, got {getattr(self, name)}")


def prompt_bucket(length: int) -> int:
  return max(MIN_PROMPT_BUCKET, 1 << max(0, math.ceil(math.log2(max(length, 1)))))


def problem_key(problem_id: str) -> int:
  """A stable 31-bit integer for a problem id (seeds its samples)."""
  return zlib.crc32(problem_id.encode("utf-8")) & 0x7FFFFFFF


@dataclasses.dataclass
class Samples:
  """Generated token ids of one problem: `tokens[j]` is sample j (EOS/stop excluded)."""
  tokens: list[list[int]]
  finished: list[bool]          # ended by EOS / stop (False: hit max_new_tokens)


def fuses(mesh: Mesh | None) -> bool:
  """Whether the decode layout concatenates q/k/v and gate/up (only where `tensor` is
  unsharded); under tensor parallelism it stacks gate/up instead (`llama.fuse_layers`)."""
  return mesh is None or mesh.shape.get("tensor", 1) == 1


def engine_param_axes(cfg: ModelConfig, mesh: Mesh | None) -> llama.Params:
  return llama.fused_param_axes(cfg, concat=fuses(mesh))


def engine_param_shardings(cfg: ModelConfig, mesh: Mesh | None) -> llama.Params | None:
  """Shardings of the decode layout's params (None without a mesh: default device)."""
  if mesh is None:
    return None
  abstract = jax.eval_shape(lambda p: _relayout(p, fuses(mesh)), llama.abstract_params(cfg))
  return sharding_rules.tree_shardings(mesh, engine_param_axes(cfg, mesh), abstract)


def _relayout(params: llama.Params, concat: bool) -> llama.Params:
  return llama.fuse_layers(llama.unstack_layers(params), concat)


def prepare_params(params: llama.Params, cfg: ModelConfig, mesh: Mesh | None,
                   donate: bool = False) -> llama.Params:
  """Stacked (or per-layer) params -> the decode layout, one stacked tensor at a time.

  With `donate`, each input buffer is deleted as soon as its slices (or its fused tensor) exist:
  the caller's arrays are consumed and at most one stacked tensor exists twice at any moment.
  (XLA cannot alias a stacked buffer to its slices, so the buffers are deleted explicitly.)"""
  fuse = fuses(mesh)   # concatenate (else stack gate/up)
  if isinstance(params["layers"], dict):
    layers = params["layers"]
    n = next(iter(layers.values())).shape[0]
    per_layer: list[dict] = [{} for _ in range(n)]
    for name in list(layers):
      stacked = layers[name]
      out_sh = None
      if mesh is not None:
        spec = stacked.sharding.spec
        out_sh = NamedSharding(mesh, jax.sharding.PartitionSpec(*tuple(spec)[1:]))
      split = jax.jit(lambda x: tuple(x[i] for i in range(n)),
                      out_shardings=None if out_sh is None else (out_sh,) * n)
      for i, piece in enumerate(split(stacked)):
        per_layer[i][name] = piece
      if donate:
        stacked.delete()
    params = dict(params, layers=per_layer)
  layer_sh = None
  if mesh is not None:
    layer_sh = engine_param_shardings(cfg, mesh)["layers"][0]
  fuse_one = jax.jit(lambda layer: llama.fuse_layers({"layers": [layer]}, fuse)["layers"][0],
                     out_shardings=layer_sh)
  groups = llama.FUSED if fuse else llama.STACKED
  fused = []
  for layer in params["layers"]:
    fused.append(fuse_one(layer))
    if donate:
      for parts in groups.values():
        for part in parts:
          layer[part].delete()
  return dict(params, layers=fused)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DecodeState:
  """What the decode loop carries from step to step: B = P x S rows serving P problems x N
  samples (sample g = problem * N + j)."""
  step: jax.Array               # int32 []: decode steps taken
  cache: llama.KVCache          # the rows' own generated keys / values (the prompt is a Prefix)
  j: jax.Array                  # int32 [B]: the sample a row draws (>= N: the row is idle)
  next_j: jax.Array             # int32 [P]: each problem's next sample not yet given to a row
  tok: jax.Array                # int32 [B]: each row's last token, the next step's input
  n: jax.Array                  # int32 [B]: tokens the row's sample has so far
  active: jax.Array             # bool [B]: the row is decoding a sample
  pending: jax.Array            # bool [B]: its sample ended when assigned: take new work next
  window: jax.Array             # int32 [B, width]: the row's last tokens (stop sequences)
  out: jax.Array                # int32 [P * N, max_new]: every sample's tokens
  out_len: jax.Array            # int32 [P * N]: sample lengths (stop token excluded)
  out_fin: jax.Array            # bool [P * N]: ended by a stop token (else by the budget)


class Engine:
  """Holds params (decode layout, see `prepare_params`) and jitted prefill/decode programs.

  `params=None` builds the programs only (ahead-of-time compilation: `aot.check_sample`)."""

  def __init__(self, params: llama.Params | None, cfg: ModelConfig, engine_cfg: EngineConfig,
               mesh: Mesh | None = None, donate: bool = False):
    self.cfg = cfg
    self.ecfg = engine_cfg
    self.params = None if params is None else prepare_params(params, cfg, mesh, donate)
    self.mesh = mesh
    self.stop_ids = tuple(sorted(set(cfg.eos_token_ids) | set(engine_cfg.stop_token_ids)))
    if not self.stop_ids and not engine_cfg.stop_sequences:
      log.warning("no EOS or stop tokens: every sample runs to max_new_tokens")
    self.compiled_shapes: set[tuple] = set()
    self._prefill = jax.jit(self._prefill_fn)
    self._decode = jax.jit(self._decode_fn, static_argnames=("num_samples", "slots", "filtered"))
    self.new_tokens = 0          # generated tokens, stop tokens included
    self.decode_steps = 0
    self.decode_seconds = 0.0

  # ---- jitted programs ----------------------------------------------------------------------
  def _prefill_fn(self, params, tokens, lengths):
    with sharding_rules.with_mesh(self.mesh):
      return self._prefill_body(params, tokens, lengths)

  def _decode_fn(self, params, prefix, last_logits, lengths, keys, seed, temperature, top_p,
                 top_k, num_samples: int, slots: int, filtered: bool):
    with sharding_rules.with_mesh(self.mesh):
      return self._decode_body(params, prefix, last_logits, lengths, keys, seed, temperature,
                               top_p, top_k, num_samples, slots, filtered)

  def _prefill_body(self, params, tokens, lengths):
    """tokens [P, T] right-padded, lengths [P] -> (Prefix, last logits [P, V])."""
    p, t = tokens.shape
    valid = jnp.arange(t)[None, :] < lengths[:, None]
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (p, t))
    cache = llama.init_cache(self.cfg, p, t, stacked=False, dtype=self.cfg.compute_dtype)
    hidden, cache = llama.forward(params, self.cfg, tokens, positions,
                                  segment_ids=valid.astype(jnp.int32), cache=cache,
                                  return_hidden=True)
    last = jnp.take_along_axis(hidden, (lengths - 1)[:, None, None], axis=1)[:, 0]   # [P, E]
    return llama.prefix_from_cache(cache), llama.lm_head(params, self.cfg, last)

  def _decode_body(self, params, prefix, last_logits, lengths, keys, seed, temperature, top_p,
                   top_k, num_samples: int, slots: int, filtered: bool):
    """All `num_samples` samples of P problems through P x `slots` decode rows.

    Row r serves problem r // slots. When its sample ends (stop token or max_new_tokens), the
    row is refilled with the problem's next pending sample (continuous batching: no row decodes
    padding while work is left); its cache slots are invalidated and it restarts at the end of
    the shared prompt. The first token of every sample is drawn up front from the prompt's last
    logits (one running sum per problem, one binary search per sample).

    keys [P] int32 problem keys, seed int32 scalar. Returns tokens [P * N, max_new] int32,
    lengths [P * N], finished [P * N] (True: ended by a stop token).
    """
    cfg, ecfg = self.cfg, self.ecfg
    P, N, S = last_logits.shape[0], num_samples, slots
    B, max_new = P * S, ecfg.max_new_tokens
    seed_key = jax.random.key(seed)
    sample_keys = jax.vmap(lambda k: jax.vmap(lambda j: jax.random.fold_in(
        jax.random.fold_in(seed_key, k), j))(jnp.arange(N)))(keys)        # [P, N] keys
    flat_keys = sample_keys.reshape(P * N)
    u0 = jax.vmap(jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 0))))(sample_keys)
    first = sample_many(last_logits, u0, temperature, top_p, top_k, filtered)  # [P, N]
    row_problem = jnp.repeat(jnp.arange(P), S)                             # [B]
    row_len = jnp.repeat(lengths, S)                                      # prompt lengths

    stop_ids = jnp.asarray(self.stop_ids or (-1,), jnp.int32)
    seqs = ecfg.stop_sequences
    width = max([len(q) for q in seqs] + [1])
    stop_seq = jnp.asarray([[-1] * (width - len(q)) + list(q) for q in seqs] or [[-2] * width],
                           jnp.int32)                                        # right-aligned
    stop_seq_len = jnp.asarray([len(q) for q in seqs] or [width], jnp.int32)

    def stops(tok, window):
      hit = jnp.any(tok[:, None] == stop_ids[None, :], axis=-1)
      if seqs:
        match = (window[:, None, :] == stop_seq[None]) | (jnp.arange(width)[None, None, :] <
                                                          width - stop_seq_len[None, :, None])
        hit |= jnp.any(jnp.all(match, axis=-1), axis=-1)
      return hit

    def assign(need, st):
      """Rows in `need` take their problem's next pending samples (or go idle)."""
      rank = jnp.cumsum(need.reshape(P, S), axis=1) - 1
      new_j = (st.next_j[:, None] + rank).reshape(B)
      j = jnp.where(need, new_j, st.j)
      has = j < N
      gidx = row_problem * N + jnp.minimum(j, N - 1)
      ftok = first.reshape(P * N)[gidx]
      window = jnp.where(need[:, None], jnp.concatenate(
          [jnp.full((B, width - 1), -1, jnp.int32), ftok[:, None]], axis=1), st.window)
      fstop = need & has & stops(ftok, window)            # a sample that is empty: done at once
      live = need & has & ~fstop
      # with a budget of one token the first token completes the sample (out_len stays
      # max_new = 1, unfinished): the row takes new work at once instead of decoding a second
      # token over the first
      full = live if max_new == 1 else jnp.zeros_like(live)
      drop = P * N                                         # out-of-range index: write nothing
      st = dataclasses.replace(
          st, j=j, window=window,
          next_j=st.next_j + jnp.sum(need.reshape(P, S), axis=1),
          tok=jnp.where(need, ftok, st.tok), n=jnp.where(need, 1, st.n),
          active=jnp.where(need, live & ~full, st.active), pending=fstop | full,
          out=st.out.at[jnp.where(live, gidx, drop), 0].set(ftok, mode="drop"),
          out_len=st.out_len.at[jnp.where(fstop, gidx, drop)].set(0, mode="drop"),
          out_fin=st.out_fin.at[jnp.where(fstop, gidx, drop)].set(True, mode="drop"),
          cache=dataclasses.replace(st.cache, valid=st.cache.valid & ~need[:, None]))
      return st

    cache = llama.init_cache(cfg, B, max_new, stacked=False, dtype=cfg.compute_dtype)
    st = DecodeState(step=jnp.zeros((), jnp.int32), cache=cache,
                     j=jnp.full((B,), -1, jnp.int32), next_j=jnp.zeros((P,), jnp.int32),
                     tok=jnp.zeros((B,), jnp.int32), n=jnp.zeros((B,), jnp.int32),
                     active=jnp.zeros((B,), bool), pending=jnp.zeros((B,), bool),
                     window=jnp.full((B, width), -1, jnp.int32),
                     out=jnp.zeros((P * N, max_new), jnp.int32),
                     out_len=jnp.full((P * N,), max_new, jnp.int32),
                     out_fin=jnp.zeros((P * N,), bool))
    st = assign(jnp.ones((B,), bool), st)
    step_cap = (-(-N // S) + 1) * max_new + 1

    def cond(st):
      return jnp.any(st.active | st.pending) & (st.step < step_cap)

    def body(st):
      n, active = st.n, st.active
      logits, cache = llama.forward(params, cfg, st.tok[:, None], (row_len + n - 1)[:, None],
                                    cache=st.cache, prefix=prefix,
                                    cache_read_buckets=ecfg.cache_read_buckets)
      gidx = row_problem * N + jnp.clip(st.j, 0, N - 1)
      u = jax.vmap(lambda k, i: jax.random.uniform(jax.random.fold_in(k, i)))(flat_keys[gidx], n)
      nxt = sample_tokens(logits[:, 0], u, temperature, top_p, top_k, filtered)
      window = jnp.concatenate([st.window[:, 1:], nxt[:, None]], axis=1)
      hit = active & stops(nxt, window)
      write = active & ~hit
      full = write & (n + 1 >= max_new)
      drop = P * N
      out = st.out.at[jnp.where(write, gidx, drop), jnp.minimum(n, max_new - 1)].set(
          nxt, mode="drop")
      ended = hit | full
      out_len = st.out_len.at[jnp.where(ended, gidx, drop)].set(jnp.where(hit, n, max_new),
                                                                   mode="drop")
      out_fin = st.out_fin.at[jnp.where(ended, gidx, drop)].set(hit, mode="drop")
      st = dataclasses.replace(st, step=st.step + 1, cache=cache, tok=nxt, n=n + 1,
                               window=window, out=out, out_len=out_len, out_fin=out_fin)
      return assign(ended | st.pending, st)

    st = jax.lax.while_loop(cond, body, st)
    return st.out, st.out_len, st.out_fin, st.step

  # ---- host side ----------------------------------------------------------------------------
  def _shard_batch(self, x):
    if self.mesh is None:
      return x
    spec = sharding_rules.logical_to_spec(("batch",) + (None,) * (np.ndim(x) - 1),
                                          mesh=self.mesh, shape=np.shape(x), name="sampler batch")
    return jax.device_put(x, NamedSharding(self.mesh, spec))

  def generate(self, prompts: Sequence[Sequence[int]], problem_ids: Sequence[str], num_samples: int,
               sampling: SamplingParams, seed: int = 0) -> list[Samples]:
    """N samples for each prompt (token ids), in batches of P problems."""
    if len(prompts) != len(problem_ids):
      raise ValueError("prompts and problem_ids differ in length")
    results: list[Samples] = []
    P = self.ecfg.problems_per_batch
    for start in range(0, len(prompts), P):
      batch = list(prompts[start:start + P])
      ids = list(problem_ids[start:start + P])
      results.extend(self._generate_batch(batch, ids, num_samples, sampling, seed)[:len(batch)])
    return results

  def _generate_batch(self, prompts, problem_ids, num_samples, sampling, seed) -> list[Samples]:
    P = self.ecfg.problems_per_batch
    real = len(prompts)
    prompts = prompts + [prompts[-1]] * (P - real)          # pad the batch to a fixed shape
    problem_ids = problem_ids + [problem_ids[-1]] * (P - real)
    lengths = np.array([len(p) for p in prompts], np.int32)
    if lengths.min() == 0:
      raise ValueError("empty prompt")
    limit = self.ecfg.max_prompt_len or self.cfg.max_position_embeddings - self.ecfg.max_new_tokens
    if lengths.max() > limit:
      raise ValueError(f"prompt of {lengths.max()} tokens exceeds the limit {limit}")
    t = prompt_bucket(int(lengths.max()))
    tokens = np.zeros((P, t), np.int32)
    for i, p in enumerate(prompts):
      tokens[i, :len(p)] = p
    self._note_shape(("prefill", P, t))
    prefix, last = self._prefill(self.params, self._shard_batch(tokens), self._shard_batch(lengths))
    S = min(self.ecfg.slots_per_problem, num_samples)
    keys = np.array([problem_key(i) for i in problem_ids], np.int32)
    self._note_shape(("decode", P, S, num_samples, t, self.ecfg.max_new_tokens, sampling.filtered))
    tic = time.perf_counter()
    out, out_len, out_fin, steps = self._decode(
        self.params, prefix, last, self._shard_batch(lengths), self._shard_batch(keys),
        jnp.int32(seed), jnp.float32(sampling.temperature), jnp.float32(sampling.top_p),
        jnp.int32(sampling.top_k), num_samples=num_samples, slots=S, filtered=sampling.filtered)
    out, out_len, out_fin = np.asarray(out), np.asarray(out_len), np.asarray(out_fin)
    self.decode_seconds += time.perf_counter() - tic
    self.decode_steps += int(steps)
    results = []
    for i in range(real):
      rows = range(i * num_samples, (i + 1) * num_samples)
      results.append(Samples(tokens=[out[r, :out_len[r]].tolist() for r in rows],
                             finished=[bool(out_fin[r]) for r in rows]))
      self.new_tokens += int(sum(out_len[r] + out_fin[r] for r in rows))
    return results

  def _note_shape(self, key: tuple) -> None:
    if key not in self.compiled_shapes:
      self.compiled_shapes.add(key)
      log.info("compiling %s (programs so far: %d)", key, len(self.compiled_shapes))
