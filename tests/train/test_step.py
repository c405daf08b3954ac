"""The train step: masked loss, sharded == single device, accumulation == one big batch."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mathjax_sft.model import llama
from mathjax_sft.model.config import preset
from mathjax_sft.sharding.mesh import make_mesh
from mathjax_sft.train import optimizer, state as state_lib, step as step_lib

CFG = preset("tiny")


def _batch(b=8, t=32, seed=0):
  """Two packed segments per row; the first half of each segment is 'prompt' (mask 0)."""
  rng = np.random.default_rng(seed)
  seg = np.zeros((b, t), np.int32)
  pos = np.zeros((b, t), np.int32)
  mask = np.zeros((b, t), np.int32)
  for r in range(b):
    cut, end = int(rng.integers(8, 16)), int(rng.integers(24, t + 1))
    seg[r, :cut], seg[r, cut:end] = 1, 2
    pos[r, :cut], pos[r, cut:end] = np.arange(cut), np.arange(end - cut)
    mask[r, cut // 2:cut] = 1
    mask[r, cut + (end - cut) // 2:end] = 1
  ids = rng.integers(3, CFG.vocab_size, (b, t + 1)).astype(np.int32) * (np.pad(seg, ((0, 0), (0, 1))) > 0)
  return {"inputs": ids[:, :-1], "targets": ids[:, 1:], "loss_mask": mask,
          "segment_ids": seg, "positions": pos}


def test_prompt_tokens_contribute_nothing():
  params = llama.init_params(CFG, jax.random.PRNGKey(0))
  batch = _batch()
  loss_fn = jax.jit(lambda p, b: step_lib.loss_sums(p, CFG, b))
  loss_sum, n = loss_fn(params, batch)
  # the same number by hand from the logits
  logits = jax.jit(lambda p, b: llama.forward_logits(p, CFG, b["inputs"], b["positions"],
                                                     segment_ids=b["segment_ids"]))(params, batch)
  logp = jax.nn.log_softmax(np.asarray(logits, np.float64), axis=-1)
  nll = -np.take_along_axis(np.asarray(logp), batch["targets"][..., None], -1)[..., 0]
  assert float(n) == batch["loss_mask"].sum()
  np.testing.assert_allclose(float(loss_sum), (nll * batch["loss_mask"]).sum(), rtol=1e-5)
  # changing every masked-out target (prompt and padding) changes neither loss nor gradients
  other = dict(batch)
  other["targets"] = np.where(batch["loss_mask"] == 1, batch["targets"], (batch["targets"] + 7) % 200)
  grad = jax.jit(jax.grad(lambda p, b: step_lib.loss_sums(p, CFG, b)[0]))
  g1, g2 = grad(params, batch), grad(params, other)
  assert float(loss_fn(params, other)[0]) == float(loss_sum)
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), g1, g2)
  # while changing a response target does change the loss
  flipped = dict(batch)
  r, t = np.argwhere(batch["loss_mask"] == 1)[0]
  flipped["targets"] = batch["targets"].copy()
  flipped["targets"][r, t] = (batch["targets"][r, t] + 1) % CFG.vocab_size
  assert float(loss_fn(params, flipped)[0]) != float(loss_sum)


def _run_step(mesh, batch, accum=1, stacked=True, tx=None):
  """One train step from PRNGKey(1) params; the project's AdamW unless `tx` is given."""
  cfg = CFG.replace(scan_layers=stacked)
  # Adam's first update is g / (|g| + eps): with eps=1e-8 a gradient entry near 1e-8 turns
  # float-summation-order noise into an lr-sized difference; eps=1e-6 keeps the comparison about
  # the sharding, not about that amplification.
  ocfg = optimizer.OptimizerConfig(learning_rate=1e-3, warmup_steps=0,
                                   weight_decay=0.1, eps=1e-6)
  tx = tx or optimizer.make_optimizer(ocfg, llama.param_axes(cfg, stacked), 10)
  p_shard = state_lib.param_shardings(cfg, mesh, stacked)
  params = llama.init_params(cfg, jax.random.PRNGKey(1), p_shard, stacked=stacked)
  s_shard = state_lib.state_shardings(llama.abstract_params(cfg, stacked), p_shard, tx, mesh)
  st = state_lib.create_state(params, tx, s_shard)
  b_shard = step_lib.batch_sharding(mesh, *batch["inputs"].shape)
  fn = step_lib.make_train_step(cfg, tx, optimizer.schedule(ocfg, 10), s_shard, b_shard, accum)
  st, m = fn(st, {k: jax.device_put(v, b_shard) for k, v in batch.items()})
  return st, jax.device_get(m)


def test_sharded_step_matches_one_device():
  assert jax.device_count() == 8
  batch = _batch()
  one, m1 = _run_step(make_mesh((1, 1, 1), jax.devices()[:1]), batch)
  mesh = make_mesh((2, 2, 2))
  eight, m8 = _run_step(mesh, batch)
  wq = eight.params.layers.wq
  assert wq.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
  assert len({d for s in wq.addressable_shards for d in [s.device]}) == 8
  mu = eight.opt_state[1][0].mu.layers.wq                # chain(clip, adamw)[adam] state
  assert mu.sharding.spec == wq.sharding.spec
  np.testing.assert_allclose(m8["loss"], m1["loss"], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(m8["grad_norm"], m1["grad_norm"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5),
               one.params, eight.params)
  assert int(eight.step) == 1


def test_grad_accumulation_equals_one_big_batch():
  """The gradient of a step with 4 microbatches (of unequal loss-token counts) is the gradient of
  the token-mean loss over the whole batch, in scale and direction (plain SGD with lr 1 moves
  the params by exactly that gradient), and so is its grad_norm."""
  batch = _batch(b=8)
  cfg = CFG.replace(scan_layers=False)
  params = llama.init_params(cfg, jax.random.PRNGKey(1), stacked=False)
  n = batch["loss_mask"].sum()
  micro = [batch["loss_mask"][j::4].sum() for j in range(4)]
  assert len(set(micro)) > 1, micro
  ref_loss, ref_grads = jax.jit(jax.value_and_grad(
      lambda p: step_lib.loss_sums(p, cfg, batch)[0] / n))(params)
  ref_norm = np.sqrt(sum(np.sum(np.square(np.asarray(g, np.float64)))
                         for g in jax.tree.leaves(ref_grads)))
  mesh = make_mesh((2, 1, 1), jax.devices()[:2])   # microbatches stay split over the batch shards
  after, m = _run_step(mesh, batch, accum=4, stacked=False, tx=optax.sgd(1.0))
  np.testing.assert_allclose(m["loss"], float(ref_loss), rtol=1e-5)
  assert m["loss_tokens"] == n
  np.testing.assert_allclose(m["grad_norm"], ref_norm, rtol=1e-5)
  moved = jax.tree.map(lambda p0, p1: np.asarray(p0) - np.asarray(p1), params, after.params)
  jax.tree.map(lambda g, d: np.testing.assert_allclose(d, np.asarray(g), rtol=1e-3, atol=1e-7),
               ref_grads, moved)


def test_schedule_warmup_then_cosine():
  lr = optimizer.schedule(optimizer.OptimizerConfig(learning_rate=1.0, warmup_steps=2,
                                                    min_lr_ratio=0.1), max_steps=12)
  got = [float(lr(c)) for c in range(13)]
  assert got[:3] == pytest.approx([0.0, 0.5, 1.0])
  assert got[7] == pytest.approx(0.1 + 0.9 * 0.5)     # halfway through the decay
  assert got[12] == pytest.approx(0.1)
  assert all(a >= b for a, b in zip(got[2:], got[3:]))


def _one_step(params, cfg, batch, ocfg):
  """One train step on one device from the given params (layout = cfg.scan_layers)."""
  mesh = make_mesh((1, 1, 1), jax.devices()[:1])
  stacked = cfg.scan_layers
  tx = optimizer.make_optimizer(ocfg, llama.param_axes(cfg, stacked), 10)
  p_shard = state_lib.param_shardings(cfg, mesh, stacked)
  s_shard = state_lib.state_shardings(llama.abstract_params(cfg, stacked), p_shard, tx, mesh)
  st = state_lib.create_state(jax.tree.map(jnp.array, params), tx, s_shard)
  b_shard = step_lib.batch_sharding(mesh, *batch["inputs"].shape)
  fn = step_lib.make_train_step(cfg, tx, optimizer.schedule(ocfg, 10), s_shard, b_shard)
  st, _ = fn(st, batch)
  return st.params


def test_weight_decay_mask_comes_from_logical_axes():
  for stacked in (True, False):
    mask = optimizer.decay_mask(llama.param_axes(CFG, stacked))
    layers = mask.layers if stacked else mask.layers[0]
    assert layers.attn_norm is False and layers.mlp_norm is False
    assert mask.final_norm is False
    assert layers.wq is True and layers.w_down is True and mask.embed is True


def test_weight_decay_spares_norms_and_scan_equals_unrolled():
  ocfg = optimizer.OptimizerConfig(learning_rate=1e-2, warmup_steps=0,
                                   weight_decay=0.5, eps=1e-6)
  cfg = CFG.replace(scan_layers=True)
  stacked = llama.init_params(cfg, jax.random.PRNGKey(2))
  stacked = dataclasses.replace(stacked, layers=dataclasses.replace(
      stacked.layers, attn_norm=stacked.layers.attn_norm * 1.5))           # not all ones
  # no loss token: zero gradients, so the step is weight decay alone
  quiet = dict(_batch(), loss_mask=np.zeros((8, 32), np.int32))
  after = _one_step(stacked, cfg, quiet, ocfg)
  np.testing.assert_array_equal(np.asarray(after.layers.attn_norm),
                                np.asarray(stacked.layers.attn_norm))
  np.testing.assert_array_equal(np.asarray(after.final_norm), np.asarray(stacked.final_norm))
  np.testing.assert_allclose(np.asarray(after.layers.wq),
                             np.asarray(stacked.layers.wq) * (1 - 1e-2 * 0.5), rtol=1e-6)
  # with a real loss, a scanned step equals an unrolled one from the same weights (to 1e-3 of
  # an Adam step: embedding rows with ~0 gradient turn summation-order noise into up to
  # ~1e-5; decaying the stacked norms, as the ndim-based mask did, differs by 7.5e-3)
  batch = _batch()
  scanned = _one_step(stacked, cfg, batch, ocfg)
  unrolled = _one_step(llama.unstack_layers(stacked), cfg.replace(scan_layers=False), batch, ocfg)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5),
               scanned, llama.stack_layers(unrolled))


def test_chunked_cross_entropy_equals_one_chunk():
  params = llama.init_params(CFG, jax.random.PRNGKey(4))
  batch = _batch()
  def run(chunk):
    cfg = CFG.replace(loss_chunk=chunk)
    return jax.jit(jax.value_and_grad(lambda p: step_lib.loss_sums(p, cfg, batch)[0]))(params)
  whole, g_whole = run(0)
  for chunk in (8, 12):   # 32 positions: 4 chunks, or 3 with 4 padded positions
    got, g = run(chunk)
    np.testing.assert_allclose(float(got), float(whole), rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                                                         atol=1e-6),
                 g, g_whole)
