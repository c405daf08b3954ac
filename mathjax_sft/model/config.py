"""Model configuration: a frozen dataclass, its presets, and HF `config.json` both ways."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from mathjax_sft import errors

DTYPES = ("float32", "bfloat16")
ROPE_TYPES = ("default", "linear", "llama3")
# What a rematerialised block keeps from its forward pass (see llama.REMAT_POLICIES):
# "full" nothing (least memory), "dots" the outputs of the weight matmuls (attention scores and
# elementwise ops are recomputed: most of the memory saving for a fraction of the recompute).
REMAT_POLICIES = ("full", "dots")
HF_ARCHITECTURE = "LlamaForCausalLM"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """A LLaMA-family decoder. Field names follow the math, HF names live in `to_hf`/`from_hf`."""

  vocab_size: int
  hidden_size: int            # "embed"
  intermediate_size: int      # "mlp"
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_theta: float = 10000.0
  rope_scaling: tuple[tuple[str, Any], ...] | None = None  # HF rope_scaling dict as sorted items
  rms_norm_eps: float = 1e-5
  max_position_embeddings: int = 4096
  tie_word_embeddings: bool = False
  bos_token_id: int | None = 1
  eos_token_ids: tuple[int, ...] = (2,)
  pad_token_id: int | None = None
  param_dtype: str = "float32"
  compute_dtype: str = "float32"
  scan_layers: bool = False   # lax.scan over layers (compile time of 70B on TPU) vs unrolled loop
  remat: bool = False         # rematerialise each block in the backward pass
  remat_policy: str = "full"  # with remat: one of REMAT_POLICIES
  # Full-sequence (training) attention in blocks of this many queries, each block reading only
  # the keys up to its end: the causal upper triangle is never computed (0 = one block).
  attention_chunk: int = 128
  # Training cross-entropy over this many positions at a time (LM head recomputed per chunk in
  # the backward pass), so the f32 [batch, seq, vocab] logits are never whole (0 = one chunk).
  loss_chunk: int = 512

  def __post_init__(self):
    positive = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                "num_kv_heads", "head_dim", "max_position_embeddings")
    for name in positive:
      if int(getattr(self, name)) <= 0:
        raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
    for name in ("param_dtype", "compute_dtype"):
      if getattr(self, name) not in DTYPES:
        raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r}; expected one of {DTYPES}")
    for name in ("attention_chunk", "loss_chunk"):
      if getattr(self, name) < 0:
        raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy={self.remat_policy!r}; expected one of {REMAT_POLICIES}")
    if self.rope_theta <= 0:
      raise ValueError(f"rope_theta must be positive, got {self.rope_theta}")
    if self.rope_scaling is not None:
      scaling = dict(self.rope_scaling)
      kind = scaling.get("rope_type", scaling.get("type", "default"))
      if kind not in ROPE_TYPES:
        raise ValueError(f"unsupported rope_scaling type {kind!r}; supported: {ROPE_TYPES}")
      if kind in ("linear", "llama3") and "factor" not in scaling:
        raise ValueError(f"rope_scaling of type {kind!r} needs a 'factor'")
      if kind == "llama3":
        for key in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
          if key not in scaling:
            raise ValueError(f"rope_scaling of type 'llama3' needs {key!r}")
    object.__setattr__(self, "eos_token_ids", tuple(int(t) for t in self.eos_token_ids))

  @property
  def rope_type(self) -> str:
    if self.rope_scaling is None:
      return "default"
    scaling = dict(self.rope_scaling)
    return scaling.get("rope_type", scaling.get("type", "default"))

  @property
  def q_per_kv(self) -> int:
    return self.num_heads // self.num_kv_heads

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  def num_params(self) -> int:
    """Parameter count (embeddings included)."""
    e, m, h, k, d = (self.hidden_size, self.intermediate_size, self.num_heads,
                     self.num_kv_heads, self.head_dim)
    per_layer = e * d * (2 * h + 2 * k) + 3 * e * m + 2 * e
    head = 0 if self.tie_word_embeddings else e * self.vocab_size
    return self.vocab_size * e + self.num_layers * per_layer + e + head

  def flops_per_token(self, seq_len: int) -> float:
    """Training FLOPs per token: 6 x matmul params (LM head included, embedding lookup not) plus
    causal attention 6 L T H d (PaLM's 12 L T H d halved by the causal mask)."""
    e, m, h, k, d = (self.hidden_size, self.intermediate_size, self.num_heads,
                     self.num_kv_heads, self.head_dim)
    matmul_params = self.num_layers * (e * d * (2 * h + 2 * k) + 3 * e * m) + e * self.vocab_size
    return 6.0 * matmul_params + 6.0 * self.num_layers * seq_len * h * d

  # ---- HF config.json ----------------------------------------------------------------------
  def to_hf(self) -> dict[str, Any]:
    rope_parameters: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
    if self.rope_scaling is not None:
      rope_parameters.update(dict(self.rope_scaling))
      rope_parameters.pop("type", None)
      rope_parameters["rope_theta"] = self.rope_theta
    eos = list(self.eos_token_ids)
    return {
        "architectures": [HF_ARCHITECTURE],
        "model_type": "llama",
        "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size,
        "intermediate_size": self.intermediate_size,
        "num_hidden_layers": self.num_layers,
        "num_attention_heads": self.num_heads,
        "num_key_value_heads": self.num_kv_heads,
        "head_dim": self.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": self.max_position_embeddings,
        "rms_norm_eps": self.rms_norm_eps,
        "rope_parameters": rope_parameters,
        "rope_theta": self.rope_theta,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": self.tie_word_embeddings,
        "bos_token_id": self.bos_token_id,
        "eos_token_id": eos[0] if len(eos) == 1 else eos,
        "pad_token_id": self.pad_token_id,
        "torch_dtype": self.param_dtype,
        "dtype": self.param_dtype,
    }

  @classmethod
  def from_hf(cls, hf: dict[str, Any], source: str = "config.json", **overrides) -> "ModelConfig":
    """Reads a HF LLaMA config dict; `source` names the file in error messages."""
    archs = hf.get("architectures") or []
    model_type = hf.get("model_type")
    if model_type not in (None, "llama") or (archs and archs[0] != HF_ARCHITECTURE):
      raise errors.BadInput(f"{source}: unsupported architecture {archs or model_type!r}; "
                            f"only {HF_ARCHITECTURE} (model_type 'llama') is supported")
    for flag in ("attention_bias", "mlp_bias"):
      if hf.get(flag):
        raise errors.BadInput(f"{source}: {flag}=true is not supported (LLaMA has no biases)")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
      raise errors.BadInput(f"{source}: hidden_act={act!r} is not supported; expected 'silu'")
    try:
      heads = int(hf["num_attention_heads"])
      hidden = int(hf["hidden_size"])
      # transformers 5 keeps rope_theta (and scaling) under rope_parameters; older files at top level.
      rope_params = dict(hf.get("rope_parameters") or {})
      theta = float(rope_params.get("rope_theta", hf.get("rope_theta", 10000.0)))
      scaling = hf.get("rope_scaling") or {k: v for k, v in rope_params.items() if k != "rope_theta"}
      kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
      scaling_items = None if kind == "default" else tuple(sorted(scaling.items()))
      eos = hf.get("eos_token_id", 2)
      eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (eos,))
      dtype = str(hf.get("dtype") or hf.get("torch_dtype") or "float32")
      kwargs = dict(
          vocab_size=int(hf["vocab_size"]),
          hidden_size=hidden,
          intermediate_size=int(hf["intermediate_size"]),
          num_layers=int(hf["num_hidden_layers"]),
          num_heads=heads,
          num_kv_heads=int(hf.get("num_key_value_heads") or heads),
          head_dim=int(hf.get("head_dim") or hidden // heads),
          rope_theta=theta,
          rope_scaling=scaling_items,
          rms_norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
          max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
          tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
          bos_token_id=hf.get("bos_token_id"),
          eos_token_ids=eos_ids,
          pad_token_id=hf.get("pad_token_id"),
          param_dtype=dtype if dtype in DTYPES else "float32",
      )
    except KeyError as e:
      raise errors.BadInput(f"{source}: missing required field {e.args[0]!r}") from None
    kwargs.update(overrides)
    try:
      return cls(**kwargs)
    except ValueError as e:
      raise errors.BadInput(f"{source}: {e}") from None

  def save_json(self, path: str | Path) -> None:
    Path(path).write_text(json.dumps(self.to_hf(), indent=2) + "\n")

  @classmethod
  def load_json(cls, path: str | Path, **overrides) -> "ModelConfig":
    path = Path(path)
    if not path.is_file():
      raise errors.MissingInput(f"model config {path} not found")
    try:
      hf = json.loads(path.read_text())
    except json.JSONDecodeError as e:
      raise errors.BadInput(f"{path}: not valid JSON ({e})") from None
    return cls.from_hf(hf, source=str(path), **overrides)


PRESETS: dict[str, ModelConfig] = {
    "llama2-7b": ModelConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                             num_layers=32, num_heads=32, num_kv_heads=32, head_dim=128,
                             rope_theta=10000.0, rms_norm_eps=1e-5, max_position_embeddings=4096),
    "llama2-13b": ModelConfig(vocab_size=32000, hidden_size=5120, intermediate_size=13824,
                              num_layers=40, num_heads=40, num_kv_heads=40, head_dim=128,
                              rope_theta=10000.0, rms_norm_eps=1e-5, max_position_embeddings=4096),
    "llama2-70b": ModelConfig(vocab_size=32000, hidden_size=8192, intermediate_size=28672,
                              num_layers=80, num_heads=64, num_kv_heads=8, head_dim=128,
                              rope_theta=10000.0, rms_norm_eps=1e-5, max_position_embeddings=4096),
    "smollm2-135m": ModelConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                                num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64,
                                rope_theta=100000.0, rms_norm_eps=1e-5,
                                max_position_embeddings=8192, tie_word_embeddings=True,
                                bos_token_id=1, eos_token_ids=(2,), pad_token_id=2),
    # Tiny shapes for tests: divisible by a (2, 2, 2) mesh.
    "tiny": ModelConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
                        num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=512),
    "tiny-mha": ModelConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
                            num_heads=4, num_kv_heads=4, head_dim=16, max_position_embeddings=512,
                            tie_word_embeddings=True),
}


def preset(name: str, **overrides) -> ModelConfig:
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides)
