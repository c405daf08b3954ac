"""Writes docs/configuration.md: every config field of the trainer, the sampler and the synthesis
tool, with its default and meaning, read from the code (never copied by hand).

  python tools/gen_config_docs.py                  # rewrite docs/configuration.md
  python tools/gen_config_docs.py --check          # exit 1 if the committed file is out of date

Sources, in order of preference for a field's meaning:
  * the comment next to the field in its definition (`default_config()` in
    mathjax_sft/train/config.py, the dataclasses SampleRunConfig, EngineConfig and SynthConfig),
    with the comment lines that continue it;
  * else the help text of the command-line flag of the same name in the tool that sets it
    (tools/sample.py, tools/synthesize.py), read from the tool's source;
  * else the short text in `_FALLBACK` below.
Defaults are the values the code computes (`default_config()`, the dataclass defaults).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import importlib.util
import inspect
import re
import sys
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout

OUTPUT = REPO / "docs" / "configuration.md"

# Meanings of fields that have neither a comment in their definition nor a flag with help text.
_FALLBACK = {
    "train": {
        "prompt_fields": "comma-separated row fields tried in order for the prompt (question, "
                         "problem, ...)",
        "response_fields": "comma-separated row fields tried in order for the response (answer, "
                           "solution, ...)",
        "seq_len": "tokens per training sequence (packed rows, or one padded row each)",
        "tfds_data_dir": "tensorflow-datasets data_dir for `tfds:` train files",
        "tfds_download": "let tensorflow-datasets download a `tfds:` dataset (needs the network)",
        "learning_rate": "peak learning rate (AdamW), reached after the warmup",
        "warmup_ratio": "linear warmup as a fraction of the total steps (when warmup_steps is -1)",
        "weight_decay": "AdamW decoupled weight decay",
        "adam_b1": "AdamW beta1",
        "adam_b2": "AdamW beta2",
        "adam_eps": "AdamW epsilon",
        "seed": "seed of the parameter init (with model_preset), shuffling and holdout",
        "num_processes": "multi-host: number of processes (0 = detect)",
        "process_id": "multi-host: this process's index (-1 = detect)",
        "output_dir": "run directory: checkpoints/, model_files/, final/, metrics.jsonl, tb/",
        "checkpoint_every_steps": "save an orbax checkpoint every this many steps (and at the end "
                                  "or on SIGTERM)",
        "keep_checkpoints": "checkpoints kept on disk (older ones are deleted)",
        "async_checkpointing": "write checkpoints in the background while training goes on",
        "log_every_steps": "steps between two metrics lines (metrics.jsonl, TensorBoard, log)",
        "progress_bar": "show a progress bar",
        "compilation_cache_dir": "persistent XLA compilation cache directory (\"\" = off)",
    },
    "engine": {
        "max_prompt_len": "longest prompt the engine accepts (None: the longest of the run)",
    },
}

# dataclass field -> flag name, where the tool names it differently
_FLAG_ALIASES = {"sample": {"stop_strings": "stop"}, "synth": {"input_path": "input"}}


def _source_comments(lines: list[str], field_re: re.Pattern) -> dict[str, tuple[str, str]]:
  """name -> (default expression as written, comment with its continuation lines)."""
  out: dict[str, list[str]] = {}
  last = None
  for line in lines:
    m = field_re.match(line)
    if m:
      last = m.group("name")
      out[last] = [(m.group("default") or "").strip(), (m.group("comment") or "").strip()]
      continue
    m = re.match(r"^(\s*)#\s?(.*)$", line)
    # a comment line continues the previous field's comment when it is indented past the code
    if m and last is not None and len(m.group(1)) > 8 and not m.group(2).startswith("----"):
      out[last][1] = (out[last][1] + " " + m.group(2).strip()).strip()
    else:
      last = None
  return {k: (v[0], v[1]) for k, v in out.items()}


def _flag_help(tool: str) -> dict[str, tuple[str, Any]]:
  """Flag name -> (help text, default) of the `flags.DEFINE_*` calls in tools/<tool>: string
  literals and the literal parts of f-strings (formatted parts are written as `...`); the default
  where it is a literal, else MISSING."""
  tree = ast.parse((REPO / "tools" / tool).read_text())
  out = {}
  for node in ast.walk(tree):
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr.startswith("DEFINE_")):
      continue
    args = list(node.args)
    kw = {k.arg: k.value for k in node.keywords}
    name = args[0] if args else kw.get("name")
    # DEFINE_enum(name, default, enum_values, help); the others (name, default, help)
    help_pos = 3 if node.func.attr in ("DEFINE_enum", "DEFINE_enum_class") else 2
    text = args[help_pos] if len(args) > help_pos else kw.get("help")
    if not isinstance(name, ast.Constant) or text is None:
      continue
    default = args[1] if len(args) > 1 else kw.get("default")
    try:
      default = ast.literal_eval(default)
    except (ValueError, TypeError, SyntaxError):
      default = dataclasses.MISSING
    out[name.value] = (_literal(text), default)
  return out


def _literal(node: ast.AST) -> str:
  if isinstance(node, ast.Constant):
    return str(node.value)
  if isinstance(node, ast.JoinedStr):
    return "".join(_literal(v) if isinstance(v, ast.Constant) else "..." for v in node.values)
  if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
    return _literal(node.left) + _literal(node.right)
  return "..."


def _fmt_default(value: Any) -> str:
  if value is dataclasses.MISSING:
    return "*required*"
  if isinstance(value, Path):
    value = str(value)
  text = repr(value)
  return f"`{text}`".replace("|", "\\|")


def _cell(text: str) -> str:
  return text.replace("|", "\\|").replace("\n", " ").strip()


def _dataclass_rows(cls: type, comments_key: str, flags: dict[str, tuple[str, Any]] | None,
                    flag_prefix: str = "--") -> list[tuple[str, str, str, str]]:
  field_re = re.compile(r"^\s+(?P<name>\w+): [^=#]+?(?:= (?P<default>[^#]*?))?\s*(?:#\s?(?P<comment>.*))?$")
  comments = _source_comments(inspect.getsource(cls).splitlines(), field_re)
  aliases = _FLAG_ALIASES.get(comments_key, {})
  rows = []
  for f in dataclasses.fields(cls):
    default = f.default
    if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
      default = f.default_factory()
    meaning = comments.get(f.name, ("", ""))[1]
    flag_name = aliases.get(f.name, f.name)
    flag = ""
    shown = _fmt_default(default)
    if flags is not None and flag_name in flags:
      flag = f"`{flag_prefix}{flag_name}`"
      help_text, flag_default = flags[flag_name]
      meaning = meaning or help_text
      if default is dataclasses.MISSING and flag_default not in (dataclasses.MISSING, None):
        shown += f" (the tool's flag: {_fmt_default(flag_default)})"
    meaning = meaning or _FALLBACK.get(comments_key, {}).get(f.name, "")
    rows.append((f"`{f.name}`", shown, flag, meaning))
  return rows


def _train_rows() -> list[tuple[str, str, str, str]]:
  from mathjax_sft.train import config as train_config  # pylint: disable=import-outside-toplevel
  c = train_config.default_config()
  field_re = re.compile(r"^\s*c\.(?P<name>\w+) = (?P<default>.*?)(?:\s+#\s?(?P<comment>.*))?$")
  lines = inspect.getsource(train_config.default_config).splitlines()
  comments = _source_comments(lines, field_re)
  rows = []
  section = ""
  for line in lines:
    m = re.match(r"\s*# ---- (.*) ----", line)
    if m:
      section = m.group(1)
      rows.append((f"**{section}**", "", "", ""))
      continue
    m = field_re.match(line)
    if not m:
      continue
    name = m.group("name")
    meaning = comments[name][1] or _FALLBACK["train"].get(name, "")
    rows.append((f"`{name}`", _fmt_default(c[name]), f"`--config.{name}`", meaning))
  return rows


def _config_overrides() -> list[str]:
  """Per shipped config file: the fields it sets to something other than the default."""
  from mathjax_sft.train import config as train_config  # pylint: disable=import-outside-toplevel
  base = train_config.default_config()
  out = []
  for path in sorted((REPO / "configs").glob("*.py")):
    spec = importlib.util.spec_from_file_location(f"_cfg_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    changed = [f"`{k}={_plain(c[k])}`" for k in c.keys() if k not in base or c[k] != base[k]]
    out.append(f"* `configs/{path.name}`: " + ", ".join(changed))
  return out


def _plain(value: Any) -> str:
  return repr(value).replace("|", "\\|")


def _table(rows: list[tuple[str, str, str, str]], header: tuple[str, ...]) -> list[str]:
  out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    out.append("| " + " | ".join(_cell(c) for c in row) + " |")
  return out


def render() -> str:
  from mathjax_sft.sample import engine, run  # pylint: disable=import-outside-toplevel
  from mathjax_sft.synth.config import SynthConfig  # pylint: disable=import-outside-toplevel
  header = ("field", "default", "flag", "meaning")
  lines = [
      "# Configuration reference",
      "",
      "<!-- Generated by tools/gen_config_docs.py from the code; do not edit by hand. -->",
      "",
      "Every field of the three configurations, with its default and meaning, read from the code by",
      "`python tools/gen_config_docs.py` (regenerate after changing a field; `--check` says whether",
      "this file is up to date). The flag column is how a tool sets the field from the command line.",
      "",
      "* [Training](#training-toolstrainpy): `default_config()` in `mathjax_sft/train/config.py`",
      "* [Sampling](#sampling-toolssamplepy): `SampleRunConfig` in `mathjax_sft/sample/run.py` and",
      "  `EngineConfig` in `mathjax_sft/sample/engine.py`",
      "* [Synthesis](#synthesis-toolssynthesizepy): `SynthConfig` in `mathjax_sft/synth/config.py`",
      "",
      "## Training (`tools/train.py`)",
      "",
      "An `ml_collections.ConfigDict`. A config file under `configs/` calls `default_config()` (or",
      "`xwin_math_recipe()`, the LLaMA-2 recipe built on it) and overrides fields; any field can be",
      "set on the command line as `--config.FIELD=VALUE`. `tools/train.py` validates the whole",
      "config once at start (`validate`), naming the field at fault.",
      "",
  ]
  lines += _table(_train_rows(), header)
  lines += ["", "What the shipped configs set (every field not listed keeps the default above):", ""]
  lines += _config_overrides()
  lines += [
      "",
      "## Sampling (`tools/sample.py`)",
      "",
      "### `SampleRunConfig`",
      "",
      "One sampling run (`mathjax_sft.sample.run.run`). `tools/sample.py` takes every default from",
      "this dataclass. The fields in `SampleRunConfig.settings()` (checkpoint, dataset, N,",
      "sampling rule, budget, seed, prompt format, dtypes) must not change when a run resumes.",
      "",
  ]
  lines += _table(_dataclass_rows(run.SampleRunConfig, "sample", _flag_help("sample.py")), header)
  lines += [
      "",
      "### `EngineConfig`",
      "",
      "The scheduler's settings (`mathjax_sft.sample.engine.Engine`); `SampleRunConfig` passes",
      "`max_new_tokens`, `rows`, `prefix_slots`, `chunk_steps`, `min_tail_rows` and the stop",
      "strings through. None of them changes the samples drawn.",
      "",
  ]
  lines += _table(_dataclass_rows(engine.EngineConfig, "engine", None), header)
  lines += [
      "",
      "## Synthesis (`tools/synthesize.py`)",
      "",
      "### `SynthConfig`",
      "",
      "One synthesis run (`mathjax_sft.synth.run`). The API key is not a field: it is read from",
      "`$OPENAI_API_KEY` when the client is built.",
      "",
  ]
  lines += _table(_dataclass_rows(SynthConfig, "synth", _flag_help("synthesize.py")), header)
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
