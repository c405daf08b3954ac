"""tools/synthesize.py as a subprocess: --help, input errors, and SIGKILL mid-run then resume."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from mathjax_sft.synth.config import SynthConfig
from mathjax_sft.synth.references import load_references
from mathjax_sft.synth.steps import make_tasks
from tests.synth.helpers import PLANTED_KEY, fast_config, read_jsonl

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "synthesize.py"


def _env(key: str | None = PLANTED_KEY) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
  env["PYTHONPATH"] = str(REPO)
  if key is not None:
    env["OPENAI_API_KEY"] = key
  return env


def _args(input_path: Path, out: Path, base_url: str, *extra: str) -> list[str]:
  return [sys.executable, str(TOOL), f"--input={input_path}", "--dataset_format=gsm8k", f"--output_dir={out}",
          f"--base_url={base_url}", "--model=gpt-4-turbo", "--decontam_files=none", "--noprogress",
          "--backoff_base=0.01", "--backoff_max=0.05", "--requests_per_minute=0", "--tokens_per_minute=0",
          "--usage_flush_interval=0.2", *extra]


def test_help_explains_every_flag():
  result = subprocess.run([sys.executable, str(TOOL), "--help"], capture_output=True, text=True, env=_env(), timeout=60)
  section = result.stdout.split("tools/synthesize.py:", 1)[1]
  helps = dict(re.findall(r"^  --(?:\[no\])?(\w+): (.+)$", section, flags=re.MULTILINE))
  config_flags = {f.name for f in dataclasses.fields(SynthConfig)} - {"input_path"} | {"input"}
  assert config_flags <= set(helps), config_flags - set(helps)
  for name, text in helps.items():
    assert len(text) >= 15, (name, text)
  assert "OPENAI_API_KEY" in result.stdout
  assert " 4 the run asked rows and wrote none of them" in " ".join(result.stdout.split())   # its exit status


def test_bad_input_and_missing_key_are_clear_errors(tmp_path, gsm8k_input):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"question": "fine question here", "answer": "#### 1"}\n{"question": \n')
  result = subprocess.run(_args(bad, tmp_path / "out", "http://127.0.0.1:9/v1"), capture_output=True, text=True,
                          env=_env(), timeout=60)
  assert result.returncode == 2 and f"{bad}:2: malformed JSON" in result.stderr
  result = subprocess.run(_args(gsm8k_input(1), tmp_path / "out", "http://127.0.0.1:9/v1"), capture_output=True,
                          text=True, env=_env(key=None), timeout=60)
  assert result.returncode == 2 and "OPENAI_API_KEY is not set" in result.stderr


def test_sigkill_mid_run_then_resume(tmp_path, gsm8k_input, fake_server):
  server = fake_server(latency=0.04, rate_500=0.05, fault_seed=5)
  input_path = gsm8k_input(30)
  out = tmp_path / "out"
  args = _args(input_path, out, server.base_url, "--per_reference=2", "--max_concurrency=4")
  proc = subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  deadline = time.monotonic() + 60
  while time.monotonic() < deadline and len(read_jsonl(out / "rows.jsonl")) < 10:
    time.sleep(0.05)
  os.kill(proc.pid, signal.SIGKILL)
  stdout1, stderr1 = proc.communicate(timeout=30)
  assert proc.returncode == -signal.SIGKILL
  time.sleep(0.5)   # let the server log any request the dead client had already sent
  done_after_kill = {r["id"] for r in read_jsonl(out / "rows.jsonl")} | {r["id"] for r in read_jsonl(out / "failures.jsonl")}
  all_ids = {t.id for t in make_tasks(load_references(input_path, "gsm8k"),
                                      fast_config(input_path, out, server.base_url, per_reference=2))}
  assert 10 <= len(done_after_kill) < len(all_ids)
  # Leave a torn line as an interrupted write would.
  with open(out / "rows.jsonl", "ab") as f:
    f.write(b'{"id": "gsm8k-torn-0", "question": "half a li')
  requests_before = len(server.state.log)

  result = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  raw = (out / "rows.jsonl").read_bytes()
  assert raw.endswith(b"\n") and b"gsm8k-torn-0" not in raw
  rows, failures = read_jsonl(out / "rows.jsonl"), read_jsonl(out / "failures.jsonl")   # every line parses
  ids = [r["id"] for r in rows] + [r["id"] for r in failures]
  assert len(ids) == len(set(ids)) and set(ids) == all_ids          # each row exactly once
  assert len({r["question"] for r in rows}) == len(rows)             # no duplicate questions
  # Finished rows were not requested again: step 1 ran (successfully) once per row left to do.
  second_run = server.state.log[requests_before:]
  asked = sum(1 for _, step, fault in second_run if step == "new_question" and fault == "ok")
  assert asked == len(all_ids - done_after_kill)
  usage = json.loads((out / "usage.json").read_text())
  assert usage["output_files"]["rows"] == len(rows) and usage["output_files"]["failures"] == len(failures)
  assert json.loads(result.stdout)["output_files"] == usage["output_files"]
  log_text = (out / "synth.log").read_text()
  assert "repaired torn last lines: rows.jsonl 45 bytes" in log_text
  for text in (stdout1.decode(), stderr1.decode(), result.stdout, result.stderr, log_text):
    assert PLANTED_KEY not in text
  for path in out.rglob("*"):
    if path.is_file():
      assert PLANTED_KEY.encode() not in path.read_bytes()


def test_a_teacher_that_ignores_the_format_exits_4_and_its_replies_can_be_read(tmp_path, gsm8k_input, fake_server):
  server = fake_server(untagged=True)
  out = tmp_path / "out"
  result = subprocess.run(_args(gsm8k_input(1), out, server.base_url, "--per_reference=2", "--max_reply_retries=1"),
                          env=_env(), capture_output=True, text=True, timeout=120)
  assert result.returncode == 4, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last == ("synthesize: no rows written: none of the 2 rows of this run was written: most for malformed_reply "
                  "(2, at step new_question; e.g. step 1 reply has no <question>...</question> (after 2 sample(s))); "
                  f"the replies: python tools/inspect_failures.py --output_dir={out}")
  assert json.loads(result.stdout)["output_files"]["failures"] == 2

  report = subprocess.run([sys.executable, str(REPO / "tools" / "inspect_failures.py"), f"--output_dir={out}"],
                          env=_env(), capture_output=True, text=True, timeout=60)
  assert report.returncode == 0, report.stderr
  lines = report.stdout.splitlines()
  assert lines[0] == f"{out}: 2 failed rows, 1 reasons"
  assert lines[2] == "malformed_reply: 2 rows (final); at step new_question 2"
  assert "  its last reply:" in lines and any(l.startswith("    Sure! Here is what you asked for.") for l in lines)


def test_a_refused_key_is_one_line_naming_the_server_message(tmp_path, gsm8k_input, fake_server):
  server = fake_server(error_style="detail")
  result = subprocess.run(_args(gsm8k_input(1), tmp_path / "out", server.base_url), env=_env("sk-not-this-one-42"),
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 3
  assert result.stderr.strip().splitlines()[-1] == (
      f"synthesize: stopped: {server.base_url} refused the API key from $OPENAI_API_KEY (401: Incorrect API key "
      "provided.) at step new_question; set the key this server expects, or check --base_url")
