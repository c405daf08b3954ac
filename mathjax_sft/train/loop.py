"""The SFT run: config -> mesh, data, model, train state -> steps with metrics, checkpoints,
SIGTERM handling and a non-finite-loss stop -> final model checkpoint dir.

`train(config)` is the one entry point (tools/train.py calls it). A run whose output_dir already
holds a checkpoint resumes from the latest one: params, optimizer state, step and the data
iterator's position, so the loss sequence continues exactly as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from mathjax_sft import distributed
from mathjax_sft.checkpoint import params as params_ckpt
from mathjax_sft.checkpoint.train_state import TrainCheckpointer
from mathjax_sft.data import pipeline, templates
from mathjax_sft.data.dataset import SftData, load_sft_data
from mathjax_sft.data.tokenize import load_tokenizer
from mathjax_sft.model import llama
from mathjax_sft.sharding.mesh import make_mesh
from mathjax_sft.train import config as config_lib
from mathjax_sft.train import metrics as metrics_lib, model_setup
from mathjax_sft.train import optimizer as optimizer_lib
from mathjax_sft.train import state as state_lib
from mathjax_sft.train import step as step_lib

log = logging.getLogger(__name__)
FINAL_SUBDIR = "final"
HF_SUBDIR = "final_hf"
StepCallback = Callable[[int, dict[str, float]], None]


class NonFiniteLossError(RuntimeError):
  """The loss, gradient norm or parameters became NaN/inf; the run stopped without saving."""


@dataclasses.dataclass
class TrainResult:
  step: int                        # optimizer steps done
  stop_reason: str                 # "max_steps" | "preempted" | "data_exhausted"
  last_metrics: dict[str, float]
  tokens_per_s: float              # mean over steps after the first (compile) step
  mfu: float
  peak_flops_per_device: float
  peak_memory_bytes: int | None
  checkpoint_step: int | None
  export_dir: str | None
  hf_dir: str | None               # HF-format export (export_hf)
  data_summary: dict[str, Any]


class _StopFlag:
  """SIGTERM (preemption) -> a flag the loop checks between steps."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def install(self) -> None:
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame) -> None:  # pylint: disable=unused-argument
    log.warning("SIGTERM received: saving a checkpoint after the current step, then exiting")
    self.requested = True

  def uninstall(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


def _system_prompt(c) -> str | None:
  return None if c.system_prompt == "<default>" else c.system_prompt


def load_data(c, tokenizer) -> SftData:
  return load_sft_data(
      c.train_files, tokenizer, c.template, c.seq_len, prompt_fields=c.prompt_fields,
      response_fields=c.response_fields, long_rows=c.long_rows, on_bad_row=c.on_bad_row,
      system_prompt=_system_prompt(c), eval_files=c.eval_files, eval_fraction=c.eval_fraction,
      seed=c.seed, tfds_data_dir=c.tfds_data_dir, tfds_download=c.tfds_download)


def _finite(m: dict[str, float]) -> bool:
  return all(math.isfinite(m[k]) for k in ("loss", "grad_norm", "param_norm"))


def train(config: ml_collections.ConfigDict, step_callback: StepCallback | None = None) -> TrainResult:
  """Runs (or resumes) SFT as configured. Raises NonFiniteLossError on a NaN/inf loss."""
  config_lib.validate(config)
  c = ml_collections.ConfigDict(config.to_dict())
  c.lock()
  if c.init_checkpoint:   # a missing or unconverted checkpoint is named now, not after loading
    params_ckpt.check_model_dir(c.init_checkpoint, "--config.init_checkpoint",
                                tokenizer=not c.tokenizer)
  distributed.initialize(c.coordinator_address, c.num_processes, c.process_id, c.distributed)
  if c.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", c.compilation_cache_dir)
  main = distributed.is_main_process()
  out_dir = Path(c.output_dir).absolute()
  if c.num_devices and jax.process_count() > 1:
    raise ValueError("num_devices is for single-process runs; a multi-host mesh spans all devices")
  devices = jax.devices()[:c.num_devices] if c.num_devices else None
  mesh = make_mesh(tuple(c.mesh_shape), devices)
  log.info("mesh %s over %d devices (%d processes)", dict(mesh.shape), mesh.size,
           jax.process_count())
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  micro = c.batch_size // c.grad_accum_steps
  if micro % shards:
    raise ValueError(f"--config.batch_size={c.batch_size} (per microbatch: {micro}, "
                     f"grad_accum_steps={c.grad_accum_steps}) must be a multiple of the data x "
                     f"fsdp mesh size {shards} ({mesh.size} devices, mesh {dict(mesh.shape)}); "
                     "change batch_size or --config.mesh_shape")

  # ---- data ----
  tok_path = c.tokenizer or c.init_checkpoint
  tokenizer = load_tokenizer(tok_path)
  data = load_data(c, tokenizer)
  log.info("data: %s", data.summary())
  pcfg = pipeline.PipelineConfig(batch_size=c.batch_size, seq_len=c.seq_len, seed=c.seed,
                                 packing=c.packing, packing_bins=c.packing_bins,
                                 num_epochs=c.num_epochs or None)
  max_steps = c.max_steps
  if max_steps <= 0:
    max_steps = pipeline.count_batches(data.train, data.weights, pcfg)
    log.info("%d epochs = %d steps", c.num_epochs, max_steps)
  iterator = pipeline.train_iterator(data.train, data.weights, pcfg,
                                     extra_fingerprint=[c.template, c.system_prompt])
  eval_data = (pipeline.eval_batches(data.eval, pcfg, c.eval_batches)
               if data.eval and c.eval_every_steps else [])

  # ---- model, optimizer, state ----
  cfg = model_setup.model_config(c)
  if len(tokenizer) > cfg.vocab_size:
    raise ValueError(f"tokenizer {tok_path} has {len(tokenizer)} tokens but the model's vocab_size "
                     f"is {cfg.vocab_size}")
  stacked = cfg.scan_layers
  p_shard = state_lib.param_shardings(cfg, mesh, stacked)
  p_abstract = llama.abstract_params(cfg, stacked)
  ocfg = optimizer_lib.OptimizerConfig.from_config(c, max_steps)
  tx = optimizer_lib.make_optimizer(ocfg, llama.param_axes(cfg, stacked))
  lr_schedule = optimizer_lib.schedule(ocfg)
  s_shard = state_lib.state_shardings(p_abstract, p_shard, tx, mesh)
  ckpt = TrainCheckpointer(out_dir, c.keep_checkpoints, c.async_checkpointing)
  writer = metrics_lib.MetricsWriter(out_dir)
  if main:   # any step of the run is a model: its tokenizer and prompt format beside the steps
    record_prompt_format(params_ckpt.save_model_files(out_dir, tokenizer), c)
  if ckpt.latest_step() is not None:
    state, data_state, meta = ckpt.restore(state_lib.abstract_state(p_abstract, tx, s_shard))
    iterator.set_state(data_state)
    if meta.get("max_steps") != max_steps:
      log.warning("resuming a run planned for %s steps with max_steps=%d: the learning-rate "
                  "schedule changes", meta.get("max_steps"), max_steps)
    log.info("resumed from %s at step %d", ckpt.directory, int(state.step))
  else:
    params, _ = model_setup.load_model(c, mesh)
    state = state_lib.create_state(params, tx, s_shard)
    del params
  writer.record("data", data.summary(), int(state.step))
  b_shard = step_lib.batch_sharding(mesh, c.batch_size, c.seq_len)
  train_step = step_lib.make_train_step(cfg, tx, lr_schedule, s_shard, b_shard, c.grad_accum_steps)
  eval_step = step_lib.make_eval_step(cfg, p_shard, b_shard) if eval_data else None

  peak, peak_source = metrics_lib.peak_flops_per_device(c.peak_flops_per_device, c.compute_dtype)
  flops_per_token = cfg.flops_per_token(c.seq_len)
  tokens_per_step = c.batch_size * c.seq_len
  log.info("MFU peak %.3g FLOP/s per device (%s); %.3g FLOPs per token", peak, peak_source,
           flops_per_token)
  meta = {"max_steps": max_steps, "model_config": cfg.to_hf(), "train_files": c.train_files,
          "data_fingerprint": iterator.fingerprint}

  stop = _StopFlag()
  stop.install()
  progress = None
  if main and c.progress_bar:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    progress = tqdm(total=max_steps, initial=int(state.step), desc="train", unit="step")

  step = int(state.step)
  start_step = step
  pending: tuple[int, dict, float] | None = None
  last: dict[str, float] = {}
  timing = {"t_prev": None, "time": 0.0, "steps": 0}
  window: list[dict[str, float]] = []
  saved_step = ckpt.latest_step()
  stop_reason = "max_steps"

  def handle(item: tuple[int, dict, float]) -> None:
    """Host-side work for a finished step: NaN check, throughput, logs, callback."""
    nonlocal last
    s, dev_metrics, _ = item
    m = {k: float(v) for k, v in jax.device_get(dev_metrics).items()}
    now = time.perf_counter()
    if timing["t_prev"] is not None:
      timing["time"] += now - timing["t_prev"]
      timing["steps"] += 1
      m["step_time_s"] = now - timing["t_prev"]
      m["tokens_per_s"] = tokens_per_step / m["step_time_s"]
      m["nonpad_tokens_per_s"] = m["nonpad_tokens"] / m["step_time_s"]
      m["mfu"] = metrics_lib.mfu(flops_per_token, m["tokens_per_s"], peak, mesh.size)
    timing["t_prev"] = now
    if not _finite(m):
      raise NonFiniteLossError(
          f"non-finite value at step {s}: loss={m['loss']}, grad_norm={m['grad_norm']}, "
          f"param_norm={m['param_norm']}; stopping without saving. The last good checkpoint is "
          f"step {ckpt.latest_step()} under {ckpt.directory} (resume from it with a lower "
          "learning_rate or check the data)")
    m["padding_fraction"] = 1.0 - m["nonpad_tokens"] / tokens_per_step
    m["epoch"] = iterator.examples_consumed() / iterator.epoch_size
    last = m
    window.append(m)
    if s % c.log_every_steps == 0 or s == max_steps:
      avg = {k: float(np.mean([w[k] for w in window if k in w])) for k in m
             if any(k in w for w in window)}
      avg["loss"] = m["loss"]
      writer.scalars(s, {**avg, "loss": m["loss"], "learning_rate": m["learning_rate"]})
      window.clear()
    if progress is not None:
      progress.update(1)
      progress.set_postfix(loss=f"{m['loss']:.4f}", lr=f"{m['learning_rate']:.2e}",
                           tok_s=f"{m.get('tokens_per_s', 0.0):.0f}")
    if step_callback is not None:
      step_callback(s, m)

  def save(s: int, data_state: dict, force: bool = False) -> None:
    nonlocal saved_step
    if saved_step == s:
      return
    ckpt.save(s, state, data_state, {**meta, "step": s, "last_metrics": last}, force=force)
    writer.flush()             # TensorBoard events up to the checkpoint are on disk
    saved_step = s

  try:
    data_state = iterator.get_state()
    while step < max_steps:
      if distributed.any_process(stop.requested):
        if pending is not None:
          handle(pending)
          pending = None
        save(step, data_state, force=True)
        stop_reason = "preempted"
        break
      try:
        batch = next(iterator)
      except StopIteration:
        stop_reason = "data_exhausted"
        break
      data_state = iterator.get_state()
      state, dev_metrics = train_step(state, distributed.put_global_batch(batch, b_shard))
      step += 1
      if pending is not None:
        handle(pending)
      pending = (step, dev_metrics, time.perf_counter())
      if step % c.checkpoint_every_steps == 0 or step == max_steps:
        handle(pending)
        pending = None
        save(step, data_state)
      if eval_step is not None and step % c.eval_every_steps == 0:
        if pending is not None:
          handle(pending)
          pending = None
        _run_eval(eval_step, state.params, eval_data, b_shard, writer, step)
        timing["t_prev"] = None  # do not count eval time as step time
    if pending is not None:
      handle(pending)
      pending = None
    if stop_reason == "data_exhausted" and step > start_step:
      save(step, data_state, force=True)
    ckpt.wait()
  except BaseException:
    ckpt.close()
    writer.close()
    stop.uninstall()
    if progress is not None:
      progress.close()
    raise
  stop.uninstall()
  if progress is not None:
    progress.close()

  export_dir = hf_dir = None
  if c.export_final and stop_reason != "preempted" and step > start_step:
    export_dir = str(export_params(out_dir / FINAL_SUBDIR, state.params, cfg, tokenizer))
    record_prompt_format(Path(export_dir), c)
    if c.export_hf:
      hf_dir = export_hf(export_dir, out_dir / HF_SUBDIR, c.export_hf_shard_gib, c.progress_bar)
  ckpt.close()
  tokens_per_s = tokens_per_step * timing["steps"] / timing["time"] if timing["time"] else 0.0
  result = TrainResult(
      step=step, stop_reason=stop_reason, last_metrics=last, tokens_per_s=tokens_per_s,
      mfu=metrics_lib.mfu(flops_per_token, tokens_per_s, peak, mesh.size),
      peak_flops_per_device=peak, peak_memory_bytes=metrics_lib.peak_memory_bytes(),
      checkpoint_step=saved_step, export_dir=export_dir, hf_dir=hf_dir,
      data_summary=data.summary())
  writer.record("result", {k: v for k, v in dataclasses.asdict(result).items()
                           if k != "data_summary"}, step)
  writer.close()
  log.info("stopped (%s) at step %d; %.1f tokens/s, MFU %.1f%%", stop_reason, step, tokens_per_s,
           100 * result.mfu)
  return result


def _run_eval(eval_step, params, eval_data, b_shard, writer, step: int) -> float:
  loss_sum = count = 0.0
  for batch in eval_data:
    l, n = eval_step(params, distributed.put_global_batch(batch, b_shard))
    loss_sum += float(l)
    count += float(n)
  loss = loss_sum / max(count, 1.0)
  writer.scalars(step, {"loss": loss, "loss_tokens": count}, kind="eval")
  log.info("step %d: eval loss %.4f over %d tokens", step, loss, int(count))
  return loss


def export_params(out_dir: Path, params: llama.Params, cfg, tokenizer) -> Path:
  """The trained params as a model checkpoint dir (config.json + params/ + tokenizer files),
  which tools/convert_flax_to_hf.py turns into a HF model."""
  params = llama.stack_layers(params)
  export_cfg = cfg.replace(scan_layers=False, remat=False)
  params_ckpt.save_params(out_dir, params, export_cfg)
  if distributed.is_main_process():
    tokenizer.save_pretrained(str(out_dir))
  return out_dir


def record_prompt_format(out_dir: Path, c) -> None:
  """The template the model was trained with, for tools/sample.py (prompt_format.json)."""
  if distributed.is_main_process():
    templates.save_prompt_format(out_dir, c.template, _system_prompt(c))


def export_hf(checkpoint_dir: str, hf_dir: Path, shard_gib: float, progress: bool) -> str | None:
  """The final checkpoint as an HF directory, through the converter (tools/convert_flax_to_hf.py).

  Reading a checkpoint back is a collective in orbax, so a multi-process run leaves this to a
  one-process command, which it logs."""
  if jax.process_count() > 1:
    if distributed.is_main_process():
      log.warning("export_hf: skipped in a %d-process run; on one host run\n  python "
                  "tools/convert_flax_to_hf.py --checkpoint=%s --output_dir=%s",
                  jax.process_count(), checkpoint_dir, hf_dir)
    return None
  from mathjax_sft.convert import api as convert_api  # pylint: disable=import-outside-toplevel
  info = convert_api.export_checkpoint(checkpoint_dir, hf_dir, int(shard_gib * 2**30),
                                       show_progress=progress, overwrite=True)   # the run's own
  log.info("exported %s to HF format in %s (%.1f s)", checkpoint_dir, hf_dir, info["seconds"])
  return str(hf_dir)
