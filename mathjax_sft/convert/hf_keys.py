"""THE conversion table: HF LLaMA tensor name <-> our parameter path, with paired transforms.

Import (HF -> ours) and export (ours -> HF) both read `TABLE`; each entry keeps the forward
transform next to its inverse, so a change to one is seen next to the other. All transforms are
transposes and reshapes (bit-exact), because the model uses HF's rotate-half RoPE layout.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable

import numpy as np

from mathjax_sft.model.config import ModelConfig

Transform = Callable[[np.ndarray, ModelConfig], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Entry:
  hf: str                   # HF name; "{i}" stands for the layer index
  param: str                # our name: top-level key, or key under params["layers"]
  to_ours: Transform        # HF tensor -> our tensor (one layer's slice for layered entries)
  to_hf: Transform          # inverse
  hf_shape: Callable[[ModelConfig], tuple[int, ...]]

  @property
  def layered(self) -> bool:
    return "{i}" in self.hf


def _same(x, cfg):
  return x


def _t(x, cfg):
  return np.ascontiguousarray(x.T)


def _proj_in(heads_attr: str) -> Transform:
  """[heads * head_dim, embed] -> [embed, heads, head_dim]."""
  def f(x, cfg):
    return np.ascontiguousarray(x.T).reshape(cfg.hidden_size, getattr(cfg, heads_attr), cfg.head_dim)
  return f


def _proj_in_inv(heads_attr: str) -> Transform:
  def f(x, cfg):
    return np.ascontiguousarray(x.reshape(cfg.hidden_size, getattr(cfg, heads_attr) * cfg.head_dim).T)
  return f


def _o_in(x, cfg):       # [embed, heads * head_dim] -> [heads, head_dim, embed]
  return np.ascontiguousarray(x.T).reshape(cfg.num_heads, cfg.head_dim, cfg.hidden_size)


def _o_out(x, cfg):
  return np.ascontiguousarray(x.reshape(cfg.num_heads * cfg.head_dim, cfg.hidden_size).T)


_E = lambda c: c.hidden_size
TABLE: tuple[Entry, ...] = (
    Entry("model.embed_tokens.weight", "embed", _same, _same, lambda c: (c.vocab_size, _E(c))),
    Entry("model.layers.{i}.input_layernorm.weight", "attn_norm", _same, _same, lambda c: (_E(c),)),
    Entry("model.layers.{i}.self_attn.q_proj.weight", "wq", _proj_in("num_heads"),
          _proj_in_inv("num_heads"), lambda c: (c.num_heads * c.head_dim, _E(c))),
    Entry("model.layers.{i}.self_attn.k_proj.weight", "wk", _proj_in("num_kv_heads"),
          _proj_in_inv("num_kv_heads"), lambda c: (c.num_kv_heads * c.head_dim, _E(c))),
    Entry("model.layers.{i}.self_attn.v_proj.weight", "wv", _proj_in("num_kv_heads"),
          _proj_in_inv("num_kv_heads"), lambda c: (c.num_kv_heads * c.head_dim, _E(c))),
    Entry("model.layers.{i}.self_attn.o_proj.weight", "wo", _o_in, _o_out,
          lambda c: (_E(c), c.num_heads * c.head_dim)),
    Entry("model.layers.{i}.post_attention_layernorm.weight", "mlp_norm", _same, _same,
          lambda c: (_E(c),)),
    Entry("model.layers.{i}.mlp.gate_proj.weight", "w_gate", _t, _t,
          lambda c: (c.intermediate_size, _E(c))),
    Entry("model.layers.{i}.mlp.up_proj.weight", "w_up", _t, _t,
          lambda c: (c.intermediate_size, _E(c))),
    Entry("model.layers.{i}.mlp.down_proj.weight", "w_down", _t, _t,
          lambda c: (_E(c), c.intermediate_size)),
    Entry("model.norm.weight", "final_norm", _same, _same, lambda c: (_E(c),)),
    Entry("lm_head.weight", "lm_head", _t, _t, lambda c: (c.vocab_size, _E(c))),
)

_PATTERNS = [(re.compile("^" + re.escape(e.hf).replace(r"\{i\}", r"(\d+)") + "$"), e) for e in TABLE]
# Buffers some checkpoints carry that hold no parameters.
IGNORED = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")


def lookup(hf_name: str) -> tuple[Entry, int | None] | None:
  """(entry, layer index or None) for an HF tensor name; None if the name is not in the table."""
  for pattern, entry in _PATTERNS:
    m = pattern.match(hf_name)
    if m:
      return entry, (int(m.group(1)) if entry.layered else None)
  return None


def expected_hf_names(cfg: ModelConfig) -> list[str]:
  """Every HF tensor name a checkpoint with this config must hold, in model order."""
  names = []
  for e in TABLE:
    if e.param == "lm_head" and cfg.tie_word_embeddings:
      continue
    if e.layered:
      names.extend(e.hf.format(i=i) for i in range(cfg.num_layers))
    else:
      names.append(e.hf)
  layered = [n for n in names if n.startswith("model.layers.")]
  layered.sort(key=lambda n: int(n.split(".")[2]))
  rest = [n for n in names if not n.startswith("model.layers.")]
  return [rest[0]] + layered + rest[1:]
