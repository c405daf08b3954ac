"""The paper's phenomenon at small scale: Pass@N / PassRatio@N before SFT and after SFT on
growing slices of GSM8K train (Xwin-Math Figure 1), plus accuracy by reasoning-step count.

Every stage writes into one folder and is skipped when its output exists, so re-running the
same command resumes (sampling and training also resume within a stage):

  OUT/base/                     sampling of the starting checkpoint (summary.json, samples.jsonl)
  OUT/data/gsm8k_train_<K>.jsonl  the first K rows of GSM8K train (derived from $MATHJAX_DATA_DIR)
  OUT/sft_<K>/                  training run (orbax checkpoints, final/ model checkpoint)
  OUT/sft_<K>/eval/             sampling of the fine-tuned model
  OUT/results.json, results.md  the table;  OUT/*.png  the figures
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

from mathjax_sft import configtree, paths
from mathjax_sft.configtree import setting
from mathjax_sft.eval import plots
from mathjax_sft.sample import run as sample_run
from mathjax_sft.sample.strategies import SamplingParams
from mathjax_sft.train.config import TrainConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ReproduceConfig:
  """Settings of `run` (tools/reproduce.py's flags)."""
  output_dir: str = setting("runs/reproduce", "Folder for every stage's output.")
  base_checkpoint: str = setting(paths.EMBEDDED_CHECKPOINT, "Starting checkpoint dir.")
  train_config: str = setting("configs/sft_smollm2_135m.py", "SFT recipe: a train config file "
                              "whose get_config() is the recipe.")
  sizes: tuple[int, ...] = setting((1000, 3000, 7473), "SFT data sizes: first K rows of GSM8K "
                                   "train.")
  num_epochs: int = setting(3, "Epochs for every size (the same for all).")
  max_steps: int = setting(0, "> 0 caps every SFT run (smoke runs).")
  eval_dataset: str = setting("gsm8k", "Evaluation set (see tools/sample.py).")
  num_problems: int = setting(100, "First K evaluation problems.")
  num_samples: int = setting(64, "N samples per problem.")
  temperature: float = setting(SamplingParams.temperature, "Sampling temperature.")
  max_new_tokens: int = setting(320, "Token budget per sample.")
  sample_dtype: str = setting("bfloat16", "Weights/compute dtype while sampling.",
                              choices=("float32", "bfloat16"))
  rows: int | None = setting(None, "Sampler decode rows (default: tools/sample.py's).")


def _subset(k: int, out: Path) -> Path:
  out.parent.mkdir(parents=True, exist_ok=True)
  if not out.exists():
    lines = paths.data_file("gsm8k/train.jsonl").read_text().splitlines(keepends=True)
    if k > len(lines):
      raise ValueError(f"size {k} exceeds GSM8K train ({len(lines)} rows)")
    tmp = out.with_suffix(".tmp")
    tmp.write_text("".join(lines[:k]))
    tmp.replace(out)
  return out


def _train_config(path: str) -> TrainConfig:
  return configtree.load_file(path, TrainConfig)


def _sample(cfg: ReproduceConfig, checkpoint: str, out_dir: Path, train_cfg) -> dict[str, Any]:
  summary_path = out_dir / sample_run.SUMMARY_FILE
  if summary_path.exists():
    return json.loads(summary_path.read_text())
  return sample_run.run(sample_run.SampleRunConfig(
      checkpoint=checkpoint, dataset=cfg.eval_dataset, output_dir=str(out_dir),
      template=train_cfg.data.template,             # sample in the format the model is trained on
      system_prompt=(None if train_cfg.data.system_prompt == "<default>"
                     else train_cfg.data.system_prompt),
      num_samples=cfg.num_samples, num_problems=cfg.num_problems, temperature=cfg.temperature,
      max_new_tokens=cfg.max_new_tokens, compute_dtype=cfg.sample_dtype,
      param_dtype=cfg.sample_dtype, rows=cfg.rows))


def _row(label: str, size: int, summary: dict, wall: dict) -> dict[str, Any]:
  return {"model": label, "sft_rows": size, "pass_at_n": summary["pass_at_n"],
          "pass_ratio_at_n": summary["pass_ratio_at_n"], "pass_at_1": summary["pass_at_k"]["1"],
          "maj_at_n": summary["maj_at_k"][str(summary["num_samples"])],
          "num_problems": summary["num_problems"], "num_samples": summary["num_samples"], **wall}


def table_markdown(rows: Sequence[dict[str, Any]]) -> str:
  n = rows[0]["num_samples"] if rows else "N"
  lines = [f"| model | SFT rows | Pass@{n} | PassRatio@{n} | pass@1 | maj@{n} |",
           "|---|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['model']} | {r['sft_rows']} | {100 * r['pass_at_n']:.1f}% | "
                 f"{100 * r['pass_ratio_at_n']:.1f}% | {100 * r['pass_at_1']:.1f}% | "
                 f"{100 * r['maj_at_n']:.1f}% |")
  return "\n".join(lines) + "\n"


def run(cfg: ReproduceConfig) -> list[dict[str, Any]]:
  from mathjax_sft.train import loop as train_loop
  out = Path(cfg.output_dir)
  out.mkdir(parents=True, exist_ok=True)
  rows, points, labelled = [], [], []

  train_cfg = _train_config(cfg.train_config)
  tic = time.perf_counter()
  base = _sample(cfg, cfg.base_checkpoint, out / "base", train_cfg)
  rows.append(_row("base", 0, base, {"sample_s": round(time.perf_counter() - tic)}))
  points.append((0, base))
  labelled.append(("base", base))

  for size in cfg.sizes:
    run_dir = out / f"sft_{size}"
    final = run_dir / "final"
    tic = time.perf_counter()
    if not (final / "config.json").exists():
      c = train_cfg.replace({
          "model.init_checkpoint": cfg.base_checkpoint,
          "data.train_files": str(_subset(size, out / "data" / f"gsm8k_train_{size}.jsonl")),
          "output_dir": str(run_dir), "num_epochs": cfg.num_epochs, "max_steps": cfg.max_steps,
          "checkpoint.export_final": True})
      result = train_loop.train(c)
      if result.stop_reason == "preempted":
        raise RuntimeError(f"training of {run_dir} was preempted; re-run to resume")
    train_s = round(time.perf_counter() - tic)
    tic = time.perf_counter()
    summary = _sample(cfg, str(final), run_dir / "eval", train_cfg)
    rows.append(_row(f"SFT {size}", size, summary,
                     {"train_s": train_s, "sample_s": round(time.perf_counter() - tic)}))
    points.append((size, summary))
    labelled.append((f"SFT {size}", summary))

  plots.plot_data_scaling(points, out / "pass_vs_data.png",
                          title=f"GSM8K test, first {cfg.num_problems}, N={cfg.num_samples}")
  plots.plot_accuracy_by_steps(labelled, out / "accuracy_by_steps.png",   # >= 2 problems a point
                               min_problems=max(2, min(5, cfg.num_problems // 10)))
  (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
  (out / "results.md").write_text(table_markdown(rows))
  return rows
