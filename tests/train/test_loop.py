"""The run loop in-process: learning on real GSM8K, metrics files, eval, export, NaN stop."""

import dataclasses
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
                          every_steps=30, eval_fraction=0.1, eval_every_steps=15,
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
  ours = llama.forward_logits(params, cfg.replace(compute_dtype="float32"), tokens)
  with torch.no_grad():
    theirs = hf(torch.from_numpy(tokens.astype(np.int64))).logits.numpy()
  np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4)


def test_fine_tuning_starts_from_the_init_checkpoint(byte_tokenizer, tmp_path, monkeypatch):
  """The first step's loss is the init_checkpoint's own loss on that step's batch (a checkpoint
  made from another key than the run's seed, predicting the answers' byte frequencies: far
  below a random init's ln(vocab)); each step's MFU is its throughput x FLOPs per token over
  the peak."""
  import jax
  from mathjax_sft.data.tokenize import load_tokenizer
  from mathjax_sft.model.config import preset
  from mathjax_sft.train import step as step_lib
  rows = helpers.arithmetic_rows(24)
  data = helpers.write_jsonl(tmp_path / "d.jsonl", rows)
  tok = load_tokenizer(byte_tokenizer)
  counts = np.full(helpers.TINY_VOCAB, 0.1)
  for r in rows:
    ids = tok(r["answer"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    np.add.at(counts, ids, 1)
  cfg = preset("tiny", vocab_size=helpers.TINY_VOCAB)
  params = jax.device_get(llama.init_params(cfg, jax.random.PRNGKey(7)))
  params = dataclasses.replace(
      params, embed=params.embed + 1.0,    # the residual stream ~ ones, so logits ~ log p
      lm_head=np.tile(np.log(counts / counts.sum()), (cfg.hidden_size, 1)) / cfg.hidden_size)
  params_ckpt.save_params(tmp_path / "ckpt", params, cfg)
  batches = []
  make_train_step = step_lib.make_train_step

  def recording(*args, **kwargs):
    fn = make_train_step(*args, **kwargs)

    def step(state, batch):
      batches.append(jax.device_get(batch))
      return fn(state, batch)
    return step

  monkeypatch.setattr(step_lib, "make_train_step", recording)
  c = helpers.tiny_config(byte_tokenizer, data, tmp_path / "run", preset="",
                          init_checkpoint=str(tmp_path / "ckpt"), max_steps=2)
  assert c.seed == 0
  seen = {}
  result = train(c, step_callback=lambda s, m: seen.__setitem__(s, m))
  b = batches[0]
  logits = jax.jit(lambda p, b: llama.forward_logits(p, cfg, b["inputs"], b["positions"],
                                                     segment_ids=b["segment_ids"]))(params, b)
  logp = jax.nn.log_softmax(np.asarray(logits, np.float64), axis=-1)
  nll = -np.take_along_axis(np.asarray(logp), b["targets"][..., None], -1)[..., 0]
  expected = (nll * b["loss_mask"]).sum() / b["loss_mask"].sum()
  assert expected < 0.6 * np.log(helpers.TINY_VOCAB)
  assert seen[1]["loss"] == pytest.approx(expected, rel=1e-5)
  # MFU: 1 device of the configured 1e11 FLOP/s
  flops = cfg.flops_per_token(c.data.seq_len)
  assert seen[2]["tokens_per_s"] == pytest.approx(8 * 256 / seen[2]["step_time_s"])
  assert seen[2]["mfu"] == pytest.approx(flops * seen[2]["tokens_per_s"] / 1e11, rel=1e-9)
  assert result.tokens_per_s > 0
  assert result.mfu == pytest.approx(flops * result.tokens_per_s / 1e11, rel=1e-9)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(byte_tokenizer, tmp_path):
  data = helpers.write_jsonl(tmp_path / "d.jsonl", helpers.arithmetic_rows(40))
  # warmup: step 1 uses lr 0 (a good checkpoint), step 2 an lr that overflows the params
  c = helpers.tiny_config(byte_tokenizer, data, tmp_path / "run", max_steps=8, warmup_steps=4,
                          every_steps=1, learning_rate=1e30, max_grad_norm=0.0)
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


def test_any_training_step_is_a_model(byte_tokenizer, tmp_path):
  """OUT/checkpoints/<step> is accepted wherever a model checkpoint dir is: its params (alone,
  without the optimizer state) equal the run's final export, it exports to the same HF
  tensors, and the sampler runs on it in the format the run trained with."""
  from safetensors.numpy import load_file
  from mathjax_sft.convert import api as convert_api
  from mathjax_sft.sample import run as run_lib
  data = helpers.write_jsonl(tmp_path / "d.jsonl", helpers.arithmetic_rows(8))
  c = helpers.tiny_config(byte_tokenizer, data, tmp_path / "run", max_steps=2, seq_len=512,
                          batch_size=2, template="xwin", export_final=True,
                          every_steps=1, scan_layers=False)
  result = train(c)
  steps = tmp_path / "run" / "checkpoints"
  assert params_ckpt.is_train_step_dir(steps / "1") and params_ckpt.is_train_step_dir(steps / "2")
  assert params_ckpt.check_model_dir(steps / "2") == steps / "2"
  final, cfg = params_ckpt.load_params(result.export_dir)
  last, cfg_step = params_ckpt.load_params(steps / "2")
  first, _ = params_ckpt.load_params(steps / "1")
  assert cfg_step.to_hf() == cfg.to_hf()
  for a, b, c1 in zip(*(jax_leaves(t) for t in (final, last, first))):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, c1) for a, c1 in zip(jax_leaves(final), jax_leaves(first)))
  # export: the same tensors as the final model's export, plus the tokenizer and prompt format
  convert_api.export_checkpoint(steps / "2", tmp_path / "hf_step", show_progress=False)
  convert_api.export_checkpoint(result.export_dir, tmp_path / "hf_final", show_progress=False)
  ours, ref = load_file(tmp_path / "hf_step" / "model.safetensors"), load_file(
      tmp_path / "hf_final" / "model.safetensors")
  assert sorted(ours) == sorted(ref) and all(np.array_equal(ours[k], ref[k]) for k in ref)
  assert (tmp_path / "hf_step" / "tokenizer.json").is_file()
  assert json.loads((tmp_path / "hf_step" / "prompt_format.json").read_text())["template"] == "xwin"
  # sampling a step: the run's template, and a summary
  cfg_run = run_lib.SampleRunConfig(checkpoint=str(steps / "1"), dataset=f"jsonl:{data}",
                                    output_dir=str(tmp_path / "s"), num_samples=2,
                                    num_problems=2, max_new_tokens=4, grader_workers=1, rows=2)
  assert cfg_run.with_checkpoint_format().template == "xwin"
  summary = run_lib.run(cfg_run, show_progress=False)
  assert summary["num_problems"] == 2 and summary["num_samples"] == 2
  # a step whose run has no tokenizer files is named as such
  import shutil
  shutil.rmtree(tmp_path / "run" / params_ckpt.MODEL_FILES_SUBDIR)
  with pytest.raises(FileNotFoundError, match="is a training step, but its run has no tokenizer"):
    params_ckpt.check_model_dir(steps / "1")


def jax_leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_training_inputs_are_named_before_the_model_loads(byte_tokenizer, tmp_path):
  """A missing init_checkpoint, a batch that does not divide the devices, a malformed row: each
  error names the config field (as a flag), the value and where to look."""
  from mathjax_sft.data.sources import DataError
  data = helpers.write_jsonl(tmp_path / "d.jsonl", helpers.arithmetic_rows(8))
  missing = tmp_path / "no-such-model"
  c = helpers.tiny_config(byte_tokenizer, data, tmp_path / "a", init_checkpoint=str(missing),
                          tokenizer="")
  with pytest.raises(FileNotFoundError, match=f"--config.model.init_checkpoint={missing}: no such"):
    train(c)
  c = helpers.tiny_config(byte_tokenizer, data, tmp_path / "b", batch_size=6, num_devices=4,
                          shape=(1, 4, 1))
  with pytest.raises(ValueError, match=r"--config.batch_size=6 .* must be a multiple of the data "
                                       r"x fsdp mesh size 4 \(4 devices"):
    train(c)
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps(helpers.arithmetic_rows(1)[0]) + "\n{not json\n")
  c = helpers.tiny_config(byte_tokenizer, bad, tmp_path / "c")
  with pytest.raises(DataError, match=rf"{bad}:2: .*--config.data.on_bad_row=skip"):
    train(c)
  assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())
