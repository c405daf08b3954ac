"""Reading rows: field mapping, file:line errors, counted skips, source specs, the tfds guard."""

import json
import sys

import pytest

from mathjax_sft import paths
from mathjax_sft.data import sources
from tests.train.helpers import write_jsonl


def test_reads_gsm8k_and_math_field_names(tmp_path):
  f = write_jsonl(tmp_path / "a.jsonl", [{"question": "q1", "answer": "a1"},
                                         {"problem": "p2", "solution": "s2", "level": 3}])
  rows, stats = sources.read_jsonl(f)
  assert [(r.prompt, r.response) for r in rows] == [("q1", "a1"), ("p2", "s2")]
  assert rows[1].origin == f"{f}:2"
  assert stats.rows == 2 and stats.num_skipped == 0


def test_custom_fields(tmp_path):
  f = write_jsonl(tmp_path / "a.jsonl", [{"q": "x", "cot": "y", "question": "ignored"}])
  rows, _ = sources.read_jsonl(f, prompt_fields="q", response_fields="cot")
  assert (rows[0].prompt, rows[0].response) == ("x", "y")


@pytest.mark.parametrize("bad, reason", [
    ('{"question": "q", "answer": ', "malformed JSON"),
    ('{"question": "q"}', "missing response field"),
    ('{"answer": "a"}', "missing prompt field"),
    ('{"question": "q", "answer": "   "}', "empty response"),
    ('{"question": "q", "answer": 3}', "non-string response field"),
    ('["question", "answer"]', "not a JSON object"),
])
def test_bad_line_is_an_error_naming_file_and_line(tmp_path, bad, reason):
  f = write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": "a"}, "", bad,
                                           {"question": "q", "answer": "a"}])
  with pytest.raises(sources.DataError, match=f"{f}:3: "):
    sources.read_jsonl(f)
  rows, stats = sources.read_jsonl(f, on_bad_row="skip")
  assert len(rows) == 2 and [r.origin for r in rows] == [f"{f}:1", f"{f}:4"]
  assert stats.skipped == {reason: 1}
  assert stats.blank_lines == 1
  assert stats.examples == [f"{f}:3: {reason}"]


def test_torn_last_line_is_reported(tmp_path):
  f = tmp_path / "torn.jsonl"
  f.write_text(json.dumps({"question": "q", "answer": "a"}) + '\n{"question": "q", "ans')
  with pytest.raises(sources.DataError, match=f"{f}:2: malformed JSON"):
    sources.read_jsonl(f)


def test_parse_sources(tmp_path):
  a = write_jsonl(tmp_path / "a.jsonl", [{"question": "q", "answer": "a"}])
  b = write_jsonl(tmp_path / "b.jsonl", [{"question": "q", "answer": "a"}])
  specs = sources.parse_sources(f"{a}@0.75, {b}@0.25")
  assert [(s.kind, s.name, s.weight) for s in specs] == [("jsonl", str(a), 0.75),
                                                          ("jsonl", str(b), 0.25)]
  assert sources.parse_sources(f"{a},{b}")[0].weight is None
  spec = sources.parse_sources("data:gsm8k/train.jsonl,tfds:gsm8k:test")
  assert spec[0].name == str(paths.data_file("gsm8k/train.jsonl"))
  assert (spec[1].kind, spec[1].name, spec[1].split) == ("tfds", "gsm8k", "test")
  with pytest.raises(ValueError, match="every source or to none"):
    sources.parse_sources(f"{a}@1,{b}")
  with pytest.raises(FileNotFoundError, match="missing.jsonl"):
    sources.parse_sources(str(tmp_path / "missing.jsonl"))
  with pytest.raises(ValueError, match="weight"):
    sources.parse_sources(f"{a}@-1")


def test_tfds_without_the_package_is_a_clear_error(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # never reach a download
  spec = sources.parse_sources("tfds:gsm8k")[0]
  with pytest.raises(ImportError, match="tensorflow-datasets"):
    sources.read_source(spec)


def test_real_gsm8k_file_reads_whole():
  rows, stats = sources.read_jsonl(paths.data_file("gsm8k/train.jsonl"))
  assert stats.rows == 7473 and stats.num_skipped == 0
  assert rows[0].response.endswith("#### 72")


def test_tfds_download_without_network_fails_fast_naming_the_flag(monkeypatch):
  """tfds_download=true with no network: a ConnectionError that names the flag after one network
  probe bounded by a few seconds, before TFDS's own download (which retries for minutes) is
  started."""
  import socket
  import types
  started = []
  builder = types.SimpleNamespace(is_prepared=lambda: False, data_dir="/nowhere",
                                  download_and_prepare=lambda: started.append(True))
  fake = types.ModuleType("tensorflow_datasets")
  fake.builder = lambda *a, **k: builder
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
  monkeypatch.setitem(sys.modules, "tensorflow_datasets.text", types.ModuleType("text"))
  monkeypatch.setattr(sources, "NETWORK_PROBE", ("127.0.0.1", 9))   # nothing listens there
  probes, connect = [], socket.create_connection

  def probe(address, timeout=None, *args, **kwargs):
    probes.append((address, timeout))
    return connect(address, timeout, *args, **kwargs)

  monkeypatch.setattr(socket, "create_connection", probe)
  spec = sources.parse_sources("tfds:gsm8k")[0]
  with pytest.raises(ConnectionError, match=r"--config.data.tfds_download=true \(tfds:gsm8k\).*"
                                            "127.0.0.1:9 cannot be reached"):
    sources.read_source(spec, tfds_download=True)
  assert probes == [(("127.0.0.1", 9), sources.NETWORK_PROBE_TIMEOUT_S)] and not started
  assert 0 < sources.NETWORK_PROBE_TIMEOUT_S <= 10
  # without tfds_download the unprepared dataset is named, and nothing is downloaded either
  with pytest.raises(FileNotFoundError, match="not prepared under /nowhere"):
    sources.read_source(spec)
  assert not started and len(probes) == 1
