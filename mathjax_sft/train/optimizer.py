"""AdamW with linear warmup + cosine decay and global-norm gradient clipping (optax)."""

from __future__ import annotations

import dataclasses

from typing import Any

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  learning_rate: float
  max_steps: int
  warmup_steps: int = 0
  min_lr_ratio: float = 0.0
  weight_decay: float = 0.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  max_grad_norm: float = 1.0   # 0 = no clipping

  @classmethod
  def from_config(cls, c, max_steps: int) -> "OptimizerConfig":
    warmup = c.warmup_steps if c.warmup_steps >= 0 else int(round(c.warmup_ratio * max_steps))
    return cls(learning_rate=c.learning_rate, max_steps=max_steps, warmup_steps=warmup,
               min_lr_ratio=c.min_lr_ratio, weight_decay=c.weight_decay, b1=c.adam_b1,
               b2=c.adam_b2, eps=c.adam_eps, max_grad_norm=c.max_grad_norm)


def schedule(cfg: OptimizerConfig) -> optax.Schedule:
  """HF Trainer's cosine-with-warmup: the update of training step s (1-based) uses lr(s - 1),

    lr(c) = learning_rate * c / warmup_steps                          c < warmup_steps
    lr(c) = end + (learning_rate - end) * (1 + cos(pi * p)) / 2       p = (c - warmup) / (max - warmup)

  with end = learning_rate * min_lr_ratio.
  """
  peak, end = cfg.learning_rate, cfg.learning_rate * cfg.min_lr_ratio
  warmup = max(int(cfg.warmup_steps), 0)
  decay = max(int(cfg.max_steps) - warmup, 1)

  def lr(count):
    c = jnp.asarray(count, jnp.float32)
    warm = peak * c / max(warmup, 1)
    progress = jnp.clip((c - warmup) / decay, 0.0, 1.0)
    cosine = end + (peak - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    return jnp.where(c < warmup, warm, cosine)

  return lr


NO_DECAY_AXES = ("norm",)   # parameters with one of these logical axes are never decayed


def decay_mask(param_axes: Any) -> Any:
  """Weight-decay mask from the parameters' logical axes (a pytree of axis-name tuples, e.g.
  `llama.param_axes(cfg, stacked)`): True for weight matrices and embeddings, False for norm
  scales -- also when they are stacked `[layers, embed]` under scan."""
  is_axes = lambda x: isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)
  return jax.tree.map(lambda axes: not any(a in NO_DECAY_AXES for a in axes), param_axes,
                      is_leaf=is_axes)


def make_optimizer(cfg: OptimizerConfig, param_axes: Any) -> optax.GradientTransformation:
  """Clipping + AdamW for params whose logical axes are `param_axes` (decay mask from them)."""
  parts = []
  if cfg.max_grad_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.max_grad_norm))
  parts.append(optax.adamw(schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                           weight_decay=cfg.weight_decay, mask=decay_mask(param_axes)))
  return optax.chain(*parts)
