"""SFT data: `sources` (JSONL / tfds rows, file:line errors, weights), `templates` (prompt text),
`tokenize` (ids + response-only loss mask, long-row policy), `pipeline` (grain: seeded per-epoch
shuffle, mixing, packing, batches with a saveable position), `dataset` (all of it for a run)."""
