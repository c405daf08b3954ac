"""Where a sampling run's time and row-steps went (`Engine.stats`)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class EngineStats:
  """Where a run's time and row-steps went (`Engine.stats`)."""
  prefill_s: float = 0.0
  decode_s: float = 0.0
  host_s: float = 0.0           # scheduling and stop-string matching between chunks
  callback_s: float = 0.0       # in `on_problem` (the sampler run grades there)
  chunks: int = 0
  row_steps: int = 0            # rows x decode steps
  decoded: int = 0              # tokens drawn for live samples (first tokens + decode steps)
  useful_tokens: int = 0        # tokens kept in samples, plus each finished sample's stop token
  idle_while_queued: int = 0    # row-steps without a token in chunks whose queue never ran dry
  samples: int = 0              # samples ended
  shrinks: int = 0              # times the tail's live rows moved into a smaller pool
  decode_flops: float = 0.0     # model FLOPs of the decode steps (all rows: `engine.step_flops`)

  @property
  def utilisation(self) -> float:
    """Useful tokens drawn by decode steps (a sample's first token comes from its prompt's
    prefill) per row-step."""
    return (self.useful_tokens - self.samples) / self.row_steps if self.row_steps else 0.0

  def as_dict(self) -> dict:
    out = {k: round(v, 3) if isinstance(v, float) else v
           for k, v in dataclasses.asdict(self).items()}
    out["utilisation"] = round(self.utilisation, 4)
    return out
