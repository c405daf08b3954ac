"""Convert a Hugging Face LLaMA checkpoint (safetensors dir) or a GGUF file to a mathjax_sft
checkpoint directory (orbax params + config.json + tokenizer files).

  python tools/convert_hf_to_flax.py --hf_path=/models/Llama-2-7b-hf --output_dir=runs/llama2-7b
  python tools/convert_hf_to_flax.py --gguf=embedded --output_dir=runs/smollm2-135m
"""

import json


from mathjax_sft import cli, errors, logs, paths
from mathjax_sft.convert import api

_CONFIG = cli.TreeFlags(api.ImportConfig)


def main(argv):
  del argv
  logs.quiet(logs.absl_verbose())
  c = _CONFIG.value()
  if bool(c.hf_path) == bool(c.gguf):
    raise errors.UserError("give exactly one of --hf_path or --gguf")
  source = c.hf_path or c.gguf
  if source == "embedded":
    source = paths.smollm2_gguf()
  report = api.import_checkpoint(source, c.output_dir,
                                 dtype=None if c.dtype == "keep" else c.dtype,
                                 overwrite=c.overwrite,
                                 require_tokenizer=not c.allow_missing_tokenizer)
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  cli.run(main)
