"""Turning logits into tokens: greedy, temperature, top-k, top-p — all traced values.

Sampling is inverse-CDF: one uniform per row, compared against the running sum of the
(unnormalised) probabilities. It draws from exactly the softmax distribution, costs one cumsum
over the vocabulary, and — unlike Gumbel-max (`jax.random.categorical`) — needs one random
number per row instead of one per vocabulary entry (DESIGN.md §6: 47 ms vs 0.8 ms per step at
batch 64 on CPU). `temperature`, `top_p`, `top_k` are traced, so a sweep does not recompile;
only whether filtering is on at all (`filtered`) is static, because it needs a full sort.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


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

  @property
  def filtered(self) -> bool:
    return self.top_p < 1.0 or self.top_k > 0


def _inverse_cdf(weights: jax.Array, u: jax.Array) -> jax.Array:
  """Index i with cdf[i-1] <= u * total < cdf[i]; weights [b, v] >= 0, u [b] in [0, 1)."""
  cdf = jnp.cumsum(weights, axis=-1)
  target = u[:, None] * cdf[:, -1:]
  idx = jnp.sum(cdf <= target, axis=-1)
  return jnp.minimum(idx, weights.shape[-1] - 1).astype(jnp.int32)


def sample_tokens(logits: jax.Array, u: jax.Array, temperature: jax.Array, top_p: jax.Array,
                  top_k: jax.Array, filtered: bool = False) -> jax.Array:
  """logits [b, vocab] (f32), u [b] uniforms -> tokens [b] int32."""
  logits = logits.astype(jnp.float32)
  greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  z = logits / jnp.maximum(temperature, 1e-6)
  z = z - jnp.max(z, axis=-1, keepdims=True)
  if not filtered:
    sampled = _inverse_cdf(jnp.exp(z), u)
  else:
    order = jnp.argsort(-z, axis=-1)                                   # [b, v] descending
    zs = jnp.take_along_axis(z, order, axis=-1)
    w = jnp.exp(zs)
    rank = jnp.arange(z.shape[-1])[None, :]
    keep = (top_k <= 0) | (rank < top_k)
    probs = w / jnp.sum(w, axis=-1, keepdims=True)
    before = jnp.cumsum(probs, axis=-1) - probs                       # mass strictly before
    keep &= before < top_p                                            # always keeps the top token
    pos = _inverse_cdf(jnp.where(keep, w, 0.0), u)
    sampled = jnp.take_along_axis(order, pos[:, None], axis=-1)[:, 0].astype(jnp.int32)
  return jnp.where(temperature > 0, sampled, greedy)
