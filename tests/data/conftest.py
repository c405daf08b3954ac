import pytest

from tests.train import helpers


@pytest.fixture(scope="session")
def byte_tokenizer(tmp_path_factory):
  return helpers.byte_tokenizer_dir(tmp_path_factory.mktemp("byte_tokenizer"))


@pytest.fixture(scope="session")
def smollm2_tokenizer():
  """The real SmolLM2-135M-Instruct tokenizer (from the embedded GGUF)."""
  from mathjax_sft import paths
  from mathjax_sft.data.tokenize import load_tokenizer
  return load_tokenizer(paths.smollm2_gguf())
