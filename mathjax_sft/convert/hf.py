"""HF safetensors checkpoints <-> our parameter pytree, one tensor at a time (no torch).

Import reads `config.json` and every `*.safetensors` shard (through the index file when there is
one) with `safe_open`, converts each tensor through `hf_keys.TABLE` and writes it into its slot of
a preallocated stacked array: peak memory is the result plus one tensor. Export is the reverse,
written shard by shard with an index file that `transformers` reads.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from mathjax_sft.convert import hf_keys
from mathjax_sft.model import llama
from mathjax_sft.model.config import ModelConfig

log = logging.getLogger(__name__)

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


def _np_dtype(name: str) -> np.dtype:
  import ml_dtypes
  return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def shard_files(hf_dir: str | Path) -> dict[str, Path]:
  """tensor name -> the shard file holding it. Errors name the missing or broken file."""
  hf_dir = Path(hf_dir)
  if not hf_dir.is_dir():
    raise FileNotFoundError(f"HF checkpoint directory {hf_dir} does not exist")
  index = hf_dir / INDEX_NAME
  if index.is_file():
    try:
      weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError) as e:
      raise ValueError(f"{index}: not a safetensors index file ({e})") from None
    files = {name: hf_dir / fname for name, fname in weight_map.items()}
    for path in sorted(set(files.values())):
      if not path.is_file():
        raise FileNotFoundError(f"shard {path.name} listed in {index} is missing from {hf_dir}")
    return files
  shards = sorted(hf_dir.glob("*.safetensors"))
  if not shards:
    if list(hf_dir.glob("*.bin")) or list(hf_dir.glob("*.pth")):
      raise ValueError(f"{hf_dir} holds only PyTorch pickle weights; convert them to safetensors "
                       "first (pickles are not read: they can run code)")
    raise FileNotFoundError(f"no *.safetensors files in {hf_dir}")
  files: dict[str, Path] = {}
  for path in shards:
    with safe_open(str(path), framework="numpy") as f:
      for name in f.keys():
        if name in files:
          raise ValueError(f"tensor {name} appears in both {files[name].name} and {path.name}")
        files[name] = path
  return files


def iter_safetensors(hf_dir: str | Path) -> Iterator[tuple[str, Path, np.ndarray]]:
  """Yields (name, file, array) one tensor at a time, shard by shard."""
  files = shard_files(hf_dir)
  by_file: dict[Path, list[str]] = {}
  for name, path in files.items():
    by_file.setdefault(path, []).append(name)
  for path, names in by_file.items():
    try:
      with safe_open(str(path), framework="numpy") as f:
        present = set(f.keys())
        for name in names:
          if name not in present:
            raise ValueError(f"{path.name}: tensor {name} listed in the index is not in the file")
          yield name, path, f.get_tensor(name)
    except OSError as e:
      raise ValueError(f"{path}: cannot read safetensors file ({e})") from None


def params_from_tensors(tensors: Iterable[tuple[str, str | Path, np.ndarray]], cfg: ModelConfig,
                        dtype: str | None = None, progress: Callable[[str], None] | None = None
                        ) -> llama.Params:
  """Builds the stacked param pytree (numpy) from a stream of (HF name, source file, array).

  Unknown, duplicate, missing or misshapen tensors are errors naming the tensor and its file.
  `dtype` converts every tensor (default: keep the source dtype).
  """
  specs = llama.param_specs(cfg, stacked=True)
  out: dict = {"layers": {}}
  filled: set[str] = set()
  expected = set(hf_keys.expected_hf_names(cfg))
  tied_head = None
  for name, source, array in tensors:
    source = Path(source).name
    found = hf_keys.lookup(name)
    if found is None:
      if hf_keys.IGNORED.match(name):
        continue
      raise ValueError(f"{source}: unknown tensor {name!r} (not part of a {hf_keys.__name__} LLaMA)")
    entry, layer = found
    if entry.param == "lm_head" and cfg.tie_word_embeddings:
      tied_head = (source, array)   # some tied checkpoints store a copy; checked below
      continue
    if name not in expected:
      raise ValueError(f"{source}: tensor {name!r} does not fit the config "
                       f"(num_layers={cfg.num_layers})")
    if name in filled:
      raise ValueError(f"{source}: duplicate tensor {name!r}")
    want = entry.hf_shape(cfg)
    if tuple(array.shape) != want:
      raise ValueError(f"{source}: tensor {name!r} has shape {tuple(array.shape)}, "
                       f"config.json implies {want}")
    value = entry.to_ours(array, cfg)
    if dtype is not None:
      value = value.astype(_np_dtype(dtype))
    if entry.layered:
      group = out["layers"]
      if entry.param not in group:
        group[entry.param] = np.empty(specs["layers"][entry.param].shape, value.dtype)
      group[entry.param][layer] = value
    else:
      out[entry.param] = value
    filled.add(name)
    if progress:
      progress(name)
  missing = sorted(expected - filled)
  if missing:
    more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
    raise ValueError(f"checkpoint is missing tensors: {', '.join(missing[:5])}{more}")
  if tied_head is not None and not np.array_equal(tied_head[1], out["embed"]):
    raise ValueError(f"{tied_head[0]}: config says tie_word_embeddings=true but lm_head.weight "
                     "differs from model.embed_tokens.weight")
  return out


def load_hf_config(hf_dir: str | Path, **overrides) -> ModelConfig:
  path = Path(hf_dir) / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"{hf_dir} has no config.json (is it a Hugging Face model directory?)")
  return ModelConfig.load_json(path, **overrides)


def load_hf(hf_dir: str | Path, dtype: str | None = None,
            progress: Callable[[str], None] | None = None) -> tuple[llama.Params, ModelConfig]:
  """Reads a HF LLaMA directory into (numpy param pytree, config)."""
  cfg = load_hf_config(hf_dir)
  params = params_from_tensors(iter_safetensors(hf_dir), cfg, dtype, progress)
  if dtype is not None:
    cfg = cfg.replace(param_dtype=dtype)
  return params, cfg


def hf_tensors(params: llama.Params, cfg: ModelConfig) -> Iterator[tuple[str, np.ndarray]]:
  """Yields (HF name, array) in model order, converting one tensor at a time."""
  by_param = {e.param: e for e in hf_keys.TABLE}
  layers = params["layers"]
  stacked = isinstance(layers, dict)
  for name in hf_keys.expected_hf_names(cfg):
    entry, layer = hf_keys.lookup(name)
    if entry.layered:
      value = layers[entry.param][layer] if stacked else layers[layer][entry.param]
    else:
      value = params[entry.param]
    yield name, by_param[entry.param].to_hf(np.asarray(value), cfg)


def save_hf_weights(params: llama.Params, cfg: ModelConfig, out_dir: str | Path,
                    max_shard_bytes: int = 5 * 2**30,
                    progress: Callable[[str], None] | None = None) -> list[Path]:
  """Writes sharded safetensors (+ index when more than one shard). Peak: one shard."""
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  current: dict[str, np.ndarray] = {}
  size = total_size = 0
  names_per_shard: list[list[str]] = []
  written: list[Path] = []

  def flush():
    nonlocal current, size
    if current:
      tmp = out_dir / f"shard-{len(written) + 1:05d}.tmp"
      save_file(current, str(tmp), metadata={"format": "pt"})
      written.append(tmp)
      names_per_shard.append(list(current))
      current, size = {}, 0

  for name, value in hf_tensors(params, cfg):
    if current and size + value.nbytes > max_shard_bytes:
      flush()
    current[name] = value
    size += value.nbytes
    total_size += value.nbytes
    if progress:
      progress(name)
  flush()
  n = len(written)
  final_paths = []
  weight_map = {}
  for i, (tmp, names) in enumerate(zip(written, names_per_shard)):
    fname = SINGLE_NAME if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
    path = out_dir / fname
    tmp.replace(path)
    final_paths.append(path)
    weight_map.update({name: fname for name in names})
  if n > 1:
    index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
  return final_paths
