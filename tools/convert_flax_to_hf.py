"""Export a mathjax_sft checkpoint directory to Hugging Face format (config.json, sharded
safetensors + index, generation_config.json, tokenizer) that transformers and vLLM load as is.

  python tools/convert_flax_to_hf.py --checkpoint=runs/smollm2-135m --output_dir=runs/smollm2-hf
"""

import json

from absl import app, flags

from mathjax_sft import logs
from mathjax_sft.convert import api

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "mathjax_sft checkpoint directory "
                                  "(config.json + params/), or a step of a training run "
                                  "(OUT/checkpoints/<step>).", required=True)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "HF directory to write.", required=True)
_MAX_SHARD = flags.DEFINE_string("max_shard_size", "5GB", "Largest safetensors shard, e.g. 5GB, "
                                 "500MB; more than one shard adds model.safetensors.index.json.")

_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace a non-empty --output_dir (only once "
                                "the export is complete).")

_UNITS = {"KB": 2**10, "MB": 2**20, "GB": 2**30, "B": 1}


def parse_size(text: str) -> int:
  text = text.strip().upper()
  for unit, scale in _UNITS.items():
    if text.endswith(unit):
      return int(float(text[: -len(unit)]) * scale)
  return int(text)


def main(argv):
  del argv
  logs.quiet(logs.absl_verbose())
  report = api.export_checkpoint(_CHECKPOINT.value, _OUTPUT_DIR.value,
                                 max_shard_bytes=parse_size(_MAX_SHARD.value),
                                 overwrite=_OVERWRITE.value)
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  app.run(main)
