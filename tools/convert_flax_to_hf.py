"""Export a mathjax_sft checkpoint directory to Hugging Face format (config.json, sharded
safetensors + index, generation_config.json, tokenizer) that transformers and vLLM load as is.

  python tools/convert_flax_to_hf.py --checkpoint=runs/smollm2-135m --output_dir=runs/smollm2-hf
"""

import json


from mathjax_sft import cli, logs
from mathjax_sft.convert import api

_CONFIG = cli.TreeFlags(api.ExportConfig)

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
  c = _CONFIG.value()
  report = api.export_checkpoint(c.checkpoint, c.output_dir,
                                 max_shard_bytes=parse_size(c.max_shard_size),
                                 overwrite=c.overwrite)
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  cli.run(main)
