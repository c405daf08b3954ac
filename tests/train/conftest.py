import pytest

from tests.train import helpers


@pytest.fixture(scope="session")
def byte_tokenizer(tmp_path_factory):
  return helpers.byte_tokenizer_dir(tmp_path_factory.mktemp("byte_tokenizer"))
