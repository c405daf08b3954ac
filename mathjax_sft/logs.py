"""Quiet logs for the tools: our INFO lines, everyone else's (orbax, jax, absl) at WARNING.

`quiet(verbose)` is called by every `tools/*.py` main after flag parsing; `--verbosity=0` (or
higher) given explicitly on the command line brings the libraries' INFO logs back.
"""

from __future__ import annotations

import logging
import os
import warnings

LIBRARY_LOGGERS = ("jax", "jax._src", "orbax", "absl", "etils", "grain", "tensorflow",
                   "transformers", "urllib3", "httpx")


def quiet(verbose: bool = False) -> None:
  """Root and library loggers at WARNING (INFO when `verbose`); mathjax_sft at INFO."""
  level = logging.INFO if verbose else logging.WARNING
  logging.getLogger().setLevel(level)
  for name in LIBRARY_LOGGERS:
    logging.getLogger(name).setLevel(level)
  logging.getLogger("mathjax_sft").setLevel(logging.INFO)
  if not verbose:
    warnings.filterwarnings("ignore", module="orbax")
    # transformers' import-time advice ("PyTorch was not found..."): the runtime has no torch
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def absl_verbose() -> bool:
  """Whether --verbosity was given on the command line (absl flags parsed)."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  return flags.FLAGS["verbosity"].present > 0
