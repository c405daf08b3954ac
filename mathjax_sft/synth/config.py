"""Settings of one synthesis run: a frozen config tree (never holds the API key).

Each field carries its default and its doc; tools/synthesize.py generates its flags from them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mathjax_sft.configtree import setting

DATASET_FORMATS = ("gsm8k", "math")
MODES = ("online", "batch")


@dataclasses.dataclass(frozen=True)
class SynthConfig:
  """Everything `run` needs. The API key is deliberately not a field: it is read from
  $OPENAI_API_KEY when the client is built, so a config can be logged or saved safely."""

  input_path: Path = setting(doc="JSONL file of reference rows (GSM8K: question/answer; MATH: "
                             "problem/solution/type/level/unique_id).")
  dataset_format: str = setting(doc="Format of the references and of the generated rows: gsm8k "
                                "(answer ends with '#### n') or math (solution with \\boxed{}).",
                                choices=DATASET_FORMATS)
  output_dir: Path = setting(doc="Directory for rows.jsonl (finished rows), failures.jsonl (id, "
                             "step, reason), usage.json (requests, tokens, cost, removals) and "
                             "synth.log. Re-use it to resume.")
  model: str = setting(doc="Model name sent with every request, e.g. gpt-4-turbo.")
  base_url: str | None = setting(None, "OpenAI-compatible API base URL, e.g. "
                                 "http://127.0.0.1:8000/v1 (default: the openai client's default, "
                                 "api.openai.com).")
  mode: str = setting("online", "online: chat requests as we go; batch: OpenAI Batch API (upload, "
                      "poll, download per step; half price, up to 24 h per step).", choices=MODES)
  per_reference: int = setting(3, "New questions (rows) per reference: K; the k-th uses "
                               "temperature temperatures[k % len] and its own seed.")
  limit_references: int = setting(0, "Use only the first N distinct references (0 = all).")
  max_concurrency: int = setting(16, "Online mode: rows in flight at once, hence the most requests "
                                 "in flight.")

  # Sampling. Step 1 uses temperatures[k % len] and seed + k for the k-th new question.
  temperatures: tuple[float, ...] = setting((0.7, 0.9, 1.0), "Step-1 sampling temperatures, "
                                            "cycled over k.")
  verify_temperature: float = setting(0.0, "Step-2 (verify) temperature.")
  answer_temperature: float = setting(0.0, "Step-3 (answer) temperature.")
  seed: int = setting(0, "Base of the per-row sampling seeds (seed + hash of row id).")
  max_tokens_question: int = setting(512, "max_tokens of step 1.")
  max_tokens_verify: int = setting(1536, "max_tokens of step 2.")
  max_tokens_answer: int = setting(1536, "max_tokens of step 3.")

  # Transport: rate limits, timeouts, retries.
  requests_per_minute: float | None = setting(None, "Most requests per minute. none: follow the "
                                              "server's x-ratelimit-*-requests headers, and 500 "
                                              "until a reply carries them (or when none does); a "
                                              "number: the same, never above it; 0: no client-side "
                                              "limit (headers ignored).")
  tokens_per_minute: float | None = setting(None, "Most tokens per minute (prompt estimate + "
                                            "max_tokens per request, settled with real usage). "
                                            "none: follow the server's x-ratelimit-*-tokens "
                                            "headers, and 300000 until a reply carries them; a "
                                            "number: the same, never above it; 0: no limit.")
  request_timeout: float = setting(120.0, "Seconds before a request counts as timed out (then "
                                   "retried).")
  max_attempts: int = setting(6, "HTTP attempts per request on 429 / 5xx / timeout / connection "
                              "error / malformed body before the row fails.")
  backoff_base: float = setting(1.0, "Exponential backoff base in seconds (equal jitter); a server "
                                "Retry-After replaces it.")
  backoff_max: float = setting(60.0, "Longest backoff between attempts, seconds.")
  max_retry_after: float = setting(300.0, "Longest server Retry-After honoured, seconds.")
  max_reply_retries: int = setting(2, "Re-samples (new seed) when a reply is empty, unparseable or "
                                   "fails the answer format check.")
  warn_failure_rate: float = setting(0.5, "Warn (one line naming the most common failure reason) "
                                     "when more than this fraction of the rows a run settles fail. "
                                     "A run that writes no row while rows fail exits with status 4.")
  max_consecutive_failures: int = setting(200, "Abort (exit 3) when this many rows in a row fail "
                                          "for transport reasons (0 = never).")
  retry_rejected: bool = setting(False, "Also ask again rows that failed for a quality reason "
                                 "(verify rejected, duplicate, contaminated, answer format); rows "
                                 "that failed for a transport reason are always asked again.")

  # Cost estimate, USD per 1M tokens: the list prices of known models (synth/prices.py).
  price_prompt_per_million: float | None = setting(None, "USD per 1M prompt tokens for the cost "
                                                   "estimate. none: the list price of --model when "
                                                   "it is a known OpenAI model; other models (a "
                                                   "local server) get no dollar figure unless both "
                                                   "prices are given.")
  price_completion_per_million: float | None = setting(None, "USD per 1M completion tokens for the "
                                                       "cost estimate; none: as for the prompt price.")
  batch_discount: float = setting(0.5, "Price factor applied in batch mode.")

  # Quality filters.
  dedup_ngram: int = setting(3, "Word n-gram size for near-duplicate Jaccard.")
  dedup_threshold: float = setting(0.8, "Jaccard at or above which a generated question is a "
                                   "near-duplicate of an earlier one.")
  dedup_against_references: bool = setting(True, "Also drop questions that (near-)copy a reference "
                                           "question.")
  decontam_files: tuple[Path, ...] = setting((), "Benchmark test JSONL files (question or problem "
                                             "field) to decontaminate against; empty: none.")
  decontam_ngram: int = setting(13, "Shared word n-gram length that marks a question contaminated "
                                "(13 as in GPT-3 / Llama).")
  decontam_jaccard_ngram: int = setting(8, "Word n-gram size for the Jaccard contamination rule "
                                        "(catches short questions).")
  decontam_jaccard_threshold: float = setting(0.5, "Jaccard with any test question at or above "
                                              "which a question is contaminated.")

  # Batch mode.
  batch_poll_interval: float = setting(30.0, "Batch mode: seconds between polls.")
  batch_max_requests: int = setting(50_000, "Batch mode: requests per batch file (API limit 50000).")
  batch_max_bytes: int = setting(200_000_000, "Batch mode: bytes per batch file (API limit 200 MB).")
  batch_max_enqueued_tokens: int = setting(90_000, "Batch mode: most estimated prompt tokens in "
                                           "batches submitted and not finished: the model's "
                                           "enqueued-token limit at your tier (90000: GPT-4 at "
                                           "tier 1). A step goes out as many files, each "
                                           "submitted when it fits.")
  batch_max_rounds: int = setting(3, "Batch mode: attempts per step for a row whose request "
                                  "errored or whose reply was unusable.")
  batch_completion_window: str = setting("24h", "Batch mode: completion window sent to the API.")

  # Output.
  progress: bool = setting(True, "Show a progress bar (rows done, failures, tokens).")
  fsync: bool = setting(True, "fsync every group of output lines before their rows count as "
                        "written (crash-safe; leave on).")
  dedup_save_interval: float = setting(30.0, "Seconds between saves of the dedup index "
                                       "(output_dir/dedup_index), which a resumed run loads "
                                       "instead of rebuilding it from every row.")
  usage_flush_interval: float = setting(10.0, "Seconds between usage.json snapshots.")

  def __post_init__(self):
    if self.dataset_format not in DATASET_FORMATS:
      raise ValueError(f"dataset_format must be one of {DATASET_FORMATS}, got {self.dataset_format!r}")
    if self.mode not in MODES:
      raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
    if not self.model:
      raise ValueError("model must be set")
    positive = ("per_reference", "max_concurrency", "max_attempts", "dedup_ngram", "decontam_ngram",
                "decontam_jaccard_ngram", "batch_max_requests", "batch_max_rounds", "batch_max_bytes",
                "batch_max_enqueued_tokens")
    for name in positive:
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    for name in ("requests_per_minute", "tokens_per_minute", "price_prompt_per_million",
                 "price_completion_per_million"):
      if getattr(self, name) is not None and getattr(self, name) < 0:
        raise ValueError(f"{name} must be >= 0 or none, got {getattr(self, name)}")
    non_negative = ("limit_references", "backoff_base",
                    "backoff_max", "max_retry_after", "max_reply_retries", "max_consecutive_failures",
                    "batch_poll_interval",
                    "dedup_save_interval")
    for name in non_negative:
      if getattr(self, name) < 0:
        raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
    if not self.temperatures:
      raise ValueError("temperatures must not be empty")
    if self.request_timeout <= 0:
      raise ValueError("request_timeout must be > 0")
    for name in ("dedup_threshold", "decontam_jaccard_threshold", "batch_discount", "warn_failure_rate"):
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
