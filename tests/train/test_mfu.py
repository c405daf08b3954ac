"""Model FLOPs per token, MFU, and where the peak FLOP/s comes from."""

import dataclasses
import types

import jax
import pytest

from mathjax_sft import hardware
from mathjax_sft.model import llama
from mathjax_sft.model.config import ModelConfig, preset
from mathjax_sft.train import metrics


def test_flops_per_token_is_six_matmul_params_plus_causal_attention():
  v, e, m, n_layers, h, k, d, t = 11, 6, 10, 3, 4, 2, 4, 7
  cfg = ModelConfig(vocab_size=v, hidden_size=e, intermediate_size=m, num_layers=n_layers,
                    num_heads=h, num_kv_heads=k, head_dim=d)
  q_proj, k_proj, v_proj, o_proj = e * h * d, e * k * d, e * k * d, h * d * e
  gate, up, down = e * m, e * m, m * e
  head = e * v
  matmul_params = n_layers * (q_proj + k_proj + v_proj + o_proj + gate + up + down) + head
  attention = 6 * n_layers * t * h * d        # 12 L T H d, halved by the causal mask
  assert matmul_params == 1470 and attention == 2016
  assert cfg.flops_per_token(t) == 6 * matmul_params + attention == 10836
  # the LM head is a matmul whether or not it shares the embedding's weights
  assert cfg.replace(tie_word_embeddings=True).flops_per_token(t) == 10836
  # the same count from the model's real weight shapes (norms and embedding lookup excluded)
  for name in ("tiny", "tiny-mha", "smollm2-135m", "llama2-70b"):
    cfg = preset(name)
    shapes = llama.abstract_params(cfg, stacked=False)
    weights = sum(x.size for lp in shapes.layers for n, x in dataclasses.asdict(lp).items()
                  if "norm" not in n)
    head = shapes.embed.size if cfg.tie_word_embeddings else shapes.lm_head.size
    expected = 6 * (weights + head) + 6 * cfg.num_layers * 512 * cfg.num_heads * cfg.head_dim
    assert cfg.flops_per_token(512) == expected, name


def test_mfu_is_model_flops_over_the_peak_of_every_device():
  # 2000 tokens/s x 3e9 FLOPs/token = 6e12 FLOP/s over 4 devices of 1e13 FLOP/s
  assert metrics.mfu(3e9, 2000.0, 1e13, 4) == pytest.approx(0.15, rel=1e-12)
  assert metrics.mfu(3e9, 2000.0, 1e13, 1) == pytest.approx(0.6, rel=1e-12)


def test_peak_is_the_configured_value_else_a_known_chip_else_measured(monkeypatch):
  measured = []

  def measure(dtype):
    measured.append(dtype)
    return 7.5e10

  monkeypatch.setattr(hardware, "measure_matmul_peak", measure)
  assert hardware.peak_flops_per_device(3e12, "bfloat16") == (3e12, "config")
  kind = jax.devices()[0].device_kind
  assert kind not in hardware.KNOWN_PEAKS
  assert hardware.peak_flops_per_device(0.0, "bfloat16") == (
      7.5e10, f"measured bfloat16 matmul on {kind}")
  assert measured == ["bfloat16"]
  monkeypatch.setattr(hardware.jax, "devices", lambda: [types.SimpleNamespace(device_kind="TPU v4")])
  assert hardware.peak_flops_per_device(0.0, "bfloat16") == (275e12, "known peak of TPU v4")
  assert hardware.peak_flops_per_device(5e12, "bfloat16") == (5e12, "config")
  assert measured == ["bfloat16"]


def test_matmul_peak_is_2n3_over_the_fastest_repeat(monkeypatch):
  # a fake clock: the three timed matmuls take 0.5 s, 0.25 s and 0.4 s
  ticks = iter([10.0, 10.5, 20.0, 20.25, 30.0, 30.4])
  monkeypatch.setattr(hardware, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))
  n = 16
  assert hardware.measure_matmul_peak("float32", n=n, repeats=3) == pytest.approx(
      2 * n ** 3 / 0.25, rel=1e-9)
  assert next(ticks, None) is None
