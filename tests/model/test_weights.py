"""Typed weights: layout conversions round-trip, and a wrong layout fails at trace time."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mathjax_sft.model import llama, weights
from mathjax_sft.model.config import preset
from mathjax_sft.model.weights import (FusedLayerWeights, GateUpLayerWeights, LayerWeights,
                                       Weights)


def _tree_leaves_by_path(tree):
  return {weights.path_names(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize("name", ["tiny", "tiny-mha"])
@pytest.mark.parametrize("stacked", [True, False])
def test_dict_tree_round_trip_and_leaf_order(name, stacked):
  cfg = preset(name)
  w = llama.init_params(cfg, jax.random.key(0), stacked=stacked)
  tree = weights.to_tree(w)
  assert isinstance(tree, dict) and ("lm_head" in tree) == (not cfg.tie_word_embeddings)
  assert isinstance(tree["layers"], dict if stacked else list)
  back = weights.from_tree(tree)
  assert jax.tree.structure(back) == jax.tree.structure(w)
  # leaves flatten in the dict tree's order, under the same names
  assert [weights.path_names(p) for p, _ in jax.tree_util.tree_flatten_with_path(w)[0]] == [
      weights.path_names(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
  for x, y in zip(jax.tree.leaves(w), jax.tree.leaves(back)):
    assert x is y
  assert weights.from_tree(w) is w


def test_stack_unstack_and_fuse_round_trip():
  cfg = preset("tiny")
  w = llama.init_params(cfg, jax.random.key(1))
  per_layer = weights.unstack_layers(w)
  assert not per_layer.stacked and len(per_layer.layers) == cfg.num_layers
  assert all(isinstance(l, LayerWeights) for l in per_layer.layers)
  for x, y in zip(jax.tree.leaves(w), jax.tree.leaves(weights.stack_layers(per_layer))):
    np.testing.assert_array_equal(x, y)
  for concat, kind in ((True, FusedLayerWeights), (False, GateUpLayerWeights)):
    for src in (w, per_layer):
      fused = weights.fuse_layers(src, concat)
      assert fused.layer_type is kind and fused.stacked == src.stacked
      weights.check_layout(fused, cfg)
      # the fused tensors hold the parts
      layer = fused.layers if fused.stacked else fused.layers[0]
      orig = src.layers if src.stacked else src.layers[0]
      if concat:
        parts = jnp.split(layer.w_gateup, 2, axis=-1)
      else:
        parts = [layer.w_gu[:, 0], layer.w_gu[:, 1]] if fused.stacked else list(layer.w_gu)
      np.testing.assert_array_equal(parts[0], orig.w_gate)
      np.testing.assert_array_equal(parts[1], orig.w_up)
      # the dict tree of a decode layout converts back to the same type
      assert jax.tree.structure(weights.from_tree(weights.to_tree(fused))) == \
          jax.tree.structure(fused)
  # declared axes and shapes of the decode layouts match what fuse_layers builds
  for concat in (True, False):
    shapes = jax.eval_shape(lambda p: weights.fuse_layers(p, concat), per_layer)
    specs = weights.fused_param_specs(cfg, concat)
    assert jax.tree.map(lambda s: s.shape, shapes) == jax.tree.map(
        lambda s: s.shape, specs, is_leaf=lambda x: isinstance(x, weights.ParamSpec))


def test_wrong_layout_fails_at_trace_time():
  cfg = preset("tiny")
  w = llama.unstack_layers(llama.init_params(cfg, jax.random.key(2)))
  fused = weights.fuse_layers(w)
  cache = llama.init_cache(cfg, 2, 8, stacked=False)
  tok, pos = jnp.zeros((2, 1), jnp.int32), jnp.zeros((2, 1), jnp.int32)
  step = lambda p, c: llama.decode_step(p, cfg, tok, pos, c)
  jax.eval_shape(step, fused, cache)                  # the right layout traces
  with pytest.raises(TypeError, match="expected Weights, got dict"):
    jax.eval_shape(step, weights.to_tree(fused), cache)
  with pytest.raises(ValueError, match=r"cache layout \(stacked\) does not match the weights"):
    jax.eval_shape(step, fused, llama.init_cache(cfg, 2, 8, stacked=True))
  with pytest.raises(ValueError, match="cache holds 1 layers, the weights 2"):
    jax.eval_shape(step, fused, dataclasses.replace(cache, k=cache.k[:1], v=cache.v[:1]))
  mixed = dataclasses.replace(fused, layers=(fused.layers[0], w.layers[1]))
  with pytest.raises(TypeError, match="layers must all be one of"):
    jax.eval_shape(step, mixed, cache)
  other = weights.fuse_layers(llama.unstack_layers(
      llama.init_params(preset("tiny-mha", tie_word_embeddings=False), jax.random.key(3))))
  want = (r"weights\.layers\.0\.wqkv: shape \(64, 12, 16\), the FusedLayerWeights layout of "
          r"this config has \(64, 8, 16\)")
  with pytest.raises(ValueError, match=want):
    jax.eval_shape(step, other, cache)
  with pytest.raises(ValueError, match="lm_head missing"):
    jax.eval_shape(step, dataclasses.replace(fused, lm_head=None, tied=True), cache)
  with pytest.raises(ValueError, match="match no layer layout"):
    weights.from_tree({"embed": 0, "final_norm": 0, "layers": {"wq": 0}})
  with pytest.raises(TypeError, match="train layout"):
    from mathjax_sft.sample.engine import prepare_params
    prepare_params(fused, cfg, None)


def test_orbax_metadata_matches_the_dict_tree(tmp_path):
  """A train state holding typed weights is stored as the dict tree was (same tree metadata)."""
  for name in ("tiny", "tiny-mha"):
    cfg = preset(name)
    w = llama.init_params(cfg, jax.random.key(4), stacked=False)
    ckptr = ocp.Checkpointer(ocp.StandardCheckpointHandler())
    for kind, tree in (("typed", w), ("dict", weights.to_tree(w))):
      ckptr.save(tmp_path / name / kind, args=ocp.args.StandardSave({"params": tree}))
    meta = [json.loads((tmp_path / name / kind / "_METADATA").read_text())["tree_metadata"]
            for kind in ("typed", "dict")]
    assert list(meta[0].items()) == list(meta[1].items())
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"params": w})
    back = ckptr.restore(tmp_path / name / "dict", args=ocp.args.StandardRestore(abstract))
    assert isinstance(back["params"], Weights)
    for x, y in zip(jax.tree.leaves(w), jax.tree.leaves(back["params"])):
      np.testing.assert_array_equal(x, y)
