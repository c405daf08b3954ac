"""Online mode end to end: the real openai client against the loopback fake server."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path

import pytest

from mathjax_sft.synth.client import EndpointUnreachable, FatalAPIError
from mathjax_sft.synth.formats import check_gsm8k_answer, check_math_answer
from mathjax_sft.synth.pipeline import RunAborted
from mathjax_sft.synth.references import load_references
from mathjax_sft.synth.run import NoRowsWritten, run
from mathjax_sft.synth.steps import make_tasks
from mathjax_sft.synth import fake_server as fake_teacher
from tests.synth.helpers import PLANTED_KEY, fast_config, gsm8k_reference, read_jsonl, write_jsonl


def outcome_ids(out: Path) -> list[str]:
  return [r["id"] for r in read_jsonl(out / "rows.jsonl")] + [r["id"] for r in read_jsonl(out / "failures.jsonl")]


def expected_ids(config) -> list[str]:
  return sorted(t.id for t in make_tasks(load_references(config.input_path, config.dataset_format), config))


def implied_answer(question: str) -> int:
  """The number a GSM8K question of the fake teacher asks for, worked out from the template that
  wrote it (exactly one template must match)."""
  found = [fn(*map(int, m.groups())) for _, pattern, fn in fake_teacher.GSM8K_TEMPLATES
           if (m := re.search(pattern, question))]
  assert len(found) == 1, question
  return found[0]


def test_happy_path_gsm8k(tmp_path, gsm8k_input, fake_server):
  server = fake_server()
  config = fast_config(gsm8k_input(3), tmp_path / "out", server.base_url, per_reference=2)
  snapshot = run(config, api_key=PLANTED_KEY)
  rows = read_jsonl(tmp_path / "out" / "rows.jsonl")
  assert sorted(r["id"] for r in rows) == expected_ids(config)
  assert not (tmp_path / "out" / "failures.jsonl").exists() or not read_jsonl(tmp_path / "out" / "failures.jsonl")
  refs = {r.id: r for r in load_references(config.input_path, "gsm8k")}
  for row in rows:
    assert check_gsm8k_answer(row["answer"]) is None and row["answer"].splitlines()[-1].startswith("#### ")
    assert row["id"] == f"{row['reference_id']}-{row['k']}" and row["reference_id"] in refs
    assert row["question"] != refs[row["reference_id"]].question
    assert set(row["steps"]) == {"new_question", "verify", "answer"} and row["steps"]["verify"]["verdict"] == "VALID"
    assert row["model"] == "gpt-4-turbo-fake" and row["usage"]["requests"] == 3 and row["usage"]["prompt_tokens"] > 0
    assert row["final_answer"] == row["answer"].rsplit("#### ", 1)[1]
    assert row["question"] in row["steps"]["new_question"]["output"]
    # The fake answers correctly: the stored answer is the arithmetic of the stored question.
    assert row["final_answer"] == str(implied_answer(row["question"]))
  usage = json.loads((tmp_path / "out" / "usage.json").read_text())
  assert usage == json.loads(json.dumps(snapshot))
  run_ = usage["runs"][-1]
  assert run_["finished"] and run_["rows_written"] == 6 and run_["requests"] == 18 and run_["requests_ok"] == 18
  assert run_["prompt_tokens"] == sum(r["usage"]["prompt_tokens"] for r in rows)
  assert run_["estimated_cost_usd"] == pytest.approx(
      (run_["prompt_tokens"] * 10 + run_["completion_tokens"] * 30) / 1e6, abs=1e-6)
  assert (tmp_path / "out" / "synth.log").read_text().count("run finished") == 1


def test_math_format(tmp_path, fake_server):
  server = fake_server()
  path = write_jsonl(tmp_path / "math.jsonl", [
      {"problem": f"Find the value of $x$ such that $x + {i} = {2 * i + 3}$.", "solution": f"$x=\\boxed{{{i + 3}}}$",
       "level": "Level 1", "type": "Prealgebra", "unique_id": f"train/prealgebra/{i}.json"} for i in range(2)])
  config = fast_config(path, tmp_path / "out", server.base_url, dataset_format="math", per_reference=2)
  run(config, api_key=PLANTED_KEY)
  rows = read_jsonl(tmp_path / "out" / "rows.jsonl")
  assert sorted(r["id"] for r in rows) == ["train/prealgebra/0.json-0", "train/prealgebra/0.json-1",
                                           "train/prealgebra/1.json-0", "train/prealgebra/1.json-1"]
  for row in rows:
    assert check_math_answer(row["solution"]) is None and "\\boxed{" in row["solution"]
    assert row["problem"].startswith("What is the value of") and row["type"] == "Prealgebra"


def test_429_retry_after_is_honoured(tmp_path, gsm8k_input, fake_server):
  server = fake_server(script=["429"], retry_after="1")
  config = fast_config(gsm8k_input(1), tmp_path / "out", server.base_url, per_reference=1, max_concurrency=1)
  summary = run(config, api_key=PLANTED_KEY)["runs"][-1]
  assert summary["rows_written"] == 1 and summary["request_errors"] == {"rate_limited": 1}
  (t429, _, f429), (t_retry, _, f_retry) = server.state.log[:2]
  assert (f429, f_retry) == ("429", "ok")
  assert t_retry - t429 >= 1.0          # waited for Retry-After, not the 10 ms backoff


def test_500_hang_empty_and_malformed_are_retried(tmp_path, gsm8k_input, fake_server):
  server = fake_server(script=["500", "500", "hang", "empty", "malformed", "malformed", "malformed"],
                       hang_seconds=10)
  config = fast_config(gsm8k_input(2), tmp_path / "out", server.base_url, per_reference=1, max_concurrency=1,
                       request_timeout=0.5)
  summary = run(config, api_key=PLANTED_KEY)["runs"][-1]
  assert summary["rows_written"] == 2 and summary["rows_failed"] == 0
  # Every attempt (failed ones, re-samples) is counted for its row.
  rows = read_jsonl(tmp_path / "out" / "rows.jsonl")
  assert sum(r["usage"]["requests"] for r in rows) == summary["requests"] == 6 + 7
  # The hung request counts as a timeout (had it been awaited, its late 504 would count as a
  # server error) and the retry went out long before the hang would have ended.
  assert summary["request_errors"] == {"server_error": 2, "timeout": 1, "malformed_response": 2}
  log = server.state.log
  hang = [fault for _, _, fault in log].index("hang")
  assert log[hang + 1][0] - log[hang][0] < 10
  assert summary["bad_replies"] == {"empty_content": 1, "malformed_reply": 1}


def test_persistent_faults_become_recorded_failures(tmp_path, fake_server):
  poisoned = gsm8k_reference(1)
  poisoned["question"] = poisoned["question"].replace("Reference number", "POISON reference number")
  rejected = gsm8k_reference(2)
  path = write_jsonl(tmp_path / "refs.jsonl", [gsm8k_reference(0), poisoned, rejected])
  server = fake_server(poison=["POISON"], reject=["Reference number 2"], contaminate={"Reference number 2": (
      "A question that mentions Reference number 2 and asks how many stamps Lena has left at the end?")})
  config = fast_config(path, tmp_path / "out", server.base_url, per_reference=2, max_reply_retries=1)
  summary = run(config, api_key=PLANTED_KEY)["runs"][-1]
  failures = read_jsonl(tmp_path / "out" / "failures.jsonl")
  by_reason = {}
  for f in failures:
    by_reason.setdefault(f["reason"], []).append(f)
  assert {k: len(v) for k, v in by_reason.items()} == {"empty_content": 2, "verify_rejected": 2}
  assert all(f["step"] == "new_question" for f in by_reason["empty_content"])
  assert all(f["step"] == "verify" and "missing information" in f["detail"] for f in by_reason["verify_rejected"])
  assert summary["failures_by_reason"] == {"empty_content": 2, "verify_rejected": 2}
  assert summary["removed_by_filter"]["verify_rejected"] == 2 and summary["rows_written"] == 2
  assert sorted(outcome_ids(tmp_path / "out")) == expected_ids(config)


def test_exhausted_retries_are_recorded_and_dead_endpoint_aborts(tmp_path, gsm8k_input, fake_server):
  server = fake_server(rate_500=0.35, fault_seed=3)   # one request at a time: the same faults every run
  config = fast_config(gsm8k_input(8), tmp_path / "out", server.base_url, per_reference=2, max_attempts=2,
                       max_concurrency=1)
  summary = run(config, api_key=PLANTED_KEY)["runs"][-1]
  assert summary["failures_by_reason"].get("server_error", 0) >= 1
  assert summary["rows_written"] + summary["rows_failed"] + summary["rows_pending"] == 16
  assert summary["rows_pending"] == summary["failures_by_reason"]["server_error"]   # asked again next time
  assert sorted(outcome_ids(tmp_path / "out")) == expected_ids(config)

  dead = fake_server(rate_500=1.0)
  config = fast_config(gsm8k_input(8), tmp_path / "dead", dead.base_url, max_attempts=1, max_consecutive_failures=3,
                       max_concurrency=1)
  with pytest.raises(RunAborted, match="3 consecutive rows"):
    run(config, api_key=PLANTED_KEY)
  assert len(read_jsonl(tmp_path / "dead" / "failures.jsonl")) == 3      # the rest stays to do


def test_wrong_key_stops_without_recording_rows(tmp_path, gsm8k_input, fake_server):
  server = fake_server()
  config = fast_config(gsm8k_input(2), tmp_path / "out", server.base_url)
  with pytest.raises(FatalAPIError) as err:
    run(config, api_key="sk-wrong-key-0123456789")
  assert "sk-wrong-key-0123456789" not in str(err.value) and "401" in str(err.value)
  assert outcome_ids(tmp_path / "out") == []


def test_resume_skips_finished_rows_and_dedups_across_runs(tmp_path, fake_server):
  refs = [gsm8k_reference(i) for i in range(3)]
  path = write_jsonl(tmp_path / "refs.jsonl", refs)
  out = tmp_path / "out"
  first = fake_server()
  run(fast_config(path, out, first.base_url, per_reference=2, limit_references=2), api_key=PLANTED_KEY)
  assert len(read_jsonl(out / "rows.jsonl")) == 4
  earlier_question = read_jsonl(out / "rows.jsonl")[0]["question"]
  # The third reference now makes a question identical to one finished in the first run.
  second = fake_server(contaminate={"Reference number 2": earlier_question})
  config = fast_config(path, out, second.base_url, per_reference=2)
  with pytest.raises(NoRowsWritten, match="none of the 2 rows of this run was written: most for exact_duplicate"):
    run(config, api_key=PLANTED_KEY)
  summary = json.loads((out / "usage.json").read_text())["runs"][-1]
  steps_asked = [step for _, step, _ in second.state.log]
  assert steps_asked.count("new_question") == 2      # only the new reference's two rows
  assert summary["failures_by_reason"] == {"exact_duplicate": 2} and summary["rows_done_before"] == 4
  assert sorted(outcome_ids(out)) == expected_ids(config)
  third = fake_server()
  run(config, api_key=PLANTED_KEY)
  assert third.state.log == []                        # nothing left: no request at all
  usage = json.loads((out / "usage.json").read_text())
  assert len(usage["runs"]) == 3 and usage["total"]["rows_written"] == 4
  assert usage["total"]["removed_by_filter"]["exact_duplicate"] == 2


def test_duplicates_among_generated_questions_removed(tmp_path, gsm8k_input, fake_server):
  server = fake_server(duplicate=["Reference number 1"])
  config = fast_config(gsm8k_input(3), tmp_path / "out", server.base_url, per_reference=3)
  summary = run(config, api_key=PLANTED_KEY)["runs"][-1]
  assert summary["failures_by_reason"] == {"exact_duplicate": 2}
  rows = read_jsonl(tmp_path / "out" / "rows.jsonl")
  questions = [r["question"] for r in rows]
  assert len(questions) == len(set(questions)) == 7


def test_decontamination_removes_planted_near_copy(tmp_path, gsm8k_input, fake_server):
  test_question = ("Marisol's hens lay 18 eggs each day. She uses four of them to bake bread every morning and "
                   "gives three to her neighbour. She sells the rest at the market for $3 per egg. How many "
                   "dollars does she make every day at the market?")
  test_file = write_jsonl(tmp_path / "gsm8k_test.jsonl", [{"question": "Unrelated: a train leaves at 5 pm.",
                                                             "answer": "#### 1"}, {"question": test_question,
                                                                                   "answer": "#### 33"}])
  near_copy = test_question.replace("18 eggs", "20 eggs").replace("neighbour", "neighbor")
  server = fake_server(contaminate={"Reference number 1": near_copy})
  config = fast_config(gsm8k_input(3), tmp_path / "out", server.base_url, per_reference=2,
                       decontam_files=(test_file,))
  summary = run(config, api_key=PLANTED_KEY)["runs"][-1]
  failures = read_jsonl(tmp_path / "out" / "failures.jsonl")
  assert [f["reason"] for f in failures] == ["contaminated"] * 2
  assert all(f["step"] == "filter" and "gsm8k_test.jsonl#1" in f["detail"] for f in failures)
  assert summary["removed_by_filter"]["contaminated"] == 2 and summary["rows_written"] == 4
  assert not any("Marisol" in r["question"] for r in read_jsonl(tmp_path / "out" / "rows.jsonl"))
  assert [s for _, s, _ in server.state.log].count("answer") == 4   # no answer paid for contaminated rows


def test_api_key_never_written_or_logged(tmp_path, gsm8k_input, fake_server, caplog):
  caplog.set_level(logging.DEBUG)
  server = fake_server(rate_500=0.3, echo_key_in_errors=True, rate_429=0.1, retry_after="0", fault_seed=1)
  out = tmp_path / "out"
  config = fast_config(gsm8k_input(6), out, server.base_url, per_reference=2, max_attempts=2, max_concurrency=1)
  run(config, api_key=PLANTED_KEY)
  failures = read_jsonl(out / "failures.jsonl")
  assert any(f["reason"] == "server_error" and "[REDACTED]" in f["detail"] for f in failures), failures
  files = [p for p in out.rglob("*") if p.is_file()]
  assert {p.name for p in files} >= {"rows.jsonl", "failures.jsonl", "usage.json", "synth.log"}
  for p in files:
    assert PLANTED_KEY.encode() not in p.read_bytes(), p
  assert "[REDACTED]" in (out / "synth.log").read_text()
  assert PLANTED_KEY not in caplog.text and caplog.text


def test_outage_mid_run_loses_no_row(tmp_path, gsm8k_input, fake_server):
  """The endpoint returns 500 from the 10th request on (one attempt per request): the breaker
  stops the run; the transient failures are pending, not done. A re-run against a healthy
  endpoint asks exactly those rows and the rest: every row ends up written once."""
  path = gsm8k_input(8)
  out = tmp_path / "out"
  down = fake_server(script=[""] * 9 + ["500"] * 1000)
  config = fast_config(path, out, down.base_url, per_reference=2, max_attempts=1,
                       max_consecutive_failures=3, max_concurrency=1)
  with pytest.raises(RunAborted, match="3 consecutive rows"):
    run(config, api_key=PLANTED_KEY)
  first = read_jsonl(out / "rows.jsonl")
  assert len(first) == 3 and len(read_jsonl(out / "failures.jsonl")) == 3
  up = fake_server()
  summary = run(dataclasses.replace(config, base_url=up.base_url), api_key=PLANTED_KEY)["runs"][-1]
  assert summary["rows_done_before"] == 3 and summary["rows_written"] == 13
  rows = read_jsonl(out / "rows.jsonl")
  ids = [r["id"] for r in rows]
  assert sorted(ids) == expected_ids(config) and len(set(ids)) == len(ids)   # 0 lost, 0 twice
  assert summary["rows_pending"] == summary["rows_failed"] == 0
  usage = json.loads((out / "usage.json").read_text())
  # The 3 rows that failed in the first run are counted once, as written.
  assert usage["output_files"] == {"rows": 16, "failures": 0, "pending": 0, "failures_by_reason": {},
                                   "pending_by_reason": {}}
  assert (usage["total"]["rows_written"], usage["total"]["rows_failed"], usage["total"]["rows_pending"]) == (16, 0, 0)


def test_failing_endpoint_fails_the_run_and_keeps_rows_pending(tmp_path, gsm8k_input, fake_server):
  """Every request fails for a transport reason (5xx): the run exits with an error that says
  why, and the rows stay pending for the next run (not 'already done')."""
  dead = fake_server(rate_500=1.0)
  config = fast_config(gsm8k_input(2), tmp_path / "out", dead.base_url, max_attempts=1,
                       max_consecutive_failures=0, max_concurrency=1)
  with pytest.raises(RunAborted, match="every one of the 4 rows"):
    run(config, api_key=PLANTED_KEY)
  from mathjax_sft.synth.outputs import OutputDir
  out = OutputDir(tmp_path / "out", "question")
  try:
    assert out.done == set() and out.states.counts()["pending_by_reason"] == {"server_error": 4}
    assert all(out.asked_again(row_id) for row_id in expected_ids(config))
  finally:
    out.close()


def test_unreachable_endpoint_is_named_before_any_row(tmp_path, gsm8k_input):
  """Nothing listens on the port: the connection is retried per the policy, then the run stops
  with an error naming the URL, before any row is asked or recorded."""
  config = fast_config(gsm8k_input(2), tmp_path / "out", "http://127.0.0.1:9/v1", max_attempts=2,
                       max_consecutive_failures=0, max_concurrency=1)
  with pytest.raises(EndpointUnreachable, match=r"--base_url=http://127\.0\.0\.1:9/v1: cannot "
                                                r"connect .* after 2 attempt"):
    run(config, api_key=PLANTED_KEY)
  assert read_jsonl(tmp_path / "out" / "failures.jsonl") == []
  assert read_jsonl(tmp_path / "out" / "rows.jsonl") == []
