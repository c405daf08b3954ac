"""AdamW with linear warmup + cosine decay and global-norm gradient clipping (optax)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from mathjax_sft.configtree import setting


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """AdamW, global-norm clipping and the learning-rate schedule (the trainer's `optimizer`)."""
  learning_rate: float = setting(2e-5, "Peak learning rate, reached after the warmup.")
  warmup_steps: int = setting(-1, "Linear warmup steps; -1: warmup_ratio x the run's steps.")
  warmup_ratio: float = setting(0.03, "Warmup as a fraction of the run's steps (with "
                                "warmup_steps = -1).")
  min_lr_ratio: float = setting(0.0, "The cosine decays to learning_rate x min_lr_ratio.")
  weight_decay: float = setting(0.0, "AdamW decoupled weight decay (never on norm scales).")
  b1: float = setting(0.9, "AdamW beta1.")
  b2: float = setting(0.999, "AdamW beta2.")
  eps: float = setting(1e-8, "AdamW epsilon.")
  max_grad_norm: float = setting(1.0, "Clip the global gradient norm to this (0 = no clipping).")

  def warmup(self, max_steps: int) -> int:
    """Warmup steps of a run of max_steps."""
    return self.warmup_steps if self.warmup_steps >= 0 else int(round(self.warmup_ratio * max_steps))


def schedule(cfg: OptimizerConfig, max_steps: int) -> optax.Schedule:
  """HF Trainer's cosine-with-warmup: the update of training step s (1-based) uses lr(s - 1),

    lr(c) = learning_rate * c / warmup_steps                          c < warmup_steps
    lr(c) = end + (learning_rate - end) * (1 + cos(pi * p)) / 2       p = (c - warmup) / (max - warmup)

  with end = learning_rate * min_lr_ratio.
  """
  peak, end = cfg.learning_rate, cfg.learning_rate * cfg.min_lr_ratio
  warmup = max(cfg.warmup(max_steps), 0)
  decay = max(int(max_steps) - warmup, 1)

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


def make_optimizer(cfg: OptimizerConfig, param_axes: Any, max_steps: int
                   ) -> optax.GradientTransformation:
  """Clipping + AdamW over a run of max_steps, for params whose logical axes are `param_axes`
  (decay mask from them)."""
  parts = []
  if cfg.max_grad_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.max_grad_norm))
  parts.append(optax.adamw(schedule(cfg, max_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                           weight_decay=cfg.weight_decay, mask=decay_mask(param_axes)))
  return optax.chain(*parts)
