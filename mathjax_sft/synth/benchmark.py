"""Benchmark of `tools/synthesize.py` at scale against a fast loopback server.

Starts the fake OpenAI server (`fake_server`, varied unique questions, no latency) in a process
of its own, runs the real tool as a subprocess on GSM8K train references (several questions per
reference), kills it with SIGKILL at a random point, starts it again, and lets it finish. Then it
checks the output: every line whole, every row once, none missing. Finally it starts the tool once
more on the finished directory with one more question per reference, to time a resume with every
row done, and kills it.

Reports (`run_config` returns it as JSON-able data): requests/s and rows/s per tenth of the rows
(the time between the kill and the first request of the resumed run left out), over the whole
run, RSS and CPU of the tool against rows done with a straight-line fit extrapolated to a million
rows, the resume seconds (start to first request) against rows done, extrapolated the same way,
and counts of lost / duplicated / torn rows (all must be 0).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from mathjax_sft import paths
from mathjax_sft.configtree import setting
from mathjax_sft.synth.references import load_references
from mathjax_sft.synth.steps import task_id

_KEY = "sk-bench-synth-0000000000"
_MILLION = 1_000_000


@dataclasses.dataclass(frozen=True)
class BenchSynthConfig:
  """Settings of one synthesis benchmark (tools/bench_synth.py's flags); `run_config` runs it."""

  input_path: str = setting("", "Reference JSONL (GSM8K format); empty: gsm8k/train.jsonl under the "
                            "data dir ($MATHJAX_DATA_DIR).")
  per_reference: int = setting(4, "New questions per reference: rows = references x this.")
  limit_references: int = setting(0, "Use only the first N references (0 = all).")
  max_concurrency: int = setting(64, "The tool's --max_concurrency.")
  kill_at: float = setting(0.0, "Fraction of the rows after which the run is killed with SIGKILL "
                           "(0: random in [0.25, 0.75], drawn from --seed).")
  seed: int = setting(0, "Seed of the random kill point.")
  sample_interval: float = setting(0.5, "Seconds between samples of rows, requests, RSS and CPU.")
  work_dir: str = setting("", "Directory for the run's output (empty: a temporary one, deleted).")
  repo: str = setting("", "Checkout whose tools/synthesize.py is timed (empty: this one); e.g. an "
                      "older commit, for a before/after comparison on one machine.")
  tool_flags: tuple[str, ...] = setting((), "More flags for the tool, e.g. --dedup_save_interval=30.")
  timeout_s: float = setting(3600.0, "Longest a run of the tool may take, seconds.")
  output: str = setting("", "Also write the JSON to this file.")


@dataclasses.dataclass
class Sample:
  """One look at the running tool."""

  t: float          # seconds since the first start
  rows: int         # lines in rows.jsonl + failures.jsonl
  requests: int     # chat requests the server has received
  rss: int          # bytes
  cpu: float        # user + system seconds of the tool process
  busy: float       # busy CPU seconds of the whole machine (every process)
  process: int      # 0: first run, 1: resumed run


@dataclasses.dataclass
class _LineCounter:
  """Counts complete lines of a growing file, reading only what was appended."""

  path: Path
  offset: int = 0
  lines: int = 0

  def count(self) -> int:
    if self.path.exists():
      with open(self.path, "rb") as f:
        f.seek(self.offset)
        data = f.read()
      complete = data.rfind(b"\n") + 1
      self.lines += data.count(b"\n", 0, complete)
      self.offset += complete
    return self.lines


class _Server:
  """The fake server in a process of its own."""

  def __init__(self, config: dict[str, Any]):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    self.proc = subprocess.Popen([sys.executable, "-m", "mathjax_sft.synth.fake_server", "--port", "0",
                                  "--config", json.dumps(config)], stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, env=env, text=True)
    line = self.proc.stdout.readline()
    if not line.startswith("PORT "):
      raise RuntimeError(f"fake server did not start: {line!r}")
    self.base_url = f"http://127.0.0.1:{int(line.split()[1])}/v1"

  def stats(self) -> dict[str, Any]:
    with urllib.request.urlopen(self.base_url.removesuffix("/v1") + "/_stats", timeout=10) as reply:
      return json.loads(reply.read())

  def close(self) -> None:
    self.proc.terminate()
    self.proc.wait(timeout=30)


def _tool_command(c: BenchSynthConfig, input_path: Path, out: Path, base_url: str, per_reference: int) -> list[str]:
  repo = Path(c.repo) if c.repo else Path(__file__).resolve().parents[2]
  return [sys.executable, str(repo / "tools" / "synthesize.py"), f"--input={input_path}",
          "--dataset_format=gsm8k", f"--output_dir={out}", "--model=gpt-4-turbo", f"--base_url={base_url}",
          f"--per_reference={per_reference}", f"--limit_references={c.limit_references}",
          f"--max_concurrency={c.max_concurrency}", "--requests_per_minute=0", "--tokens_per_minute=0",
          "--noprogress", *c.tool_flags]


def _tool_env(c: BenchSynthConfig) -> dict[str, str]:
  repo = Path(c.repo) if c.repo else Path(__file__).resolve().parents[2]
  return dict(os.environ, OPENAI_API_KEY=_KEY, PYTHONPATH=str(repo))


def _fit(points: list[tuple[float, float]]) -> tuple[float, float] | None:
  """(intercept, slope) of the least-squares line through `points`."""
  if len(points) < 2:
    return None
  n = len(points)
  mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
  sxx = sum((x - mx) ** 2 for x, _ in points)
  if sxx == 0:
    return None
  slope = sum((x - mx) * (y - my) for x, y in points) / sxx
  return my - slope * mx, slope


def _crossing(samples: list[Sample], rows: float) -> tuple[float, float, float, float]:
  """(active time, requests, tool CPU, machine busy CPU) when `rows` rows were done, interpolated
  between samples."""
  for a, b in zip(samples, samples[1:]):
    if a.rows <= rows <= b.rows and b.rows > a.rows and b.busy >= a.busy:
      f = (rows - a.rows) / (b.rows - a.rows)
      return tuple(x + f * (y - x) for x, y in ((a.t, b.t), (a.requests, b.requests), (a.cpu, b.cpu),
                                                (a.busy, b.busy)))
  last = samples[-1]
  return last.t, last.requests, last.cpu, last.busy


def _tenths(samples: list[Sample], start_rows: int, end_rows: int) -> list[dict[str, Any]]:
  out = []
  span = end_rows - start_rows
  for k in range(10):
    lo, hi = start_rows + span * k / 10, start_rows + span * (k + 1) / 10
    (t0, r0, c0, b0), (t1, r1, c1, b1) = _crossing(samples, lo), _crossing(samples, hi)
    dt = max(t1 - t0, 1e-9)
    out.append({"tenth": k + 1, "rows": [round(lo), round(hi)], "seconds": round(dt, 2),
                "requests_per_s": round((r1 - r0) / dt, 1), "rows_per_s": round((hi - lo) / dt, 1),
                "tool_cpu_ms_per_row": round((c1 - c0) * 1000 / max(hi - lo, 1), 2),
                "tool_cores": round((c1 - c0) / dt, 2), "machine_busy_cores": round((b1 - b0) / dt, 2)})
  return out


def _check_output(out: Path, expected: set[str]) -> dict[str, int]:
  """Lost, duplicated and torn rows of a finished output directory."""
  ids, torn = [], 0
  for name in ("rows.jsonl", "failures.jsonl"):
    path = out / name
    if not path.exists():
      continue
    with open(path, "rb") as f:
      for line in f:
        try:
          record = json.loads(line)
          if not line.endswith(b"\n"):
            raise ValueError("no newline")
        except ValueError:
          torn += 1
          continue
        ids.append(record.get("id"))
  seen = set(ids)
  return {"recorded": len(ids), "lost": len(expected - seen), "duplicated": len(ids) - len(seen), "torn": torn,
          "unexpected": len(seen - expected)}


def _watch(proc: subprocess.Popen, server: _Server, counters: list[_LineCounter], samples: list[Sample],
           c: BenchSynthConfig, clock: dict[str, float], process: int, stop_at_rows: int | None) -> None:
  """Samples the tool until it exits (or until `stop_at_rows` rows are done: then SIGKILL)."""
  tool = psutil.Process(proc.pid)
  deadline = time.monotonic() + c.timeout_s
  while True:
    time.sleep(c.sample_interval)
    try:
      mem, cpu = tool.memory_info().rss, sum(tool.cpu_times()[:2]) + clock["cpu_before"]
    except psutil.NoSuchProcess:
      mem, cpu = samples[-1].rss if samples else 0, samples[-1].cpu if samples else 0.0
    rows = sum(counter.count() for counter in counters)
    machine = psutil.cpu_times()
    busy = machine.user + machine.system + machine.nice + getattr(machine, "irq", 0) + getattr(machine, "softirq", 0)
    samples.append(Sample(round(time.monotonic() - clock["start"] - clock["paused"], 3), rows,
                          server.stats()["requests"], mem, cpu, busy, process))
    if stop_at_rows is not None and rows >= stop_at_rows:
      os.kill(proc.pid, signal.SIGKILL)
      proc.wait()
      return
    if proc.poll() is not None:
      if proc.returncode != 0:
        raise RuntimeError(f"tool exited with status {proc.returncode}: {proc.stderr.read()[-3000:]}")
      return
    if time.monotonic() > deadline:
      proc.kill()
      raise RuntimeError(f"tool took more than {c.timeout_s}s")


def _start(command: list[str], c: BenchSynthConfig, out: Path, name: str) -> subprocess.Popen:
  """The tool as a subprocess; its stderr goes to a file beside the output directory, and is
  also readable through `proc.stderr` (a pipe could fill up and stall the tool)."""
  out.parent.mkdir(parents=True, exist_ok=True)
  log = open(out.parent / f"{out.name}.{name}.stderr", "w+", encoding="utf-8")
  proc = subprocess.Popen(command, env=_tool_env(c), stdout=subprocess.DEVNULL, stderr=log)
  proc.stderr = _Tail(log)
  return proc


class _Tail:
  """What a tool wrote to its stderr file so far."""

  def __init__(self, f):
    self._f = f

  def read(self) -> str:
    self._f.flush()
    self._f.seek(0)
    return self._f.read()


def _log_size(out: Path) -> int:
  path = out / "synth.log"
  return path.stat().st_size if path.exists() else 0


# "N rows, M failed, P pending in Ts" (and "N rows, M failures in Ts" of older checkouts)
_OUTPUT_READ = re.compile(r"output directory read: (\d+) rows, (\d+) (?:failures|failed, (\d+) pending) in ([\d.]+)s")
_INDEX_LOADED = re.compile(r"dedup index loaded: (\d+) questions .* in ([\d.]+)s")
_INDEX_READY = re.compile(r"dedup index ready: (\d+) questions \((\d+) rows read from rows.jsonl\) in ([\d.]+)s")


def _resume_parts(out: Path, start: int) -> dict[str, float]:
  """What a start spent on the parts of its work that grow with the rows done, from the lines its
  synth.log got after byte `start`: reading the output directory (row ids), loading the saved
  dedup index, and indexing the rows written after the index's last save (at most the rows of
  one save interval, however many rows are done)."""
  with open(out / "synth.log", encoding="utf-8") as f:
    f.seek(start)
    text = f.read()
  read, loaded, ready = _OUTPUT_READ.search(text), _INDEX_LOADED.search(text), _INDEX_READY.search(text)
  if read is None or ready is None:   # a tool that does not log them (an older checkout)
    return {}
  parts = {"records": int(read.group(1)) + int(read.group(2)) + int(read.group(3) or 0),
           "output_read_s": float(read.group(4)),
           "index_questions_loaded": int(loaded.group(1)) if loaded else 0,
           "index_load_s": float(loaded.group(2)) if loaded else 0.0,
           "rows_indexed_after_save": int(ready.group(2))}
  parts["index_catch_up_s"] = round(float(ready.group(3)) - parts["index_load_s"], 3)
  return parts


def _time_to_first_request(proc: subprocess.Popen, server: _Server, before: int, timeout: float) -> float:
  started = time.monotonic()
  while server.stats()["requests"] <= before:
    if proc.poll() is not None:
      raise RuntimeError(f"tool exited with status {proc.returncode} before asking anything: "
                         f"{proc.stderr.read()[-3000:]}")
    if time.monotonic() - started > timeout:
      raise RuntimeError("the resumed tool asked nothing")
    time.sleep(0.02)
  return time.monotonic() - started


def run_config(c: BenchSynthConfig) -> dict[str, Any]:
  """Runs the benchmark described by `c` (see module docstring)."""
  input_path = Path(c.input_path) if c.input_path else paths.data_file("gsm8k/train.jsonl")
  references = load_references(input_path, "gsm8k", c.limit_references)
  expected = {task_id(ref, k) for ref in references for k in range(c.per_reference)}
  total = len(expected)
  kill_at = c.kill_at or random.Random(c.seed).uniform(0.25, 0.75)
  with tempfile.TemporaryDirectory(prefix="bench_synth_") as tmp:
    out = Path(c.work_dir) if c.work_dir else Path(tmp) / "out"
    server = _Server({"question_style": "varied", "keep_log": False})
    try:
      return _run(c, input_path, out, server, references, expected, total, kill_at)
    finally:
      server.close()


def _run(c: BenchSynthConfig, input_path: Path, out: Path, server: _Server, references, expected: set[str],
         total: int, kill_at: float) -> dict[str, Any]:
  counters = [_LineCounter(out / "rows.jsonl"), _LineCounter(out / "failures.jsonl")]
  samples: list[Sample] = []
  clock = {"start": time.monotonic(), "paused": 0.0, "cpu_before": 0.0}
  command = _tool_command(c, input_path, out, server.base_url, c.per_reference)
  proc = _start(command, c, out, "first")
  _watch(proc, server, counters, samples, c, clock, 0, stop_at_rows=int(kill_at * total))
  killed_at = time.monotonic()
  rows_at_kill = sum(counter.count() for counter in counters)
  peak_first = max(s.rss for s in samples)
  # The resumed run: time from its start to its first request; that gap is left out of the rates.
  clock["cpu_before"] = samples[-1].cpu
  log_lines = _log_size(out)
  before = server.stats()["requests"]
  proc = _start(command, c, out, "resumed")
  resume_s = _time_to_first_request(proc, server, before, c.timeout_s)
  clock["paused"] += time.monotonic() - killed_at
  _watch(proc, server, counters, samples, c, clock, 1, stop_at_rows=None)
  resume_parts = _resume_parts(out, log_lines)
  integrity = _check_output(out, expected)
  rows_done = integrity["recorded"] - integrity["duplicated"]
  # A resume with every row done: one more question per reference, timed to the first request.
  log_lines = _log_size(out)
  before = server.stats()["requests"]
  probe = _start(_tool_command(c, input_path, out, server.base_url, c.per_reference + 1), c, out, "probe")
  resume_full_s = _time_to_first_request(probe, server, before, c.timeout_s)
  os.kill(probe.pid, signal.SIGKILL)
  probe.wait()
  probe_parts = _resume_parts(out, log_lines)

  run_samples = [s for s in samples]
  elapsed = run_samples[-1].t
  requests = run_samples[-1].requests
  tenths = _tenths(run_samples, 0, run_samples[-1].rows)
  rss_points = [(s.rows, s.rss) for s in run_samples if s.process == 1 and s.rows >= rows_at_kill + 0.1 * total]
  rss_fit = _fit(rss_points)
  # Resume = a fixed start (imports, references, decontamination index, client), reading the
  # row ids and loading the saved dedup index (both grow with the rows: extrapolated per row),
  # and indexing the rows written after the last save (bounded by the save interval: kept).
  per_record = per_question = resume_at_1m = None
  if probe_parts:
    per_record = probe_parts["output_read_s"] / max(probe_parts["records"], 1)
    per_question = probe_parts["index_load_s"] / max(probe_parts["index_questions_loaded"], 1)
    fixed = resume_full_s - probe_parts["output_read_s"] - probe_parts["index_load_s"]
    resume_at_1m = round(fixed + (per_record + per_question) * _MILLION, 1)
  cpu_rows = [(s.rows, s.cpu) for s in run_samples if s.process == 1]
  cpu_fit = _fit(cpu_rows)
  stride = max(1, len(run_samples) // 200)
  return {
      "command": " ".join(_tool_command(c, input_path, Path("OUT"), "http://127.0.0.1:PORT/v1", c.per_reference)),
      "repo": c.repo or str(Path(__file__).resolve().parents[2]),
      "references": len(references), "per_reference": c.per_reference, "rows": total,
      "max_concurrency": c.max_concurrency,
      "machine": {"cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1)},
      "throughput": {
          "elapsed_s": round(elapsed, 1), "requests": requests,
          "requests_per_s": round(requests / elapsed, 1), "rows_per_s": round(run_samples[-1].rows / elapsed, 1),
          "last_over_first_tenth": round(tenths[-1]["requests_per_s"] / tenths[0]["requests_per_s"], 3),
          "by_tenth_of_rows": tenths},
      "memory": {
          "peak_rss_mib_first_run": round(peak_first / 2**20, 1),
          "peak_rss_mib_resumed_run": round(max(s.rss for s in run_samples if s.process == 1) / 2**20, 1),
          "rss_kib_per_row": round(rss_fit[1] / 1024, 3) if rss_fit else None,
          "rss_gib_at_1m_rows": round((rss_fit[0] + rss_fit[1] * _MILLION) / 2**30, 2) if rss_fit else None},
      "cpu": {"ms_per_row_resumed_run": round(cpu_fit[1] * 1000, 2) if cpu_fit else None},
      "resume": {
          "killed_at_rows": rows_at_kill, "seconds_to_first_request": round(resume_s, 2),
          "parts": resume_parts,
          "all_done_rows": rows_done, "all_done_seconds_to_first_request": round(resume_full_s, 2),
          "all_done_parts": probe_parts,
          "row_dependent_us_per_row": round((per_record + per_question) * 1e6, 2) if probe_parts else None,
          "seconds_at_1m_rows": resume_at_1m},
      "integrity": integrity,
      "server": server.stats(),
      "samples": [dataclasses.asdict(s) for s in run_samples[::stride]],
  }


def to_json(result: dict[str, Any]) -> str:
  return json.dumps(result, indent=1)
