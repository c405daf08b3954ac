"""The step loop and what runs around it.

`training_steps` takes batches, runs the train step and yields the `RunState` after each step;
`Hooks` runs functions of that state every n-th step (`add_hook(fn, every=n)`) and once when the
loop stops (`add_end_hook`). Everything else a run does is a hook:

  StepMetrics   the step's metrics to the host one step late, then to its annotators (throughput,
                NaN/inf check, data fields) and consumers (log window, progress bar, callback)
  Checkpoints   a checkpoint every n steps, at the last planned step, and at a preempted or
                data-exhausted stop
  Eval          the eval loss every n steps
  Preemption    SIGTERM -> a flag the loop checks before each step (a context manager)

None of it needs a model: the train step is any function (state, batch) -> (state, metrics).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import threading
import time
from typing import Any, Callable, Iterator, Protocol

import jax
import numpy as np

from mathjax_sft import distributed
from mathjax_sft.train import metrics as metrics_lib

log = logging.getLogger(__name__)
Metrics = dict[str, float]
MetricsFn = Callable[[int, Metrics], None]   # (step, host metrics of that step)


class NonFiniteLossError(RuntimeError):
  """The loss, gradient norm or parameters became NaN/inf; the run stopped without saving."""


class Batches(Protocol):
  """The data iterator the loop draws from: batches, and its position for checkpoints."""

  def __next__(self) -> Any: ...

  def get_state(self) -> dict[str, Any]: ...


@dataclasses.dataclass
class RunState:
  """What the step loop carries from one step to the next; hooks read it after each step."""
  state: Any                   # the train state (params, optimizer state, step), on device
  step: int                    # optimizer steps done
  max_steps: int               # the loop stops when `step` reaches it
  start_step: int              # the step this invocation started at (0, or the resumed step)
  data_state: dict[str, Any]   # the data iterator's position after the last batch drawn
  device_metrics: Any = None   # the last step's metrics as the step returned them (on device)
  stop_reason: str = "max_steps"   # "max_steps" | "preempted" | "data_exhausted"


def training_steps(run: RunState, train_step: Callable[[Any, Any], tuple[Any, Any]],
                   batches: Batches, should_stop: Callable[[], bool]) -> Iterator[RunState]:
  """Steps `run` until max_steps, the end of the data, or `should_stop()` (asked before each
  batch is drawn); yields `run` after each step. Sets `run.stop_reason`."""
  while run.step < run.max_steps:
    if should_stop():
      run.stop_reason = "preempted"
      return
    try:
      batch = next(batches)
    except StopIteration:
      run.stop_reason = "data_exhausted"
      return
    run.data_state = batches.get_state()
    run.state, run.device_metrics = train_step(run.state, batch)
    run.step += 1
    yield run


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Due at every `every`-th step, and at `last_step` (the run's last planned step) if set."""
  every: int = 1
  last_step: int | None = None

  def due(self, step: int) -> bool:
    return step % self.every == 0 or step == self.last_step


class Hooks:
  """Step hooks (run in the order added, each when its schedule is due) and end hooks (run in the
  order added once the loop stops without an exception)."""

  def __init__(self):
    self._step_hooks: list[tuple[Callable[[RunState], None], Schedule]] = []
    self._end_hooks: list[Callable[[RunState], None]] = []

  def add_hook(self, fn: Callable[[RunState], None], every: int = 1,
               last_step: int | None = None) -> None:
    self._step_hooks.append((fn, Schedule(every, last_step)))

  def add_end_hook(self, fn: Callable[[RunState], None]) -> None:
    self._end_hooks.append(fn)

  def run_step(self, run: RunState) -> None:
    for fn, schedule in self._step_hooks:
      if schedule.due(run.step):
        fn(run)

  def run_end(self, run: RunState) -> None:
    for fn in self._end_hooks:
      fn(run)


def run_loop(run: RunState, train_step: Callable[[Any, Any], tuple[Any, Any]], batches: Batches,
             hooks: Hooks, should_stop: Callable[[], bool] = lambda: False) -> RunState:
  """The run: `training_steps` with the step hooks after each step, then the end hooks."""
  for info in training_steps(run, train_step, batches, should_stop):
    hooks.run_step(info)
  hooks.run_end(run)
  return run


@dataclasses.dataclass
class _Pending:
  step: int
  device_metrics: Any


class StepMetrics:
  """A step hook (every step) that fetches each step's metrics to the host when the next step has
  been dispatched, so the host does not wait for the step it just started.

  Host metrics go through `annotators` (which add fields or raise), become `last`, then go to
  `consumers`. Other hooks call `flush()` to have the current step's metrics handled now."""

  def __init__(self, annotators: list[MetricsFn], consumers: list[MetricsFn]):
    self.annotators = list(annotators)
    self.consumers = list(consumers)
    self.last: Metrics = {}
    self._pending: _Pending | None = None

  def __call__(self, run: RunState) -> None:
    self.flush()
    self._pending = _Pending(run.step, run.device_metrics)

  def end(self, run: RunState) -> None:  # pylint: disable=unused-argument
    self.flush()

  def flush(self) -> None:
    if self._pending is None:
      return
    pending, self._pending = self._pending, None
    m = {k: float(v) for k, v in jax.device_get(pending.device_metrics).items()}
    for fn in self.annotators:
      fn(pending.step, m)
    self.last = m
    for fn in self.consumers:
      fn(pending.step, m)


class Throughput:
  """Step time, tokens/s and MFU of each step, measured between consecutive steps' host metrics,
  and the mean over the run (steps after the first, which compiles)."""

  def __init__(self, tokens_per_step: int, flops_per_token: float, peak_per_device: float,
               num_devices: int):
    self.tokens_per_step = tokens_per_step
    self.flops_per_token = flops_per_token
    self.peak_per_device = peak_per_device
    self.num_devices = num_devices
    self.seconds = 0.0
    self.steps = 0
    self._previous: float | None = None

  def __call__(self, step: int, m: Metrics) -> None:  # pylint: disable=unused-argument
    now = time.perf_counter()
    if self._previous is not None:
      self.seconds += now - self._previous
      self.steps += 1
      m["step_time_s"] = now - self._previous
      m["tokens_per_s"] = self.tokens_per_step / m["step_time_s"]
      m["nonpad_tokens_per_s"] = m["nonpad_tokens"] / m["step_time_s"]
      m["mfu"] = self.mfu(m["tokens_per_s"])
    self._previous = now

  def pause(self) -> None:
    """The time until the next step's metrics is not step time (an eval ran)."""
    self._previous = None

  def mfu(self, tokens_per_s: float) -> float:
    return metrics_lib.mfu(self.flops_per_token, tokens_per_s, self.peak_per_device,
                           self.num_devices)

  @property
  def tokens_per_s(self) -> float:
    return self.tokens_per_step * self.steps / self.seconds if self.seconds else 0.0


class FiniteCheck:
  """Raises NonFiniteLossError when a step's loss, gradient norm or parameter norm is NaN/inf,
  naming the last good checkpoint of `ckpt`."""

  def __init__(self, ckpt):
    self.ckpt = ckpt

  def __call__(self, step: int, m: Metrics) -> None:
    if all(math.isfinite(m[k]) for k in ("loss", "grad_norm", "param_norm")):
      return
    raise NonFiniteLossError(
        f"non-finite value at step {step}: loss={m['loss']}, grad_norm={m['grad_norm']}, "
        f"param_norm={m['param_norm']}; stopping without saving. The last good checkpoint is "
        f"step {self.ckpt.latest_step()} under {self.ckpt.directory} (resume from it with a lower "
        "learning_rate or check the data)")


def data_fields(tokens_per_step: int, iterator) -> MetricsFn:
  """Adds padding_fraction and epoch (the iterator's position when the metrics are handled)."""

  def annotate(step: int, m: Metrics) -> None:  # pylint: disable=unused-argument
    m["padding_fraction"] = 1.0 - m["nonpad_tokens"] / tokens_per_step
    m["epoch"] = iterator.examples_consumed() / iterator.epoch_size
  return annotate


class WindowLog:
  """Train scalars when `schedule` is due: the mean of each metric over the steps since the
  previous record, with the loss and learning rate of the step itself."""

  def __init__(self, writer, schedule: Schedule):
    self.writer = writer
    self.schedule = schedule
    self.window: list[Metrics] = []

  def __call__(self, step: int, m: Metrics) -> None:
    self.window.append(m)
    if not self.schedule.due(step):
      return
    avg = {k: float(np.mean([w[k] for w in self.window if k in w])) for k in m
           if any(k in w for w in self.window)}
    avg["loss"] = m["loss"]
    self.writer.scalars(step, {**avg, "loss": m["loss"], "learning_rate": m["learning_rate"]})
    self.window.clear()


class ProgressBar:
  """A tqdm bar over the planned steps with the loss, learning rate and tokens/s (a context
  manager: closed on exit)."""

  def __init__(self, total: int, initial: int):
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    self.bar = tqdm(total=total, initial=initial, desc="train", unit="step")

  def __call__(self, step: int, m: Metrics) -> None:  # pylint: disable=unused-argument
    self.bar.update(1)
    self.bar.set_postfix(loss=f"{m['loss']:.4f}", lr=f"{m['learning_rate']:.2e}",
                         tok_s=f"{m.get('tokens_per_s', 0.0):.0f}")

  def __enter__(self) -> "ProgressBar":
    return self

  def __exit__(self, *exc) -> None:
    self.bar.close()


class Checkpoints:
  """Train-state checkpoints. As a step hook: the step's metrics are handled (a NaN/inf step is
  never saved), then the step is saved. As an end hook: a preempted run, or one whose data ran
  out after it stepped, saves its current step (forced); then pending saves finish."""

  def __init__(self, ckpt, writer, meta: dict[str, Any], metrics: StepMetrics):
    self.ckpt = ckpt
    self.writer = writer
    self.meta = meta
    self.metrics = metrics
    self.saved_step: int | None = ckpt.latest_step()

  def __call__(self, run: RunState) -> None:
    self.metrics.flush()
    self.save(run)

  def save(self, run: RunState, force: bool = False) -> None:
    if self.saved_step == run.step:
      return
    self.ckpt.save(run.step, run.state, run.data_state,
                   {**self.meta, "step": run.step, "last_metrics": self.metrics.last}, force=force)
    self.writer.flush()        # TensorBoard events up to the checkpoint are on disk
    self.saved_step = run.step

  def end(self, run: RunState) -> None:
    if run.stop_reason == "preempted" or (run.stop_reason == "data_exhausted"
                                          and run.step > run.start_step):
      self.save(run, force=True)
    self.ckpt.wait()


class Eval:
  """The mean eval loss over fixed batches (after the step's train metrics are handled); the
  eval's time is kept out of the next step's time."""

  def __init__(self, eval_step, batches: list, put_batch, writer, metrics: StepMetrics,
               throughput: Throughput):
    self.eval_step = eval_step
    self.batches = batches
    self.put_batch = put_batch
    self.writer = writer
    self.metrics = metrics
    self.throughput = throughput

  def __call__(self, run: RunState) -> None:
    self.metrics.flush()
    self.loss(run.step, run.state.params)
    self.throughput.pause()

  def loss(self, step: int, params) -> float:
    loss_sum = count = 0.0
    for batch in self.batches:
      l, n = self.eval_step(params, self.put_batch(batch))
      loss_sum += float(l)
      count += float(n)
    loss = loss_sum / max(count, 1.0)
    self.writer.scalars(step, {"loss": loss, "loss_tokens": count}, kind="eval")
    log.info("step %d: eval loss %.4f over %d tokens", step, loss, int(count))
    return loss


class Preemption:
  """SIGTERM (preemption) -> a flag; `should_stop` is true once any process has it (a collective,
  asked by the loop before each step). A context manager: the previous SIGTERM handler is back
  on exit. Off the main thread no handler is installed."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self) -> "Preemption":
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame) -> None:  # pylint: disable=unused-argument
    log.warning("SIGTERM received: saving a checkpoint after the current step, then exiting")
    self.requested = True

  def should_stop(self) -> bool:
    return distributed.any_process(self.requested)

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
