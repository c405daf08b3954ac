"""The step loop and its hooks without a model: a train step that counts, batches that are
numbers, a checkpointer and writer that record their calls."""

import contextlib
import math
import os
import signal

import pytest

from mathjax_sft.train import hooks as hooks_lib


class Batches:
  """Batches 1, 2, ... up to `n` (then StopIteration); the position is the count drawn."""

  def __init__(self, n=100):
    self.n = n
    self.drawn = 0

  def __next__(self):
    if self.drawn == self.n:
      raise StopIteration
    self.drawn += 1
    return self.drawn

  def get_state(self):
    return {"drawn": self.drawn}


def count_step(state, batch):
  """state -> state + 1; the metrics name the batch (loss = batch number)."""
  return state + 1, {"loss": float(batch), "grad_norm": 1.0, "param_norm": 1.0,
                     "learning_rate": 0.1, "nonpad_tokens": 8.0}


def new_run(max_steps, step=0):
  return hooks_lib.RunState(state=step, step=step, max_steps=max_steps, start_step=step,
                            data_state={"drawn": 0})


class FakeCheckpointer:
  def __init__(self, latest=None):
    self.saves = []        # (step, state, data_state, meta, force)
    self.latest = latest
    self.waits = 0
    self.closed = False
    self.directory = "/ckpt"

  def latest_step(self):
    return self.latest

  def save(self, step, state, data_state, meta, force=False):
    self.saves.append((step, state, data_state, meta, force))
    self.latest = step

  def wait(self):
    self.waits += 1

  def close(self):
    self.closed = True

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


class FakeWriter:
  def __init__(self):
    self.scalars_calls = []
    self.flushes = 0
    self.closed = False

  def scalars(self, step, values, kind="train"):
    self.scalars_calls.append((kind, step, dict(values)))

  def flush(self):
    self.flushes += 1

  def close(self):
    self.closed = True


def recorder(log, name):
  return lambda run: log.append((name, run.step))


def test_every_n_scheduling():
  log = []
  hooks = hooks_lib.Hooks()
  hooks.add_hook(recorder(log, "each"))
  hooks.add_hook(recorder(log, "third"), every=3)
  hooks.add_hook(recorder(log, "fourth"), every=4)
  run = hooks_lib.run_loop(new_run(10), count_step, Batches(), hooks)
  assert [s for n, s in log if n == "each"] == list(range(1, 11))
  assert [s for n, s in log if n == "third"] == [3, 6, 9]
  assert [s for n, s in log if n == "fourth"] == [4, 8]
  # hooks of one step run in the order they were added
  assert log[log.index(("each", 6)) + 1] == ("third", 6)
  assert log[log.index(("each", 8)) + 1] == ("fourth", 8)
  assert run.step == 10 and run.state == 10 and run.stop_reason == "max_steps"


def test_schedule_due_counts_from_the_global_step():
  """A resumed run keeps the schedule of the uninterrupted one (step 5 -> 6 is due every 3)."""
  log = []
  hooks = hooks_lib.Hooks()
  hooks.add_hook(recorder(log, "third"), every=3)
  hooks_lib.run_loop(new_run(10, step=5), count_step, Batches(), hooks)
  assert log == [("third", 6), ("third", 9)]
  assert [s for s in range(1, 12) if hooks_lib.Schedule(5, 11).due(s)] == [5, 10, 11]
  assert [s for s in range(1, 8) if hooks_lib.Schedule(2).due(s)] == [2, 4, 6]


def test_final_step_fires_and_end_hooks_run_once():
  log = []
  hooks = hooks_lib.Hooks()
  hooks.add_hook(recorder(log, "ckpt"), every=3, last_step=7)
  hooks.add_hook(recorder(log, "eval"), every=3)
  hooks.add_end_hook(recorder(log, "end"))
  run = hooks_lib.run_loop(new_run(7), count_step, Batches(), hooks)
  assert log == [("ckpt", 3), ("eval", 3), ("ckpt", 6), ("eval", 6), ("ckpt", 7), ("end", 7)]
  assert run.stop_reason == "max_steps"


def test_data_running_out_stops_the_loop_before_the_planned_last_step():
  log = []
  hooks = hooks_lib.Hooks()
  hooks.add_hook(recorder(log, "ckpt"), every=3, last_step=7)
  hooks.add_end_hook(recorder(log, "end"))
  batches = Batches(n=5)
  run = hooks_lib.run_loop(new_run(7), count_step, batches, hooks)
  assert run.stop_reason == "data_exhausted" and run.step == 5 and run.state == 5
  assert log == [("ckpt", 3), ("end", 5)]
  assert run.data_state == {"drawn": 5}


def test_loop_takes_no_batch_once_max_steps_is_reached():
  batches = Batches()
  run = hooks_lib.run_loop(new_run(3), count_step, batches, hooks_lib.Hooks())
  assert batches.drawn == 3 and run.device_metrics["loss"] == 3.0
  assert run.data_state == {"drawn": 3}
  done = hooks_lib.run_loop(new_run(3, step=3), count_step, Batches(), hooks_lib.Hooks())
  assert done.step == 3 and done.device_metrics is None and done.stop_reason == "max_steps"


def test_step_metrics_arrive_one_step_late_unless_flushed():
  seen = []
  consumed_at = []
  metrics = hooks_lib.StepMetrics(annotators=[], consumers=[lambda s, m: seen.append(s)])
  ckpt = FakeCheckpointer()
  checkpoints = hooks_lib.Checkpoints(ckpt, FakeWriter(), {"max_steps": 5}, metrics)
  hooks = hooks_lib.Hooks()
  hooks.add_hook(metrics)
  hooks.add_hook(lambda run: consumed_at.append((run.step, list(seen))))
  hooks.add_hook(checkpoints, every=2, last_step=5)
  hooks.add_end_hook(metrics.end)
  hooks.add_end_hook(checkpoints.end)
  hooks_lib.run_loop(new_run(5), count_step, Batches(), hooks)
  # after step s's hooks begin, the metrics of s-1 have been handled (s after a checkpoint)
  assert consumed_at == [(1, []), (2, [1]), (3, [1, 2]), (4, [1, 2, 3]), (5, [1, 2, 3, 4])]
  assert seen == [1, 2, 3, 4, 5]
  # each checkpoint carries its own step's metrics (handled before the save)
  assert [(s, meta["last_metrics"]["loss"], meta["step"], force)
          for s, _, _, meta, force in ckpt.saves] == [(2, 2.0, 2, False), (4, 4.0, 4, False),
                                                     (5, 5.0, 5, False)]
  assert ckpt.waits == 1 and metrics.last["loss"] == 5.0


def test_a_non_finite_step_is_not_saved():
  def nan_at_3(state, batch):
    state, m = count_step(state, batch)
    if state == 3:
      m["grad_norm"] = math.nan
    return state, m

  ckpt = FakeCheckpointer()
  metrics = hooks_lib.StepMetrics(annotators=[hooks_lib.FiniteCheck(ckpt)], consumers=[])
  hooks = hooks_lib.Hooks()
  hooks.add_hook(metrics)
  hooks.add_hook(hooks_lib.Checkpoints(ckpt, FakeWriter(), {}, metrics), every=1)
  hooks.add_end_hook(recorder([], "end"))
  with pytest.raises(hooks_lib.NonFiniteLossError,
                     match=r"at step 3: loss=3.0, grad_norm=nan.*last good checkpoint is step 2 "
                           r"under /ckpt"):
    hooks_lib.run_loop(new_run(6), nan_at_3, Batches(), hooks)
  assert [s[0] for s in ckpt.saves] == [1, 2]
  assert metrics.last["loss"] == 2.0


def test_exit_stack_cleans_up_when_a_hook_raises():
  previous = signal.getsignal(signal.SIGTERM)
  ckpt, writer, ended = FakeCheckpointer(), FakeWriter(), []
  batches = Batches()

  def boom(run):
    if run.step == 2:
      raise KeyboardInterrupt("stop at 2")

  with pytest.raises(KeyboardInterrupt, match="stop at 2"):
    with contextlib.ExitStack() as resources:
      resources.enter_context(ckpt)
      resources.enter_context(contextlib.closing(writer))
      with contextlib.ExitStack() as stepping:
        preemption = stepping.enter_context(hooks_lib.Preemption())
        assert signal.getsignal(signal.SIGTERM) == preemption._handle  # pylint: disable=protected-access
        hooks = hooks_lib.Hooks()
        hooks.add_hook(boom)
        hooks.add_end_hook(lambda run: ended.append(run.step))
        hooks_lib.run_loop(new_run(10), count_step, batches, hooks, preemption.should_stop)
  assert signal.getsignal(signal.SIGTERM) == previous
  assert ckpt.closed and writer.closed
  assert ended == [] and batches.drawn == 2 and ckpt.waits == 0


def test_sigterm_saves_a_checkpoint_then_stops():
  previous = signal.getsignal(signal.SIGTERM)
  ckpt, writer = FakeCheckpointer(), FakeWriter()
  batches = Batches()
  handled = []
  metrics = hooks_lib.StepMetrics(annotators=[], consumers=[lambda s, m: handled.append(s)])
  checkpoints = hooks_lib.Checkpoints(ckpt, writer, {"max_steps": 10}, metrics)

  def sigterm_at_3(run):
    if run.step == 3:
      os.kill(os.getpid(), signal.SIGTERM)

  with hooks_lib.Preemption() as preemption:
    hooks = hooks_lib.Hooks()
    hooks.add_hook(metrics)
    hooks.add_hook(checkpoints, every=2, last_step=10)
    hooks.add_hook(sigterm_at_3)
    hooks.add_end_hook(metrics.end)
    hooks.add_end_hook(checkpoints.end)
    run = hooks_lib.run_loop(new_run(10), count_step, batches, hooks, preemption.should_stop)
    assert preemption.requested
  assert signal.getsignal(signal.SIGTERM) == previous
  assert run.stop_reason == "preempted" and run.step == 3 and batches.drawn == 3
  # step 2 on schedule; step 3 forced at the stop, after its metrics were handled
  assert [(s, state, data, force) for s, state, data, _, force in ckpt.saves] == [
      (2, 2, {"drawn": 2}, False), (3, 3, {"drawn": 3}, True)]
  assert ckpt.saves[-1][3]["last_metrics"]["loss"] == 3.0 and handled == [1, 2, 3]
  assert checkpoints.saved_step == 3 and ckpt.waits == 1 and writer.flushes == 2


def test_a_stop_right_after_a_checkpoint_does_not_save_twice():
  ckpt = FakeCheckpointer()
  metrics = hooks_lib.StepMetrics(annotators=[], consumers=[])
  checkpoints = hooks_lib.Checkpoints(ckpt, FakeWriter(), {}, metrics)
  stop = {"now": False}
  hooks = hooks_lib.Hooks()
  hooks.add_hook(metrics)
  hooks.add_hook(checkpoints, every=2)
  hooks.add_hook(lambda run: stop.__setitem__("now", run.step == 4))
  hooks.add_end_hook(checkpoints.end)
  run = hooks_lib.run_loop(new_run(10), count_step, Batches(), hooks, lambda: stop["now"])
  assert run.stop_reason == "preempted" and run.step == 4
  assert [(s[0], s[4]) for s in ckpt.saves] == [(2, False), (4, False)]


def test_data_exhausted_saves_only_when_the_run_stepped():
  for start, n, expected in ((0, 3, [(2, False), (3, True)]), (4, 0, [])):
    ckpt = FakeCheckpointer(latest=start or None)
    metrics = hooks_lib.StepMetrics(annotators=[], consumers=[])
    checkpoints = hooks_lib.Checkpoints(ckpt, FakeWriter(), {}, metrics)
    hooks = hooks_lib.Hooks()
    hooks.add_hook(metrics)
    hooks.add_hook(checkpoints, every=2)
    hooks.add_end_hook(metrics.end)
    hooks.add_end_hook(checkpoints.end)
    run = hooks_lib.run_loop(new_run(10, step=start), count_step, Batches(n), hooks)
    assert run.stop_reason == "data_exhausted"
    assert [(s[0], s[4]) for s in ckpt.saves] == expected


def test_window_log_averages_since_the_last_record():
  writer = FakeWriter()
  window = hooks_lib.WindowLog(writer, hooks_lib.Schedule(3, last_step=5))
  for step in range(1, 6):
    m = {"loss": float(step), "grad_norm": 10.0 * step, "learning_rate": 0.5 / step}
    if step > 1:
      m["tokens_per_s"] = 100.0 * step
    window(step, m)
  assert [(k, s) for k, s, _ in writer.scalars_calls] == [("train", 3), ("train", 5)]
  first, last = writer.scalars_calls[0][2], writer.scalars_calls[1][2]
  assert first == {"loss": 3.0, "grad_norm": 20.0, "learning_rate": 0.5 / 3,
                   "tokens_per_s": 250.0}
  assert last == {"loss": 5.0, "grad_norm": 45.0, "learning_rate": 0.1, "tokens_per_s": 450.0}


def test_throughput_skips_the_first_step_and_paused_time():
  times = iter([10.0, 12.0, 15.0, 100.0, 104.0])
  t = hooks_lib.Throughput(tokens_per_step=100, flops_per_token=2.0, peak_per_device=50.0,
                           num_devices=2)
  real_clock = hooks_lib.time.perf_counter
  hooks_lib.time.perf_counter = lambda: next(times)
  try:
    ms = [{"nonpad_tokens": 80.0} for _ in range(5)]
    for i, m in enumerate(ms[:3]):
      t(i + 1, m)
    t.pause()             # an eval ran between 15 and 100
    t(4, ms[3])
    t(5, ms[4])
  finally:
    hooks_lib.time.perf_counter = real_clock
  assert "step_time_s" not in ms[0] and "step_time_s" not in ms[3]
  assert ms[1]["step_time_s"] == 2.0 and ms[1]["tokens_per_s"] == 50.0
  assert ms[1]["nonpad_tokens_per_s"] == 40.0 and ms[1]["mfu"] == 2.0 * 50.0 / 100.0
  assert ms[4]["step_time_s"] == 4.0
  assert t.steps == 3 and t.seconds == 9.0 and t.tokens_per_s == 300 / 9.0
  assert hooks_lib.Throughput(1, 1.0, 1.0, 1).tokens_per_s == 0.0
