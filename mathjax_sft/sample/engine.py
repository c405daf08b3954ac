"""Pass@N sampling engine: prefill each prompt once, decode N samples sharing its KV cache.

For a batch of P problems:
  1. prefill   [P, prompt_bucket] -> a `Prefix` (keys/values per problem) + last-token logits.
  2. decode    rows [P * S] (S samples per problem per chunk; N = chunks x S) read their
               problem's prefix without copies, and keep only their own generated keys in a
               ring-buffer cache of `max_new_tokens` slots. The loop is one `lax.while_loop`
               inside one jit, with a done mask; it exits as soon as every row has finished.
Sample j of problem `key` draws its t-th token with the uniform
`fold_in(fold_in(fold_in(seed, key), j), t)`, so a sample does not depend on which other
problems or samples share its batch.

Shapes are bucketed (prompt length to a power of two, rows fixed by the config), so a run
compiles a handful of programs; `Engine.compiled_shapes` lists them.
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
from mathjax_sft.sample.strategies import SamplingParams, sample_tokens
from mathjax_sft.sharding import rules as sharding_rules

log = logging.getLogger(__name__)

MIN_PROMPT_BUCKET = 64


@dataclasses.dataclass(frozen=True)
class EngineConfig:
  max_new_tokens: int = 512
  problems_per_batch: int = 4       # P: prompts prefilled together
  samples_per_chunk: int = 64       # S: decode rows per problem at once (N is split in chunks)
  stop_token_ids: tuple[int, ...] = ()        # besides the model's EOS ids
  stop_sequences: tuple[tuple[int, ...], ...] = ()   # token-id sequences that end a sample
  max_prompt_len: int | None = None

  def __post_init__(self):
    for name in ("max_new_tokens", "problems_per_batch", "samples_per_chunk"):
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


class Engine:
  """Holds params (unrolled layer layout) and jitted prefill/decode programs."""

  def __init__(self, params: llama.Params, cfg: ModelConfig, engine_cfg: EngineConfig,
               mesh: Mesh | None = None):
    self.cfg = cfg
    self.ecfg = engine_cfg
    self.params = llama.unstack_layers(params)
    self.mesh = mesh
    self.stop_ids = tuple(sorted(set(cfg.eos_token_ids) | set(engine_cfg.stop_token_ids)))
    if not self.stop_ids and not engine_cfg.stop_sequences:
      log.warning("no EOS or stop tokens: every sample runs to max_new_tokens")
    self.compiled_shapes: set[tuple] = set()
    self._prefill = jax.jit(self._prefill_fn)
    self._decode = jax.jit(self._decode_fn, static_argnames=("filtered",), donate_argnums=())
    self.new_tokens = 0
    self.decode_seconds = 0.0

  # ---- jitted programs ----------------------------------------------------------------------
  def _prefill_fn(self, params, tokens, lengths):
    """tokens [P, T] right-padded, lengths [P] -> (Prefix, last logits [P, V])."""
    p, t = tokens.shape
    valid = jnp.arange(t)[None, :] < lengths[:, None]
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (p, t))
    cache = llama.init_cache(self.cfg, p, t, stacked=False)
    hidden, cache = llama.forward(params, self.cfg, tokens, positions,
                                  segment_ids=valid.astype(jnp.int32), cache=cache,
                                  return_hidden=True)
    last = jnp.take_along_axis(hidden, (lengths - 1)[:, None, None], axis=1)[:, 0]   # [P, E]
    return llama.prefix_from_cache(cache), llama.lm_head(params, self.cfg, last)

  def _decode_fn(self, params, prefix, last_logits, lengths, keys, sample_ids, seed, temperature,
                 top_p, top_k, filtered: bool):
    """Decodes rows [P * S]: row r belongs to problem r // S and is sample sample_ids[r].

    keys [P] int32 problem keys, seed int32 scalar; returns (tokens [B, max_new] int32, num_tokens [B], stopped [B]).
    """
    cfg, ecfg = self.cfg, self.ecfg
    p = last_logits.shape[0]
    b = sample_ids.shape[0]
    s = b // p
    max_new = ecfg.max_new_tokens
    seed_key = jax.random.key(seed)
    row_keys = jax.vmap(lambda k, j: jax.random.fold_in(jax.random.fold_in(seed_key, k), j))(
        jnp.repeat(keys, s), sample_ids)
    row_len = jnp.repeat(lengths, s)                                        # [B] prompt lengths

    def draw(logits, step):
      u = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, step)))(row_keys)
      return sample_tokens(logits, u, temperature, top_p, top_k, filtered)

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

    first = draw(jnp.repeat(last_logits, s, axis=0), 0)
    window = jnp.concatenate([jnp.full((b, width - 1), -1, jnp.int32), first[:, None]], axis=1)
    done = stops(first, window)
    out = jnp.zeros((b, max_new), jnp.int32).at[:, 0].set(first)
    num = jnp.where(done, 0, 1).astype(jnp.int32)       # tokens kept (stop token excluded)
    cache = llama.init_cache(cfg, b, max_new, stacked=False)

    def cond(state):
      step, _, _, done, _, _, _ = state
      return (step < max_new - 1) & ~jnp.all(done)

    def body(state):
      step, cache, tok, done, out, num, window = state
      logits, cache = llama.forward(params, cfg, tok[:, None], (row_len + step)[:, None],
                                    cache=cache, prefix=prefix)
      nxt = draw(logits[:, 0], step + 1)
      window = jnp.concatenate([window[:, 1:], nxt[:, None]], axis=1)
      hit = stops(nxt, window) & ~done
      out = out.at[:, step + 1].set(jnp.where(done, 0, nxt))
      num = jnp.where(done | hit, num, num + 1)
      return step + 1, cache, nxt, done | hit, out, num, window

    state = (jnp.zeros((), jnp.int32), cache, first, done, out, num, window)
    _, _, _, done, out, num, _ = jax.lax.while_loop(cond, body, state)
    return out, num, done

  # ---- host side ----------------------------------------------------------------------------
  def _shard_batch(self, x):
    if self.mesh is None:
      return x
    spec = sharding_rules.logical_to_spec(("batch",) + (None,) * (np.ndim(x) - 1),
                                          mesh=self.mesh, shape=np.shape(x), name="sampler batch")
    return jax.device_put(x, NamedSharding(self.mesh, spec))

  def generate(self, prompts: Sequence[Sequence[int]], problem_ids: Sequence[str], num_samples: int,
               sampling: SamplingParams, seed: int = 0) -> list[Samples]:
    """N samples for each prompt (token ids). Batches of P problems, chunks of S samples."""
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
    S = min(self.ecfg.samples_per_chunk, num_samples)
    keys = np.array([problem_key(i) for i in problem_ids], np.int32)
    per_problem = [[None] * num_samples for _ in range(P)]
    finished = [[False] * num_samples for _ in range(P)]
    temperature = jnp.float32(sampling.temperature)
    top_p, top_k = jnp.float32(sampling.top_p), jnp.int32(sampling.top_k)
    for c0 in range(0, num_samples, S):
      sample_ids = np.tile(np.arange(c0, c0 + S, dtype=np.int32), P)      # [P * S]
      self._note_shape(("decode", P * S, t, self.ecfg.max_new_tokens, sampling.filtered))
      tic = time.perf_counter()
      out, num, done = self._decode(self.params, prefix, last, self._shard_batch(lengths),
                                    self._shard_batch(keys), self._shard_batch(sample_ids),
                                    jnp.int32(seed), temperature, top_p, top_k, filtered=sampling.filtered)
      out, num, done = np.asarray(out), np.asarray(num), np.asarray(done)
      self.decode_seconds += time.perf_counter() - tic
      for r in range(P * S):
        i, j = divmod(r, S)
        j += c0
        if j < num_samples and i < real:
          per_problem[i][j] = out[r, :num[r]].tolist()
          finished[i][j] = bool(done[r])
          self.new_tokens += int(num[r]) + int(done[r])
    return [Samples(tokens=per_problem[i], finished=finished[i]) for i in range(P)]

  def _note_shape(self, key: tuple) -> None:
    if key not in self.compiled_shapes:
      self.compiled_shapes.add(key)
      log.info("compiling %s (programs so far: %d)", key, len(self.compiled_shapes))
