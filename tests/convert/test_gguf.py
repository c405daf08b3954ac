"""GGUF import of the embedded SmolLM2-135M-Instruct: logits and greedy text match transformers."""

import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mathjax_sft import paths
from mathjax_sft.checkpoint import params as ckpt
from mathjax_sft.convert import api, gguf as gguf_io
from mathjax_sft.model import llama
from mathjax_sft.model.config import ModelConfig


def _llama_cpp_permute(w, n_head, n_head_kv):
  """llama.cpp convert_hf_to_gguf.py LlamaModel.permute (HF rotate-half rows -> interleaved),
  applied as permute(q, n_head, n_head) and permute(k, n_head, n_kv_head)."""
  if n_head_kv is not None and n_head != n_head_kv:
    n_head = n_head_kv
  return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
          .swapaxes(1, 2).reshape(w.shape))


def test_unpermute_inverts_llama_cpp_permutation():
  """q (n_head heads) and k (n_kv_head heads, GQA) rows as llama.cpp writes them come back in HF
  order, directly and through a GGUF tensor source."""
  n_head, n_kv_head, head_dim, hidden = 4, 2, 8, 5
  rng = np.random.RandomState(0)
  q = rng.randn(n_head * head_dim, hidden).astype(np.float32)
  k = rng.randn(n_kv_head * head_dim, hidden).astype(np.float32)
  q_gguf = _llama_cpp_permute(q, n_head, n_head)
  k_gguf = _llama_cpp_permute(k, n_head, n_kv_head)
  assert not np.array_equal(q_gguf, q) and not np.array_equal(k_gguf, k)
  np.testing.assert_array_equal(gguf_io.unpermute_rotary(q_gguf, n_head), q)
  np.testing.assert_array_equal(gguf_io.unpermute_rotary(k_gguf, n_kv_head), k)
  np.testing.assert_array_equal(gguf_io.permute_rotary(q, n_head), q_gguf)
  np.testing.assert_array_equal(gguf_io.permute_rotary(k, n_kv_head), k_gguf)

  from gguf import GGMLQuantizationType
  tensor = lambda name, w: types.SimpleNamespace(      # GGUF lists dims fastest-first
      name=name, shape=list(reversed(w.shape)), data=w.ravel(),
      tensor_type=GGMLQuantizationType.F32)
  reader = types.SimpleNamespace(tensors=[tensor("blk.0.attn_q.weight", q_gguf),
                                          tensor("blk.0.attn_k.weight", k_gguf)])
  cfg = ModelConfig(vocab_size=8, hidden_size=hidden, intermediate_size=8, num_layers=1,
                    num_heads=n_head, num_kv_heads=n_kv_head, head_dim=head_dim)
  source = gguf_io.GgufSource("model.gguf", cfg, reader)
  np.testing.assert_array_equal(source.get("model.layers.0.self_attn.q_proj.weight"), q)
  np.testing.assert_array_equal(source.get("model.layers.0.self_attn.k_proj.weight"), k)


def test_bad_gguf_file(tmp_path):
  bad = tmp_path / "bad.gguf"
  bad.write_bytes(b"not a gguf file at all")
  with pytest.raises(ValueError, match="bad.gguf: not a readable GGUF file"):
    api.import_checkpoint(bad, tmp_path / "out", show_progress=False)


def _gsm8k_prompt(tokenizer) -> list[int]:
  row = json.loads(paths.data_file("gsm8k/test.jsonl").open().readline())
  text = tokenizer.apply_chat_template([{"role": "user", "content": row["question"]}],
                                       tokenize=False, add_generation_prompt=True)
  return tokenizer(text)["input_ids"]


def test_smollm2_logits_and_greedy_match_transformers(smollm2_checkpoint, smollm2_hf):
  import torch
  from transformers import AutoTokenizer
  out, hf_model = smollm2_checkpoint, smollm2_hf
  cfg = ckpt.load_config(out)
  assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.vocab_size) == (
      576, 30, 9, 3, 49152)
  assert cfg.tie_word_embeddings and cfg.eos_token_ids == (2,) and cfg.rope_theta == 1e5
  tokenizer = AutoTokenizer.from_pretrained(str(out))
  ids = _gsm8k_prompt(tokenizer)
  params, cfg = ckpt.load_params(out)
  params = llama.unstack_layers(params)
  with torch.no_grad():
    want = hf_model(torch.tensor([ids])).logits.numpy()
  got = jax.jit(lambda p, t: llama.forward_logits(p, cfg, t))(params, np.array([ids]))
  diff = float(np.abs(np.asarray(got) - want).max())
  print(f"SmolLM2 GSM8K prompt ({len(ids)} tokens): max |logit diff| = {diff:.2e}")
  assert diff < 1e-3

  # greedy continuation: 32 tokens, through the KV cache
  with torch.no_grad():
    # explicit mask: with pad == <|im_end|> transformers would otherwise mask the prompt's own
    # <|im_end|> tokens
    hf_ids = hf_model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                               max_new_tokens=32, do_sample=False, eos_token_id=None,
                               pad_token_id=2)[0, len(ids):].tolist()
  step = jax.jit(lambda p, t, pos, c: llama.decode_step(p, cfg, t, pos, c))
  cache = llama.init_cache(cfg, 1, len(ids) + 32, stacked=False)
  logits, cache = step(params, np.array([ids]), np.arange(len(ids))[None], cache)
  ours = []
  for t in range(32):
    nxt = int(jnp.argmax(logits[0, -1]))
    ours.append(nxt)
    logits, cache = step(params, np.array([[nxt]]), np.array([[len(ids) + t]]), cache)
  assert ours == hf_ids, (tokenizer.decode(ours), tokenizer.decode(hf_ids))


def test_gguf_tokenizer_needs_no_torch_and_equals_transformers(tmp_path):
  """The runtime (`make demo`) installs no torch: the GGUF's tokenizer is built without it (a
  subprocess where `import torch` fails), and equals transformers' own GGUF reading (which
  imports torch): same tokenizer.json, chat template and ids of a real GSM8K chat prompt."""
  import subprocess
  import sys
  from pathlib import Path
  from transformers import AutoTokenizer
  gguf_path = paths.smollm2_gguf()
  code = ("import sys; sys.modules['torch'] = None\n"
          "from mathjax_sft.convert import gguf\n"
          f"gguf.save_gguf_tokenizer({str(gguf_path)!r}, {str(tmp_path)!r})\n"
          "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n")
  repo = Path(__file__).resolve().parents[2]
  proc = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  ours = AutoTokenizer.from_pretrained(str(tmp_path))
  ref = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
  assert ours.chat_template == ref.chat_template and ours.eos_token == ref.eos_token == "<|im_end|>"
  assert _gsm8k_prompt(ours) == _gsm8k_prompt(ref)
  ref.save_pretrained(str(tmp_path / "ref"))
  assert (tmp_path / "tokenizer.json").read_text() == (tmp_path / "ref" / "tokenizer.json").read_text()
