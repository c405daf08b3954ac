"""Model: logits parity with transformers on tiny random configs; cache paths == full forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mathjax_sft.model import llama
from mathjax_sft.model.config import ModelConfig, preset
from tests.hf_reference import hf_logits, params_from_model, random_hf_model

CONFIGS = {
    "gqa-untied-theta1e4": preset("tiny"),
    "mha-tied-theta1e4": preset("tiny-mha"),
    "gqa-tied-theta5e5": preset("tiny", tie_word_embeddings=True, rope_theta=500000.0),
    "mha-untied-theta1e6": preset("tiny-mha", tie_word_embeddings=False, rope_theta=1e6),
    "gqa-llama3-scaling": preset("tiny", rope_theta=500000.0, rope_scaling=(
        ("factor", 8.0), ("high_freq_factor", 4.0), ("low_freq_factor", 1.0),
        ("original_max_position_embeddings", 64), ("rope_type", "llama3"))),
    "mha-linear-scaling": preset("tiny-mha", rope_scaling=(("factor", 2.0), ("rope_type", "linear"))),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def reference(request):
  cfg = CONFIGS[request.param]
  model = random_hf_model(cfg, seed=len(request.param))
  return cfg, model, params_from_model(model, cfg)


def test_logits_match_transformers(reference):
  cfg, model, params = reference
  tokens = np.random.RandomState(1).randint(0, cfg.vocab_size, (3, 80))  # past the llama3 old len
  want = hf_logits(model, tokens)
  got = jax.jit(lambda p, t: llama.forward_logits(p, cfg, t))(params, tokens)
  assert np.abs(np.asarray(got) - want).max() < 1e-4
  unrolled = llama.forward_logits(llama.unstack_layers(params), cfg, jnp.asarray(tokens))
  assert np.abs(np.asarray(unrolled) - want).max() < 1e-4


@pytest.mark.parametrize("stacked", [True, False])
def test_kv_cache_decode_equals_full_forward(reference, stacked):
  cfg, _, params = reference
  params = params if stacked else llama.unstack_layers(params)
  tokens = np.random.RandomState(2).randint(0, cfg.vocab_size, (2, 24))
  full = llama.forward_logits(params, cfg, jnp.asarray(tokens))
  cache = llama.init_cache(cfg, batch=2, slots=32, stacked=stacked)
  step = jax.jit(lambda p, t, pos, c: llama.decode_step(p, cfg, t, pos, c))
  logits, cache = step(params, tokens[:, :7], jnp.broadcast_to(jnp.arange(7), (2, 7)), cache)
  outs = [logits]
  for t in range(7, 24):
    logits, cache = step(params, tokens[:, t:t + 1], jnp.full((2, 1), t), cache)
    outs.append(logits)
  # position by position
  np.testing.assert_allclose(np.concatenate(outs, axis=1), np.asarray(full), atol=1e-5, rtol=0)


def test_left_padded_prompts_in_cache_match_unpadded():
  cfg = preset("tiny")
  params = llama.init_params(cfg, jax.random.key(0))
  rng = np.random.RandomState(3)
  short, long = rng.randint(3, 200, 5), rng.randint(3, 200, 9)
  pad = 4
  tokens = np.stack([np.concatenate([np.zeros(pad, int), short]), long])
  seg = np.stack([np.r_[np.zeros(pad), np.ones(5)], np.ones(9)]).astype(np.int32)
  pos = np.stack([np.r_[np.zeros(pad), np.arange(5)], np.arange(9)]).astype(np.int32)
  cache = llama.init_cache(cfg, batch=2, slots=16)
  logits, cache = llama.decode_step(params, cfg, tokens, pos, cache, segment_ids=seg)
  ref_short = llama.forward_logits(params, cfg, short[None])
  ref_long = llama.forward_logits(params, cfg, long[None])
  np.testing.assert_allclose(logits[0, pad:], ref_short[0], atol=1e-5)
  np.testing.assert_allclose(logits[1], ref_long[0], atol=1e-5)
  nxt = np.array([[7], [9]])
  step, _ = llama.decode_step(params, cfg, nxt, np.array([[5], [9]]), cache)
  ref_s = llama.forward_logits(params, cfg, np.r_[short, 7][None])
  ref_l = llama.forward_logits(params, cfg, np.r_[long, 9][None])
  np.testing.assert_allclose(step[0, 0], ref_s[0, -1], atol=1e-5)
  np.testing.assert_allclose(step[1, 0], ref_l[0, -1], atol=1e-5)


def test_shared_prefix_equals_separate_copies():
  """N rows reading one prompt cache give the logits of N rows with the prompt copied."""
  cfg = preset("tiny")
  params = llama.unstack_layers(llama.init_params(cfg, jax.random.key(1)))
  rng = np.random.RandomState(4)
  prompts = rng.randint(3, 200, (2, 6))             # 2 problems
  n = 3                                             # samples per problem
  pre_cache = llama.init_cache(cfg, batch=2, slots=8, stacked=False)
  _, pre_cache = llama.prefill(params, cfg, prompts, pre_cache)
  prefix = llama.prefix_from_cache(pre_cache)
  conts = rng.randint(3, 200, (2 * n, 4))           # different continuations per sample
  cache = llama.init_cache(cfg, batch=2 * n, slots=8, stacked=False)
  outs = []
  for t in range(4):
    pos = np.full((2 * n, 1), 6 + t)
    logits, cache = llama.decode_step(params, cfg, conts[:, t:t + 1], pos, cache, prefix=prefix)
    outs.append(logits)
  got = np.concatenate(outs, axis=1)
  full_tokens = np.concatenate([np.repeat(prompts, n, axis=0), conts], axis=1)
  want = llama.forward_logits(params, cfg, full_tokens)
  np.testing.assert_allclose(got, np.asarray(want)[:, 6:], atol=1e-5)


def test_ring_buffer_and_row_reset():
  """A row whose cache slots are invalidated mid-decode behaves like a fresh sequence."""
  cfg = preset("tiny")
  params = llama.init_params(cfg, jax.random.key(2))
  rng = np.random.RandomState(5)
  toks = rng.randint(3, 200, (1, 10))
  cache = llama.init_cache(cfg, batch=1, slots=4)
  for t in range(6):   # fill past the ring end
    _, cache = llama.decode_step(params, cfg, toks[:, t:t + 1], np.array([[t]]), cache)
  cache = llama.KVCache(k=cache.k, v=cache.v, valid=jnp.zeros_like(cache.valid), index=cache.index)
  outs = []
  for t in range(4):   # a new sequence of 4 tokens, in slots 2,3,0,1
    logits, cache = llama.decode_step(params, cfg, toks[:, 6 + t:7 + t], np.array([[t]]), cache)
    outs.append(logits)
  want = llama.forward_logits(params, cfg, toks[:, 6:10])
  np.testing.assert_allclose(np.concatenate(outs, 1), want, atol=1e-5)


def test_packed_segments_are_independent():
  cfg = preset("tiny")
  params = llama.init_params(cfg, jax.random.key(3))
  rng = np.random.RandomState(6)
  a, b = rng.randint(3, 200, 5), rng.randint(3, 200, 7)
  tokens = np.r_[a, b, [0, 0]][None]
  seg = np.r_[np.ones(5), 2 * np.ones(7), [0, 0]].astype(np.int32)[None]
  pos = np.r_[np.arange(5), np.arange(7), [0, 0]].astype(np.int32)[None]
  got = llama.forward_logits(params, cfg, tokens, pos, segment_ids=seg)
  ra = llama.forward_logits(params, cfg, a[None])
  rb = llama.forward_logits(params, cfg, b[None])
  np.testing.assert_allclose(got[0, :5], ra[0], atol=1e-5)
  np.testing.assert_allclose(got[0, 5:12], rb[0], atol=1e-5)


def test_bf16_compute_close_to_f32_and_scan_remat_equal():
  cfg = preset("tiny")
  params = llama.init_params(cfg, jax.random.key(4))
  tokens = np.random.RandomState(7).randint(0, 256, (2, 16))
  ref = llama.forward_logits(params, cfg, tokens)
  bf = llama.forward_logits(params, cfg.replace(compute_dtype="bfloat16"), tokens)
  assert bf.dtype == jnp.float32
  # bf16 matmuls really run (f32 gives a gap of 0) and stay close (the gap measured is 4.2e-3)
  gap = np.abs(np.asarray(bf) - np.asarray(ref)).max()
  assert 1e-3 < gap < 1e-2, gap
  loss = lambda p, c: llama.forward_logits(p, c, tokens).mean()
  g1 = jax.grad(loss)(params, cfg)
  for policy in ("full", "dots"):
    remat_cfg = cfg.replace(remat=True, remat_policy=policy)
    for g2 in (jax.grad(loss)(params, remat_cfg),                                  # scanned
               llama.stack_layers(jax.grad(loss)(llama.unstack_layers(params), remat_cfg))):
      for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(x, y, atol=1e-6)
  with pytest.raises(ValueError, match="remat_policy"):
    cfg.replace(remat_policy="most")


def test_config_validation_and_hf_round_trip():
  with pytest.raises(ValueError, match="multiple of num_kv_heads"):
    preset("tiny", num_kv_heads=3)
  with pytest.raises(ValueError, match="unsupported rope_scaling"):
    preset("tiny", rope_scaling=(("factor", 2.0), ("rope_type", "yarn")))
  for name in ("llama2-7b", "llama2-13b", "llama2-70b", "smollm2-135m", "tiny"):
    cfg = preset(name)
    assert ModelConfig.from_hf(cfg.to_hf()) == cfg
  assert abs(preset("llama2-7b").num_params() - 6.74e9) < 0.01e9
  assert abs(preset("llama2-70b").num_params() - 68.98e9) < 0.05e9
  old_style = preset("tiny").to_hf()
  old_style.pop("rope_parameters")
  old_style["rope_theta"] = 1234.0
  assert ModelConfig.from_hf(old_style).rope_theta == 1234.0


def test_fused_layout_gives_the_same_logits():
  cfg = preset("tiny")
  params = llama.init_params(cfg, jax.random.key(5))
  tokens = np.random.RandomState(8).randint(0, 256, (2, 9))
  ref = llama.forward_logits(params, cfg, tokens)
  for p in (llama.fuse_layers(params), llama.fuse_layers(llama.unstack_layers(params))):
    got = llama.forward_logits(p, cfg, tokens)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_chunked_causal_attention_equals_one_block():
  """Query blocks that skip the causal upper triangle give the full attention's logits and grads,
  with packed segments and padding, for a chunk that does not divide the length."""
  cfg = preset("tiny")
  params = llama.init_params(cfg, jax.random.key(8))
  rng = np.random.RandomState(2)
  tokens = rng.randint(0, 256, (2, 23))
  seg = np.array([[1] * 9 + [2] * 10 + [0] * 4, [1] * 23])
  pos = np.array([list(range(9)) + list(range(10)) + [0] * 4, list(range(23))])
  loss = lambda p, c: (llama.forward_logits(p, c, tokens, pos, segment_ids=seg)[:, :19] ** 2).mean()
  whole = cfg.replace(attention_chunk=0)
  ref, g_ref = jax.value_and_grad(loss)(params, whole)
  for chunk in (5, 8):
    got, g = jax.value_and_grad(loss)(params, cfg.replace(attention_chunk=chunk))
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    for x, y in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
      np.testing.assert_allclose(x, y, atol=1e-6)
  with pytest.raises(ValueError, match="attention_chunk"):
    cfg.replace(attention_chunk=-1)


@pytest.mark.parametrize("stacked", [True, False])
def test_bucketed_cache_reads_equal_full_reads(stacked):
  """Reading only the written prefix of the ring (`cache_read_buckets`) gives the logits of
  reading every slot, before and after the ring wraps, with a shared prefix."""
  assert llama.read_buckets(40, 4) == (16, 24, 32, 40)
  assert llama.read_buckets(20, 2) == (16, 20)
  cfg = preset("tiny")
  params = llama.init_params(cfg, jax.random.key(7), stacked=stacked)
  params = params if stacked else llama.unstack_layers(params)
  rng = np.random.RandomState(8)
  prompt = rng.randint(3, 200, (1, 5))
  _, pre = llama.prefill(params, cfg, prompt, llama.init_cache(cfg, 1, 5, stacked=stacked))
  prefix = llama.prefix_from_cache(pre)
  conts = rng.randint(3, 200, (2, 50))            # 2 samples of the prompt, past the ring end
  step = jax.jit(lambda p, t, pos, c, n: llama.decode_step(p, cfg, t, pos, c, prefix=prefix,
                                                           cache_read_buckets=n),
                 static_argnums=4)
  got = {}
  for n in (1, 4):
    cache, outs = llama.init_cache(cfg, 2, 40, stacked=stacked), []
    for t in range(50):
      logits, cache = step(params, conts[:, t:t + 1], np.full((2, 1), 5 + t), cache, n)
      outs.append(np.asarray(logits))
    got[n] = np.concatenate(outs, axis=1)
  np.testing.assert_allclose(got[4], got[1], atol=1e-5, rtol=0)
  want = llama.forward_logits(params, cfg,
                              np.concatenate([np.repeat(prompt, 2, 0), conts[:, :40]], 1))
  np.testing.assert_allclose(got[4][:, :40], np.asarray(want)[:, 5:], atol=1e-5, rtol=0)
