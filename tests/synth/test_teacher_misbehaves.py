"""A teacher that misbehaves, as open models behind local servers do: replies that ignore the
format, a key it refuses, a server that goes away mid-run. The user sees why, and the counts
stay right across resumes."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time

import pytest

from mathjax_sft import errors
from mathjax_sft.synth import failure_report
from mathjax_sft.synth.client import FatalAPIError
from mathjax_sft.synth.fake_server import FakeConfig, FakeServer
from mathjax_sft.synth.outage import Outage
from mathjax_sft.synth.pipeline import RunAborted
from mathjax_sft.synth.prices import prices_for
from mathjax_sft.synth.run import NoRowsWritten, run
from tests.synth.helpers import PLANTED_KEY, fast_config, read_jsonl


def test_replies_without_the_format_fail_the_run_and_are_kept(tmp_path, gsm8k_input, fake_server):
  server = fake_server(untagged=True)
  out = tmp_path / "out"
  config = fast_config(gsm8k_input(3), out, server.base_url, per_reference=2, max_reply_retries=2)
  with pytest.raises(NoRowsWritten) as err:
    run(config, api_key=PLANTED_KEY)
  message = str(err.value)
  assert "\n" not in message
  assert message.startswith("none of the 6 rows of this run was written: most for malformed_reply (6, at step "
                            "new_question; e.g. step 1 reply has no <question>...</question> (after 3 sample(s)))")
  assert message.endswith(f"python tools/inspect_failures.py --output_dir={out}")
  failures = read_jsonl(out / "failures.jsonl")
  assert len(failures) == 6
  for f in failures:
    assert (f["step"], f["reason"], f["attempts"]) == ("new_question", "malformed_reply", 3)
    # What the model wrote, as it wrote it: the question is there, the tags are not.
    assert f["reply"].startswith("Sure! Here is what you asked for.") and "<question>" not in f["reply"]
    assert f["usage"]["requests"] == 3 and f["usage"]["prompt_tokens"] > 0
  snapshot = err.value.snapshot
  assert snapshot["runs"][-1]["requests"] == 18 == sum(f["usage"]["requests"] for f in failures)
  assert snapshot["output_files"]["failures_by_reason"] == {"malformed_reply": 6}

  groups = failure_report.failure_groups(out)
  assert [(g.reason, g.rows, g.pending, g.steps) for g in groups] == [
      ("malformed_reply", 6, False, {"new_question": 6})]
  report = failure_report.format_groups(groups, out, top=5, max_reply_chars=40)
  assert "malformed_reply: 6 rows (final); at step new_question 6" in report
  assert "its last reply:\n    Sure! Here is what you asked for." in report and "more characters]" in report


def test_rows_count_once_across_resumes(tmp_path, gsm8k_input, fake_server):
  """Run 1: the server fails every request (rows pending). Run 2: it answers without the format
  (the same rows fail for good: failures.jsonl has two lines per row). Run 3, asking rejected rows
  again, against a healthy server: every row is written. Each row is counted once, in its
  latest state, in usage.json and by the inspection."""
  out = tmp_path / "out"
  config = fast_config(gsm8k_input(2), out, "", max_attempts=1, max_consecutive_failures=0, max_reply_retries=0)
  down = fake_server(rate_500=1.0)
  with pytest.raises(RunAborted, match="every one of the 4 rows"):
    run(dataclasses.replace(config, base_url=down.base_url), api_key=PLANTED_KEY)
  first = read_jsonl(out / "failures.jsonl")
  assert all(f["reason"] == "server_error" and down.base_url in f["detail"] and f["usage"]["requests"] == 1
             and f["reply"] == "The server had an error while processing your request." for f in first)
  assert [(g.reason, g.rows, g.pending) for g in failure_report.failure_groups(out)] == [("server_error", 4, True)]

  untagged = fake_server(untagged=True)
  with pytest.raises(NoRowsWritten, match="none of the 4 rows of this run"):
    run(dataclasses.replace(config, base_url=untagged.base_url), api_key=PLANTED_KEY)
  assert len(read_jsonl(out / "failures.jsonl")) == 8
  usage = json.loads((out / "usage.json").read_text())
  assert usage["output_files"] == {"rows": 0, "failures": 4, "pending": 0,
                                   "failures_by_reason": {"malformed_reply": 4}, "pending_by_reason": {}}
  total = usage["total"]
  assert (total["rows_written"], total["rows_failed"], total["rows_pending"]) == (0, 4, 0)
  assert total["failures_by_reason"] == {"malformed_reply": 4}
  assert [(r["rows_failed"], r["rows_pending"]) for r in usage["runs"]] == [(0, 4), (4, 0)]
  assert total["requests"] == 4 + 4 == sum(r["requests"] for r in usage["runs"])
  assert [(g.reason, g.rows) for g in failure_report.failure_groups(out)] == [("malformed_reply", 4)]

  healthy = fake_server()
  run(dataclasses.replace(config, base_url=healthy.base_url, retry_rejected=True), api_key=PLANTED_KEY)
  usage = json.loads((out / "usage.json").read_text())
  assert usage["output_files"]["rows"] == 4 and usage["output_files"]["failures"] == 0
  assert (usage["total"]["rows_written"], usage["total"]["rows_failed"], usage["total"]["rows_pending"]) == (4, 0, 0)
  assert failure_report.format_groups(failure_report.failure_groups(out), out, 5, 100) == f"{out}: no failed rows"


@pytest.mark.parametrize("style", ["openai", "detail"])
def test_wrong_key_names_the_servers_words_the_key_source_and_the_url(tmp_path, gsm8k_input, fake_server,
                                                                      monkeypatch, style):
  server = fake_server(error_style=style)
  monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key-0123456789")
  with pytest.raises(FatalAPIError) as err:
    run(fast_config(gsm8k_input(1), tmp_path / "out", server.base_url))
  assert str(err.value) == (f"{server.base_url} refused the API key from $OPENAI_API_KEY (401: Incorrect API key "
                            "provided.) at step new_question; set the key this server expects, or check --base_url")
  assert read_jsonl(tmp_path / "out" / "failures.jsonl") == []


def test_an_outage_is_one_line_when_it_starts_and_one_when_it_ends(tmp_path, gsm8k_input, fake_server, caplog):
  """The server process dies after a few requests (its port refuses connections, the connections
  clients held are dropped) and comes back 0.6 s later on the same port."""
  server = fake_server()
  port = server.server_address[1]
  revived: list[FakeServer] = []

  def outage() -> None:
    while server.state.chat_requests < 6:
      time.sleep(0.005)
    server.close()
    time.sleep(0.6)
    revived.append(FakeServer(FakeConfig(api_key=PLANTED_KEY), port=port).start())

  killer = threading.Thread(target=outage)
  killer.start()
  caplog.set_level(logging.INFO)
  config = fast_config(gsm8k_input(4), tmp_path / "out", server.base_url, per_reference=2, max_attempts=12,
                       backoff_base=0.05, backoff_max=0.3)
  try:
    summary = run(config, api_key=PLANTED_KEY)["runs"][-1]
  finally:
    killer.join()
    for s in revived:
      s.close()
  assert summary["rows_written"] == 8 and summary["retries"] > 0      # nothing lost to the outage
  lines = [r for r in caplog.records if r.name == "mathjax_sft.synth.outage" and r.levelno >= logging.INFO]
  assert [r.levelno for r in lines] == [logging.WARNING, logging.INFO], [r.getMessage() for r in lines]
  start, end = (r.getMessage() for r in lines)
  assert start.startswith(f"{server.base_url} is failing (connection_error: ")
  assert "up to 12 attempt(s) each" in start
  assert end.startswith(f"{server.base_url} answers again after ") and "attempts failed meanwhile (connection_error" in end
  # No line per retry, and no row failed.
  assert not [r for r in caplog.records if r.name == "mathjax_sft.synth.client" and r.levelno >= logging.INFO]
  assert not [r for r in caplog.records if " failed at " in r.getMessage()]


def test_cost_only_for_known_models_or_given_prices(tmp_path, gsm8k_input, fake_server, caplog):
  assert prices_for("gpt-4-turbo").prompt == 10.0 and prices_for("gpt-4-turbo").completion == 30.0
  assert (prices_for("gpt-4o-2024-08-06").prompt, prices_for("gpt-4o-2024-08-06").source) == (2.5, "list price of "
                                                                                                "gpt-4o-2024-08-06")
  assert not prices_for("SmolLM2-135M-Instruct").known and not prices_for("gpt-4o-mini-tts").known
  assert prices_for("gpt-4-turbo", completion=20.0).completion == 20.0

  server = fake_server()
  caplog.set_level(logging.INFO)
  local = fast_config(gsm8k_input(1), tmp_path / "local", server.base_url, per_reference=1,
                      model="SmolLM2-135M-Instruct")
  snapshot = run(local, api_key=PLANTED_KEY)
  assert snapshot["runs"][-1]["estimated_cost_usd"] is None and snapshot["total"]["estimated_cost_usd"] is None
  assert snapshot["prices"]["source"] == "unknown"
  finished = [r.getMessage() for r in caplog.records if r.getMessage().startswith("run finished")]
  assert len(finished) == 1 and "$" not in finished[0] and "1/1 rows written" in finished[0]

  priced = dataclasses.replace(local, output_dir=tmp_path / "priced", price_prompt_per_million=1.0,
                               price_completion_per_million=2.0)
  run_ = run(priced, api_key=PLANTED_KEY)["runs"][-1]
  assert run_["estimated_cost_usd"] == pytest.approx((run_["prompt_tokens"] + 2 * run_["completion_tokens"]) / 1e6)

  half = dataclasses.replace(local, output_dir=tmp_path / "half", price_prompt_per_million=1.0)
  with pytest.raises(errors.UserError, match="--price_completion_per_million is needed too") as err:
    run(half, api_key=PLANTED_KEY)
  assert err.value.flag == "--price_completion_per_million"
  assert not (tmp_path / "half").exists()       # refused before anything was made


def test_spells_that_come_and_go_log_two_lines_a_minute_at_most(caplog):
  """429s at a busy rate limit: a spell that starts within a minute of the last one's end is
  logged at debug level only; a request sent before the last failure does not end a spell."""
  now = [0.0]
  outage = Outage("http://teacher/v1", 6, clock=lambda: now[0])
  caplog.set_level(logging.DEBUG, logger="mathjax_sft.synth.outage")

  def spell(start: float) -> None:
    now[0] = start
    sent = outage.now()
    outage.failed_attempt("rate_limited", "RateLimitError: 429")
    outage.succeeded(sent - 1.0)        # sent before the failure: the spell goes on
    now[0] = start + 2.0
    outage.succeeded(outage.now())

  for start in (0.0, 10.0, 20.0, 100.0):
    spell(start)
  levels = [(r.levelno, r.getMessage().split(" ")[1]) for r in caplog.records]
  assert levels == [(logging.WARNING, "is"), (logging.INFO, "answers"),
                    (logging.DEBUG, "is"), (logging.DEBUG, "answers"),
                    (logging.DEBUG, "is"), (logging.DEBUG, "answers"),
                    (logging.WARNING, "is"), (logging.INFO, "answers")]
  assert outage.spells == 4 and outage.started is None


def test_a_run_where_most_rows_fail_warns_in_one_line(tmp_path, gsm8k_input, fake_server, caplog):
  server = fake_server(poison=["Reference number 1", "Reference number 2"])   # empty replies
  caplog.set_level(logging.INFO)
  out = tmp_path / "out"
  config = fast_config(gsm8k_input(3), out, server.base_url, per_reference=2)
  assert run(config, api_key=PLANTED_KEY)["runs"][-1]["rows_written"] == 2
  warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "rows of this run" in r.getMessage()]
  assert warned == ["4 of the 6 rows of this run failed: most for empty_content (4, at step new_question; e.g. "
                    "the reply has no text (after 3 sample(s))); the replies: python tools/inspect_failures.py "
                    f"--output_dir={out}"]
  caplog.clear()
  run(dataclasses.replace(config, output_dir=tmp_path / "quiet", warn_failure_rate=0.7), api_key=PLANTED_KEY)
  assert not [r for r in caplog.records if "rows of this run" in r.getMessage()]
