"""Batch mode: files + batches API on the fake server, retries of unanswered requests, and
crash/resume without submitting a batch twice."""

from __future__ import annotations

import collections
import json

import pytest

from mathjax_sft.synth import batch as batch_module
from mathjax_sft.synth.batch_pipeline import STATE_NAME
from mathjax_sft.synth.formats import check_gsm8k_answer
from mathjax_sft.synth.references import load_references
from mathjax_sft.synth.run import NoRowsWritten, run
from mathjax_sft.synth.steps import make_tasks
from tests.synth.helpers import PLANTED_KEY, fast_config, read_jsonl


class Crash(BaseException):
  """Stands in for a kill: not an Exception, so nothing on the way catches it."""


def outcomes(out) -> list[str]:
  return sorted([r["id"] for r in read_jsonl(out / "rows.jsonl")] + [r["id"] for r in read_jsonl(out / "failures.jsonl")])


def expected(config) -> list[str]:
  return sorted(t.id for t in make_tasks(load_references(config.input_path, "gsm8k"), config))


def test_batch_mode_happy_path_with_line_faults(tmp_path, gsm8k_input, fake_server):
  server = fake_server(rate_500=0.15, rate_429=0.1, rate_empty=0.05, fault_seed=2)
  # The fake draws faults per line in polling order, so which lines fail varies; counts do not matter.
  out = tmp_path / "out"
  config = fast_config(gsm8k_input(5), out, server.base_url, mode="batch", per_reference=2, batch_max_requests=4,
                       batch_max_rounds=10)     # 20% faulty lines: never 10 in a row for one request
  summary = run(config, api_key=PLANTED_KEY)["runs"][-1]
  assert outcomes(out) == expected(config)
  rows = read_jsonl(out / "rows.jsonl")
  assert len(rows) == 10 and all(check_gsm8k_answer(r["answer"]) is None for r in rows)
  assert summary["mode"] == "batch" and summary["request_errors"]      # faults happened and were resubmitted
  assert summary["estimated_cost_usd"] == pytest.approx(
      0.5 * (summary["prompt_tokens"] * 10 + summary["completion_tokens"] * 30) / 1e6, abs=1e-6)
  state = batch_module.BatchState(out / "batch" / STATE_NAME).batches
  assert server.state.counts["batches.create"] == len(state) >= 9      # 10 rows / 4 per file, 3 steps
  assert all(b["consumed"] and b["status"] == "completed" for b in state.values())
  assert sum(r["usage"]["requests"] for r in rows) >= 30


def test_unanswered_requests_of_failed_or_expired_batches_are_resubmitted(tmp_path, gsm8k_input, fake_server):
  server = fake_server(batch_status=["expired", "failed"])
  out = tmp_path / "out"
  config = fast_config(gsm8k_input(3), out, server.base_url, mode="batch", per_reference=2)
  summary = run(config, api_key=PLANTED_KEY)["runs"][-1]
  assert len(read_jsonl(out / "rows.jsonl")) == 6 and summary["rows_failed"] == 0
  # 6 requests: the expired batch answered 3; the retry batch of those 3 failed; the third round worked.
  assert summary["request_errors"] == {"batch_expired": 3, "batch_failed": 3}
  steps = [json.loads(line) for line in (out / "batch" / "steps.jsonl").read_text().splitlines()]
  assert sum(1 for s in steps if s.get("error") == "batch_expired") == 3


def test_batch_rounds_exhausted_records_failure(tmp_path, gsm8k_input, fake_server):
  server = fake_server(batch_status=["failed"] * 2)
  out = tmp_path / "out"
  config = fast_config(gsm8k_input(2), out, server.base_url, mode="batch", per_reference=1, batch_max_rounds=2)
  with pytest.raises(NoRowsWritten, match=r"none of the 2 rows .* most for batch_failed \(2, at step new_question; "
                                          r"e.g. no result in batch"):
    run(config, api_key=PLANTED_KEY)
  failures = read_jsonl(out / "failures.jsonl")
  assert [(f["step"], f["reason"], f["attempts"]) for f in failures] == [("new_question", "batch_failed", 2)] * 2
  assert all(f["usage"]["requests"] == 2 for f in failures)     # one per round
  assert outcomes(out) == expected(config)


@pytest.mark.parametrize("where", ["after_create", "before_state_write"])
def test_crash_then_resume_never_submits_a_batch_twice(tmp_path, gsm8k_input, fake_server, monkeypatch, where):
  server = fake_server()
  out = tmp_path / "out"
  config = fast_config(gsm8k_input(4), out, server.base_url, mode="batch", per_reference=2)
  with monkeypatch.context() as m:
    if where == "after_create":          # batch created and recorded, run dies while polling
      async def crash_wait(self, batch_id):
        raise Crash()
      m.setattr(batch_module.BatchClient, "wait", crash_wait)
    else:                                # batch created on the server, run dies before recording its id
      original = batch_module.BatchState.update
      def crash_update(self, name, **fields):
        if "batch_id" in fields:
          raise Crash()
        original(self, name, **fields)
      m.setattr(batch_module.BatchState, "update", crash_update)
    with pytest.raises(Crash):
      run(config, api_key=PLANTED_KEY)
  assert server.state.counts["batches.create"] == 1 and outcomes(out) == []
  run(config, api_key=PLANTED_KEY)
  state = batch_module.BatchState(out / "batch" / STATE_NAME).batches
  assert server.state.counts["batches.create"] == len(state) == 3     # the first batch was re-attached
  assert server.state.counts["files.create"] == 3
  first = state["00000-new_question"]
  assert first["batch_id"] == next(iter(server.state.batches))
  assert outcomes(out) == expected(config) and len(read_jsonl(out / "rows.jsonl")) == 8


def test_batch_at_scale_many_files_within_the_limits_and_a_kill(tmp_path, gsm8k_input, fake_server, monkeypatch):
  """Each step of 60 rows goes out as many files within small byte and request limits, with at
  most two files' worth of prompt tokens enqueued at once. The fake enforces the limits; its own
  token limit is lower than ours, so it refuses some batches, which go again. The run is killed
  after a few batches and resumed: every row is written once, no batch ran twice."""
  from mathjax_sft.synth.client import estimate_tokens
  from mathjax_sft.synth.formats import GSM8K
  from mathjax_sft.synth.prompts import new_question_messages
  from mathjax_sft.synth.references import load_references

  path = gsm8k_input(30)
  reference = load_references(path, "gsm8k")[0]
  request_tokens = estimate_tokens(new_question_messages(GSM8K, reference, 0), 0)
  line_bytes = len(json.dumps({"custom_id": "new_question:" + "x" * 20, "method": "POST", "url": "/v1/chat/completions",
                               "body": {"model": "gpt-4-turbo", "messages": new_question_messages(GSM8K, reference, 0),
                                        "temperature": 0.7, "max_tokens": 512, "seed": 123456789}}))
  limits = dict(batch_max_requests=3, batch_max_bytes=4 * line_bytes)
  server = fake_server(batch_enqueued_tokens=int(6 * request_tokens), **limits)
  out = tmp_path / "out"
  config = fast_config(path, out, server.base_url, mode="batch", per_reference=2,
                       batch_max_enqueued_tokens=int(7 * request_tokens), **limits)
  waits = {"n": 0}
  original_wait = batch_module.BatchClient.wait

  async def crashing_wait(self, batch_id):
    waits["n"] += 1
    if waits["n"] == 12:
      raise Crash()
    return await original_wait(self, batch_id)

  with monkeypatch.context() as m:
    m.setattr(batch_module.BatchClient, "wait", crashing_wait)
    with pytest.raises(Crash):
      run(config, api_key=PLANTED_KEY)
  assert 0 < len(outcomes(out)) < 60 or outcomes(out) == []
  run(config, api_key=PLANTED_KEY)
  rows = read_jsonl(out / "rows.jsonl")
  assert outcomes(out) == expected(config) and len(rows) == 60 and len({r["id"] for r in rows}) == 60
  stats = server.state
  assert stats.max_batch_lines <= 3 and stats.max_batch_bytes <= 4 * line_bytes
  assert set(stats.batch_rejections) == {"token_limit_exceeded"}          # refused for the cap only...
  assert stats.max_attempted_tokens <= 7 * request_tokens                  # ...never above ours
  state = batch_module.BatchState(out / "batch" / STATE_NAME).batches
  assert len(state) >= 3 * 60 / 3 and all(b.get("consumed") for b in state.values())
  assert sum(len(b.get("refused", [])) for b in state.values()) == sum(stats.batch_rejections.values())
  accepted = collections.Counter(b["obj"]["metadata"]["synth_name"] for b in stats.batches.values()
                                 if b["obj"]["status"] != "failed")
  assert set(accepted) == set(state) and max(accepted.values()) == 1       # no batch ran twice


def test_batch_lines_split_on_newlines_only(tmp_path, fake_server):
  """A reference holding U+2028 (GSM8K train has one) travels inside one JSONL line of a batch
  file: readers split lines on \\n only, never on Unicode line separators."""
  from tests.synth.helpers import gsm8k_reference, write_jsonl
  refs = [gsm8k_reference(i) for i in range(3)]
  refs[1]["question"] = refs[1]["question"].replace(". ", ".\u2028 ", 1)
  path = write_jsonl(tmp_path / "refs.jsonl", refs)
  server = fake_server()
  out = tmp_path / "out"
  config = fast_config(path, out, server.base_url, mode="batch", per_reference=2)
  run(config, api_key=PLANTED_KEY)
  rows = read_jsonl(out / "rows.jsonl")
  assert outcomes(out) == expected(config) and len(rows) == 6
