"""SFT training: `config` (fields + validation), `optimizer` (AdamW, warmup + cosine), `state`
(train state and its shardings), `step` (masked loss, accumulation, jitted donated step),
`distributed` (multi-host start-up and batch feeding), `metrics` (MFU, writers), `model_setup`
(checkpoint or preset -> sharded params), `loop` (`train(config)`), `benchmark` (step timing)."""
