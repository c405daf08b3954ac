"""Test setup: 8 simulated host devices, CPU platform, no network, and one XLA compilation cache
for the session.

The cache is a fresh directory, removed at exit: programs of the same shapes compile once across
the tests and the tools they start (`MATHJAX_COMPILATION_CACHE` for tools/sample.py, JAX's own
variables for the rest), and nothing is read from or written to the user's cache."""

import atexit
import os
import shutil
import tempfile

_XLA_CACHE = tempfile.mkdtemp(prefix="mathjax-tests-xla-cache-")
atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
os.environ.setdefault("MATHJAX_COMPILATION_CACHE", _XLA_CACHE)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _XLA_CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def smollm2_checkpoint(tmp_path_factory):
  """The embedded SmolLM2-135M-Instruct, converted from its GGUF once per test session."""
  from mathjax_sft import paths
  from mathjax_sft.convert import api
  out = tmp_path_factory.mktemp("smollm2-135m")
  api.import_checkpoint(paths.smollm2_gguf(), out, show_progress=False)
  return out


@pytest.fixture(scope="session")
def smollm2_hf():
  """transformers' own reading of the same GGUF (the reference), f32."""
  import transformers
  from mathjax_sft import paths
  gguf = paths.smollm2_gguf()
  return transformers.AutoModelForCausalLM.from_pretrained(
      str(gguf.parent), gguf_file=gguf.name, dtype="float32").eval()


@pytest.fixture(scope="session")
def byte_tokenizer(tmp_path_factory):
  """A real HF fast tokenizer with one token per byte (tiny vocab for tiny models)."""
  from tests.train import helpers
  return helpers.byte_tokenizer_dir(tmp_path_factory.mktemp("byte_tokenizer"))
