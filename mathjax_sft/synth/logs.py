"""The run log: a file in the output directory, with every handler behind the key redactor."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from mathjax_sft.synth.redact import RedactingFilter, RedactingFormatter, Redactor

LOG_NAME = "synth.log"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Loggers of the HTTP stack log request details at DEBUG/INFO; keep them quiet.
_NOISY = ("openai", "httpx2", "httpcore2", "httpx", "httpcore")


@contextlib.contextmanager
def run_logging(output_dir: Path, redactor: Redactor, level: int = logging.INFO) -> Iterator[Path]:
  """Adds `output_dir/synth.log` to the root logger and a redacting filter to every root handler
  (absl's stderr handler, pytest's capture) for the duration of the block; yields the log path."""
  root = logging.getLogger()
  path = output_dir / LOG_NAME
  file_handler = logging.FileHandler(path, encoding="utf-8")
  file_handler.setFormatter(RedactingFormatter(redactor, _FORMAT))
  redacting = RedactingFilter(redactor)
  file_handler.addFilter(redacting)
  old_levels = {name: logging.getLogger(name).level for name in _NOISY}
  old_root_level = root.level
  for name in _NOISY:
    logging.getLogger(name).setLevel(logging.WARNING)
  synth_logger = logging.getLogger("mathjax_sft.synth")
  old_synth_level = synth_logger.level
  synth_logger.setLevel(level)
  if root.level > level or root.level == logging.NOTSET:
    root.setLevel(level)
  filtered = [h for h in root.handlers]
  for handler in filtered:
    handler.addFilter(redacting)
  root.addHandler(file_handler)
  try:
    yield path
  finally:
    root.removeHandler(file_handler)
    file_handler.close()
    for handler in filtered:
      handler.removeFilter(redacting)
    for name, lvl in old_levels.items():
      logging.getLogger(name).setLevel(lvl)
    synth_logger.setLevel(old_synth_level)
    root.setLevel(old_root_level)
