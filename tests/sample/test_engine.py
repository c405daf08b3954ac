"""Sampling engine: greedy == transformers, shared prefix == independent recomputation, samples
independent of pool / chunk / order, stop strings on decoded text, accounting of work."""

import dataclasses
import functools
import gc
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mathjax_sft import paths
from mathjax_sft.checkpoint import params as ckpt
from mathjax_sft.model import llama
from mathjax_sft.model.config import preset
from mathjax_sft.sample.engine import Engine, EngineConfig, problem_key
from mathjax_sft.sample.strategies import SamplingParams, sample_tokens


def _gsm8k_prompts(tokenizer, k):
  lines = paths.data_file("gsm8k/test.jsonl").open().readlines()[:k]
  texts = [tokenizer.apply_chat_template([{"role": "user", "content": json.loads(l)["question"]}],
                                         tokenize=False, add_generation_prompt=True) for l in lines]
  return [tokenizer(t)["input_ids"] for t in texts]


def test_greedy_matches_transformers_generate(smollm2_checkpoint, smollm2_hf):
  import torch
  from transformers import AutoTokenizer
  tokenizer = AutoTokenizer.from_pretrained(str(smollm2_checkpoint))
  prompts = _gsm8k_prompts(tokenizer, 3)
  params, cfg = ckpt.load_params(smollm2_checkpoint)
  engine = Engine(params, cfg, EngineConfig(max_new_tokens=40, rows=2, chunk_steps=16))
  ours = engine.generate(prompts, ["a", "b", "c"], 1, SamplingParams(temperature=0.0))
  for prompt, got in zip(prompts, ours):
    with torch.no_grad():
      want = smollm2_hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 max_new_tokens=40, do_sample=False, pad_token_id=2)[0, len(prompt):].tolist()
    stopped = bool(want) and want[-1] in cfg.eos_token_ids
    assert got.tokens[0] == (want[:-1] if stopped else want)
    assert got.finished[0] == stopped


def _reference_sample(params, cfg, prompt, seed, pkey, j, steps, sampling, stop_ids):
  """One sample by full recomputation (no cache, no prefix sharing), same randomness."""
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), pkey), j)
  seq = list(prompt)
  out = []
  for t in range(steps):
    u = jax.random.uniform(jax.random.fold_in(key, t))[None]
    tok = int(_ref_step(params, cfg, np.array([seq]), u, sampling))
    if tok in stop_ids:
      return out, True
    out.append(tok)
    seq.append(tok)
  return out, False


@functools.partial(jax.jit, static_argnums=(1, 4))
def _ref_step(params, cfg, tokens, u, sampling):
  logits = llama.forward_logits(params, cfg, tokens)
  return sample_tokens(logits[:, -1], u, sampling.traced())[0]


@pytest.fixture(scope="module")
def tiny():
  cfg = preset("tiny", eos_token_ids=(5,))
  params = llama.init_params(cfg, jax.random.key(0))
  # sharpen the output distribution so samples are neither uniform noise nor all equal
  params = dataclasses.replace(params, lm_head=params.lm_head * 40.0)
  rng = np.random.RandomState(0)
  prompts = [list(rng.randint(6, 256, n)) for n in (5, 11, 8)]
  return cfg, params, prompts


@pytest.mark.parametrize("sampling", [SamplingParams(0.7), SamplingParams(1.0, top_p=0.8, top_k=20)])
def test_shared_prefix_samples_equal_independent_recomputation(tiny, sampling):
  cfg, params, prompts = tiny
  steps = 10
  engine = Engine(params, cfg, EngineConfig(max_new_tokens=steps, rows=6, chunk_steps=4))
  ids = ["p0", "p1", "p2"]
  got = engine.generate(prompts, ids, 5, sampling, seed=3)
  distinct = set()
  for prompt, pid, res in zip(prompts, ids, got):
    for j in range(5):
      want, stopped = _reference_sample(params, cfg, prompt, 3, problem_key(pid), j, steps,
                                        sampling, cfg.eos_token_ids)
      assert res.tokens[j] == want, (pid, j)
      assert res.finished[j] == stopped
      distinct.add(tuple(want))
  assert len(distinct) > 5, "samples should differ from each other"


@pytest.mark.parametrize("rows,chunk,slots,order", [(4, 3, None, (0, 1, 2)), (7, 5, 1, (2, 1, 0)),
                                                   (16, 8, 3, (1, 2, 0))])
def test_samples_do_not_depend_on_pool_chunk_or_order(tiny, rows, chunk, slots, order):
  """The same (seed, problem, sample index) gives the same tokens whatever the pool size, chunk
  size, number of resident prompts and problem order, and whichever problems share the pool."""
  cfg, params, prompts = tiny
  ids = ["a", "b", "c"]
  sampling = SamplingParams(0.9)
  reference = Engine(params, cfg, EngineConfig(max_new_tokens=8, rows=2, chunk_steps=2,
                                               prefix_slots=1))
  want = {pid: r.tokens for pid, r in zip(ids, reference.generate(prompts, ids, 6, sampling, 11))}
  engine = Engine(params, cfg, EngineConfig(max_new_tokens=8, rows=rows, chunk_steps=chunk,
                                            prefix_slots=slots))
  got = engine.generate([prompts[i] for i in order], [ids[i] for i in order], 6, sampling, 11)
  assert {ids[i]: r.tokens for i, r in zip(order, got)} == want
  alone = engine.generate([prompts[2]], ["c"], 6, sampling, seed=11)[0].tokens
  assert alone == want["c"]
  other_seed = engine.generate(prompts, ids, 6, sampling, seed=12)
  assert [r.tokens for r in other_seed] != [want[i] for i in ids]


def test_work_accounting_no_padding(tiny):
  """Every token drawn belongs to a live sample and is kept (decoded == useful: no padded problem,
  no padding row-steps), no row idles while work is queued, finished problems are reported as
  they end, and the idle row-steps are only the run's tail."""
  cfg, params, prompts = tiny
  rows, chunk, max_new, n = 4, 3, 10, 5
  engine = Engine(params, cfg, EngineConfig(max_new_tokens=max_new, rows=rows, chunk_steps=chunk))
  seen = []
  res = engine.generate(prompts, ["a", "b", "c"], n, SamplingParams(0.9), seed=1,
                        on_problem=lambda i, s: seen.append(i))
  st = engine.stats
  useful = sum(len(t) + f for r in res for t, f in zip(r.tokens, r.finished))
  assert st.useful_tokens == useful and st.decoded == useful and st.samples == 3 * n
  assert st.idle_while_queued == 0
  assert sorted(seen) == [0, 1, 2]
  assert st.row_steps - (useful - st.samples) <= rows * (max_new + chunk)   # the tail only
  assert 0 < st.utilisation <= 1


@pytest.mark.parametrize("mesh_shape", [None, (2, 1, 1)])
def test_tail_shrinks_the_pool_without_changing_samples(tiny, mesh_shape):
  """Once every sample has started, the live rows move into a pool a power of two smaller
  whenever they fit (down to 2 rows here; over 2 data-parallel devices the pool stays a multiple
  of 2): the same samples as a run that never shrinks, every drawn token kept, fewer row-steps."""
  from mathjax_sft.checkpoint.params import param_shardings
  from mathjax_sft.sharding.mesh import make_mesh
  cfg, params, prompts = tiny
  mesh = None if mesh_shape is None else make_mesh(mesh_shape, jax.devices()[:2])
  if mesh is not None:
    params = jax.device_put(params, param_shardings(cfg, mesh))
  ids, sampling = ["a", "b", "c"], SamplingParams(0.9)
  runs = {}
  for floor in (0, 2):
    engine = Engine(params, cfg, EngineConfig(max_new_tokens=12, rows=16, chunk_steps=2,
                                              min_tail_rows=floor), mesh=mesh)
    res = engine.generate(prompts, ids, 7, sampling, seed=5)
    runs[floor] = ([r.tokens for r in res], [r.finished for r in res], engine.stats)
  assert runs[2][:2] == runs[0][:2]
  fixed, shrunk = runs[0][2], runs[2][2]
  assert fixed.shrinks == 0 and shrunk.shrinks >= 1
  assert shrunk.decoded == shrunk.useful_tokens == fixed.useful_tokens
  assert shrunk.row_steps < fixed.row_steps and shrunk.utilisation > fixed.utilisation


def test_eos_stops_rows_and_loop_exits_early(tiny):
  cfg, params, prompts = tiny
  logits = llama.forward_logits(params, cfg, np.array([prompts[0]]))
  likely = int(jnp.argmax(logits[0, -1]))        # greedy's first token: make it a stop token
  engine = Engine(params, cfg.replace(eos_token_ids=(likely,)),
                  EngineConfig(max_new_tokens=64, rows=2, chunk_steps=4))
  res = engine.generate([prompts[0]], ["x"], 2, SamplingParams(temperature=0.0))[0]
  assert res.tokens == [[], []] and res.finished == [True, True]
  assert engine.stats.useful_tokens == 2    # one (stop) token per sample
  assert engine.stats.chunks == 1           # and decoding did not run on to max_new_tokens


def _letters(tokens):
  """A detokenizer for the tiny model: two letters per token, so strings straddle tokens."""
  return "".join(chr(97 + t % 26) + chr(97 + (t // 26) % 26) for t in tokens)


def test_stop_strings_straddling_tokens_end_the_sample_at_the_string(tiny):
  """A stop string made of the second letter of token b - 1 and the first of token b (no token
  sequence matches it): the sample's text ends where the string starts, it keeps tokens
  0..b-1 (token b - 1 holds the text's last letter), finished is True, and the tokens decoded
  after it in the same chunk are discarded (less than one chunk of waste)."""
  cfg, params, prompts = tiny
  free = Engine(params, cfg, EngineConfig(max_new_tokens=12, rows=1), detokenize=_letters)
  want = free.generate([prompts[1]], ["s"], 1, SamplingParams(temperature=0.0))[0]
  tokens = want.tokens[0]
  text = _letters(tokens)
  b = next(b for b in range(2, len(tokens) - 1) if text.find(text[2 * b - 1:2 * b + 1]) == 2 * b - 1)
  stop = text[2 * b - 1:2 * b + 1]
  engine = Engine(params, cfg, EngineConfig(max_new_tokens=12, rows=1, chunk_steps=8,
                                            stop_strings=(stop,)), detokenize=_letters)
  res = engine.generate([prompts[1]], ["s"], 1, SamplingParams(temperature=0.0))[0]
  assert res.finished == [True]
  assert res.texts[0] == text[:2 * b - 1]
  assert res.tokens[0] == tokens[:b]
  st = engine.stats
  assert st.useful_tokens == b + 1 and 0 <= st.decoded - st.useful_tokens < 8


def test_stop_strings_on_real_tokenizer_text(smollm2_checkpoint):
  """With SmolLM2's tokenizer: a stop string spanning a token boundary of a greedy sample ends
  it there: text == the free text up to the string, the kept tokens decode to a text that
  starts with it, finished is True."""
  from transformers import AutoTokenizer
  tokenizer = AutoTokenizer.from_pretrained(str(smollm2_checkpoint))
  detok = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)
  prompts = _gsm8k_prompts(tokenizer, 1)
  params, cfg = ckpt.load_params(smollm2_checkpoint)
  free = Engine(params, cfg, EngineConfig(max_new_tokens=30, rows=1, chunk_steps=8),
                detokenize=detok).generate(prompts, ["q"], 1, SamplingParams(0.0))[0]
  text = free.texts[0]
  for b in range(8, 25):       # a boundary whose 2 + 2 letters first occur there
    left, right = detok(free.tokens[0][:b]), detok(free.tokens[0][:b + 1])
    before = detok(free.tokens[0][:b - 1])
    stop = left[-2:] + right[len(left):len(left) + 2]
    if (len(left) - len(before) >= 2 and len(right) - len(left) >= 2 and stop.strip() == stop
        and text.find(stop) == len(left) - 2):
      break
  else:
    pytest.fail("no boundary with a unique 4-letter string")
  params, cfg = ckpt.load_params(smollm2_checkpoint)
  engine = Engine(params, cfg, EngineConfig(max_new_tokens=30, rows=1, chunk_steps=8,
                                            stop_strings=(stop,)), detokenize=detok)
  res = engine.generate(prompts, ["q"], 1, SamplingParams(0.0))[0]
  assert res.finished == [True]
  assert res.texts[0] == text[:len(left) - 2]
  assert res.tokens[0] == free.tokens[0][:b]
  assert detok(res.tokens[0]).startswith(res.texts[0])


def test_sample_tokens_distribution_and_filters():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  u = jax.random.uniform(jax.random.key(0), (20000,))
  draw = lambda sampling: np.asarray(jax.vmap(
      lambda ui: sample_tokens(logits, ui[None], sampling.traced())[0])(u))
  counts = np.bincount(draw(SamplingParams(1.0)), minlength=4)
  np.testing.assert_allclose(counts / counts.sum(), [0.5, 0.3, 0.15, 0.05], atol=0.015)
  top_p = draw(SamplingParams(1.0, top_p=0.7))
  assert set(np.unique(top_p)) == {0, 1}   # 0.5 < 0.7 so token 1 is kept, token 2 is not
  top_k = draw(SamplingParams(1.0, top_k=3))
  assert set(np.unique(top_k)) == {0, 1, 2}
  greedy = sample_tokens(logits, u[:1], SamplingParams(0.0).traced())
  assert int(greedy[0]) == 0


def test_two_level_inverse_cdf_equals_flat_search():
  """The blockwise lookup picks the token a flat running sum picks (float64 reference), never a
  zero-weight token, for vocabularies that are and are not a multiple of the block."""
  from mathjax_sft.sample.strategies import CDF_BLOCK, _lookup
  rng = np.random.default_rng(0)
  for vocab in (7, CDF_BLOCK * 3, CDF_BLOCK * 4 + 37):
    w = rng.exponential(size=(5, vocab)) * (rng.random((5, vocab)) < 0.6)   # many zeros
    w[1, CDF_BLOCK // 2:] = 0.0                                              # empty tail blocks
    w[2, :-1], w[2, -1] = 0.0, 1.0                                             # one token left
    u = np.concatenate([rng.random((5, 200)), np.full((5, 1), 1 - 2 ** -24), np.zeros((5, 1))], 1)
    got = np.asarray(_lookup(jnp.asarray(w, jnp.float32), None, jnp.asarray(u, jnp.float32)))
    cdf = np.cumsum(w, axis=1)
    for r in range(5):
      want = np.searchsorted(cdf[r], u[r] * cdf[r, -1], side="right")
      assert (w[r, got[r]] > 0).all(), (vocab, r)
      near = np.abs(u[r] * cdf[r, -1] - cdf[r][np.minimum(want, vocab - 1)]) < 1e-4 * cdf[r, -1]
      ok = (got[r] == np.minimum(want, vocab - 1)) | near | (u[r] >= 1 - 1e-6)
      assert ok.all(), (vocab, r, got[r][~ok], want[~ok])


@pytest.mark.parametrize("mesh_shape", [None, (1, 1, 2)])
def test_engine_holds_one_copy_of_the_weights(mesh_shape):
  """With donate=True the stacked params are consumed: afterwards the live device buffers are
  the decode-layout weights alone (1x, not the 2x of stacked + per-layer copies), and the
  samples equal those of a one-device engine built without donation (greedy: tensor-parallel
  sums may round differently)."""
  from mathjax_sft.checkpoint.params import param_shardings
  from mathjax_sft.sharding.mesh import make_mesh
  cfg = preset("tiny")
  mesh = None if mesh_shape is None else make_mesh(mesh_shape, jax.devices()[:2])
  ecfg = EngineConfig(max_new_tokens=6, rows=4)
  make = lambda: llama.init_params(cfg, jax.random.PRNGKey(0), param_shardings(cfg, mesh))
  reference = Engine(llama.init_params(cfg, jax.random.PRNGKey(0)), cfg, ecfg)
  sampling = SamplingParams(0.8) if mesh is None else SamplingParams(0.0)
  want = reference.generate([[5, 6, 7], [8, 9]], ["a", "b"], 3, sampling)
  del reference
  gc.collect()
  baseline = sum(x.nbytes for x in jax.live_arrays())   # other tests' arrays
  params = make()
  weight_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  originals = jax.tree.leaves(params)
  engine = Engine(params, cfg, ecfg, mesh=mesh, donate=True)
  del params
  kept = {id(x) for x in jax.tree.leaves(engine.params)}   # embed, norms: used as they are
  assert all(x.is_deleted() for x in originals if id(x) not in kept)
  assert any(x.is_deleted() for x in originals)
  del originals
  gc.collect()
  live = sum(x.nbytes for x in jax.live_arrays()) - baseline
  assert live <= 1.01 * weight_bytes, (live, weight_bytes)
  if mesh is not None:    # tensor-parallel decode layout: heads split over the 2 devices
    wq = engine.params.layers[0].wq
    assert wq.sharding.spec == jax.sharding.PartitionSpec(None, "tensor", None)
  got = engine.generate([[5, 6, 7], [8, 9]], ["a", "b"], 3, sampling)
  assert [s.tokens for s in got] == [s.tokens for s in want]


def test_filters_equal_transformers_logits_processors():
  """temperature, then top-k, then top-p over the renormalised top-k: the tokens our weights
  keep (and their probabilities) equal transformers' TemperatureLogitsWarper ->
  TopKLogitsWarper -> TopPLogitsWarper on the same logits."""
  import torch
  from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                      TopPLogitsWarper)
  from mathjax_sft.sample.strategies import weights
  # the example: .5/.3/.15/.05 with k=2, p=.55 keeps 1 token (transformers, vLLM)
  example = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  w, _ = weights(example, SamplingParams(1.0, 0.55, 2).traced())
  assert int((np.asarray(w) > 0).sum()) == 1
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(16, 300)).astype(np.float32) * 3
  for temperature, top_k, top_p in [(0.7, 0, 0.9), (1.0, 20, 1.0), (1.3, 50, 0.8), (0.5, 5, 0.3)]:
    scores = torch.tensor(logits)
    scores = TemperatureLogitsWarper(temperature)(None, scores)
    if top_k:
      scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1:
      scores = TopPLogitsWarper(top_p)(None, scores)
    want = torch.softmax(scores, -1).numpy()
    w, order = weights(jnp.asarray(logits), SamplingParams(temperature, top_p, top_k).traced())
    ours = np.zeros_like(want)
    np.put_along_axis(ours, np.asarray(order), np.asarray(w), axis=-1)
    ours /= ours.sum(-1, keepdims=True)
    np.testing.assert_array_equal(ours > 0, want > 0, err_msg=str((temperature, top_k, top_p)))
    np.testing.assert_allclose(ours, want, atol=1e-6)


def test_one_token_budget_keeps_the_first_token(tiny):
  """max_new_tokens=1: each sample is exactly its first token (the one a longer budget starts
  with), not a second token written over it."""
  cfg, params, prompts = tiny
  sampling = SamplingParams(0.9)
  longer = Engine(params, cfg, EngineConfig(max_new_tokens=8, rows=4))
  want = longer.generate(prompts[:2], ["a", "b"], 5, sampling, seed=3)
  one = Engine(params, cfg, EngineConfig(max_new_tokens=1, rows=4))
  got = one.generate(prompts[:2], ["a", "b"], 5, sampling, seed=3)
  for g, w in zip(got, want):
    for tokens, finished, full in zip(g.tokens, g.finished, w.tokens):
      if finished:          # the first token was a stop token: an empty sample
        assert tokens == [] and full == []
      else:
        assert tokens == full[:1]
