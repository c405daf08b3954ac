"""Regrading saved samples with the current extractor and grader (after a grader fix nobody has
to resample): records in, records out, plus the verdicts that changed."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

from mathjax_sft.configtree import setting
from mathjax_sft.eval import metrics
from mathjax_sft.eval.grade import Grader
from mathjax_sft.eval.problems import Problem
from mathjax_sft.eval.records import make_records
from mathjax_sft.jsonl_store import read_complete

REGRADED_SUMMARY = "summary.regraded.json"
REGRADE_DIFF = "regrade_diff.json"


@dataclasses.dataclass(frozen=True)
class RegradeConfig:
  """Settings of tools/grade.py: the run to regrade and the grader."""
  samples: str = setting(doc="A tools/sample.py output directory (every samples*.jsonl in it) or "
                         "one samples JSONL file.")
  grader_workers: int = setting(2, "Grading worker processes.")
  grade_timeout_s: float = setting(10.0, "Time limit per graded answer (s).")
  verify_fn: str | None = setting(None, "The grading workers' comparison, module:function "
                                  "(default: the grader's own; mathjax_sft.eval.grade_worker:"
                                  "math_verify_equal is math-verify's verify as it is).")


def read_samples(path: str | Path) -> tuple[list[dict[str, Any]], Path]:
  """Records of a run directory (every samples*.jsonl in it) or of one samples file, and the
  directory the outputs go to. Errors name the path."""
  path = Path(path)
  if path.is_dir():
    files = sorted(path.glob("samples*.jsonl"))
    if not files:
      raise FileNotFoundError(f"{path} holds no samples*.jsonl (is it a tools/sample.py "
                              "--output_dir?)")
    out_dir = path
  elif path.is_file():
    files, out_dir = [path], path.parent
  else:
    raise FileNotFoundError(f"--samples={path}: no such file or directory")
  by_id: dict[str, dict] = {}
  for f in files:
    for lineno, record in enumerate(read_complete(f), start=1):
      if not isinstance(record, dict) or "samples" not in record or "gold" not in record:
        raise ValueError(f"{f}:{lineno}: not a graded sample record (needs id, gold, samples)")
      by_id[record["id"]] = record
  if not by_id:
    raise ValueError(f"{path}: the samples files hold no finished problem")
  return list(by_id.values()), out_dir


def regrade(records: Sequence[dict[str, Any]], grader: Grader) -> tuple[list[dict], dict]:
  """(records regraded from their sample texts, {"changed": [...], counts})."""
  problems = [Problem(id=r["id"], dataset=r["dataset"], question=r.get("question", ""),
                      gold=r["gold"], meta=dict(r.get("meta") or {})) for r in records]
  fresh = make_records(problems, [[s["text"] for s in r["samples"]] for r in records], grader)
  changed = []
  counts = {"samples": 0, "changed": 0, "wrong_to_right": 0, "right_to_wrong": 0,
            "answer_changed": 0}
  out = []
  for old, new in zip(records, fresh):
    merged = copy.deepcopy(dict(old))
    for j, (o, n) in enumerate(zip(old["samples"], new["samples"])):
      counts["samples"] += 1
      if o.get("answer") != n["answer"]:
        counts["answer_changed"] += 1
      if bool(o.get("correct")) != n["correct"]:
        counts["changed"] += 1
        counts["wrong_to_right" if n["correct"] else "right_to_wrong"] += 1
        changed.append({"id": old["id"], "sample": j, "gold": old["gold"],
                        "old_answer": o.get("answer"), "old_correct": bool(o.get("correct")),
                        "new_answer": n["answer"], "new_correct": n["correct"],
                        "reason": n["reason"], "text_tail": o["text"][-200:]})
      merged["samples"][j].update(answer=n["answer"], correct=n["correct"], reason=n["reason"])
    out.append(merged)
  return out, {**counts, "changed_samples": changed}


def regrade_dir(path: str | Path, num_workers: int = 2, timeout_s: float = 10.0,
                verify_fn: str | None = None) -> dict[str, Any]:
  """Regrades a run (or a samples file) and writes `summary.regraded.json` and
  `regrade_diff.json` next to it (the original files are left as they are). ``verify_fn``: the
  grading workers' comparison (None: the grader's default)."""
  records, out_dir = read_samples(path)
  with Grader(num_workers=num_workers, timeout_s=timeout_s, verify_fn=verify_fn) as grader:
    new_records, diff = regrade(records, grader)
  summary = metrics.summarize(new_records)
  old_summary_path = out_dir / "summary.json"
  if old_summary_path.is_file():
    old = json.loads(old_summary_path.read_text())
    for key in ("settings", "model"):
      if key in old:
        summary[key] = old[key]
    diff["before"] = {k: old.get(k) for k in ("pass_at_n", "pass_ratio_at_n")}
  diff["after"] = {k: summary[k] for k in ("pass_at_n", "pass_ratio_at_n")}
  diff["verify_fn"] = verify_fn or "default"
  summary["regraded"] = {k: v for k, v in diff.items() if k != "changed_samples"}
  (out_dir / REGRADED_SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
  (out_dir / REGRADE_DIFF).write_text(json.dumps(diff, indent=2, ensure_ascii=False) + "\n")
  return {"summary": summary, "diff": diff, "out_dir": str(out_dir)}
