"""The SFT run: config -> mesh, data, model, train state -> steps with metrics, checkpoints,
SIGTERM handling and a non-finite-loss stop -> final model checkpoint dir.

The steps themselves are `hooks.run_loop`: a short loop, and everything around a step
(metrics, checkpoints, eval, progress, preemption) a hook built in `_hooks`.

`train(config)` is the one entry point (tools/train.py calls it). A run whose output_dir already
holds a checkpoint resumes from the latest one: params, optimizer state, step and the data
iterator's position, so the loss sequence continues exactly as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable

import jax

from mathjax_sft import distributed, errors, hardware
from mathjax_sft.checkpoint import params as params_ckpt
from mathjax_sft.checkpoint.train_state import TrainCheckpointer
from mathjax_sft.data import pipeline, templates
from mathjax_sft.data.dataset import SftData, load_sft_data
from mathjax_sft.data.tokenize import load_tokenizer
from mathjax_sft.model import llama
from mathjax_sft.model.config import ModelConfig
from mathjax_sft.sharding.mesh import make_mesh
from mathjax_sft.train import config as config_lib
from mathjax_sft.train import hooks as hooks_lib
from mathjax_sft.train import metrics as metrics_lib, model_setup
from mathjax_sft.train import optimizer as optimizer_lib
from mathjax_sft.train import state as state_lib
from mathjax_sft.train import step as step_lib

log = logging.getLogger(__name__)
FINAL_SUBDIR = "final"
HF_SUBDIR = "final_hf"
StepCallback = Callable[[int, dict[str, float]], None]
NonFiniteLossError = hooks_lib.NonFiniteLossError


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


@dataclasses.dataclass
class _Run:
  """What a run builds before its first step; `loop` is what the step loop then carries."""
  config: config_lib.TrainConfig
  out_dir: Path
  tokenizer: Any
  data: SftData
  iterator: pipeline.BatchIterator
  model_config: ModelConfig
  ckpt: TrainCheckpointer
  writer: metrics_lib.MetricsWriter
  train_step: Callable[[Any, dict], tuple[Any, dict]]   # (state, host batch) -> (state, metrics)
  eval_step: Callable[[Any, dict], tuple[Any, Any]] | None   # (params, batch) -> (loss sum, count)
  eval_data: list[dict]            # host batches
  put_batch: Callable[[dict], dict]   # host batch -> global device arrays
  meta: dict[str, Any]             # saved with every checkpoint
  throughput: hooks_lib.Throughput
  loop: hooks_lib.RunState


def _system_prompt(d: config_lib.DataConfig) -> str | None:
  return None if d.system_prompt == "<default>" else d.system_prompt


def load_data(d: config_lib.DataConfig, tokenizer, seed: int) -> SftData:
  return load_sft_data(
      d.train_files, tokenizer, d.template, d.seq_len, prompt_fields=d.prompt_fields,
      response_fields=d.response_fields, long_rows=d.long_rows, on_bad_row=d.on_bad_row,
      system_prompt=_system_prompt(d), eval_files=d.eval_files, eval_fraction=d.eval_fraction,
      seed=seed, tfds_data_dir=d.tfds_data_dir, tfds_download=d.tfds_download)


def train(c: config_lib.TrainConfig, step_callback: StepCallback | None = None) -> TrainResult:
  """Runs (or resumes) SFT as configured. Raises NonFiniteLossError on a NaN/inf loss."""
  config_lib.validate(c)
  with contextlib.ExitStack() as resources:      # the checkpointer and the metrics writer
    r = _build(c, resources)
    with contextlib.ExitStack() as stepping:     # the SIGTERM handler and the progress bar
      preemption = stepping.enter_context(hooks_lib.Preemption())
      progress = None
      if distributed.is_main_process() and c.progress_bar:
        progress = stepping.enter_context(hooks_lib.ProgressBar(r.loop.max_steps, r.loop.step))
      hooks, step_metrics, checkpoints = _hooks(r, progress, step_callback)
      hooks_lib.run_loop(r.loop, r.train_step, r.iterator, hooks, preemption.should_stop)
    result = _finish(r, step_metrics.last, checkpoints.saved_step)
  log.info("stopped (%s) at step %d; %.1f tokens/s, MFU %.1f%%", result.stop_reason, result.step,
           result.tokens_per_s, 100 * result.mfu)
  return result


def _hooks(r: _Run, progress: hooks_lib.ProgressBar | None, step_callback: StepCallback | None
           ) -> tuple[hooks_lib.Hooks, hooks_lib.StepMetrics, hooks_lib.Checkpoints]:
  """The run's hooks, in the order they run after a step: host metrics (one step late), the
  checkpoint, the eval."""
  c, max_steps = r.config, r.loop.max_steps
  consumers = [hooks_lib.WindowLog(r.writer, hooks_lib.Schedule(c.log_every_steps, max_steps))]
  consumers += [fn for fn in (progress, step_callback) if fn is not None]
  step_metrics = hooks_lib.StepMetrics(
      annotators=[r.throughput, hooks_lib.FiniteCheck(r.ckpt),
                  hooks_lib.data_fields(r.throughput.tokens_per_step, r.iterator)],
      consumers=consumers)
  checkpoints = hooks_lib.Checkpoints(r.ckpt, r.writer, r.meta, step_metrics)
  hooks = hooks_lib.Hooks()
  hooks.add_hook(step_metrics)
  hooks.add_hook(checkpoints, every=c.checkpoint.every_steps, last_step=max_steps)
  if r.eval_step is not None:
    hooks.add_hook(hooks_lib.Eval(r.eval_step, r.eval_data, r.put_batch, r.writer, step_metrics,
                                  r.throughput), every=c.eval_every_steps)
  hooks.add_end_hook(step_metrics.end)
  hooks.add_end_hook(checkpoints.end)
  return hooks, step_metrics, checkpoints


def _finish(r: _Run, last_metrics: dict[str, float], checkpoint_step: int | None) -> TrainResult:
  """The final export (unless preempted or no step was taken) and the run's result record."""
  c, run = r.config, r.loop
  export_dir = hf_dir = None
  if c.checkpoint.export_final and run.stop_reason != "preempted" and run.step > run.start_step:
    export_dir = str(export_params(r.out_dir / FINAL_SUBDIR, run.state.params, r.model_config,
                                   r.tokenizer))
    record_prompt_format(Path(export_dir), c.data)
    if c.checkpoint.export_hf:
      hf_dir = export_hf(export_dir, r.out_dir / HF_SUBDIR, c.checkpoint.export_hf_shard_gib,
                         c.progress_bar)
  tokens_per_s = r.throughput.tokens_per_s
  result = TrainResult(
      step=run.step, stop_reason=run.stop_reason, last_metrics=last_metrics,
      tokens_per_s=tokens_per_s, mfu=r.throughput.mfu(tokens_per_s),
      peak_flops_per_device=r.throughput.peak_per_device,
      peak_memory_bytes=hardware.peak_memory_bytes(), checkpoint_step=checkpoint_step,
      export_dir=export_dir, hf_dir=hf_dir, data_summary=r.data.summary())
  r.writer.record("result", {k: v for k, v in dataclasses.asdict(result).items()
                             if k != "data_summary"}, run.step)
  return result


def _build(c, resources: contextlib.ExitStack) -> _Run:
  """Mesh, data, model, optimizer and train state (restored from the latest checkpoint of
  output_dir if there is one); the checkpointer and metrics writer are closed by `resources`."""
  mesh = _mesh(c)
  out_dir = Path(c.output_dir).absolute()
  tokenizer, data, max_steps, iterator, eval_data = _data(c)
  cfg = model_setup.model_config(c.model)
  if len(tokenizer) > cfg.vocab_size:
    raise ValueError(f"tokenizer {c.model.tokenizer or c.model.init_checkpoint} has {len(tokenizer)} tokens "
                     f"but the model's vocab_size is {cfg.vocab_size}")
  stacked = cfg.scan_layers
  p_shard = state_lib.param_shardings(cfg, mesh, stacked)
  p_abstract = llama.abstract_params(cfg, stacked)
  tx = optimizer_lib.make_optimizer(c.optimizer, llama.param_axes(cfg, stacked), max_steps)
  s_shard = state_lib.state_shardings(p_abstract, p_shard, tx, mesh)
  ckpt = resources.enter_context(TrainCheckpointer(out_dir, c.checkpoint.keep,
                                                   c.checkpoint.async_save))
  writer = resources.enter_context(contextlib.closing(metrics_lib.MetricsWriter(out_dir)))
  if distributed.is_main_process():   # any step is a model: its tokenizer and prompt format
    record_prompt_format(params_ckpt.save_model_files(out_dir, tokenizer), c.data)
  state = _initial_state(c, mesh, ckpt, iterator, max_steps, tx, p_abstract, s_shard)
  writer.record("data", data.summary(), int(state.step))
  seq_len = c.data.seq_len
  b_shard = step_lib.batch_sharding(mesh, c.batch_size, seq_len)
  step_fn = step_lib.make_train_step(cfg, tx, optimizer_lib.schedule(c.optimizer, max_steps),
                                     s_shard, b_shard, c.grad_accum_steps)
  eval_step = step_lib.make_eval_step(cfg, p_shard, b_shard) if eval_data else None
  peak, peak_source = hardware.peak_flops_per_device(c.peak_flops_per_device,
                                                     c.model.compute_dtype)
  throughput = hooks_lib.Throughput(c.batch_size * seq_len, cfg.flops_per_token(seq_len),
                                    peak, mesh.size)
  log.info("MFU peak %.3g FLOP/s per device (%s); %.3g FLOPs per token", peak, peak_source,
           throughput.flops_per_token)
  put = lambda batch: distributed.put_global_batch(batch, b_shard)
  meta = {"max_steps": max_steps, "model_config": cfg.to_hf(), "train_files": c.data.train_files,
          "data_fingerprint": iterator.fingerprint}
  loop = hooks_lib.RunState(state=state, step=int(state.step), max_steps=max_steps,
                            start_step=int(state.step), data_state=iterator.get_state())
  return _Run(config=c, out_dir=out_dir, tokenizer=tokenizer, data=data, iterator=iterator,
              model_config=cfg, ckpt=ckpt, writer=writer,
              train_step=lambda st, batch: step_fn(st, put(batch)), eval_step=eval_step,
              eval_data=eval_data, put_batch=put, meta=meta, throughput=throughput, loop=loop)


def _mesh(c):
  """Checks the inputs named before anything loads, starts jax.distributed, builds the mesh."""
  m = c.model
  if m.init_checkpoint:   # a missing or unconverted checkpoint is named now, not after loading
    params_ckpt.check_model_dir(m.init_checkpoint, "--config.model.init_checkpoint",
                                tokenizer=not m.tokenizer)
  c.distributed.initialize()
  if c.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", c.compilation_cache_dir)
  if c.mesh.num_devices and jax.process_count() > 1:
    raise errors.BadInput("mesh.num_devices is for single-process runs; a multi-host mesh spans "
                          "all devices", flag="--config.mesh.num_devices")
  devices = jax.devices()[:c.mesh.num_devices] if c.mesh.num_devices else None
  try:
    mesh = make_mesh(tuple(c.mesh.shape), devices)
  except ValueError as e:
    raise errors.BadInput(f"--config.mesh.shape={','.join(map(str, c.mesh.shape))}: {e}",
                          flag="--config.mesh.shape") from e
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  micro = c.batch_size // c.grad_accum_steps
  if micro % shards:
    raise errors.BadInput(f"--config.batch_size={c.batch_size} (per microbatch: {micro}, "
                          f"grad_accum_steps={c.grad_accum_steps}) must be a multiple of the data "
                          f"x fsdp mesh size {shards} ({mesh.size} devices, mesh "
                          f"{dict(mesh.shape)}); change batch_size or --config.mesh.shape",
                          flag="--config.batch_size")
  log.info("mesh %s over %d devices (%d processes)", dict(mesh.shape), mesh.size,
           jax.process_count())
  return mesh


def _data(c):
  """(tokenizer, data, max_steps, train iterator, eval batches)."""
  d = c.data
  tokenizer = load_tokenizer(c.model.tokenizer or c.model.init_checkpoint)
  data = load_data(d, tokenizer, c.seed)
  log.info("data: %s", data.summary())
  pcfg = pipeline.PipelineConfig(batch_size=c.batch_size, seq_len=d.seq_len, seed=c.seed,
                                 packing=d.packing, packing_bins=d.packing_bins,
                                 num_epochs=c.num_epochs or None)
  max_steps = c.max_steps
  if max_steps <= 0:
    max_steps = pipeline.count_batches(data.train, data.weights, pcfg)
    log.info("%d epochs = %d steps", c.num_epochs, max_steps)
  iterator = pipeline.train_iterator(data.train, data.weights, pcfg,
                                     extra_fingerprint=[d.template, d.system_prompt])
  eval_data = (pipeline.eval_batches(data.eval, pcfg, c.eval_batches)
               if data.eval and c.eval_every_steps else [])
  return tokenizer, data, max_steps, iterator, eval_data


def _initial_state(c, mesh, ckpt: TrainCheckpointer, iterator, max_steps: int, tx, p_abstract,
                   s_shard):
  """The latest checkpoint's state (and the iterator moved to its position), else a new state
  from the configured init."""
  if ckpt.latest_step() is not None:
    state, data_state, meta = ckpt.restore(state_lib.abstract_state(p_abstract, tx, s_shard))
    iterator.set_state(data_state)
    if meta.get("max_steps") != max_steps:
      log.warning("resuming a run planned for %s steps with max_steps=%d: the learning-rate "
                  "schedule changes", meta.get("max_steps"), max_steps)
    log.info("resumed from %s at step %d", ckpt.directory, int(state.step))
    return state
  params, _ = model_setup.load_model(c.model, c.seed, mesh)
  return state_lib.create_state(params, tx, s_shard)


def export_params(out_dir: Path, params: llama.Params, cfg, tokenizer) -> Path:
  """The trained params as a model checkpoint dir (config.json + params/ + tokenizer files),
  which tools/convert_flax_to_hf.py turns into a HF model."""
  params = llama.stack_layers(params)
  export_cfg = cfg.replace(scan_layers=False, remat=False)
  params_ckpt.save_params(out_dir, params, export_cfg)
  if distributed.is_main_process():
    tokenizer.save_pretrained(str(out_dir))
  return out_dir


def record_prompt_format(out_dir: Path, d: config_lib.DataConfig) -> None:
  """The template the model was trained with, for tools/sample.py (prompt_format.json)."""
  if distributed.is_main_process():
    templates.save_prompt_format(out_dir, d.template, _system_prompt(d))


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
