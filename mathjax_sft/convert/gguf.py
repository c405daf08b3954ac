"""GGUF (llama.cpp) import: dequantize, rename to HF names, undo llama.cpp's q/k permutation.

The file is exposed as a source of HF-named tensors read through the same table as safetensors,
so GGUF files only add three things: metadata -> config, names -> HF names, and the inverse of
the rotary permutation llama.cpp's converter applies to q_proj/k_proj.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from mathjax_sft import errors
from mathjax_sft.model.config import ModelConfig

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.weight$")


def _reader(path: str | Path):
  import gguf
  path = Path(path)
  if not path.is_file():
    raise errors.MissingInput(f"GGUF file {path} not found")
  try:
    reader = gguf.GGUFReader(str(path))
  except Exception as e:  # the gguf package raises ValueError/struct errors on bad files
    raise errors.BadInput(f"{path}: not a readable GGUF file: truncated or corrupt "
                          f"({path.stat().st_size} bytes; {e})", file=path) from None
  size = path.stat().st_size
  for t in reader.tensors:
    end = int(t.data_offset) + int(t.n_bytes)
    if end > size:
      raise errors.BadInput(f"{path}: truncated: tensor {t.name} ends at byte {end}, the file has "
                            f"{size} bytes (an incomplete download? fetch the file again)",
                            file=path)
  return reader


def _field(reader, key: str, path, default=None):
  field = reader.fields.get(key)
  if field is None:
    if default is not None:
      return default
    raise errors.BadInput(f"{path}: GGUF metadata has no {key!r}")
  return field.contents()


def config_from_gguf(path: str | Path, reader=None) -> ModelConfig:
  reader = reader or _reader(path)
  arch = _field(reader, "general.architecture", path)
  if arch != "llama":
    raise errors.BadInput(f"{path}: unsupported GGUF architecture {arch!r}; only 'llama' is "
                          "supported")
  names = {t.name for t in reader.tensors}
  if "token_embd.weight" not in names:
    raise errors.BadInput(f"{path}: GGUF file has no tensor token_embd.weight", file=path)
  embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
  hidden = int(_field(reader, "llama.embedding_length", path))
  heads = int(_field(reader, "llama.attention.head_count", path))
  head_dim = int(_field(reader, "llama.rope.dimension_count", path, hidden // heads))
  eps = float(np.float32(_field(reader, "llama.attention.layer_norm_rms_epsilon", path)))
  eos = _field(reader, "tokenizer.ggml.eos_token_id", path, -1)
  pad = _field(reader, "tokenizer.ggml.padding_token_id", path, -1)
  bos = _field(reader, "tokenizer.ggml.bos_token_id", path, -1)
  if "llama.rope.scaling.type" in reader.fields:
    raise errors.BadInput(f"{path}: GGUF rope scaling is not supported")
  return ModelConfig(
      vocab_size=int(_field(reader, "llama.vocab_size", path, int(embd.shape[-1]))),
      hidden_size=hidden,
      intermediate_size=int(_field(reader, "llama.feed_forward_length", path)),
      num_layers=int(_field(reader, "llama.block_count", path)),
      num_heads=heads,
      num_kv_heads=int(_field(reader, "llama.attention.head_count_kv", path, heads)),
      head_dim=head_dim,
      rope_theta=float(_field(reader, "llama.rope.freq_base", path, 10000.0)),
      rms_norm_eps=round(eps, 12),
      max_position_embeddings=int(_field(reader, "llama.context_length", path, 4096)),
      tie_word_embeddings="output.weight" not in names,
      bos_token_id=None if bos < 0 else int(bos),
      eos_token_ids=() if eos < 0 else (int(eos),),
      pad_token_id=None if pad < 0 else int(pad),
  )


def unpermute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Inverse of llama.cpp's `permute` of q/k rows (interleaved -> rotate-half), [out, in]."""
  half = w.shape[0] // n_heads // 2
  return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
  """llama.cpp's permutation (rotate-half -> interleaved); used to test `unpermute_rotary`."""
  half = w.shape[0] // n_heads // 2
  return w.reshape(n_heads, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class GgufSource:
  """A GGUF file as a `hf.TensorSource`: HF names, float32 arrays in HF [out, in] layout with
  llama.cpp's rotary permutation undone. Tensors are dequantized one at a time on request."""

  def __init__(self, path: str | Path, cfg: ModelConfig | None = None, reader=None):
    self.path = Path(path)
    self.where = str(path)
    self.reader = reader or _reader(path)
    self.cfg = cfg or config_from_gguf(path, self.reader)
    self._tensors = {}
    for t in self.reader.tensors:
      self._tensors[self._hf_name(t.name)] = t

  def _hf_name(self, name: str) -> str:
    m = _LAYER_RE.match(name)
    if m and m.group(2) in _LAYER_NAMES:
      return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.weight"
    if name in _GLOBAL_NAMES:
      return _GLOBAL_NAMES[name]
    if name == "rope_freqs.weight":
      raise errors.BadInput(f"{self.path}: tensor rope_freqs.weight (rope scaling) is not "
                            "supported")
    raise errors.BadInput(f"{self.path}: unknown GGUF tensor {name!r}")

  def names(self) -> dict[str, str]:
    return {n: self.path.name for n in self._tensors}

  def get(self, name: str) -> np.ndarray:
    from gguf import quants
    t = self._tensors[name]
    shape = tuple(int(s) for s in reversed(t.shape))      # GGUF lists dims fastest-first
    array = np.asarray(quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
    if name.endswith("q_proj.weight"):
      array = unpermute_rotary(array, self.cfg.num_heads)
    elif name.endswith("k_proj.weight"):
      array = unpermute_rotary(array, self.cfg.num_kv_heads)
    return array


# llama.cpp's special-token ids -> transformers' token names (transformers' own GGUF mapping)
_SPECIAL_TOKENS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id",
                   "unk_token": "unknown_token_id", "pad_token": "padding_token_id"}


def gguf_tokenizer(path: str | Path) -> Any:
  """The HF fast tokenizer (with chat template) that a GGUF's metadata describes, built as
  `AutoTokenizer.from_pretrained(dir, gguf_file=...)` builds it (transformers' GGUF tokenizer
  converters), but with the metadata read by the `gguf` package: transformers' own GGUF reader
  imports torch, which the runtime does not install."""
  from gguf import GGUFReader  # pylint: disable=import-outside-toplevel
  from transformers import PreTrainedTokenizerFast  # pylint: disable=import-outside-toplevel
  from transformers.integrations.gguf import gguf_tokenizer_mapping as mapping  # pylint: disable=import-outside-toplevel
  fields = GGUFReader(str(path)).fields
  meta = {k: f.contents() for k, f in fields.items()
          if k.startswith("tokenizer.") or k == "general.architecture"}
  if "tokenizer.ggml.tokens" not in meta:
    raise errors.BadInput(f"{path}: the GGUF holds no tokenizer (no tokenizer.ggml.tokens)")
  grouped = {group: {name: meta[f"tokenizer.{key}"] for key, name in renames.items()
                     if f"tokenizer.{key}" in meta}
             for group, renames in mapping.GGUF_TOKENIZER_MAPPING.items()}
  tokenizer, config = grouped["tokenizer"], grouped["tokenizer_config"]
  if tokenizer.get("tokenizer_type") == "llama":   # llama.cpp adds BOS unless the file says not
    config.setdefault("add_bos_token", True)
  for name, key in _SPECIAL_TOKENS.items():
    token_id = meta.get(f"tokenizer.ggml.{key}")
    config[name] = tokenizer["tokens"][token_id] if token_id is not None else None
  backend, extra = mapping.convert_gguf_tokenizer(meta["general.architecture"], tokenizer)
  return PreTrainedTokenizerFast(tokenizer_object=backend, **config, **extra)


def save_gguf_tokenizer(path: str | Path, out_dir: str | Path) -> None:
  """Writes the GGUF's tokenizer (`gguf_tokenizer`) into out_dir."""
  gguf_tokenizer(path).save_pretrained(str(out_dir))
