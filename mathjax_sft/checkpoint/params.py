"""The model checkpoint directory: orbax params + HF-style config.json + tokenizer files.

  DIR/config.json             model config (HF LLaMA format, readable by transformers)
  DIR/params/                 orbax checkpoint of the stacked param pytree
  DIR/tokenizer*.json, ...    tokenizer files (AutoTokenizer.from_pretrained(DIR) works)
  DIR/generation_config.json  optional

Restoring reads each tensor straight into its sharding (targets built from the abstract params),
so no host ever materialises more than its own shards.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from mathjax_sft.model import llama
from mathjax_sft.model.config import ModelConfig
from mathjax_sft.sharding import rules as sharding_rules

PARAMS_SUBDIR = "params"
CONFIG_NAME = "config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja",
                   "generation_config.json", "added_tokens.json")


def is_checkpoint_dir(path: str | Path) -> bool:
  path = Path(path)
  return (path / CONFIG_NAME).is_file() and (path / PARAMS_SUBDIR).is_dir()


def save_params(out_dir: str | Path, params: llama.Params, cfg: ModelConfig) -> Path:
  """Writes params (numpy or jax arrays, stacked layout) and config.json into out_dir."""
  out_dir = Path(out_dir).absolute()
  out_dir.mkdir(parents=True, exist_ok=True)
  target = out_dir / PARAMS_SUBDIR
  if target.exists():
    shutil.rmtree(target)
  params = llama.stack_layers(params)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(target, params)
    ckptr.wait_until_finished()
  if jax.process_index() == 0:
    cfg.save_json(out_dir / CONFIG_NAME)
  return out_dir


def copy_tokenizer_files(src_dir: str | Path, out_dir: str | Path) -> list[str]:
  copied = []
  for name in TOKENIZER_FILES:
    src = Path(src_dir) / name
    if src.is_file():
      shutil.copy2(src, Path(out_dir) / name)
      copied.append(name)
  return copied


def load_config(ckpt_dir: str | Path, **overrides) -> ModelConfig:
  ckpt_dir = Path(ckpt_dir)
  if not is_checkpoint_dir(ckpt_dir):
    raise FileNotFoundError(f"{ckpt_dir} is not a mathjax_sft checkpoint directory "
                            f"(needs {CONFIG_NAME} and {PARAMS_SUBDIR}/); convert one with "
                            "tools/convert_hf_to_flax.py")
  return ModelConfig.load_json(ckpt_dir / CONFIG_NAME, **overrides)


def param_shardings(cfg: ModelConfig, mesh: Mesh | None, rules=sharding_rules.DEFAULT_RULES,
                    stacked: bool = True) -> Any:
  """NamedShardings of every parameter (single-device sharding without a mesh)."""
  specs = llama.param_specs(cfg, stacked)
  if mesh is None:
    single = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda s: single, specs, is_leaf=lambda x: isinstance(x, llama.ParamSpec))
  return sharding_rules.tree_shardings(mesh, llama.param_axes(cfg, stacked),
                                       jax.tree.map(lambda s: s.shape, specs,
                                                    is_leaf=lambda x: isinstance(x, llama.ParamSpec)),
                                       rules)


def load_params(ckpt_dir: str | Path, mesh: Mesh | None = None, rules=sharding_rules.DEFAULT_RULES,
                **config_overrides) -> tuple[llama.Params, ModelConfig]:
  """(stacked params as sharded jax arrays, config). `param_dtype=` casts while restoring."""
  cfg = load_config(ckpt_dir, **config_overrides)
  shardings = param_shardings(cfg, mesh, rules)
  target = llama.abstract_params(cfg, stacked=True, shardings=shardings)
  with ocp.StandardCheckpointer() as ckptr:
    meta = ckptr.metadata(Path(ckpt_dir).absolute() / PARAMS_SUBDIR)
    _check_layout(meta, target, ckpt_dir)
    params = ckptr.restore(Path(ckpt_dir).absolute() / PARAMS_SUBDIR, target)
  return params, cfg


def load_params_numpy(ckpt_dir: str | Path) -> tuple[llama.Params, ModelConfig]:
  """Params as host numpy arrays in their stored dtype (for export)."""
  params, cfg = load_params(ckpt_dir)
  return jax.tree.map(np.asarray, params), cfg


def _check_layout(meta: Any, target: Any, ckpt_dir) -> None:
  tree = getattr(meta, "item_metadata", None) or getattr(meta, "tree", None) or meta
  try:
    stored = {jax.tree_util.keystr(p): tuple(x.shape) for p, x in
              jax.tree_util.tree_flatten_with_path(tree)[0]}
  except Exception:  # metadata format differs across orbax versions: skip the early check
    return
  wanted = {jax.tree_util.keystr(p): tuple(x.shape) for p, x in
            jax.tree_util.tree_flatten_with_path(target)[0]}
  if not stored:
    return
  missing = sorted(set(wanted) - set(stored))
  unexpected = sorted(set(stored) - set(wanted))
  wrong = sorted(k for k in set(wanted) & set(stored) if wanted[k] != stored[k])
  if missing or unexpected or wrong:
    raise ValueError(f"{ckpt_dir}/{PARAMS_SUBDIR} does not match {CONFIG_NAME}: missing {missing}, "
                     f"unexpected {unexpected}, wrong shapes "
                     f"{[(k, stored[k], wanted[k]) for k in wrong]}")
