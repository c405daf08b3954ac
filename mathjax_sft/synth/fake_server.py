"""A loopback fake of the OpenAI API, for the synthesis tests and benchmark (`tools/bench_synth.py`).

Speaks POST /v1/chat/completions, POST /v1/files, GET /v1/files/{id}/content, POST /v1/batches,
GET /v1/batches/{id}, GET /v1/batches (list), plus GET /_stats. Replies are deterministic and
derived from the prompt: step 1 builds a new word problem from the numbers of the reference and
the seed, step 2 solves it and says VALID (or INVALID for `reject` markers), step 3 answers it in
the target format (`#### n` or `\\boxed{n}`) with the correct value, so the pipeline's parsers and
format checks are exercised for real. `question_style="varied"` writes questions from a larger
grammar (several sentences, many names, items and numbers): unique, and as unlike each other as
real ones, for runs of a million rows.

Rate limits (`ratelimit_requests` / `ratelimit_tokens` per minute): every chat reply carries
OpenAI's `x-ratelimit-limit-*`, `x-ratelimit-remaining-*` and `x-ratelimit-reset-*` headers, from
buckets that hold `ratelimit_burst_seconds` worth of the limit; a request that finds a bucket
empty gets a 429. Batch limits: a batch whose file has more than `batch_max_requests` lines or
`batch_max_bytes` bytes fails validation, and one that would take the tokens enqueued in
unfinished batches above `batch_enqueued_tokens` fails with `token_limit_exceeded`.

Faults, drawn per request from a seeded RNG (or forced in order by `script`): "429" (with
Retry-After), "500", "hang" (no reply for `hang_seconds`), "empty" (content ""), "malformed"
(cycling through an invalid JSON body, a JSON body without choices, and content without tags).
`untagged` makes every reply ignore the format, as a small open model often does: the same text
without its tags, after a chatty opening. `error_style="detail"` sends error bodies the way
FastAPI servers (llama-cpp-python) do, `{"detail": message}`, instead of OpenAI's
`{"error": {"message": ...}}`. `close()` also drops the connections clients keep open, as a
server process that dies does.

Standalone: `python -m mathjax_sft.synth.fake_server --port 0 --config '{"rate_500": 0.05}'` prints
`PORT <n>` once listening.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import random
import re
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

NAMES = ("Ava", "Ben", "Chloe", "Diego", "Emma", "Farid", "Grace", "Hiro", "Isla", "Jonas", "Kira", "Liam",
         "Maya", "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sami", "Tara")
ITEMS = ("apples", "pencils", "stickers", "marbles", "cookies", "books", "shells", "cards", "bottles", "eggs")

# Question templates: (format string, regex to read the numbers back, answer function).
GSM8K_TEMPLATES = (
    ("{name} packs {a} boxes with {b} {item} in each box and then gives away {c} {item} to friends. "
     "How many {item} does {name} have left?",
     r"packs (\d+) boxes with (\d+) \w+ in each box and then gives away (\d+)", lambda a, b, c: a * b - c),
    ("A shop sells {item} for ${a} each. {name} buys {b} {item} and pays with a ${c} bill. "
     "How much change, in dollars, does {name} get back?",
     r"for \$(\d+) each\. \w+ buys (\d+) \w+ and pays with a \$(\d+) bill", lambda a, b, c: c - a * b),
    ("{name} reads {a} pages every day for {b} days and then reads {c} more pages over the weekend. "
     "How many pages does {name} read in total?",
     r"reads (\d+) pages every day for (\d+) days and then reads (\d+) more", lambda a, b, c: a * b + c),
    ("A garden has {a} rows of {item} with {b} plants in each row, and {name} plants {c} more rows of the "
     "same size. How many plants are in the garden now?",
     r"has (\d+) rows of \w+ with (\d+) plants in each row, and \w+ plants (\d+) more", lambda a, b, c: (a + c) * b),
)
# The "varied" grammar: a few sentences and one question, each slot filled from its own list.
VARIED_NAMES = NAMES + ("Abel", "Bianca", "Cyrus", "Dalia", "Elif", "Femi", "Gwen", "Hamza", "Ines", "Jalen",
                        "Kenji", "Lucia", "Mateo", "Nadia", "Oscar", "Petra", "Rafael", "Selin", "Tomas", "Uma")
VARIED_ITEMS = ITEMS + ("tomatoes", "crayons", "buttons", "candles", "tickets", "bricks", "beads", "lemons",
                        "notebooks", "stamps", "balloons", "coins", "muffins", "ribbons", "tiles")
PLACES = ("market", "school fair", "library", "bakery", "garden centre", "museum shop", "farm stand", "toy store",
          "harbour", "train station", "park", "craft club")
SENTENCES = (
    "{name} buys {a} {item} at the {place} for ${b} each.",
    "On Monday {name} collects {a} {item} and on Tuesday {b} more.",
    "{name} shares {a} {item} equally among {b} friends.",
    "Every box at the {place} holds {a} {item}, and {name} fills {b} boxes.",
    "{name} had {a} {item} but lost {b} of them on the way to the {place}.",
    "A bag of {item} costs ${a} and {name} has ${b} to spend.",
    "{name} walks {a} blocks to the {place} and then {b} blocks back home.",
    "The {place} sells {a} {item} in the morning and {b} in the afternoon.",
    "{name} saves ${a} a week for {b} weeks.",
    "Each of the {a} tables at the {place} has {b} {item} on it.",
    "{name} paints {a} {item} per hour for {b} hours.",
    "There are {a} rows of {item} in the {place}, with {b} in each row.",
)
QUESTIONS = (
    "How many {item} does {name} have in the end?",
    "How much money, in dollars, is left over?",
    "How many {item} are there altogether?",
    "What is the total number of {item} {name} handles?",
    "How many more {item} would {name} need to reach {c}?",
    "How many {item} does each friend of {name} get?",
)
MATH_TEMPLATE = ("What is the value of $a \\cdot b + c$ when $a = {a}$, $b = {b}$ and $c = {c}$?",
                 r"\$a = (\d+)\$, \$b = (\d+)\$ and \$c = (\d+)\$", lambda a, b, c: a * b + c)


@dataclasses.dataclass
class FakeConfig:
  """Behaviour of the fake server; every rate is a probability per request."""

  api_key: str | None = None          # when set, other keys get 401
  latency: float = 0.0                # seconds added to every chat request
  rate_429: float = 0.0
  retry_after: str = "1"              # Retry-After header value sent with 429
  retry_after_ms: str | None = None   # retry-after-ms header value sent with 429
  rate_500: float = 0.0
  rate_hang: float = 0.0
  hang_seconds: float = 30.0
  rate_empty: float = 0.0
  rate_malformed: float = 0.0
  script: list[str] = dataclasses.field(default_factory=list)  # forced faults for the first requests
  fault_seed: int = 0
  poison: list[str] = dataclasses.field(default_factory=list)   # prompt substrings -> always empty content
  reject: list[str] = dataclasses.field(default_factory=list)   # question substrings -> verify INVALID
  duplicate: list[str] = dataclasses.field(default_factory=list)  # reference substrings -> same question for every k
  contaminate: dict[str, str] = dataclasses.field(default_factory=dict)  # reference substring -> question to return
  echo_key_in_errors: bool = False    # 500 bodies quote the Authorization header (redaction test)
  batch_polls: int = 1                # GETs of a batch before it completes
  batch_status: list[str] = dataclasses.field(default_factory=list)  # terminal status of the n-th batch
  question_style: str = "template"    # "template" (four GSM8K templates) or "varied" (see module docstring)
  keep_log: bool = True               # keep (time, step, fault) of every chat request in `log`
  untagged: bool = False              # every reply without its tags (see module docstring)
  error_style: str = "openai"         # "openai" or "detail" (see module docstring)
  ratelimit_requests: int = 0         # requests per minute announced and enforced (0: no headers)
  ratelimit_tokens: int = 0           # tokens per minute announced and enforced (0: no headers)
  ratelimit_burst_seconds: float = 60.0   # bucket size, in seconds of the limit
  batch_max_requests: int = 50_000    # lines per batch input file
  batch_max_bytes: int = 200 * 1000 * 1000   # bytes per batch input file
  batch_enqueued_tokens: int = 0      # prompt tokens in unfinished batches (0: no limit)


class FakeState:
  """Server-side state: stored files and batches, counters."""

  def __init__(self, config: FakeConfig):
    self.config = config
    self.lock = threading.Lock()
    self.stop = threading.Event()
    self.rng = random.Random(config.fault_seed)
    self.script = list(config.script)
    self.counts: dict[str, int] = {}
    self.log: list[tuple[float, str, str]] = []    # (time, step, fault or "ok")
    self.files: dict[str, dict[str, Any]] = {}
    self.batches: dict[str, dict[str, Any]] = {}
    self.malformed_turn = 0
    self.chat_requests = 0
    self.buckets = {kind: Bucket(limit, config.ratelimit_burst_seconds)
                    for kind, limit in (("requests", config.ratelimit_requests), ("tokens", config.ratelimit_tokens))
                    if limit > 0}
    self.rate_limited = 0               # 429s sent because a bucket was empty
    self.batch_rejections: dict[str, int] = {}   # validation failures by code
    self.max_enqueued_tokens = 0        # most prompt tokens ever in unfinished batches
    self.max_attempted_tokens = 0       # the same, counting the batch being created (refused or not)
    self.max_batch_lines = 0
    self.max_batch_bytes = 0

  def count(self, key: str) -> None:
    with self.lock:
      self.counts[key] = self.counts.get(key, 0) + 1

  def draw_fault(self) -> str | None:
    with self.lock:
      if self.script:
        fault = self.script.pop(0)
        return fault or None
      c = self.config
      x = self.rng.random()
      for fault, rate in (("429", c.rate_429), ("500", c.rate_500), ("hang", c.rate_hang),
                          ("empty", c.rate_empty), ("malformed", c.rate_malformed)):
        if x < rate:
          return fault
        x -= rate
      return None


class Bucket:
  """A server-side rate limit: `limit` per minute, holding at most `burst_seconds` of it."""

  def __init__(self, limit: int, burst_seconds: float):
    self.limit = limit
    self.rate = limit / 60.0
    self.capacity = max(1.0, self.rate * burst_seconds)
    self.level = self.capacity
    self.updated = time.monotonic()

  def take(self, amount: float) -> bool:
    now = time.monotonic()
    self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
    self.updated = now
    if self.level < amount:
      return False
    self.level -= amount
    return True

  def wait_ms(self, amount: float) -> int:
    """Milliseconds until `amount` is available."""
    return max(0, math.ceil((amount - self.level) / self.rate * 1000))

  def headers(self, kind: str) -> dict[str, str]:
    reset = (self.capacity - self.level) / self.rate
    return {f"x-ratelimit-limit-{kind}": str(self.limit),
            f"x-ratelimit-remaining-{kind}": str(int(self.level)),
            f"x-ratelimit-reset-{kind}": duration_text(reset)}


def duration_text(seconds: float) -> str:
  """OpenAI's reset format: "6m0s", "1s", "20ms"."""
  if seconds < 1:
    return f"{int(seconds * 1000)}ms"
  minutes, rest = divmod(seconds, 60)
  return f"{int(minutes)}m{rest:.0f}s" if minutes else f"{rest:.3g}s"


def prompt_tokens(body: dict[str, Any]) -> int:
  """What the fake counts as a request's prompt tokens (4 characters a token)."""
  return sum(len(str(m.get("content", ""))) for m in body.get("messages") or []) // 4 + 1


# -- deterministic "model" --------------------------------------------------------------------------
def _rng(*parts: object) -> random.Random:
  return random.Random(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest())


def _tag(text: str, tag: str) -> str | None:
  m = re.search(rf"<{tag}>\s*(.*?)\s*</{tag}>", text, re.DOTALL)
  return m.group(1) if m else None


def varied_question(rng: random.Random) -> str:
  """A question from the larger grammar: 2 to 4 sentences (two names, one item, one place) and
  a question; numbers up to 999."""
  name, other = rng.sample(VARIED_NAMES, 2)
  item, place = rng.choice(VARIED_ITEMS), rng.choice(PLACES)
  parts = []
  for template in rng.sample(SENTENCES, rng.randint(2, 4)):
    parts.append(template.format(name=rng.choice((name, other)), item=item, place=place,
                                 a=rng.randint(2, 999), b=rng.randint(2, 999)))
  parts.append(rng.choice(QUESTIONS).format(name=name, item=item, c=rng.randint(100, 9999)))
  return " ".join(parts)


def new_question(reference: str, seed: object, temperature: object, is_math: bool, cfg: FakeConfig) -> str:
  for marker, text in cfg.contaminate.items():
    if marker in reference:
      return text
  if any(marker in reference for marker in cfg.duplicate):
    seed, temperature = "dup", "dup"
  nums = [int(n) for n in re.findall(r"\d+", reference)] or [7]
  rng = _rng(reference, seed, temperature)
  if cfg.question_style == "varied" and not is_math:
    return varied_question(rng)
  a = nums[0] % 9 + rng.randint(2, 40)
  b = nums[-1] % 7 + rng.randint(2, 12)
  if is_math:
    return MATH_TEMPLATE[0].format(a=a, b=b, c=rng.randint(1, 99))
  i = rng.randrange(len(GSM8K_TEMPLATES))
  c = rng.randint(1, a * b - 1) if i == 0 else a * b + rng.randint(1, 50) if i == 1 else rng.randint(1, 30)
  return GSM8K_TEMPLATES[i][0].format(name=rng.choice(NAMES), item=rng.choice(ITEMS), a=a, b=b, c=c)


def solve(question: str, is_math: bool) -> tuple[str, int]:
  """(worked solution lines, answer) for a templated question; unknown ones get the sum of numbers."""
  for _, pattern, fn in (MATH_TEMPLATE,) if is_math else GSM8K_TEMPLATES:
    m = re.search(pattern, question)
    if m:
      a, b, c = map(int, m.groups())
      value = fn(a, b, c)
      return f"The numbers are {a}, {b} and {c}.\nCombining them as the question says gives {value}.", value
  nums = [int(n) for n in re.findall(r"\d+", question)]
  return f"Adding the numbers {nums} gives {sum(nums)}.", sum(nums)


def chat_reply(body: dict[str, Any], cfg: FakeConfig) -> str:
  """The assistant text for a chat request."""
  messages = body.get("messages") or []
  user = "\n".join(str(m.get("content", "")) for m in messages if m.get("role") == "user")
  is_math = "GSM8K" not in user
  if any(p in user for p in cfg.poison):
    return ""
  if "<reference_question>" in user:
    reference = _tag(user, "reference_question") or ""
    q = new_question(reference, body.get("seed"), body.get("temperature"), is_math, cfg)
    return f"<question>\n{q}\n</question>"
  question = _tag(user, "question") or ""
  work, value = solve(question, is_math)
  if "<verdict>" in user:
    if any(r in question for r in cfg.reject):
      return ("<solution>Cannot be solved.</solution>\n<verdict>INVALID</verdict>\n"
              "<reason>The question is missing information.</reason>\n<question></question>")
    return (f"<solution>{work}</solution>\n<verdict>VALID</verdict>\n<reason>none</reason>\n"
            f"<question>{question}</question>")
  if is_math:
    return f"{work}\nTherefore the answer is $\\boxed{{{value}}}$."
  return f"{work}\n#### {value}"


def completion(body: dict[str, Any], content: str) -> dict[str, Any]:
  return {"id": "chatcmpl-" + uuid.uuid4().hex[:12], "object": "chat.completion", "created": int(time.time()),
          "model": str(body.get("model", "fake")) + "-fake",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": prompt_tokens(body), "completion_tokens": len(content) // 4 + 1,
                    "total_tokens": prompt_tokens(body) + len(content) // 4 + 1}}


def step_of(body: dict[str, Any]) -> str:
  user = json.dumps(body.get("messages"))
  return "new_question" if "<reference_question>" in user else "verify" if "<verdict>" in user else "answer"


# -- HTTP -------------------------------------------------------------------------------------------
class Handler(BaseHTTPRequestHandler):
  protocol_version = "HTTP/1.1"
  server: "FakeServer"

  def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
    pass

  def _send(self, status: int, payload: bytes | dict[str, Any], headers: dict[str, str] | None = None,
            content_type: str = "application/json") -> None:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    try:
      self.send_response(status)
      self.send_header("Content-Type", content_type)
      self.send_header("Content-Length", str(len(data)))
      for k, v in (headers or {}).items():
        self.send_header(k, v)
      self.end_headers()
      self.wfile.write(data)
    except (BrokenPipeError, ConnectionResetError):
      pass

  def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    if self.server.state.config.error_style == "detail":
      return self._send(status, {"detail": message}, headers)
    self._send(status, {"error": {"message": message, "type": "fake_error", "code": str(status)}}, headers)

  def _body(self) -> bytes:
    return self.rfile.read(int(self.headers.get("Content-Length") or 0))

  def _authorized(self) -> bool:
    key = self.server.state.config.api_key
    if key is not None and self.headers.get("Authorization") != f"Bearer {key}":
      self._error(401, "Incorrect API key provided.")
      return False
    return True

  def do_GET(self) -> None:
    state = self.server.state
    if self.path == "/_stats":
      with state.lock:
        return self._send(200, {"counts": dict(state.counts), "requests": state.chat_requests,
                                "rate_limited": state.rate_limited, "batch_rejections": dict(state.batch_rejections),
                                "max_enqueued_tokens": state.max_enqueued_tokens,
                                "max_attempted_tokens": state.max_attempted_tokens,
                                "max_batch_lines": state.max_batch_lines, "max_batch_bytes": state.max_batch_bytes})
    if not self._authorized():
      return
    m = re.fullmatch(r"/v1/files/([\w-]+)/content", self.path)
    if m and m.group(1) in state.files:
      state.count("files.content")
      return self._send(200, state.files[m.group(1)]["data"], content_type="application/octet-stream")
    m = re.fullmatch(r"/v1/batches/([\w-]+)", self.path)
    if m and m.group(1) in state.batches:
      state.count("batches.retrieve")
      return self._send(200, self._poll_batch(m.group(1)))
    if re.fullmatch(r"/v1/batches(\?.*)?", self.path):
      with state.lock:
        data = [dict(b["obj"]) for b in state.batches.values()]
      return self._send(200, {"object": "list", "data": data, "has_more": False,
                              "first_id": data[0]["id"] if data else None,
                              "last_id": data[-1]["id"] if data else None})
    self._error(404, f"no route {self.path}")

  def do_POST(self) -> None:
    state = self.server.state
    raw = self._body()
    if not self._authorized():
      return
    if self.path == "/v1/files":
      return self._upload(raw)
    try:
      body = json.loads(raw)
    except ValueError:   # e.g. a client killed while sending
      return self._error(400, "body is not JSON")
    if self.path == "/v1/chat/completions":
      return self._chat(body)
    if self.path == "/v1/batches":
      return self._create_batch(body)
    self._error(404, f"no route {self.path}")

  def _chat(self, body: dict[str, Any]) -> None:
    state, cfg = self.server.state, self.server.state.config
    step = step_of(body)
    fault = state.draw_fault()
    limits: dict[str, str] = {}
    with state.lock:
      state.chat_requests += 1
      if state.buckets:
        wanted = {"requests": 1.0, "tokens": prompt_tokens(body) + float(body.get("max_tokens") or 0)}
        if fault is None and not all(b.take(wanted[kind]) for kind, b in state.buckets.items()):
          fault = "limited"
          state.rate_limited += 1
        for kind, bucket in state.buckets.items():
          limits.update(bucket.headers(kind))
      if cfg.keep_log:
        state.log.append((time.monotonic(), step, fault or "ok"))
    state.count(f"chat.{fault or 'ok'}")
    if cfg.latency:
      state.stop.wait(cfg.latency)
    if fault == "limited":
      wait_ms = max(bucket.wait_ms(1.0) for bucket in state.buckets.values())
      return self._error(429, "Rate limit reached for requests", {**limits, "retry-after-ms": str(wait_ms)})
    if fault == "429":
      headers = {"Retry-After": cfg.retry_after}
      if cfg.retry_after_ms is not None:
        headers["retry-after-ms"] = cfg.retry_after_ms
      return self._error(429, "Rate limit reached for requests", headers)
    if fault == "500":
      message = "The server had an error while processing your request."
      if cfg.echo_key_in_errors:
        message += f" (request header was {self.headers.get('Authorization')})"
      return self._error(500, message)
    if fault == "hang":
      state.stop.wait(cfg.hang_seconds)
      return self._error(504, "gateway timeout")
    if fault == "malformed":
      with state.lock:
        turn = state.malformed_turn = state.malformed_turn + 1
      if turn % 3 == 1:
        return self._send(200, b'{"id": "chatcmpl-broken", "choices": [')
      if turn % 3 == 2:
        return self._send(200, {"id": "chatcmpl-nochoices", "object": "chat.completion", "usage": None})
      return self._send(200, completion(body, "I'd rather talk about something else."))
    content = "" if fault == "empty" else chat_reply(body, cfg)
    if cfg.untagged and content:
      content = "Sure! Here is what you asked for.\n\n" + re.sub(r"</?\w+>", "", content).strip()
    self._send(200, completion(body, content), limits)

  def _upload(self, raw: bytes) -> None:
    state = self.server.state
    boundary = re.search(r"boundary=(\S+)", self.headers.get("Content-Type", ""))
    if not boundary:
      return self._error(400, "expected multipart/form-data")
    fields: dict[str, bytes] = {}
    filename = "upload.jsonl"
    for part in raw.split(b"--" + boundary.group(1).strip('"').encode()):
      head, sep, data = part.partition(b"\r\n\r\n")
      name = re.search(rb'name="([^"]+)"', head)
      if not sep or not name:
        continue
      fn = re.search(rb'filename="([^"]*)"', head)
      if fn:
        filename = fn.group(1).decode()
      fields[name.group(1).decode()] = data[:-2] if data.endswith(b"\r\n") else data
    if "file" not in fields:
      return self._error(400, "no file part")
    state.count("files.create")
    file_id = "file-" + uuid.uuid4().hex[:16]
    obj = {"id": file_id, "object": "file", "bytes": len(fields["file"]), "created_at": int(time.time()),
           "filename": filename, "purpose": fields.get("purpose", b"batch").decode(), "status": "processed"}
    with state.lock:
      state.files[file_id] = {"obj": obj, "data": fields["file"]}
    self._send(200, obj)

  def _create_batch(self, body: dict[str, Any]) -> None:
    state = self.server.state
    if body.get("input_file_id") not in state.files:
      return self._error(400, "unknown input_file_id")
    state.count("batches.create")
    batch_id = "batch_" + uuid.uuid4().hex[:16]
    obj = {"id": batch_id, "object": "batch", "endpoint": body.get("endpoint"), "input_file_id": body["input_file_id"],
           "completion_window": body.get("completion_window", "24h"), "status": "validating",
           "created_at": int(time.time()), "metadata": body.get("metadata"),
           "request_counts": {"total": 0, "completed": 0, "failed": 0}}
    with state.lock:
      data = state.files[body["input_file_id"]]["data"]
      lines = [json.loads(line) for line in data.split(b"\n") if line.strip()]
      tokens = sum(prompt_tokens(line.get("body") or {}) for line in lines)
      state.max_attempted_tokens = max(state.max_attempted_tokens, self._enqueued() + tokens)
      error = self._validate(len(lines), len(data), tokens)
      if error is not None:
        state.batch_rejections[error[0]] = state.batch_rejections.get(error[0], 0) + 1
        obj.update(status="failed", errors={"object": "list", "data": [
            {"code": error[0], "message": error[1], "param": None, "line": None}]})
      else:
        state.max_batch_lines = max(state.max_batch_lines, len(lines))
        state.max_batch_bytes = max(state.max_batch_bytes, len(data))
        state.max_enqueued_tokens = max(state.max_enqueued_tokens, self._enqueued() + tokens)
      index = len(state.batches)
      state.batches[batch_id] = {"obj": obj, "polls": 0, "index": index, "tokens": tokens}
    self._send(200, obj)

  def _enqueued(self) -> int:
    """Prompt tokens of the batches not finished yet (caller holds the lock)."""
    return sum(b["tokens"] for b in self.server.state.batches.values()
               if b["obj"]["status"] in ("validating", "in_progress", "finalizing"))

  def _validate(self, lines: int, size: int, tokens: int) -> tuple[str, str] | None:
    cfg = self.server.state.config
    if lines > cfg.batch_max_requests:
      return "too_many_requests", f"{lines} requests in one file; at most {cfg.batch_max_requests}"
    if size > cfg.batch_max_bytes:
      return "file_too_large", f"{size} bytes in one file; at most {cfg.batch_max_bytes}"
    if cfg.batch_enqueued_tokens and self._enqueued() + tokens > cfg.batch_enqueued_tokens:
      return "token_limit_exceeded", (f"Enqueued token limit reached. Limit: {cfg.batch_enqueued_tokens} "
                                      "enqueued tokens. Please try again once some in_progress batches "
                                      "have been completed.")
    return None

  def _poll_batch(self, batch_id: str) -> dict[str, Any]:
    state = self.server.state
    with state.lock:
      b = state.batches[batch_id]
      b["polls"] += 1
      if b["obj"]["status"] in ("completed", "failed", "expired", "cancelled") or b["polls"] < state.config.batch_polls:
        if b["obj"]["status"] == "validating":
          b["obj"]["status"] = "in_progress"
        return dict(b["obj"])
      forced = state.config.batch_status[b["index"]] if b["index"] < len(state.config.batch_status) else None
      data = state.files[b["obj"]["input_file_id"]]["data"].decode()
    outputs, errors = [], []
    for line in data.split("\n"):
      if not line.strip():
        continue
      req = json.loads(line)
      fault = state.draw_fault()
      state.count(f"batch_line.{fault or 'ok'}")
      if fault in ("429", "500", "hang"):
        status = 429 if fault == "429" else 500
        errors.append({"id": "batch_req_" + uuid.uuid4().hex[:12], "custom_id": req["custom_id"],
                       "response": {"status_code": status, "request_id": "req_x",
                                    "body": {"error": {"message": f"fake {status}"}}}, "error": None})
        continue
      content = "" if fault == "empty" else chat_reply(req["body"], state.config)
      outputs.append({"id": "batch_req_" + uuid.uuid4().hex[:12], "custom_id": req["custom_id"],
                      "response": {"status_code": 200, "request_id": "req_x",
                                   "body": completion(req["body"], content)}, "error": None})
    if forced in ("failed", "expired", "cancelled"):
      outputs = outputs[: len(outputs) // 2] if forced == "expired" else []
      errors = []
    with state.lock:
      obj = b["obj"]
      obj["status"] = forced or "completed"
      obj["request_counts"] = {"total": len(outputs) + len(errors), "completed": len(outputs), "failed": len(errors)}
      for kind, lines in (("output_file_id", outputs), ("error_file_id", errors)):
        if lines:
          fid = "file-" + uuid.uuid4().hex[:16]
          payload = "".join(json.dumps(x) + "\n" for x in lines).encode()
          state.files[fid] = {"obj": {"id": fid}, "data": payload}
          obj[kind] = fid
      return dict(obj)


class FakeServer(ThreadingHTTPServer):
  """The HTTP server; `state` holds config and counters."""

  daemon_threads = True
  allow_reuse_address = True
  request_queue_size = 256     # many clients connect at once

  def __init__(self, config: FakeConfig, port: int = 0):
    self.state = FakeState(config)
    self._connections: set[Any] = set()
    self._connections_lock = threading.Lock()
    super().__init__(("127.0.0.1", port), Handler)

  def process_request(self, request: Any, client_address: Any) -> None:
    with self._connections_lock:
      self._connections.add(request)
    super().process_request(request, client_address)

  def shutdown_request(self, request: Any) -> None:
    with self._connections_lock:
      self._connections.discard(request)
    super().shutdown_request(request)

  @property
  def base_url(self) -> str:
    return f"http://127.0.0.1:{self.server_address[1]}/v1"

  def handle_error(self, request: Any, client_address: Any) -> None:
    if not isinstance(sys.exc_info()[1], ConnectionError):   # clients hanging up are expected
      super().handle_error(request, client_address)

  def start(self) -> "FakeServer":
    threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return self

  def close(self) -> None:
    """Stops listening and drops every open connection."""
    self.state.stop.set()
    self.shutdown()
    self.server_close()
    with self._connections_lock:
      open_connections = list(self._connections)
    for connection in open_connections:
      try:
        connection.shutdown(socket.SHUT_RDWR)
      except OSError:
        pass


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--port", type=int, default=0)
  parser.add_argument("--config", default="{}", help="FakeConfig fields as a JSON object")
  args = parser.parse_args(argv)
  server = FakeServer(FakeConfig(**json.loads(args.config)), args.port)
  print(f"PORT {server.server_address[1]}", flush=True)
  try:
    server.serve_forever(poll_interval=0.05)
  except KeyboardInterrupt:
    pass
  finally:
    server.state.stop.set()
    server.server_close()


if __name__ == "__main__":
  sys.exit(main())
