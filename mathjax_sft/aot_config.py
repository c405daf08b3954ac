"""Settings of an ahead-of-time check (tools/aot_check.py) besides the train config file: the
target slice, the programs, the sampler batch compiled and the HBM headroom required."""

from __future__ import annotations

import dataclasses

from mathjax_sft.configtree import setting
from mathjax_sft.sample.run import SampleRunConfig

PROGRAMS = ("train", "sample")
# the sampler's own defaults, where the check compiles what tools/sample.py would run
_S = {f.name: f.default for f in dataclasses.fields(SampleRunConfig)
      if f.default is not dataclasses.MISSING}


@dataclasses.dataclass(frozen=True)
class AotCheckConfig:
  """What to compile and the pass criterion; the model, batch and mesh come from the train
  config."""
  topology: str | None = setting(None, "TPU topology (v4:4x4x4, v5e:4x4, v5p:4x4x4, v6e:8x8, ...) "
                                 "or cpu:N for N simulated CPU devices. Default: the train config's "
                                 "mesh.topology.")
  chips_per_host: tuple[int, ...] = setting((), "TPU chips per host as x,y,z where the slice's "
                                            "hosts differ from libtpu's default of 4 chips (a "
                                            "v5e-8 host: 2,4,1); empty: the default.")
  programs: tuple[str, ...] = setting(PROGRAMS, "Which programs: train, sample.", choices=PROGRAMS)
  headroom: float = setting(0.10, "Fraction of HBM that must stay free for a program to pass "
                            "(exit status 1 otherwise).")
  num_samples: int = setting(256, "Sampler: N samples per problem (the paper's Pass@256; "
                             f"tools/sample.py's default is {_S['num_samples']}).")
  max_new_tokens: int = setting(_S["max_new_tokens"], "Sampler: longest sample.")
  prompt_len: int = setting(256, "Sampler: longest prompt of the run in tokens (rounded up to a "
                            "multiple of 16: the prompt pool width).")
  rows: int | None = setting(None, "Sampler: decode rows in the pool (default: as a run plans "
                             "them, the most, up to 256, whose decode fits 90% of the device's "
                             "HBM).")
  prefix_slots: int | None = setting(_S["prefix_slots"], "Sampler: prompts resident at once "
                                     "(default rows // N + 3).")
  chunk_steps: int = setting(_S["chunk_steps"], "Sampler: decode steps per compiled chunk.")
  sample_dtype: str = setting("bfloat16", "Sampler: weights, compute and KV cache dtype (on TPU / "
                              "GPU: bfloat16; tools/sample.py --compute_dtype / --param_dtype).",
                              choices=("float32", "bfloat16"))
  sample_mesh_shape: tuple[int, ...] = setting((1, 1, -1), "Sampler: data,fsdp,tensor mesh over "
                                               "one host's devices (tools/sample.py --mesh_shape); "
                                               "empty: one device. v4 counts each TensorCore as a "
                                               "device.")
  output: str | None = setting(None, "Also append the JSON lines to this file.")
