"""Turning logits into tokens: greedy, temperature, top-k, top-p — all traced values.

A sampling rule is one small class (`Rule`) behind one method: it maps scaled logits (descending
order when any rule `sorts`) to filtered ones (-inf = dropped). `SamplingParams` holds the user's
settings and lists its rules in transformers' order (temperature, then top-k, then top-p over the
renormalised top-k); a new rule (e.g. min-p) is one class here plus its field. Rule values are
pytree leaves, so a sweep over them does not recompile; which rules are on is the pytree
structure, so turning a filter on or off does.

Sampling is inverse-CDF: one uniform per row, compared against the running sum of the
(unnormalised) probabilities. It draws from exactly the softmax distribution, costs two short
running sums (over vocabulary blocks, then inside one block) and — unlike Gumbel-max
(`jax.random.categorical`) — needs one random number per row instead of one per vocabulary
entry (see docs/design.md, "Sampling rules"; 47 ms vs 0.8 ms per step at batch 64 on CPU).
Profiled in the decode loop (batch 64, 49K vocabulary, 2-core AVX2 CPU): ~22 ms per step with
one running sum over the whole vocabulary (XLA:CPU lowers it to a reduce-window) and an argmax
computed on every step; ~2.5 ms with the two-level sum and greedy behind a `cond`.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp


class Rule(abc.ABC):
  """One logits processor. `sorts`: it needs the logits in descending order (a full sort)."""
  sorts: ClassVar[bool] = False

  @abc.abstractmethod
  def __call__(self, z: jax.Array) -> jax.Array:
    """z [b, v] float32 logits (temperature applied, max 0) -> the same with dropped tokens at
    -inf."""


def _rule(cls):
  """A frozen dataclass whose fields are traced pytree leaves."""
  cls = dataclasses.dataclass(frozen=True)(cls)
  return jax.tree_util.register_dataclass(cls)


@_rule
class TopK(Rule):
  """Keep the k most likely tokens."""
  k: jax.Array
  sorts: ClassVar[bool] = True

  def __call__(self, z):
    return jnp.where(jnp.arange(z.shape[-1])[None, :] < self.k, z, -jnp.inf)


@_rule
class TopP(Rule):
  """Keep the smallest most-likely set whose (renormalised) probability reaches p: .5/.3/.15/.05
  after top-k 2 is .625/.375, so p = .55 keeps one token."""
  p: jax.Array
  sorts: ClassVar[bool] = True

  def __call__(self, z):
    probs = jax.nn.softmax(z, axis=-1)
    keep = (jnp.cumsum(probs, axis=-1) - probs) < self.p              # always keeps the top
    return jnp.where(keep, z, -jnp.inf)


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """temperature 0 = greedy; top_p 1.0 and top_k 0 = no filtering."""
  temperature: float = 0.7
  top_p: float = 1.0
  top_k: int = 0

  def __post_init__(self):
    if self.temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0, got {self.top_k}")

  def rules(self) -> tuple[Rule, ...]:
    """The filters that are on, in the order they apply (after temperature)."""
    out: list[Rule] = []
    if self.top_k > 0:
      out.append(TopK(jnp.int32(self.top_k)))
    if self.top_p < 1.0:
      out.append(TopP(jnp.float32(self.top_p)))
    return tuple(out)

  def traced(self) -> "Sampler":
    return Sampler(jnp.float32(self.temperature), self.rules())


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Sampler:
  """What a jitted program receives: the temperature and the rules (a pytree)."""
  temperature: jax.Array
  rules: tuple[Rule, ...]


def weights(logits: jax.Array, sampler: Sampler) -> tuple[jax.Array, jax.Array | None]:
  """Unnormalised sampling weights [b, v] (in descending order if a rule sorts) and that order."""
  z = logits.astype(jnp.float32) / jnp.maximum(sampler.temperature, 1e-6)
  z = z - jnp.max(z, axis=-1, keepdims=True)
  order = None
  if any(r.sorts for r in sampler.rules):
    order = jnp.argsort(-z, axis=-1)                                   # [b, v] descending
    z = jnp.take_along_axis(z, order, axis=-1)
  for rule in sampler.rules:
    z = rule(z)
  return jnp.exp(z), order


CDF_BLOCK = 256   # vocabulary entries per block of the two-level inverse CDF


def _lookup(weights: jax.Array, order, u: jax.Array) -> jax.Array:
  """Inverse CDF: weights [b, v] (>= 0), u [b, n] in [0, 1) -> token ids [b, n] int32.

  Two levels, so no running sum over the whole vocabulary is built: the vocabulary is cut into
  blocks of `CDF_BLOCK`, a draw first finds its block from the running sum of block totals
  ([b, v / CDF_BLOCK]), then its token from the running sum inside that one block. A draw lands on
  the first token whose running sum exceeds `u * total`, so zero-weight tokens (filtered out, or
  exp underflow) are never drawn; rounding past the end goes to the last positive-weight token.
  """
  b, v = weights.shape
  blk = min(CDF_BLOCK, v)
  nb = -(-v // blk)
  w = jnp.pad(weights, ((0, 0), (0, nb * blk - v))).reshape(b, nb, blk)   # [b, nb, blk]
  block_sums = jnp.sum(w, axis=-1)                                          # [b, nb]
  block_cdf = jnp.cumsum(block_sums, axis=-1)
  targets = u * block_cdf[:, -1:]                                           # [b, n]
  bi = jnp.sum(block_cdf[:, None, :] <= targets[:, :, None], axis=-1)       # [b, n] block
  last_block = nb - 1 - jnp.argmax(block_sums[:, ::-1] > 0, axis=-1)        # [b]
  bi = jnp.minimum(bi, last_block[:, None])
  before = jnp.take_along_axis(block_cdf - block_sums, bi, axis=-1)         # [b, n]
  inner = jnp.take_along_axis(w, bi[:, :, None], axis=1)                     # [b, n, blk]
  inner_cdf = jnp.cumsum(inner, axis=-1)
  rest = jnp.maximum(targets - before, 0.0)
  j = jnp.sum(inner_cdf <= rest[:, :, None], axis=-1)                        # [b, n]
  last_j = blk - 1 - jnp.argmax(inner[:, :, ::-1] > 0, axis=-1)
  idx = bi * blk + jnp.minimum(j, last_j)
  if order is not None:
    idx = jnp.take_along_axis(order, idx, axis=-1)
  return idx.astype(jnp.int32)


def sample_tokens(logits: jax.Array, u: jax.Array, sampler: Sampler) -> jax.Array:
  """logits [b, vocab], u [b] uniforms -> tokens [b] int32 (argmax when temperature == 0)."""
  return sample_many(logits, u[:, None], sampler)[:, 0]


def sample_many(logits: jax.Array, u: jax.Array, sampler: Sampler) -> jax.Array:
  """Several draws per row from the same logits: logits [b, vocab], u [b, n] -> [b, n] int32.

  Draw (row, i) equals `sample_tokens(logits[row:row+1], u[row, i:i+1], ...)`: the weights and
  their block totals are computed once per row, then each uniform finds its block and its token.
  """
  def sampled():
    return _lookup(*weights(logits, sampler), u)

  def greedy():
    return jnp.broadcast_to(jnp.argmax(logits, axis=-1).astype(jnp.int32)[:, None], u.shape)

  return jax.lax.cond(sampler.temperature > 0, sampled, greedy)   # only the branch taken runs
