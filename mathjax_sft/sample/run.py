"""A sampling run: problems -> prompts -> N samples each -> graded records -> summary.json.

Resumable: `samples.jsonl` gets one line per finished problem (append-only, fsynced); a re-run
with the same settings skips problems already written. Problems are batched in a fixed order, so
a batch recomputed after a crash holds the same problems as before and gives the same samples.

Multi-host (after `jax.distributed.initialize`): data parallel over problems. Batch k of P
problems belongs to process k % process_count, which decodes it on its own devices (a mesh over
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

from mathjax_sft.checkpoint import params as ckpt
from mathjax_sft.data import templates
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


@dataclasses.dataclass(frozen=True)
class SampleRunConfig:
  checkpoint: str
  dataset: str                       # gsm8k | math | math500 | jsonl:PATH (see eval.problems)
  output_dir: str
  num_samples: int = 64
  num_problems: int | None = None
  temperature: float = 0.7
  top_p: float = 1.0
  top_k: int = 0
  max_new_tokens: int = 512
  seed: int = 0
  template: str | None = None        # None: the checkpoint's prompt_format.json, else "chat"
  system_prompt: str | None = None
  stop_strings: tuple[str, ...] = ()   # besides the template's own (templates.STOP_STRINGS)
  problems_per_batch: int = 4
  slots_per_problem: int = 64
  compute_dtype: str = "float32"
  param_dtype: str | None = None     # cast weights while loading (e.g. bfloat16)
  mesh_shape: tuple[int, ...] | None = None
  grader_workers: int = 2
  grade_timeout_s: float = 10.0

  def __post_init__(self):
    if self.template is not None:
      templates.check_template(self.template)
    if self.num_samples <= 0:
      raise ValueError(f"num_samples must be positive, got {self.num_samples}")
    SamplingParams(self.temperature, self.top_p, self.top_k)   # validates

  @property
  def all_stop_strings(self) -> tuple[str, ...]:
    """The template's stop strings, then the extra ones (each once)."""
    return tuple(dict.fromkeys(templates.STOP_STRINGS[self.template or templates.DEFAULT_TEMPLATE]
                               + tuple(self.stop_strings)))

  def with_checkpoint_format(self) -> "SampleRunConfig":
    """The template / system prompt the checkpoint was fine-tuned with, where these are unset;
    a set template that contradicts the checkpoint's is kept, with a warning naming both."""
    fmt = templates.load_prompt_format(self.checkpoint)
    if fmt is None:
      if self.template is None:
        log.info("%s records no prompt format: using template %r", self.checkpoint,
                 templates.DEFAULT_TEMPLATE)
      return dataclasses.replace(self, template=self.template or templates.DEFAULT_TEMPLATE)
    source = Path(self.checkpoint) / templates.PROMPT_FORMAT_FILE
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
            "problems_per_batch", "slots_per_problem", "compute_dtype", "param_dtype")
    out = {k: getattr(self, k) for k in keep}
    out["checkpoint"] = str(Path(self.checkpoint).absolute())
    out["stop_strings"] = list(self.stop_strings)
    return out


def enable_compilation_cache(path: str | None = None) -> None:
  """Persistent XLA cache: a second run with the same shapes starts without compiling."""
  path = path or os.environ.get("MATHJAX_COMPILATION_CACHE",
                                str(Path.home() / ".cache" / "mathjax_sft" / "jax"))
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def truncate_at_stop(text: str, stop_strings: tuple[str, ...]) -> str:
  cut = min((i for i in (text.find(s) for s in stop_strings) if i >= 0), default=len(text))
  return text[:cut]


def _check_settings(out_dir: Path, settings: dict) -> None:
  path = out_dir / SETTINGS_FILE
  if path.exists():
    old = json.loads(path.read_text())
    diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
    if diff:
      raise ValueError(f"{out_dir} holds a run with other settings {diff} (old, new); use a new "
                       "--output_dir or delete it")
  else:   # atomic: several processes may write the same file at once
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(settings, indent=2) + "\n")
    tmp.replace(path)


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


def run(cfg: SampleRunConfig, show_progress: bool = True) -> dict[str, Any]:
  """Samples, grades and summarises; returns the summary (also written to summary.json)."""
  from transformers import AutoTokenizer
  start = time.perf_counter()
  cfg = cfg.with_checkpoint_format()
  out_dir = Path(cfg.output_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  settings = cfg.settings()
  _check_settings(out_dir, settings)

  problems = problems_lib.load_problems(cfg.dataset, cfg.num_problems)
  tokenizer = AutoTokenizer.from_pretrained(cfg.checkpoint)
  prompt_texts = [templates.render_prompt(cfg.template, p.question, tokenizer, cfg.system_prompt)
                  for p in problems]
  add_special = templates.ADD_SPECIAL_TOKENS[cfg.template]
  prompt_ids = [tokenizer(t, add_special_tokens=add_special)["input_ids"] for t in prompt_texts]

  rank, world = jax.process_index(), jax.process_count()
  mesh = (mesh_lib.make_mesh(cfg.mesh_shape, devices=jax.local_devices()) if cfg.mesh_shape
          else None)
  overrides = {"compute_dtype": cfg.compute_dtype}
  if cfg.param_dtype:
    overrides["param_dtype"] = cfg.param_dtype
  params, model_cfg = ckpt.load_params(cfg.checkpoint, mesh=mesh, **overrides)
  stop_seqs = tuple(tuple(tokenizer(s, add_special_tokens=False)["input_ids"])
                    for s in cfg.all_stop_strings)
  engine = Engine(params, model_cfg, EngineConfig(
      max_new_tokens=cfg.max_new_tokens, problems_per_batch=cfg.problems_per_batch,
      slots_per_problem=cfg.slots_per_problem, stop_sequences=stop_seqs), mesh=mesh, donate=True)
  del params   # donated: the engine holds the only copy of the weights
  sampling = SamplingParams(cfg.temperature, cfg.top_p, cfg.top_k)

  done = set(read_records(out_dir))
  store = JsonlStore(out_dir / samples_file(rank, world))
  P = cfg.problems_per_batch
  mine = [b0 for b0 in range(0, len(problems), P) if (b0 // P) % world == rank]
  bar = tqdm(total=sum(len(problems[b0:b0 + P]) for b0 in mine),
             initial=sum(p.id in done for b0 in mine for p in problems[b0:b0 + P]),
             desc="problems" if world == 1 else f"problems (process {rank})", unit="problem",
             disable=not show_progress)
  with Grader(num_workers=cfg.grader_workers, timeout_s=cfg.grade_timeout_s) as grader:
    for b0 in mine:
      batch = problems[b0:b0 + P]
      if all(p.id in done for p in batch):
        continue
      samples = engine.generate(prompt_ids[b0:b0 + P], [p.id for p in batch], cfg.num_samples,
                                sampling, cfg.seed)
      texts = [[truncate_at_stop(tokenizer.decode(t, skip_special_tokens=True),
                                 cfg.all_stop_strings)
                for t in s.tokens] for s in samples]
      recs = records_lib.make_records(batch, texts, grader)
      for i, (problem, rec, s) in enumerate(zip(batch, recs, samples)):
        if problem.id in done:
          continue
        rec["prompt"] = prompt_texts[b0 + i]
        for sample, tokens, finished in zip(rec["samples"], s.tokens, s.finished):
          sample["num_tokens"] = len(tokens)
          sample["finished"] = finished
        store.append(rec)
        done.add(problem.id)
        bar.update()
      if engine.decode_seconds:
        bar.set_postfix(tok_s=f"{engine.new_tokens / engine.decode_seconds:.0f}")
  bar.close()
  store.close()

  tokens = np.array([engine.new_tokens], np.int32)
  seconds = np.array([engine.decode_seconds], np.float32)
  if world > 1:      # every process's tokens and seconds; also a barrier: all files are complete
    tokens = np.asarray(multihost_utils.process_allgather(tokens)).reshape(world)
    seconds = np.asarray(multihost_utils.process_allgather(seconds)).reshape(world)
  by_id = read_records(out_dir)
  missing = [p.id for p in problems if p.id not in by_id]
  if missing:
    raise RuntimeError(f"{len(missing)} problems have no samples in {out_dir} (first: "
                       f"{missing[0]}); is the output directory shared by every host?")
  ordered = [by_id[p.id] for p in problems]
  summary = metrics.summarize(ordered)
  summary["settings"] = settings
  summary["model"] = {"checkpoint": settings["checkpoint"], "params": model_cfg.num_params()}
  per_process = [float(t) / float(s) if s else 0.0 for t, s in zip(tokens, seconds)]
  summary["this_run"] = {   # speed of this invocation (not part of the result)
      "wall_s": round(time.perf_counter() - start, 2),
      "processes": world,
      "new_tokens": int(tokens.sum()),
      "decode_s": round(float(seconds.max()), 2),
      "tokens_per_s": round(sum(per_process), 1) if seconds.any() else None,   # all processes
      "compiled_programs": sorted(map(str, engine.compiled_shapes)),
  }
  if rank == 0:
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
  return summary
