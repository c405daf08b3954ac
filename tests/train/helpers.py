"""Shared test helpers: a tiny byte-level tokenizer, small JSONL files, tiny run configs."""

from __future__ import annotations

import json
from pathlib import Path

from mathjax_sft import configtree, paths
from mathjax_sft.train.config import TrainConfig

TINY_VOCAB = 320  # 256 bytes + 3 specials, rounded up to divide a tensor axis of 2


def byte_tokenizer_dir(out_dir: Path) -> Path:
  """A real HF fast tokenizer (byte-level BPE without merges: one token per byte) saved to disk."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
  from transformers import PreTrainedTokenizerFast

  alphabet = pre_tokenizers.ByteLevel.alphabet()
  vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
  for ch in sorted(alphabet):
    vocab[ch] = len(vocab)
  tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tok.decoder = decoders.ByteLevel()
  tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                 pad_token="<pad>")
  out_dir.mkdir(parents=True, exist_ok=True)
  fast.save_pretrained(str(out_dir))
  return out_dir


def write_jsonl(path: Path, rows: list) -> Path:
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
  return path


def arithmetic_rows(n: int) -> list[dict]:
  rows = []
  for i in range(n):
    a, b = i % 17, (3 * i) % 11
    rows.append({"question": f"What is {a} plus {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"})
  return rows


def gsm8k_slice(path: Path, n: int) -> Path:
  """The first n rows of the real GSM8K train file (fails with a message if the data is missing)."""
  src = paths.data_file("gsm8k/train.jsonl")
  with open(src, encoding="utf-8") as f:
    lines = [next(f) for _ in range(n)]
  path.write_text("".join(lines))
  return path


def config_paths(**fields) -> dict:
  """Field names as dotted paths of TrainConfig: a path as given, or a unique last component
  (`seq_len` -> `data.seq_len`)."""
  by_name: dict = {}
  for leaf in configtree.leaves(TrainConfig):
    by_name.setdefault(leaf.path.rsplit(".", 1)[-1], []).append(leaf.path)
  out = {}
  for name, value in fields.items():
    paths = [name] if "." in name else by_name.get(name, [])
    assert len(paths) == 1, f"{name!r} names {paths or 'no field'} of TrainConfig"
    out[paths[0]] = tuple(value) if isinstance(value, list) else value
  return out


def tiny_config(tokenizer_dir: Path, train_file: Path, output_dir: Path, **overrides) -> TrainConfig:
  """A tiny-preset run on one device; overrides by field name or dotted path."""
  c = TrainConfig().replace({
      "model.preset": "tiny",
      "model.vocab_size": TINY_VOCAB,
      "model.tokenizer": str(tokenizer_dir),
      "data.train_files": str(train_file),
      "output_dir": str(output_dir),
      "data.seq_len": 256,
      "batch_size": 8,
      "max_steps": 4,
      "optimizer.learning_rate": 1e-3,
      "optimizer.warmup_steps": 1,
      "checkpoint.every_steps": 2,
      "log_every_steps": 1,
      "progress_bar": False,
      "peak_flops_per_device": 1e11,   # skip the matmul measurement in tests
      "mesh.shape": (1, 1, 1),
      "mesh.num_devices": 1,
      "checkpoint.export_final": False,
  })
  return c.replace(config_paths(**overrides))


def feed_and_loss(devices) -> tuple[dict, object, float]:
  """A fixed global batch fed over a (8, 1, 1) mesh of `devices` (in that order) with
  `distributed.put_global_batch`, and the loss of a seeded tiny model on it."""
  import jax
  import numpy as np

  from mathjax_sft import distributed
  from mathjax_sft.model import llama
  from mathjax_sft.model.config import preset
  from mathjax_sft.sharding.mesh import make_mesh
  from mathjax_sft.train import state as state_lib
  from mathjax_sft.train import step as step_lib

  cfg = preset("tiny", vocab_size=TINY_VOCAB, scan_layers=True)
  mesh = make_mesh((8, 1, 1), devices=devices)
  rng = np.random.default_rng(0)
  ids = rng.integers(0, TINY_VOCAB, (16, 33)).astype(np.int32)
  host = {"inputs": ids[:, :-1], "targets": ids[:, 1:],
          "loss_mask": (rng.random((16, 32)) < 0.7).astype(np.int32),
          "segment_ids": np.ones((16, 32), np.int32),
          "positions": np.tile(np.arange(32, dtype=np.int32), (16, 1))}
  b_shard = step_lib.batch_sharding(mesh, 16, 32)
  batch = distributed.put_global_batch(host, b_shard)
  p_shard = state_lib.param_shardings(cfg, mesh, True)
  params = llama.init_params(cfg, jax.random.PRNGKey(3), p_shard)
  loss_sum, count = step_lib.make_eval_step(cfg, p_shard, b_shard)(params, batch)
  return batch, mesh, float(loss_sum) / float(count)
