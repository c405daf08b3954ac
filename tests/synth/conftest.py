"""Fixtures for the synthesis tests: a loopback fake OpenAI server and small inputs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mathjax_sft.synth.fake_server import FakeConfig, FakeServer
from tests.synth.helpers import PLANTED_KEY, gsm8k_reference, write_jsonl


@pytest.fixture
def gsm8k_input(tmp_path: Path) -> Callable[[int], Path]:
  """gsm8k_input(n) -> a JSONL file of n invented GSM8K references."""
  def make(n: int) -> Path:
    return write_jsonl(tmp_path / f"refs_{n}.jsonl", [gsm8k_reference(i) for i in range(n)])
  return make


@pytest.fixture
def fake_server() -> Iterator[Callable[..., FakeServer]]:
  """fake_server(**FakeConfig fields) -> a started server, closed after the test."""
  servers: list[FakeServer] = []

  def start(**config: Any) -> FakeServer:
    config.setdefault("api_key", PLANTED_KEY)
    server = FakeServer(FakeConfig(**config)).start()
    servers.append(server)
    return server

  yield start
  for server in servers:
    server.close()
