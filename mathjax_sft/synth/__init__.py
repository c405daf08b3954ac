"""Synthetic SFT data: Xwin-Math style 3-step question generation over an OpenAI-compatible API.

Entry point: `mathjax_sft.synth.run.run(config)` (the CLI is `tools/synthesize.py`). Modules:
`config` (settings), `references` (input rows and their ids), `formats` (GSM8K / MATH specifics and
answer checks), `prompts` (the three templates), `replies` (parsing model output as data), `steps`
(tasks, requests and records of each step), `ratelimit` (RPM / TPM buckets), `retry` (backoff,
Retry-After, error classes), `client` (the openai client under our retry policy), `batch` (Batch
API helper), `outputs` (the output directory, one record per row),
`ngrams` and `filters` (dedup, decontamination), `usage` (tokens, cost, counts), `prices` (list
prices of known models), `outage` (one log line when the endpoint starts and stops failing),
`failure_report` (the most common failure reasons with a reply each), `redact` and
`logs` (the API key never leaves the process), `pipeline` (online mode), `batch_pipeline` (batch
mode), `run` (one run, resumable).
"""
