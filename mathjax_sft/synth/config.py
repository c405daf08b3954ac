"""Settings of one synthesis run: a frozen dataclass (never holds the API key)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

DATASET_FORMATS = ("gsm8k", "math")
MODES = ("online", "batch")


@dataclasses.dataclass(frozen=True)
class SynthConfig:
  """Everything `run` needs. The API key is deliberately not a field: it is read from
  $OPENAI_API_KEY when the client is built, so a config can be logged or saved safely."""

  input_path: Path
  dataset_format: str
  output_dir: Path
  model: str
  base_url: str | None = None
  mode: str = "online"
  per_reference: int = 3
  limit_references: int = 0          # 0 = every reference in the input
  max_concurrency: int = 16          # rows (hence requests) in flight at once, online mode

  # Sampling. Step 1 uses temperatures[k % len] and seed + k for the k-th new question.
  temperatures: tuple[float, ...] = (0.7, 0.9, 1.0)
  verify_temperature: float = 0.0
  answer_temperature: float = 0.0
  seed: int = 0
  max_tokens_question: int = 512
  max_tokens_verify: int = 1536
  max_tokens_answer: int = 1536

  # Transport: rate limits, timeouts, retries.
  requests_per_minute: float = 500.0  # 0 = unlimited
  tokens_per_minute: float = 300_000.0  # 0 = unlimited
  request_timeout: float = 120.0
  max_attempts: int = 6              # HTTP attempts per request (429 / 5xx / timeout / connection)
  backoff_base: float = 1.0
  backoff_max: float = 60.0
  max_retry_after: float = 300.0     # longest server-requested wait we honour
  max_reply_retries: int = 2         # extra samples when a reply is empty / malformed / badly formatted
  max_consecutive_failures: int = 200  # abort (without recording) when the endpoint looks down
  retry_rejected: bool = False       # also ask again rows that failed for a quality reason
                                     # (transport failures are always asked again)

  # Cost estimate, USD per 1M tokens (defaults: GPT-4 Turbo list prices).
  price_prompt_per_million: float = 10.0
  price_completion_per_million: float = 30.0
  batch_discount: float = 0.5

  # Quality filters.
  dedup_ngram: int = 3
  dedup_threshold: float = 0.8
  dedup_against_references: bool = True
  decontam_files: tuple[Path, ...] = ()
  decontam_ngram: int = 13
  decontam_jaccard_ngram: int = 8
  decontam_jaccard_threshold: float = 0.5

  # Batch mode.
  batch_poll_interval: float = 30.0
  batch_max_requests: int = 50_000   # requests per uploaded batch file (API limit 50k)
  batch_max_rounds: int = 3          # re-submissions of requests that errored inside a batch
  batch_completion_window: str = "24h"

  # Output.
  progress: bool = True
  fsync: bool = True
  usage_flush_interval: float = 10.0

  def __post_init__(self):
    if self.dataset_format not in DATASET_FORMATS:
      raise ValueError(f"dataset_format must be one of {DATASET_FORMATS}, got {self.dataset_format!r}")
    if self.mode not in MODES:
      raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
    if not self.model:
      raise ValueError("model must be set")
    positive = ("per_reference", "max_concurrency", "max_attempts", "dedup_ngram", "decontam_ngram",
                "decontam_jaccard_ngram", "batch_max_requests", "batch_max_rounds")
    for name in positive:
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    non_negative = ("limit_references", "requests_per_minute", "tokens_per_minute", "backoff_base",
                    "backoff_max", "max_retry_after", "max_reply_retries", "max_consecutive_failures",
                    "price_prompt_per_million", "price_completion_per_million", "batch_poll_interval")
    for name in non_negative:
      if getattr(self, name) < 0:
        raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
    if not self.temperatures:
      raise ValueError("temperatures must not be empty")
    if self.request_timeout <= 0:
      raise ValueError("request_timeout must be > 0")
    for name in ("dedup_threshold", "decontam_jaccard_threshold", "batch_discount"):
      if not 0.0 < getattr(self, name) <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")

  def to_json(self) -> dict:
    """A JSON-able view (paths as strings), e.g. for the run log."""
    out = dataclasses.asdict(self)
    for key, value in out.items():
      if isinstance(value, Path):
        out[key] = str(value)
      elif isinstance(value, tuple):
        out[key] = [str(v) if isinstance(v, Path) else v for v in value]
    return out
