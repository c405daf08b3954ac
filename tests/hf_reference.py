"""Helpers that build reference models with transformers (torch): tests and benchmarks only."""

from __future__ import annotations

import numpy as np

from mathjax_sft.convert import hf as hf_convert
from mathjax_sft.model.config import ModelConfig


def random_hf_model(cfg: ModelConfig, seed: int = 0):
  """A transformers LlamaForCausalLM (f32, eval mode) with random weights and our config."""
  import torch
  import transformers
  torch.manual_seed(seed)
  hf_cfg = transformers.LlamaConfig(**{k: v for k, v in cfg.to_hf().items()
                                       if k not in ("architectures", "model_type", "dtype", "torch_dtype")})
  model = transformers.LlamaForCausalLM(hf_cfg).eval()
  with torch.no_grad():   # random norms too, so a swapped norm cannot pass
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
  return model


def state_dict_numpy(model) -> dict[str, np.ndarray]:
  return {k: v.detach().float().numpy() for k, v in model.state_dict().items()}


def params_from_model(model, cfg: ModelConfig):
  return hf_convert.params_from_source(hf_convert.DictSource(state_dict_numpy(model)), cfg)


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
  import torch
  with torch.no_grad():
    return model(torch.as_tensor(tokens)).logits.float().numpy()
