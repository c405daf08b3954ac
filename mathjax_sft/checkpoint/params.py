"""The model checkpoint directory: orbax params + HF-style config.json + tokenizer files.

  DIR/config.json             model config (HF LLaMA format, readable by transformers)
  DIR/params/<name>/          one orbax checkpoint per parameter (stacked layout), e.g.
                              params/embed, params/layers.wq; params/index.json lists them
  DIR/tokenizer*.json, ...    tokenizer files (AutoTokenizer.from_pretrained(DIR) works)
  DIR/generation_config.json  optional

A training step (`OUT/checkpoints/<step>/`, see checkpoint.train_state) is a model too: every
function here that takes a checkpoint directory also takes a step directory. Its config comes
from the step's `meta` item, its parameters from the `params` of its train state (read alone:
the optimizer state is never loaded), its tokenizer and prompt format from `OUT/model_files/`,
which training writes when it starts (`save_model_files`).

Restoring reads each tensor straight into its sharding (targets built from the abstract params),
so no host ever materialises more than its own shards. One orbax item per parameter lets
conversion write each parameter as soon as it is built (orbax holds a second copy of whatever it
is saving, so saving the whole tree at once would double peak memory).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from mathjax_sft import errors
from mathjax_sft.model import llama, weights
from mathjax_sft.model.config import ModelConfig
from mathjax_sft.sharding import rules as sharding_rules

PARAMS_SUBDIR = "params"
CONFIG_NAME = "config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja",
                   "generation_config.json", "added_tokens.json",
                   "prompt_format.json")   # data.templates.PROMPT_FORMAT_FILE: travels with them


MODEL_FILES_SUBDIR = "model_files"    # OUT/model_files/: a training run's tokenizer + format
STEP_ITEMS = ("state", "meta")         # the items of a train-state step (train_state.py)


def _step_meta_file(step_dir: Path) -> Path:
  """The JSON of a step's `meta` item (model config, step, metrics)."""
  return step_dir / "meta" / "metadata"


def is_checkpoint_dir(path: str | Path) -> bool:
  path = Path(path)
  return (path / CONFIG_NAME).is_file() and (path / PARAMS_SUBDIR).is_dir()


def is_train_step_dir(path: str | Path) -> bool:
  """`OUT/checkpoints/<step>/` of a training run (orbax items state/ and meta/)."""
  path = Path(path)
  return all((path / item).is_dir() for item in STEP_ITEMS)


def files_dir(path: str | Path) -> Path:
  """Where a model's tokenizer files and prompt_format.json are: the checkpoint dir itself, or
  for a training step its run's `model_files/`."""
  path = Path(path)
  if is_train_step_dir(path):
    return path.parent.parent / MODEL_FILES_SUBDIR
  return path


def save_model_files(run_dir: str | Path, tokenizer: Any) -> Path:
  """A training run's tokenizer files (`OUT/model_files/`), so that any step of the run can be
  sampled or exported; written into a temporary directory and renamed."""
  final = Path(run_dir) / MODEL_FILES_SUBDIR
  tmp = final.with_name(final.name + ".tmp")
  shutil.rmtree(tmp, ignore_errors=True)
  tokenizer.save_pretrained(str(tmp))
  shutil.rmtree(final, ignore_errors=True)
  tmp.rename(final)
  return final


def _step_meta(step_dir: Path) -> dict:
  path = _step_meta_file(step_dir)
  try:
    return json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise errors.MissingInput(f"{step_dir} is a training step without a readable {path.name} "
                              f"item ({e}); is the step complete?") from None


INDEX_NAME = "index.json"

TOKENIZER_REQUIRED = ("tokenizer.json", "tokenizer.model", "vocab.json")   # any one of them


class _NotADirectory(errors.UserError, NotADirectoryError):
  """A file where a directory is wanted."""


def check_model_dir(path: str | Path, flag: str = "--checkpoint", tokenizer: bool = True) -> Path:
  """A model checkpoint directory a sampler can use, or an error that names what is wrong (a
  missing path, a Hugging Face directory, no tokenizer) before anything heavy is loaded."""
  path = Path(path)
  if not path.exists():
    raise errors.MissingInput(f"{flag}={path}: no such directory", flag=flag)
  if not path.is_dir():
    raise _NotADirectory(f"{flag}={path} is a file, not a checkpoint directory", flag=flag)
  if is_train_step_dir(path):
    if "model_config" not in _step_meta(path):
      raise errors.BadInput(f"{flag}={path}: the step's meta item has no model_config")
    tok_dir = files_dir(path)
    if tokenizer and not any((tok_dir / name).is_file() for name in TOKENIZER_REQUIRED):
      raise errors.MissingInput(f"{flag}={path} is a training step, but its run has no tokenizer "
                                f"in {tok_dir} (written by training since it was added); copy "
                                "the tokenizer files of the model it was trained from there")
    return path
  if not is_checkpoint_dir(path):
    hf = (path / CONFIG_NAME).is_file() and (any(path.glob("*.safetensors"))
                                              or any(path.glob("*.bin")))
    hint = ("it looks like a Hugging Face model directory: convert it first with "
            f"tools/convert_hf_to_flax.py --hf_path={path} --output_dir=DIR" if hf else
            f"a checkpoint directory holds {CONFIG_NAME}, {PARAMS_SUBDIR}/ and tokenizer files")
    raise errors.MissingInput(f"{flag}={path} is not a mathjax_sft checkpoint directory; {hint}",
                              flag=flag)
  if tokenizer and not any((path / name).is_file() for name in TOKENIZER_REQUIRED):
    raise errors.MissingInput(f"{flag}={path} has no tokenizer (none of "
                              f"{', '.join(TOKENIZER_REQUIRED)}); copy the tokenizer files of the "
                              "model it came from into it", flag=flag)
  return path


def fingerprint(path: str | Path) -> str:
  """A digest of a checkpoint's config and parameter metadata (every file under params/ of at
  most 1 MiB: orbax's manifests and metadata change with every save; the tensor data is not
  read)."""
  import hashlib
  path = Path(path)
  if is_train_step_dir(path):   # its meta (config, step, metrics) and the state's metadata
    digest = hashlib.sha256(_step_meta_file(path).read_bytes())
    tree = path / "state"
  else:
    digest = hashlib.sha256((path / CONFIG_NAME).read_bytes())
    tree = path / PARAMS_SUBDIR
  for f in sorted(tree.rglob("*")):
    if f.is_file() and f.stat().st_size <= 2 ** 20:
      digest.update(str(f.relative_to(path)).encode() + b"\0" + f.read_bytes())
  return digest.hexdigest()[:16]


def _leaf_name(path: tuple[str, ...]) -> str:
  return ".".join(path)


def save_param_stream(out_dir: str | Path, stream: Iterable[tuple[tuple[str, ...], Any]],
                      cfg: ModelConfig) -> Path:
  """Writes (param path, array) pairs one at a time, then config.json. Peak: one parameter."""
  out_dir = Path(out_dir).absolute()
  out_dir.mkdir(parents=True, exist_ok=True)
  target = out_dir / PARAMS_SUBDIR
  if target.exists():
    shutil.rmtree(target)
  target.mkdir()
  index = {}
  ckptr = ocp.Checkpointer(ocp.StandardCheckpointHandler())
  for path, value in stream:
    name = _leaf_name(path)
    ckptr.save(target / name, args=ocp.args.StandardSave({"value": value}))
    index[name] = {"shape": list(value.shape), "dtype": str(value.dtype)}
    del value
  if jax.process_index() == 0:
    (target / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    cfg.save_json(out_dir / CONFIG_NAME)
  return out_dir


def save_params(out_dir: str | Path, params: llama.Params | dict, cfg: ModelConfig) -> Path:
  """Writes params (`Weights` or their dict tree; numpy or jax arrays, either layer layout) and
  config.json into out_dir."""
  tree = weights.to_tree(weights.stack_layers(weights.from_tree(params)))
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  stream = ((tuple(k.key for k in path), value) for path, value in leaves)
  return save_param_stream(out_dir, stream, cfg)


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
  if is_train_step_dir(ckpt_dir):
    return ModelConfig.from_hf(_step_meta(ckpt_dir)["model_config"],
                               source=str(ckpt_dir / "meta"), **overrides)
  if not is_checkpoint_dir(ckpt_dir):
    raise errors.MissingInput(f"{ckpt_dir} is not a mathjax_sft checkpoint directory "
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
  """(stacked `Weights` of sharded jax arrays, config). `param_dtype=` casts while restoring."""
  cfg = load_config(ckpt_dir, **config_overrides)
  if is_train_step_dir(ckpt_dir):
    stacked = _step_layers_stacked(Path(ckpt_dir))
    target = llama.abstract_params(cfg, stacked=stacked,
                                   shardings=param_shardings(cfg, mesh, rules, stacked))
    params = weights.from_tree(_restore_step_params(Path(ckpt_dir), weights.to_tree(target)))
    return (params if stacked else _stack_on_device(params)), cfg
  root = Path(ckpt_dir).absolute() / PARAMS_SUBDIR
  shardings = param_shardings(cfg, mesh, rules)
  target = weights.to_tree(llama.abstract_params(cfg, stacked=True, shardings=shardings))
  wanted = {_leaf_name(tuple(k.key for k in path)): (path, leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(target)[0]}
  index_path = root / INDEX_NAME
  if not index_path.is_file():
    raise errors.MissingInput(f"{index_path} is missing (incomplete checkpoint?)",
                              file=index_path)
  stored = json.loads(index_path.read_text())
  missing, unexpected = sorted(set(wanted) - set(stored)), sorted(set(stored) - set(wanted))
  wrong = sorted(k for k in set(wanted) & set(stored)
                 if tuple(stored[k]["shape"]) != tuple(wanted[k][1].shape))
  if missing or unexpected or wrong:
    raise errors.BadInput(f"{root} does not match {CONFIG_NAME}: missing {missing}, unexpected "
                          f"{unexpected}, wrong shapes "
                          f"{[(k, stored[k]['shape'], wanted[k][1].shape) for k in wrong]}")
  ckptr = ocp.Checkpointer(ocp.StandardCheckpointHandler())
  restored = {}
  for name, (path, leaf) in wanted.items():
    restored[name] = _restore_item(ckptr, root / name, ocp.args.StandardRestore({"value": leaf}))
  treedef = jax.tree_util.tree_structure(target)
  return weights.from_tree(treedef.unflatten([restored[n] for n in wanted])), cfg


def _restore_item(ckptr: ocp.Checkpointer, path: Path, args: Any) -> Any:
  """One parameter's orbax item; a missing or unreadable one is an error naming it."""
  if not path.is_dir():
    raise errors.MissingInput(f"{path}: parameter item missing (incomplete checkpoint?)",
                              file=path)
  try:
    return ckptr.restore(path, args=args)["value"]
  except Exception as e:   # orbax wraps tensorstore's read errors in a bare Exception
    cause = e if isinstance(e, (OSError, ValueError)) else e.__cause__
    if not isinstance(cause, (OSError, ValueError)):
      raise
    raise errors.BadInput(f"{path}: cannot read the orbax item, truncated or corrupt? "
                          f"({type(cause).__name__}: {' '.join(str(cause).split())[:300]})",
                          file=path) from e


def iter_params_numpy(ckpt_dir: str | Path) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
  """(param path, host array in its stored dtype), one parameter at a time (for export).

  Read straight into host memory (a numpy restore target: tensorstore -> numpy), never onto a
  device: a stacked 70B `w_gate` (~37.6 GB in bf16) is larger than one accelerator's memory.
  Peak host memory is the largest parameter (a training step with per-layer params: one
  parameter of every layer)."""
  if is_train_step_dir(ckpt_dir):
    yield from _iter_step_params_numpy(Path(ckpt_dir))
    return
  root = Path(ckpt_dir).absolute() / PARAMS_SUBDIR
  index = json.loads((root / INDEX_NAME).read_text())
  ckptr = ocp.Checkpointer(ocp.StandardCheckpointHandler())
  for name, meta in index.items():
    target = {"value": np.empty(tuple(meta["shape"]), _host_dtype(meta["dtype"]))}
    value = _restore_item(ckptr, root / name, ocp.args.StandardRestore(target))
    if not isinstance(value, np.ndarray):
      raise TypeError(f"{root / name}: restored as {type(value).__name__}, not a host array")
    yield tuple(name.split(".")), value


def _host_dtype(name: str) -> np.dtype:
  return np.dtype(jnp.dtype(name))   # bfloat16 included (ml_dtypes)


# ---- a training step as a model --------------------------------------------------------------

def _step_params_metadata(step_dir: Path) -> dict:
  """The stored tree of the train state's `params` (shapes and dtypes, nothing read)."""
  meta = ocp.PyTreeCheckpointer().metadata(step_dir.absolute() / "state")
  tree = getattr(meta, "item_metadata", meta)
  tree = getattr(tree, "tree", tree)
  if not isinstance(tree, dict) or "params" not in tree:
    raise ValueError(f"{step_dir}/state holds no params (keys: {list(tree)})")
  return tree["params"]


def _per_layer(layers: Any) -> list | None:
  """A stored `layers` subtree as a list of per-layer dicts, or None when it is stacked."""
  return list(layers) if isinstance(layers, (list, tuple)) else None


def _step_layers_stacked(step_dir: Path) -> bool:
  """Whether the run kept its layers stacked (scan_layers) or as one dict per layer."""
  return _per_layer(_step_params_metadata(step_dir)["layers"]) is None


def _restore_step_params(step_dir: Path, target: Any) -> Any:
  """Only the `params` of a train state, into `target`'s shapes, dtypes and shardings (numpy
  targets: host memory); the optimizer state is not read."""
  restore_args = jax.tree.map(
      lambda t: (ocp.RestoreArgs(restore_type=np.ndarray, dtype=t.dtype)
                 if isinstance(t, np.ndarray) else
                 ocp.ArrayRestoreArgs(sharding=t.sharding, global_shape=t.shape, dtype=t.dtype)),
      target)
  return ocp.PyTreeCheckpointer().restore(
      step_dir.absolute() / "state",
      args=ocp.args.PyTreeRestore(item={"params": target}, restore_args={"params": restore_args},
                                  partial_restore=True))["params"]


@jax.jit
def _stack_on_device(params: llama.Params) -> llama.Params:
  return llama.stack_layers(params)


def _iter_step_params_numpy(step_dir: Path) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
  stored = _step_params_metadata(step_dir)
  host = lambda m: np.empty(tuple(m.shape), _host_dtype(str(m.dtype)))
  per_layer = _per_layer(stored["layers"])
  for name in sorted(stored):
    if name != "layers":
      yield (name,), _restore_step_params(step_dir, {name: host(stored[name])})[name]
  for name in sorted(stored["layers"] if per_layer is None else per_layer[0]):
    if per_layer is None:
      value = _restore_step_params(step_dir, {"layers": {name: host(stored["layers"][name])}})
      yield ("layers", name), value["layers"][name]
    else:
      value = _restore_step_params(step_dir, {"layers": [{name: host(m[name])} for m in per_layer]})
      yield ("layers", name), np.stack([x[name] for x in value["layers"]])
