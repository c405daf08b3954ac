"""Masked next-token loss, gradient accumulation, and the jitted train / eval steps.

The loss of a step is the mean cross-entropy over every response token of the global batch
(sum of token losses / number of loss tokens), whatever the number of microbatches, so a step
with `grad_accum_steps=k` equals one big-batch step. Microbatch j takes rows j, j+k, j+2k, ...
so every microbatch stays spread over all batch shards.

The cross-entropy runs over `cfg.loss_chunk` positions at a time (LM head rematerialised in the
backward pass): the f32 logits of a 256 x 2048 batch (67 GB for a 32K vocab) are never whole.
The jitted steps trace under `rules.with_mesh(mesh)`, so the model's activation constraints
apply.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mathjax_sft.model import llama
from mathjax_sft.model.config import ModelConfig
from mathjax_sft.sharding import rules as sharding_rules
from mathjax_sft.train.state import TrainState

Batch = dict[str, jax.Array]   # int32 [batch, seq] each: inputs, targets, loss_mask, segment_ids, positions


def batch_sharding(mesh: Mesh, batch_size: int, seq_len: int,
                   rules=sharding_rules.DEFAULT_RULES) -> NamedSharding:
  return sharding_rules.named_sharding(mesh, ("batch", "seq"), (batch_size, seq_len), rules,
                                       name="batch")


def _chunk_loss(params: llama.Params, cfg: ModelConfig, hidden: jax.Array, targets: jax.Array,
                mask: jax.Array) -> jax.Array:
  """Sum of masked cross-entropies of one chunk: hidden [b, c, embed], targets / mask [b, c]."""
  logits = sharding_rules.constrain(llama.lm_head(params, cfg, hidden), llama.LOGITS, "logits")
  logz = jax.nn.logsumexp(logits, axis=-1)                             # [b, c]
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return jnp.sum((logz - target_logit) * mask)


def loss_sums(params: llama.Params, cfg: ModelConfig, batch: Batch) -> tuple[jax.Array, jax.Array]:
  """(sum of masked token cross-entropies, number of loss tokens), both f32 scalars."""
  hidden = llama.forward(params, cfg, batch["inputs"], batch["positions"],
                         segment_ids=batch["segment_ids"])                         # [b, t, e]
  mask = batch["loss_mask"].astype(jnp.float32)
  targets = batch["targets"]
  b, t, e = hidden.shape
  c = cfg.loss_chunk if 0 < cfg.loss_chunk < t else t
  if c == t:
    return _chunk_loss(params, cfg, hidden, targets, mask), jnp.sum(mask)
  n = -(-t // c)
  pad = n * c - t                      # padded positions carry mask 0
  if pad:
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets, mask = jnp.pad(targets, ((0, 0), (0, pad))), jnp.pad(mask, ((0, 0), (0, pad)))
  chunks = (hidden.reshape(b, n, c, e).swapaxes(0, 1), targets.reshape(b, n, c).swapaxes(0, 1),
            mask.reshape(b, n, c).swapaxes(0, 1))
  chunk_loss = jax.checkpoint(lambda h, y, m: _chunk_loss(params, cfg, h, y, m))

  def body(total, xs):
    h, y, m = xs
    return total + chunk_loss(sharding_rules.constrain(h, llama.RESIDUAL, "loss chunk"), y, m), None

  total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), chunks)
  return total, jnp.sum(mask)


def _microbatches(batch: Batch, k: int) -> Batch:
  """[b, t] -> [k, b // k, t], microbatch j = rows j, j + k, ..."""
  return jax.tree.map(lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1), batch)


def loss_and_grads(params: llama.Params, cfg: ModelConfig, batch: Batch,
                   accum_steps: int) -> tuple[jax.Array, jax.Array, Any]:
  """(loss sum, loss tokens, grads of the loss sum) over `accum_steps` microbatches."""
  grad_fn = jax.value_and_grad(loss_sums, has_aux=True)
  if accum_steps == 1:
    (loss_sum, n), grads = grad_fn(params, cfg, batch)
    return loss_sum, n, grads

  def body(carry, micro):
    loss_sum, n, grads = carry
    (l, c), g = grad_fn(params, cfg, micro)
    return (loss_sum + l, n + c, jax.tree.map(jnp.add, grads, g)), None

  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
  init = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), zeros)
  (loss_sum, n, grads), _ = jax.lax.scan(body, init, _microbatches(batch, accum_steps))
  return loss_sum, n, grads


def train_step(state: TrainState, batch: Batch, *, cfg: ModelConfig,
               tx: optax.GradientTransformation, lr_schedule: Callable,
               accum_steps: int = 1) -> tuple[TrainState, dict[str, jax.Array]]:
  loss_sum, n, grads = loss_and_grads(state.params, cfg, batch, accum_steps)
  denom = jnp.maximum(n, 1.0)
  grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), grads, state.params)
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {
      "loss": loss_sum / denom,
      "loss_tokens": n,
      "grad_norm": grad_norm,
      "param_norm": optax.tree.norm(params),
      "learning_rate": lr_schedule(state.step),
      "nonpad_tokens": jnp.sum((batch["segment_ids"] != 0).astype(jnp.float32)),
  }
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def make_train_step(cfg: ModelConfig, tx: optax.GradientTransformation, lr_schedule: Callable,
                    state_shardings: TrainState, batch_shard: NamedSharding,
                    accum_steps: int = 1) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
  """jit(train_step) with explicit in/out shardings and the state donated."""
  mesh = batch_shard.mesh
  replicated = NamedSharding(mesh, PartitionSpec())

  def step(state, batch):
    with sharding_rules.with_mesh(mesh):
      return train_step(state, batch, cfg=cfg, tx=tx, lr_schedule=lr_schedule,
                        accum_steps=accum_steps)

  return jax.jit(step, in_shardings=(state_shardings, batch_shard),
                 out_shardings=(state_shardings, replicated), donate_argnums=0)


def make_eval_step(cfg: ModelConfig, params_shardings: Any,
                   batch_shard: NamedSharding) -> Callable[[Any, Batch], tuple[jax.Array, jax.Array]]:
  """jit((params, batch) -> (loss sum, loss tokens))."""
  mesh = batch_shard.mesh
  replicated = NamedSharding(mesh, PartitionSpec())

  def step(params, batch):
    with sharding_rules.with_mesh(mesh):
      return loss_sums(params, cfg, batch)

  return jax.jit(step, in_shardings=(params_shardings, batch_shard),
                 out_shardings=(replicated, replicated))
