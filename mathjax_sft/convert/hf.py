"""HF safetensors checkpoints <-> our parameter pytree, one tensor at a time (no torch).

Import reads `config.json` and the `*.safetensors` shards (through the index file when there is
one) with `safe_open`, one tensor at a time, converts each through `hf_keys.TABLE`, and yields
one parameter at a time (layered parameters stacked), so a caller that writes each parameter out
before asking for the next holds one parameter in memory. Export is the reverse, written shard
by shard with an index file that `transformers` reads.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from mathjax_sft import errors
from mathjax_sft.convert import hf_keys
from mathjax_sft.model import llama, weights
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
    raise errors.MissingInput(f"HF checkpoint directory {hf_dir} does not exist")
  index = hf_dir / INDEX_NAME
  if index.is_file():
    try:
      weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError) as e:
      raise errors.BadInput(f"{index}: not a safetensors index file ({e})") from None
    files = {name: hf_dir / fname for name, fname in weight_map.items()}
    for path in sorted(set(files.values())):
      if not path.is_file():
        raise errors.MissingInput(f"shard {path.name} listed in {index} is missing from {hf_dir}",
                                  file=path)
      stored = set(check_safetensors_file(path))
      for name in sorted(n for n, p in files.items() if p == path and n not in stored):
        raise errors.BadInput(f"{path}: tensor {name} listed in {index.name} is not in the file",
                              file=path)
    return files
  shards = sorted(hf_dir.glob("*.safetensors"))
  if not shards:
    if list(hf_dir.glob("*.bin")) or list(hf_dir.glob("*.pth")):
      raise errors.BadInput(f"{hf_dir} holds only PyTorch pickle weights; convert them to "
                            "safetensors first (pickles are not read: they can run code)")
    raise errors.MissingInput(f"no *.safetensors files in {hf_dir}")
  files: dict[str, Path] = {}
  for path in shards:
    for name in check_safetensors_file(path):
      if name in files:
        raise errors.BadInput(f"tensor {name} appears in both {files[name].name} and {path.name}",
                              file=path)
      files[name] = path
  return files


def check_safetensors_file(path: Path) -> list[str]:
  """The tensor names of a safetensors file, from its header alone; a file too short for what
  its header describes (a download cut short) or with a broken header is an error naming it."""
  size = path.stat().st_size
  with open(path, "rb") as f:
    head = f.read(8)
    n = int.from_bytes(head, "little") if len(head) == 8 else -1
    if n < 0 or n > size - 8:
      raise errors.BadInput(f"{path}: not a safetensors file or truncated: the header needs "
                            f"{max(n, 0) + 8} bytes, the file has {size}", file=path)
    try:
      header = json.loads(f.read(n))
      ends = [int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"]
    except (UnicodeDecodeError, ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
      raise errors.BadInput(f"{path}: corrupt safetensors header ({type(e).__name__}: {e})",
                            file=path) from None
  want = 8 + n + max(ends, default=0)
  if size != want:
    raise errors.BadInput(f"{path}: truncated: {size} bytes, its header describes {want} (an "
                          "incomplete download? fetch the file again)" if size < want else
                          f"{path}: {size - want} bytes after the tensors its header describes "
                          "(corrupt file?)", file=path)
  try:
    with safe_open(str(path), framework="numpy") as f:
      return list(f.keys())
  except Exception as e:   # safetensors' own error type for a corrupt file
    raise errors.BadInput(f"{path}: cannot read safetensors file ({type(e).__name__}: {e})",
                          file=path) from None


class TensorSource:
  """Random access to a checkpoint's tensors by HF name: `names` maps each name to the file that
  holds it (for error messages); `get` reads one tensor; `where` names the whole source."""

  where = "checkpoint"

  def names(self) -> dict[str, str]:
    raise NotImplementedError

  def get(self, name: str) -> np.ndarray:
    raise NotImplementedError


class SafetensorsSource(TensorSource):
  """A HF directory of safetensors shards, read one tensor at a time (memory-mapped)."""

  def __init__(self, hf_dir: str | Path):
    self._files = shard_files(hf_dir)
    self.where = str(hf_dir)

  def names(self) -> dict[str, str]:
    return {n: p.name for n, p in self._files.items()}

  def get(self, name: str) -> np.ndarray:
    path = self._files[name]
    try:
      with safe_open(str(path), framework="numpy") as f:
        if name not in f.keys():
          raise errors.BadInput(f"{path.name}: tensor {name} listed in the index is not in the "
                                "file", file=path)
        return f.get_tensor(name)
    except ValueError:
      raise
    except Exception as e:   # safetensors' own error type for a torn / corrupt file
      raise errors.BadInput(f"{path}: cannot read safetensors file ({type(e).__name__}: {e})",
                            file=path) from None


class DictSource(TensorSource):
  """Tensors already in memory (e.g. a transformers state dict)."""

  def __init__(self, tensors: dict[str, np.ndarray], source: str = "state_dict"):
    self._tensors, self._source = tensors, source
    self.where = source

  def names(self) -> dict[str, str]:
    return {n: self._source for n in self._tensors}

  def get(self, name: str) -> np.ndarray:
    return self._tensors[name]


def check_names(source: TensorSource, cfg: ModelConfig) -> None:
  """Unknown, misplaced or missing tensors are errors naming the tensor and its file."""
  expected = set(hf_keys.expected_hf_names(cfg))
  names = source.names()
  for name, file in names.items():
    found = hf_keys.lookup(name)
    if found is None:
      if hf_keys.IGNORED.match(name):
        continue
      raise errors.BadInput(f"{file}: unknown tensor {name!r} (not part of a LLaMA checkpoint)")
    if name not in expected and not (found[0].param == "lm_head" and cfg.tie_word_embeddings):
      raise errors.BadInput(f"{file}: tensor {name!r} does not fit the config "
                            f"(num_layers={cfg.num_layers})")
  missing = sorted(expected - set(names))
  if missing:
    more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
    raise errors.BadInput(f"{source.where}: checkpoint is missing tensors: "
                          f"{', '.join(missing[:5])}{more}")


def _read(source: TensorSource, name: str, cfg: ModelConfig, dtype: str | None) -> np.ndarray:
  entry, _ = hf_keys.lookup(name)
  array = source.get(name)
  want = entry.hf_shape(cfg)
  if tuple(array.shape) != want:
    raise errors.BadInput(f"{source.names()[name]}: tensor {name!r} has shape "
                          f"{tuple(array.shape)}, config.json implies {want}")
  value = entry.to_ours(array, cfg)
  return value if dtype is None else value.astype(_np_dtype(dtype))


def iter_params(source: TensorSource, cfg: ModelConfig, dtype: str | None = None,
                progress: Callable[[str], None] | None = None
                ) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
  """Yields (param path, array) one parameter at a time (layered ones stacked over layers).

  Peak memory: one stacked parameter plus one HF tensor. `dtype` casts (default: keep).
  """
  check_names(source, cfg)
  names = source.names()
  for entry in hf_keys.TABLE:
    if entry.param == "lm_head" and cfg.tie_word_embeddings:
      if entry.hf in names:   # some tied checkpoints store a copy: it must be the embedding
        if not np.array_equal(source.get(entry.hf), source.get("model.embed_tokens.weight")):
          raise errors.BadInput(f"{names[entry.hf]}: config says tie_word_embeddings=true but "
                                "lm_head.weight differs from model.embed_tokens.weight")
      continue
    if not entry.layered:
      value = _read(source, entry.hf, cfg, dtype)
      if progress:
        progress(entry.hf)
      yield (entry.param,), value
      continue
    stacked = None
    for i in range(cfg.num_layers):
      name = entry.hf.format(i=i)
      value = _read(source, name, cfg, dtype)
      if stacked is None:
        stacked = np.empty((cfg.num_layers,) + value.shape, value.dtype)
      stacked[i] = value
      if progress:
        progress(name)
    yield ("layers", entry.param), stacked


def params_from_source(source: TensorSource, cfg: ModelConfig, dtype: str | None = None
                       ) -> llama.Params:
  """The whole stacked `Weights` (numpy) in memory."""
  out: dict = {"layers": {}}
  for path, value in iter_params(source, cfg, dtype):
    node = out
    for key in path[:-1]:
      node = node[key]
    node[path[-1]] = value
  return weights.from_tree(out)


def load_hf_config(hf_dir: str | Path, **overrides) -> ModelConfig:
  path = Path(hf_dir) / "config.json"
  if not path.is_file():
    if not Path(hf_dir).exists():
      raise errors.MissingInput(f"--hf_path={hf_dir}: no such file or directory")
    raise errors.MissingInput(f"--hf_path={hf_dir} has no config.json (is it a Hugging Face model "
                              "directory?)")
  return ModelConfig.load_json(path, **overrides)


def hf_tensors(params: llama.Params | Iterable[tuple[tuple[str, ...], np.ndarray]],
               cfg: ModelConfig) -> Iterator[tuple[str, np.ndarray]]:
  """Yields (HF name, array), converting one tensor at a time.

  `params` is `Weights` (or their dict tree; either layer layout) or a stream of (param path,
  stacked array) as `checkpoint.params.iter_params_numpy` yields: then one parameter is in
  memory at a time.
  """
  by_param = {e.param: e for e in hf_keys.TABLE}
  if isinstance(params, (dict, weights.Weights)):
    params = weights.to_tree(weights.stack_layers(weights.from_tree(params)))
    params = [(("layers", k), v) for k, v in params["layers"].items()] + [
        ((k,), v) for k, v in params.items() if k != "layers"]
  for path, value in params:
    entry = by_param[path[-1]]
    value = np.asarray(value)
    if entry.layered:
      for i in range(value.shape[0]):
        yield entry.hf.format(i=i), entry.to_hf(value[i], cfg)
    else:
      yield entry.hf, entry.to_hf(value, cfg)


def save_hf_weights(params: llama.Params | Iterable[tuple[tuple[str, ...], np.ndarray]],
                    cfg: ModelConfig, out_dir: str | Path,
                    max_shard_bytes: int = 5 * 2**30,
                    progress: Callable[[str], None] | None = None) -> list[Path]:
  """Writes sharded safetensors (+ index when more than one shard). Peak: one shard plus
  one parameter when `params` is a stream."""
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
