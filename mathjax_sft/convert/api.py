"""Whole conversions, as the tools run them: HF dir / GGUF file -> checkpoint dir -> HF dir."""

from __future__ import annotations

import json
import logging
import resource
import time
from pathlib import Path

from tqdm.auto import tqdm

from mathjax_sft.checkpoint import params as ckpt
from mathjax_sft.convert import gguf as gguf_io
from mathjax_sft.convert import hf as hf_io
from mathjax_sft.convert import hf_keys

log = logging.getLogger(__name__)


def peak_rss_gib() -> float:
  """Peak resident memory of this process so far (Linux ru_maxrss is in KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def generation_config(cfg) -> dict:
  eos = list(cfg.eos_token_ids)
  return {"bos_token_id": cfg.bos_token_id, "eos_token_id": eos[0] if len(eos) == 1 else eos,
          "pad_token_id": cfg.pad_token_id, "do_sample": True, "temperature": 0.7, "top_p": 1.0}


def import_checkpoint(source: str | Path, output_dir: str | Path, dtype: str | None = None,
                      show_progress: bool = True) -> dict:
  """HF LLaMA directory or `.gguf` file -> mathjax_sft checkpoint dir. Returns a report dict."""
  start = time.perf_counter()
  source = Path(source)
  output_dir = Path(output_dir)
  if source.suffix == ".gguf":
    tensors = gguf_io.GgufSource(source)
    cfg = tensors.cfg
  else:
    cfg = hf_io.load_hf_config(source)
    tensors = hf_io.SafetensorsSource(source)
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
  return {"source": str(source), "output_dir": str(output_dir), "params": out_cfg.num_params(),
          "seconds": round(time.perf_counter() - start, 2), "peak_rss_gib": round(peak_rss_gib(), 3)}


def export_checkpoint(checkpoint_dir: str | Path, output_dir: str | Path,
                      max_shard_bytes: int = 5 * 2**30, show_progress: bool = True) -> dict:
  """mathjax_sft checkpoint dir -> HF directory transformers/vLLM load unchanged."""
  start = time.perf_counter()
  output_dir = Path(output_dir)
  cfg = ckpt.load_config(checkpoint_dir)
  bar = tqdm(total=len(hf_keys.expected_hf_names(cfg)), desc="export", unit="tensor",
             disable=not show_progress)
  files = hf_io.save_hf_weights(ckpt.iter_params_numpy(checkpoint_dir), cfg, output_dir,
                                max_shard_bytes,
                                progress=lambda _: bar.update())
  bar.close()
  cfg.save_json(output_dir / "config.json")
  ckpt.copy_tokenizer_files(checkpoint_dir, output_dir)
  if not (output_dir / "generation_config.json").exists():
    (output_dir / "generation_config.json").write_text(json.dumps(generation_config(cfg), indent=2))
  return {"checkpoint": str(checkpoint_dir), "output_dir": str(output_dir),
          "files": [f.name for f in files], "seconds": round(time.perf_counter() - start, 2),
          "peak_rss_gib": round(peak_rss_gib(), 3)}
