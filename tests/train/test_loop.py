"""The run loop in-process: learning on real GSM8K, metrics files, eval, export, NaN stop."""

import json
import math

import numpy as np
import pytest

from mathjax_sft.checkpoint import params as params_ckpt
from mathjax_sft.checkpoint.train_state import TrainCheckpointer
from mathjax_sft.model import llama
from mathjax_sft.train import metrics as metrics_lib
from mathjax_sft.train.loop import NonFiniteLossError, train
from tests.train import helpers


def test_tiny_model_learns_gsm8k_slice(byte_tokenizer, tmp_path):
  data = helpers.gsm8k_slice(tmp_path / "gsm8k.jsonl", 96)
  c = helpers.tiny_config(byte_tokenizer, data, tmp_path / "run", seq_len=512, batch_size=4,
                          max_steps=30, learning_rate=3e-3, warmup_steps=3,
                          checkpoint_every_steps=30, eval_fraction=0.1, eval_every_steps=15,
                          export_final=True, export_hf=True, compute_dtype="bfloat16",
                          scan_layers=False)
  losses = {}
  result = train(c, step_callback=lambda s, m: losses.__setitem__(s, m["loss"]))
  assert result.step == 30 and result.stop_reason == "max_steps"
  first, last = np.mean([losses[s] for s in (1, 2, 3)]), np.mean([losses[s] for s in (28, 29, 30)])
  assert first > 5.0 and last < first - 1.5, (first, last)
  # metrics.jsonl and TensorBoard events exist; eval loss went down too
  train_log = metrics_lib.read_metrics(tmp_path / "run" / "metrics.jsonl")
  eval_log = metrics_lib.read_metrics(tmp_path / "run" / "metrics.jsonl", kind="eval")
  assert sorted(train_log) == list(range(1, 31))
  assert {"loss", "learning_rate", "grad_norm", "tokens_per_s", "mfu"} <= set(train_log[30])
  assert sorted(eval_log) == [15, 30] and eval_log[30]["loss"] < first
  assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))
  data_rec = [json.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl")
              if json.loads(l)["kind"] == "data"][0]
  assert data_rec["train"]["rows"] == 86 and data_rec["eval"]["rows"] == 10
  assert data_rec["eval_examples"] == data_rec["eval"]["kept"] > 0
  assert data_rec["train"]["truncated"] >= 0 and "dropped_long" in data_rec["train"]
  # the export is a model checkpoint dir holding the trained params
  params, cfg = params_ckpt.load_params(result.export_dir)
  assert cfg.vocab_size == helpers.TINY_VOCAB and not cfg.scan_layers
  with TrainCheckpointer(tmp_path / "run") as ck:
    assert ck.latest_step() == 30
  assert result.tokens_per_s > 0 and 0 < result.mfu
  # ... and the HF export (through the converter) loads in transformers with the same logits
  import torch
  import transformers
  hf = transformers.AutoModelForCausalLM.from_pretrained(result.hf_dir, dtype=torch.float32)
  tokens = np.arange(3, 40, dtype=np.int32)[None]
  ours, _ = llama.forward(params, cfg.replace(compute_dtype="float32"), tokens)
  with torch.no_grad():
    theirs = hf(torch.from_numpy(tokens.astype(np.int64))).logits.numpy()
  np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(byte_tokenizer, tmp_path):
  data = helpers.write_jsonl(tmp_path / "d.jsonl", helpers.arithmetic_rows(40))
  # warmup: step 1 uses lr 0 (a good checkpoint), step 2 an lr that overflows the params
  c = helpers.tiny_config(byte_tokenizer, data, tmp_path / "run", max_steps=8, warmup_steps=4,
                          checkpoint_every_steps=1, learning_rate=1e30, max_grad_norm=0.0)
  seen = {}
  with pytest.raises(NonFiniteLossError, match=r"non-finite value at step 2: .*last good checkpoint is step 1"):
    train(c, step_callback=lambda s, m: seen.__setitem__(s, m))
  assert sorted(seen) == [1]
  log = metrics_lib.read_metrics(tmp_path / "run" / "metrics.jsonl")
  assert sorted(log) == [1] and math.isfinite(log[1]["loss"])
  with TrainCheckpointer(tmp_path / "run") as ck:
    assert ck.all_steps() == [1]
  # the run resumes from the good checkpoint (and fails again at step 2 with this learning rate)
  with pytest.raises(NonFiniteLossError, match="at step 2"):
    train(c)


def test_trained_prompt_format_travels_with_the_model(byte_tokenizer, tmp_path, caplog):
  """A model fine-tuned with the xwin template records it (prompt_format.json) in its final
  checkpoint and its HF export; the sampler uses it by default and warns on a contradicting
  --template, naming both."""
  import logging
  from mathjax_sft.convert import api as convert_api
  from mathjax_sft.data import templates
  from mathjax_sft.sample.run import SampleRunConfig
  data = helpers.write_jsonl(tmp_path / "d.jsonl", helpers.arithmetic_rows(8))
  c = helpers.tiny_config(byte_tokenizer, data, tmp_path / "run", max_steps=1, seq_len=512,
                          batch_size=2, template="xwin", export_final=True)
  result = train(c)
  fmt = templates.load_prompt_format(result.export_dir)
  assert fmt == {"template": "xwin", "system_prompt": None,
                 "stop_strings": list(templates.STOP_STRINGS["xwin"])}
  convert_api.export_checkpoint(result.export_dir, tmp_path / "hf", show_progress=False)
  assert templates.load_prompt_format(tmp_path / "hf") == fmt
  base = dict(checkpoint=result.export_dir, dataset="gsm8k", output_dir=str(tmp_path / "s"))
  resolved = SampleRunConfig(**base).with_checkpoint_format()
  assert resolved.template == "xwin" and "USER" in resolved.all_stop_strings
  with caplog.at_level(logging.WARNING, logger="mathjax_sft.sample.run"):
    kept = SampleRunConfig(**base, template="alpaca").with_checkpoint_format()
  assert kept.template == "alpaca"
  assert "--template=alpaca" in caplog.text and "'xwin'" in caplog.text
  # a checkpoint that records nothing samples with the default chat template
  plain = SampleRunConfig(**dict(base, checkpoint=str(tmp_path))).with_checkpoint_format()
  assert plain.template == templates.DEFAULT_TEMPLATE
