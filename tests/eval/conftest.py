"""Shared fixtures for the evaluation tests."""

from __future__ import annotations

import pytest

from mathjax_sft.eval.grade import Grader


@pytest.fixture(scope="session")
def grader():
  """One math-verify grader shared by the tests (worker start-up costs about a second)."""
  with Grader(num_workers=2, timeout_s=4) as g:
    yield g
