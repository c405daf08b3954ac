"""Rotary position embeddings in HF's rotate-half layout (so HF weights need no permutation)."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from mathjax_sft.model.config import ModelConfig


def inverse_frequencies(cfg: ModelConfig) -> np.ndarray:
  """[head_dim // 2] float32 inverse frequencies, with HF's `linear` / `llama3` scaling."""
  d = cfg.head_dim
  inv = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
  kind = cfg.rope_type
  if kind == "default":
    return inv.astype(np.float32)
  scaling = dict(cfg.rope_scaling)
  factor = float(scaling["factor"])
  if kind == "linear":
    return (inv / factor).astype(np.float32)
  # llama3: long wavelengths scaled by `factor`, short ones kept, a smooth ramp in between.
  low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
  old_len = float(scaling["original_max_position_embeddings"])
  low_wavelen, high_wavelen = old_len / low, old_len / high
  wavelen = 2 * math.pi / inv
  scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
  smooth = (old_len / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_tables(positions: jnp.ndarray, cfg: ModelConfig) -> tuple[jnp.ndarray, jnp.ndarray]:
  """cos, sin of shape [batch, seq, head_dim] (float32) for integer positions [batch, seq]."""
  inv = jnp.asarray(inverse_frequencies(cfg))
  angles = positions.astype(jnp.float32)[..., None] * inv            # [b, t, d/2]
  angles = jnp.concatenate([angles, angles], axis=-1)                 # [b, t, d]
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
  """x: [batch, seq, heads, head_dim]; cos/sin: [batch, seq, head_dim]. Computed in float32."""
  dtype = x.dtype
  x = x.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  out = x * cos[:, :, None, :] + rotated * sin[:, :, None, :]
  return out.astype(dtype)
