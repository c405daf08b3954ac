"""Writes docs/configuration.md: every field of every tool's config tree, with its default, flag
and meaning, read from the trees themselves (`mathjax_sft.configtree`; never copied by hand).

  python tools/gen_config_docs.py                  # rewrite docs/configuration.md
  python tools/gen_config_docs.py --check          # exit 1 if the committed file is out of date
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout

from mathjax_sft import configtree  # noqa: E402

OUTPUT = REPO / "docs" / "configuration.md"

# (title, tool, "module:TreeClass", flag prefix, what to say about it)
ENTRY_POINTS = [
    ("Training", "tools/train.py", "mathjax_sft.train.config:TrainConfig", "--config.",
     "A config file under `configs/` returns a `TrainConfig` (often `xwin_math_recipe()`, the "
     "LLaMA-2 recipe, with some paths replaced); every field can be overridden on the command "
     "line as `--config.PATH=VALUE`. `tools/train.py` checks the whole tree once at start, "
     "naming the field at fault."),
    ("Sampling", "tools/sample.py", "mathjax_sft.sample.run:SampleRunConfig", "--",
     "One sampling run (`mathjax_sft.sample.run.run`). The fields in "
     "`SampleRunConfig.settings()` (checkpoint, dataset, N, sampling rule, budget, seed, prompt "
     "format, dtypes) must not change when a run resumes. `--stop` is another name for "
     "`--stop_strings`; `--report` prints the per-problem report instead of the JSON brief."),
    ("Synthesis", "tools/synthesize.py", "mathjax_sft.synth.config:SynthConfig", "--",
     "One synthesis run (`mathjax_sft.synth.run`). The API key is not a field: it is read from "
     "`$OPENAI_API_KEY` when the client is built. `--input` sets `input_path`; "
     "`--decontam_files` defaults to the GSM8K and MATH test sets under the data dir (`none` "
     "turns the check off)."),
    ("Failed synthesis rows", "tools/inspect_failures.py", "mathjax_sft.synth.failure_report:InspectConfig",
     "--", "The most common failure reasons of a synthesis output directory, each with one row's "
     "detail and the teacher's last reply."),
    ("Ahead-of-time check", "tools/aot_check.py", "mathjax_sft.aot_config:AotCheckConfig", "--",
     "Besides these, `--config=configs/*.py` names the train config whose model, batch and mesh "
     "are compiled, with the same `--config.PATH` overrides as `tools/train.py`."),
    ("Reproduction", "tools/reproduce.py", "mathjax_sft.reproduce:ReproduceConfig", "--",
     "Pass@N before and after SFT on growing slices of GSM8K train."),
    ("Checkpoint import", "tools/convert_hf_to_flax.py", "mathjax_sft.convert.api:ImportConfig",
     "--", "An HF directory or a GGUF file to a mathjax_sft checkpoint directory."),
    ("Checkpoint export", "tools/convert_flax_to_hf.py", "mathjax_sft.convert.api:ExportConfig",
     "--", "A mathjax_sft checkpoint directory to an HF directory (safetensors)."),
    ("Regrading", "tools/grade.py", "mathjax_sft.eval.regrade:RegradeConfig", "--",
     "Grades a run directory's samples again with the current grader."),
    ("Pass@k plot", "tools/plot_passk.py", "mathjax_sft.eval.plots:PlotPassKConfig", "--",
     "Figures of pass@k and of right samples per problem from sampling runs."),
    ("Training plot", "tools/plot_train.py", "mathjax_sft.train.plots:PlotTrainConfig", "--",
     "The loss and eval-loss curves of a training run."),
    ("Sampler benchmark", "tools/bench_sample.py", "mathjax_sft.sample.benchmark:BenchSampleConfig",
     "--", "The sampler against transformers `generate` on the same workload."),
    ("Train-step benchmark", "tools/bench_train.py",
     "mathjax_sft.train.benchmark:BenchTrainConfig", "--",
     "Tokens per second and MFU of the train step, against torch on the same shapes."),
    ("Synthesis benchmark", "tools/bench_synth.py",
     "mathjax_sft.synth.benchmark:BenchSynthConfig", "--",
     "tools/synthesize.py at scale against a fast loopback server: throughput per tenth of the "
     "rows, RSS and resume time against rows, and lost / duplicated / torn rows after a SIGKILL."),
    ("Grading benchmark", "tools/bench_grade.py",
     "mathjax_sft.eval.grade_bench:GradeBenchConfig", "--",
     "False and true credit of the grader on perturbed and reference answers."),
]
# flags named otherwise than their field
FLAG_NAMES = {("tools/synthesize.py", "input_path"): "--input"}


def _tree(spec: str) -> type:
  module, name = spec.split(":")
  return getattr(importlib.import_module(module), name)


def _default(leaf: configtree.Leaf) -> str:
  if leaf.required:
    return "*required*"
  value = leaf.default
  if isinstance(value, Path):
    value = str(value)
  if leaf.sequence and value is not None:
    return f"`{','.join(str(v) for v in value)}`"
  return f"`{value!r}`"


def _cell(text: str) -> str:
  return text.replace("|", "\\|").replace("\n", " ").strip()


def _table(tool: str, cls: type, prefix: str) -> list[str]:
  out = ["| field | default | flag | meaning |", "|---|---|---|---|"]
  for leaf in configtree.leaves(cls):
    doc = leaf.doc + (f" One of: {', '.join(map(str, leaf.choices))}." if leaf.choices else "")
    flag = FLAG_NAMES.get((tool, leaf.path), prefix + leaf.path)
    out.append(f"| `{leaf.path}` | {_cell(_default(leaf))} | `{flag}` | {_cell(doc)} |")
  return out


def _config_files(cls: type) -> list[str]:
  """Per shipped config file: the fields it sets to something other than the default."""
  base = cls()
  out = []
  for path in sorted((REPO / "configs").glob("*.py")):
    c = configtree.load_file(path, cls)
    changed = [f"`{l.path}={configtree.get_path(c, l.path)!r}`" for l in configtree.leaves(cls)
               if configtree.get_path(c, l.path) != configtree.get_path(base, l.path)]
    out.append(f"* `configs/{path.name}`: " + _cell(", ".join(changed)))
  return out


def render() -> str:
  lines = [
      "# Configuration reference",
      "",
      "<!-- Generated by tools/gen_config_docs.py from the config trees; do not edit by hand. -->",
      "",
      "Every tool's settings are one tree of frozen dataclasses (`mathjax_sft.configtree`), each",
      "field with one default and one doc; the tool's flags are generated from it",
      "(`mathjax_sft.cli`), so `--help` says the same as this page. A nested section's fields are",
      "`section.field`; a tuple field takes comma-separated values; `none` unsets an optional one.",
      "",
  ]
  for title, tool, spec, _, _ in ENTRY_POINTS:
    anchor = (title + " " + tool).lower().replace("/", "").replace(".", "").replace(" ", "-")
    lines.append(f"* [{title}](#{anchor}): `{spec.split(':')[1]}` in `{spec.split(':')[0]}`")
  for title, tool, spec, prefix, about in ENTRY_POINTS:
    cls = _tree(spec)
    lines += ["", f"## {title} ({tool})", "", about, ""]
    lines += _table(tool, cls, prefix)
    if tool == "tools/train.py":
      lines += ["", "What the shipped configs set (every field not listed keeps the default "
                "above):", ""]
      lines += _config_files(cls)
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--output", type=Path, default=OUTPUT, help="markdown file to write")
  parser.add_argument("--check", action="store_true",
                      help="do not write; exit 1 (with a diff) if --output is out of date")
  args = parser.parse_args(argv)
  text = render()
  if args.check:
    old = args.output.read_text() if args.output.exists() else ""
    if old == text:
      return 0
    sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), text.splitlines(True),
                                               str(args.output), "generated"))
    return 1
  args.output.parent.mkdir(parents=True, exist_ok=True)
  args.output.write_text(text)
  print(args.output)
  return 0


if __name__ == "__main__":
  sys.exit(main())
