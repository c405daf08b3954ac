"""A sampling run: problems -> prompts -> N samples each -> graded records -> summary.json.

All problems go through one `Engine.generate` call (a scheduler over a fixed pool of decode
rows); each problem is graded and written as soon as its last sample ends. Resumable:
`samples.jsonl` gets one line per finished problem (append-only, fsynced); a re-run with the same
settings skips problems already written. A problem's samples depend only on (seed, problem,
sample index), not on the pool, the chunk size or which problems shared the pool, so a problem
recomputed after a crash gives the same samples.

Multi-host (after `jax.distributed.initialize`): data parallel over problems. Problem i belongs
to process i % process_count, which decodes it on its own devices (a mesh over
`jax.local_devices()`; no collectives in the decode loop) and appends to its own
`samples.<i>-of-<n>.jsonl` in the shared output directory. After a barrier, process 0 reads every
samples file and writes `summary.json`. A resume reads all samples files, so it may use another
number of processes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from mathjax_sft import errors, paths
from mathjax_sft.checkpoint import params as ckpt
from mathjax_sft.configtree import section, setting
from mathjax_sft.data import templates
from mathjax_sft.distributed import DistributedConfig
from mathjax_sft.eval import metrics, problems as problems_lib, records as records_lib
from mathjax_sft.eval.grade import Grader
from mathjax_sft.sample.engine import Engine, EngineConfig
from mathjax_sft.sample.strategies import SamplingParams
from mathjax_sft.sharding import mesh as mesh_lib
from mathjax_sft.jsonl_store import JsonlStore, read_complete

log = logging.getLogger(__name__)

SAMPLES_FILE = "samples.jsonl"
SUMMARY_FILE = "summary.json"
SETTINGS_FILE = "settings.json"


DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SampleRunConfig:
  """One sampling run; `tools/sample.py` has one flag per field (`--distributed.mode`, ...)."""
  checkpoint: str = setting(
      paths.EMBEDDED_CHECKPOINT, "mathjax_sft checkpoint directory (config.json, params/, tokenizer), "
      "or any step of a training run (OUT/checkpoints/<step>). Default: the embedded "
      "SmolLM2-135M-Instruct, converted by `make convert`.")
  dataset: str = setting(
      "gsm8k", "Problems: gsm8k | math | math500 (test splits under $MATHJAX_DATA_DIR), "
      "'gsm8k:train' / 'math:train', or jsonl:PATH (GSM8K or MATH style rows).")
  output_dir: str = setting(doc="Run directory (created; reused to resume).")
  num_samples: int = setting(64, "N: samples per problem.")
  num_problems: int | None = setting(None, "Only the first K problems (default all).")
  temperature: float = setting(SamplingParams.temperature, "Sampling temperature; 0 = greedy.")
  top_p: float = setting(SamplingParams.top_p, "Nucleus sampling mass (1.0 = off).")
  top_k: int = setting(SamplingParams.top_k, "Keep the k most likely tokens (0 = off).")
  max_new_tokens: int = setting(EngineConfig.max_new_tokens, "Longest sample, in tokens.")
  seed: int = setting(0, "Sample j of problem p depends only on (seed, p, j).")
  template: str | None = setting(
      None, "Prompt format: the tokenizer's chat template, Alpaca, or Xwin-Math's. Default: the "
      "one the checkpoint was fine-tuned with (its prompt_format.json), else chat; a value that "
      "contradicts the checkpoint's is used with a warning.", choices=templates.TEMPLATES)
  system_prompt: str | None = setting(
      None, "System turn for --template=chat (default: the template's own).")
  stop_strings: tuple[str, ...] = setting(
      (), "Extra stop strings (also --stop), besides EOS and the template's own (xwin: </s>, "
      "USER, ASSISTANT, Question, Instruction, Response; alpaca: ### Instruction, ### Response).")
  rows: int | None = setting(
      None, "Decode rows in the pool, shared by all problems (default: the most, up to 256, whose "
      "compiled decode program fits 90% of the device's memory, checked before the weights "
      "load; at most 64 on a CPU; never more than problems x N). Rows given that cannot fit "
      "are refused. Does not change the samples.")
  prefix_slots: int | None = setting(
      None, "Prompts resident at once (default rows // N + 3). Does not change the samples.")
  chunk_steps: int = setting(
      EngineConfig.chunk_steps, "Decode steps per compiled call; the host schedules work and "
      "matches stop strings between calls. Does not change the samples.")
  min_tail_rows: int = setting(
      EngineConfig.min_tail_rows, "Once every sample has started, the live rows move into a pool "
      "a power of two smaller whenever they fit, down to this many rows (0: never; each size is "
      "one more compiled decode program). Does not change the samples.")
  compute_dtype: str = setting("float32", "Matmul dtype.", choices=DTYPES)
  param_dtype: str | None = setting(
      None, "Cast weights to this dtype when loading (default: as stored).", choices=DTYPES)
  mesh_shape: tuple[int, ...] | None = setting(
      None, "data,fsdp,tensor mesh sizes (-1 = the rest) over this process's devices; empty = "
      "one device. Problems are split over data x fsdp.")
  grader_workers: int = setting(2, "math-verify worker processes.")
  grade_timeout_s: float = setting(10.0, "Time limit per graded answer.")
  compilation_cache: str | None = setting(
      None, "Persistent XLA compilation cache dir (default ~/.cache/mathjax_sft/jax or "
      "$MATHJAX_COMPILATION_CACHE).")
  distributed: DistributedConfig = section(
      DistributedConfig, "Multi-host: the same command on every host; problem i goes to process "
      "i % num_processes.")

  def __post_init__(self):
    if self.template is not None:
      templates.check_template(self.template)
    if self.num_samples <= 0:
      raise ValueError(f"num_samples must be positive, got {self.num_samples}")
    SamplingParams(self.temperature, self.top_p, self.top_k)   # validates

  @property
  def sampling(self) -> SamplingParams:
    return SamplingParams(self.temperature, self.top_p, self.top_k)

  @property
  def all_stop_strings(self) -> tuple[str, ...]:
    """The template's stop strings, then the extra ones (each once)."""
    return tuple(dict.fromkeys(templates.STOP_STRINGS[self.template or templates.DEFAULT_TEMPLATE]
                               + tuple(self.stop_strings)))

  def with_checkpoint_format(self) -> "SampleRunConfig":
    """The template / system prompt the checkpoint was fine-tuned with, where these are unset;
    a set template that contradicts the checkpoint's is kept, with a warning naming both."""
    fmt = templates.load_prompt_format(ckpt.files_dir(self.checkpoint))
    if fmt is None:
      if self.template is None:
        log.debug("%s records no prompt format: using template %r", self.checkpoint,
                  templates.DEFAULT_TEMPLATE)
      return dataclasses.replace(self, template=self.template or templates.DEFAULT_TEMPLATE)
    source = ckpt.files_dir(self.checkpoint) / templates.PROMPT_FORMAT_FILE
    if self.template is None:
      log.info("prompt format from %s: template %r", source, fmt["template"])
      system = self.system_prompt if self.system_prompt is not None else fmt.get("system_prompt")
      return dataclasses.replace(self, template=fmt["template"], system_prompt=system)
    if self.template != fmt["template"]:
      log.warning("--template=%s, but %s says the model was fine-tuned with template %r: "
                  "sampling in another format than it learned", self.template, source,
                  fmt["template"])
    return self

  def settings(self) -> dict[str, Any]:
    """What must not change between a run and its resumption."""
    keep = ("checkpoint", "dataset", "num_samples", "temperature", "top_p", "top_k",
            "max_new_tokens", "seed", "template", "system_prompt", "stop_strings",
            "compute_dtype", "param_dtype")
    out = {k: getattr(self, k) for k in keep}
    out["checkpoint"] = str(Path(self.checkpoint).absolute())
    out["stop_strings"] = list(self.stop_strings)
    return out


def enable_compilation_cache(path: str | None = None) -> None:
  """Persistent XLA cache: a second run with the same shapes starts without compiling.

  Every program is kept, however fast it compiled: the engine's weight relayout is ~10 small
  programs of 0.3-0.5 s each, which a warm start then loads in 0.6 s instead of 3-4 s
  (measured on a 2-core CPU)."""
  path = path or os.environ.get("MATHJAX_COMPILATION_CACHE",
                                str(Path.home() / ".cache" / "mathjax_sft" / "jax"))
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def _check_settings(out_dir: Path, settings: dict) -> bool:
  """Raises if `out_dir` holds a run with other settings (naming each differing field); returns
  whether settings.json exists (it is written only once the run's inputs have loaded)."""
  path = out_dir / SETTINGS_FILE
  if not path.exists():
    return False
  old = json.loads(path.read_text())
  diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
  if diff:
    fields = "; ".join(f"{k}: {a!r} (in the directory) vs {b!r} (now)" for k, (a, b) in diff.items())
    raise errors.BadInput(f"{out_dir} holds a run with other settings: {fields}. Use a new "
                          "--output_dir or delete it", flag="--output_dir")
  return True


def _write_settings(out_dir: Path, settings: dict) -> None:
  path = out_dir / SETTINGS_FILE   # atomic: several processes may write the same file at once
  tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
  tmp.write_text(json.dumps(settings, indent=2) + "\n")
  tmp.replace(path)


def _check_records(records: dict[str, dict], problems, prompt_texts: list[str]) -> None:
  """Samples already in the directory must be of the same problems: same gold, same prompt
  (question and template). A changed problems file is refused, naming the problems."""
  stale = []
  for problem, prompt in zip(problems, prompt_texts):
    rec = records.get(problem.id)
    if rec is None:
      continue
    fields = [f for f, a, b in (("gold", rec.get("gold"), problem.gold),
                                ("question/prompt", rec.get("prompt"), prompt)) if a != b]
    if fields:
      stale.append(f"{problem.id} ({', '.join(fields)})")
  if stale:
    raise errors.BadInput(f"{len(stale)} problems already sampled in this directory differ from "
                          f"the problems file now: {', '.join(stale[:5])}"
                          f"{' ...' if len(stale) > 5 else ''}; use a new --output_dir",
                          flag="--output_dir")


def samples_file(process_index: int, process_count: int) -> str:
  """This process's samples file (one writer per file)."""
  if process_count == 1:
    return SAMPLES_FILE
  return f"samples.{process_index:05d}-of-{process_count:05d}.jsonl"


def read_records(out_dir: Path) -> dict[str, dict]:
  """Every finished problem in `out_dir`, from all samples files (any process count)."""
  records = {}
  for path in sorted(out_dir.glob("samples*.jsonl")):
    records.update((r["id"], r) for r in read_complete(path))
  return records


@dataclasses.dataclass
class _Prompts:
  """The run's problems and their prompts (text and token ids)."""
  problems: list
  texts: list[str]
  ids: list[list[int]]
  tokenizer: Any


@dataclasses.dataclass
class _Plan:
  """This process's share of the problems: `todo` (indices) still to sample, into `store`."""
  rank: int
  world: int
  mine: list[int]
  todo: list[int]
  store: JsonlStore


def resolve_settings(cfg: SampleRunConfig) -> tuple[SampleRunConfig, dict[str, Any]]:
  """The config with the checkpoint's prompt format, and the run's settings (with the
  checkpoint's fingerprint), checked against a run already in the output directory."""
  ckpt.check_model_dir(cfg.checkpoint)
  cfg = cfg.with_checkpoint_format()
  settings = cfg.settings()
  settings["checkpoint_fingerprint"] = ckpt.fingerprint(cfg.checkpoint)
  if Path(cfg.output_dir).exists():
    _check_settings(Path(cfg.output_dir), settings)
  return cfg, settings


def load_prompts(cfg: SampleRunConfig) -> _Prompts:
  """Problems, tokenizer and prompts; samples already in the output directory must be of the
  same prompts."""
  problems = problems_lib.load_problems(cfg.dataset, cfg.num_problems, flag="--dataset")
  if not problems:
    raise errors.BadInput(f"--dataset={cfg.dataset} holds no problems", flag="--dataset")
  from transformers import AutoTokenizer   # after the problems: a bad --dataset is named fast
  tokenizer = AutoTokenizer.from_pretrained(ckpt.files_dir(cfg.checkpoint))
  texts = [templates.render_prompt(cfg.template, p.question, tokenizer, cfg.system_prompt)
           for p in problems]
  add_special = templates.ADD_SPECIAL_TOKENS[cfg.template]
  ids = [tokenizer(t, add_special_tokens=add_special)["input_ids"] for t in texts]
  out_dir = Path(cfg.output_dir)
  _check_records(read_records(out_dir) if out_dir.exists() else {}, problems, texts)
  return _Prompts(problems, texts, ids, tokenizer)


def load_engine(cfg: SampleRunConfig, tokenizer,
                prompt_lengths: list[int]) -> tuple[Engine, Any]:
  """The engine on a mesh over this process's devices, with its row pool planned for prompts of
  these lengths (`Engine.plan`: the compiled decode program against the device's memory, so a
  pool that cannot fit is named before any weight is loaded), then the checkpoint's weights;
  and the model config."""
  mesh = (mesh_lib.make_mesh(cfg.mesh_shape, devices=jax.local_devices()) if cfg.mesh_shape
          else None)
  overrides = {"compute_dtype": cfg.compute_dtype}
  if cfg.param_dtype:
    overrides["param_dtype"] = cfg.param_dtype
  model_cfg = ckpt.load_config(cfg.checkpoint, **overrides)
  detokenize = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)
  engine = Engine(None, model_cfg, EngineConfig(
      max_new_tokens=cfg.max_new_tokens, rows=cfg.rows, prefix_slots=cfg.prefix_slots,
      chunk_steps=cfg.chunk_steps, min_tail_rows=cfg.min_tail_rows,
      stop_strings=cfg.all_stop_strings), mesh=mesh, detokenize=detokenize)
  if prompt_lengths:
    engine.plan(prompt_lengths, cfg.num_samples, cfg.sampling)
  params, model_cfg = ckpt.load_params(cfg.checkpoint, mesh=mesh, **overrides)
  engine.load(params, donate=True)
  del params   # donated: the engine holds the only copy of the weights
  return engine, model_cfg


def plan_problems(out_dir: Path, problems) -> _Plan:
  """This process's problems not yet in the run directory (which is not touched)."""
  rank, world = jax.process_index(), jax.process_count()
  done = set(read_records(out_dir)) if out_dir.exists() else set()
  mine = [i for i in range(len(problems)) if i % world == rank]
  todo = [i for i in mine if problems[i].id not in done]
  return _Plan(rank, world, mine, todo, JsonlStore(out_dir / samples_file(rank, world)))


def open_run(out_dir: Path, settings: dict[str, Any]) -> None:
  """Creates the run directory (settings.json: every input has loaded, the run is real)."""
  out_dir.mkdir(parents=True, exist_ok=True)
  if not _check_settings(out_dir, settings):
    _write_settings(out_dir, settings)


def _graded_record(problem, prompt: str, samples, grader: Grader) -> dict[str, Any]:
  """One problem's line of samples.jsonl: its samples, graded, with their token counts."""
  rec = records_lib.make_records([problem], [samples.texts], grader)[0]
  rec["prompt"] = prompt
  rec["question"] = problem.question
  for sample, tokens, finished in zip(rec["samples"], samples.tokens, samples.finished):
    sample["num_tokens"] = len(tokens)
    sample["finished"] = finished
  return rec


def sample_and_grade(cfg: SampleRunConfig, engine: Engine, prompts: _Prompts, plan: _Plan,
                     show_progress: bool = True) -> float:
  """Samples the planned problems; each is graded and appended as soon as its last sample ends.
  Returns the seconds spent grading and writing."""
  todo, problems = plan.todo, prompts.problems
  bar = tqdm(total=len(plan.mine), initial=len(plan.mine) - len(todo),
             desc="problems" if plan.world == 1 else f"problems (process {plan.rank})",
             unit="problem", disable=not show_progress)
  grade_s = 0.0
  with Grader(num_workers=cfg.grader_workers, timeout_s=cfg.grade_timeout_s) as grader:
    def finish(k: int, samples) -> None:
      nonlocal grade_s
      tic = time.perf_counter()
      i = todo[k]
      plan.store.append(_graded_record(problems[i], prompts.texts[i], samples, grader))
      grade_s += time.perf_counter() - tic
      bar.update()
      st = engine.stats
      if st.decode_s:
        bar.set_postfix(tok_s=f"{st.useful_tokens / (st.decode_s + st.prefill_s):.0f}",
                        util=f"{st.utilisation:.2f}")

    engine.generate([prompts.ids[i] for i in todo], [problems[i].id for i in todo],
                    cfg.num_samples, cfg.sampling, cfg.seed, on_problem=finish)
  bar.close()
  plan.store.close()
  return grade_s


def _speed_of_every_process(engine: Engine, world: int) -> tuple[np.ndarray, np.ndarray]:
  """New tokens and decode seconds of each process; with several, also a barrier: every
  samples file is complete."""
  st = engine.stats
  tokens = np.array([st.useful_tokens], np.int64)
  seconds = np.array([st.decode_s + st.prefill_s], np.float64)
  if world > 1:
    tokens = np.asarray(multihost_utils.process_allgather(tokens)).reshape(world)
    seconds = np.asarray(multihost_utils.process_allgather(seconds)).reshape(world)
  return tokens, seconds


def _this_run(engine: Engine, plan: _Plan, grade_s: float) -> dict[str, Any]:
  """Speed of this invocation (not part of the result), less its wall time."""
  tokens, seconds = _speed_of_every_process(engine, plan.world)
  st = engine.stats
  per_process = [float(t) / float(s) if s else 0.0 for t, s in zip(tokens, seconds)]
  return {
      "processes": plan.world,
      "sampled_problems": len(plan.todo),   # this process, this invocation (0: all were done)
      "new_tokens": int(tokens.sum()),
      "decode_s": round(float(seconds.max()), 2),
      "tokens_per_s": round(sum(per_process), 1) if seconds.any() else None,   # all processes
      "utilisation": round(st.utilisation, 4),                 # this process
      "seconds": {"prefill": round(st.prefill_s, 2), "decode": round(st.decode_s, 2),
                  "host_scheduling": round(st.host_s, 2),
                  "grading": round(grade_s, 2)},
      "decode_flops": st.decode_flops,
      "engine": st.as_dict(),
      "compiled_programs": sorted(map(str, engine.compiled_shapes)),
  }


def summarise(out_dir: Path, problems, settings: dict[str, Any], model_cfg,
              this_run: dict[str, Any], start: float) -> dict[str, Any]:
  """Metrics over every problem's samples in `out_dir` (all processes'), with this run's speed
  and wall time since `start`; process 0 writes them."""
  by_id = read_records(out_dir)
  missing = [p.id for p in problems if p.id not in by_id]
  if missing:
    raise RuntimeError(f"{len(missing)} problems have no samples in {out_dir} (first: "
                       f"{missing[0]}); is the output directory shared by every host?")
  summary = metrics.summarize([by_id[p.id] for p in problems])
  extra = set(by_id) - {p.id for p in problems}
  summary["settings"] = settings
  summary["model"] = {"checkpoint": settings["checkpoint"], "params": model_cfg.num_params()}
  summary["this_run"] = {"wall_s": round(time.perf_counter() - start, 2), **this_run}
  # a directory that holds more problems than asked now keeps its summary.json: the subset is
  # summarised into its own file
  summary_path = out_dir / (SUMMARY_FILE if not extra else f"summary.first-{len(problems)}.json")
  summary["this_run"]["summary_file"] = str(summary_path)
  if jax.process_index() == 0:
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
  return summary


def run(cfg: SampleRunConfig, show_progress: bool = True) -> dict[str, Any]:
  """Samples, grades and summarises; returns the summary (also written to summary.json)."""
  start = time.perf_counter()
  cfg, settings = resolve_settings(cfg)
  prompts = load_prompts(cfg)
  out_dir = Path(cfg.output_dir)
  plan = plan_problems(out_dir, prompts.problems)
  engine, model_cfg = load_engine(cfg, prompts.tokenizer, [len(prompts.ids[i]) for i in plan.todo])
  open_run(out_dir, settings)
  grade_s = sample_and_grade(cfg, engine, prompts, plan, show_progress)
  this_run = _this_run(engine, plan, grade_s)
  return summarise(out_dir, prompts.problems, settings, model_cfg, this_run, start)
