"""Prompt templates: question -> the text the model sees before its answer.

The same `render_prompt` must be used for training and for sampling: the model learns to continue
exactly this text. The response is appended right after the prompt (templates end where the
answer starts), followed by the tokenizer's EOS token.

  alpaca  Stanford-Alpaca / WizardMath instruction format.
  xwin    The Vicuna-style conversation used by Xwin-Math's released models and evaluation.
  chat    The tokenizer's own chat template (user turn + generation prompt); `system_prompt`
          None keeps the template's default system turn, "" drops it where the template allows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TEMPLATES = ("alpaca", "xwin", "chat")

ALPACA = ("Below is an instruction that describes a task. Write a response that appropriately "
          "completes the request.\n\n### Instruction:\n{question}\n\n### Response:\n")

XWIN = ("A chat between a curious user and an artificial intelligence assistant. The assistant "
        "gives helpful, detailed, and polite answers to the user's questions. USER: {question} "
        "Give your solution in detail. In the end, write your final answer in the format of "
        "'The answer is: <ANSWER>.' ASSISTANT:")   # Xwin-Math eval/prompt/xwin-math.json

# Text put between the prompt and the response (part of the response, so it carries loss).
RESPONSE_PREFIX = {"alpaca": "", "xwin": " ", "chat": ""}

# Text that ends a sample in this format: the model has started a new turn. Xwin-Math's own
# evaluation stops on these (and their ":" forms, which they prefix); alpaca on its headers.
STOP_STRINGS = {
    "alpaca": ("### Instruction", "### Response"),
    "xwin": ("</s>", "USER", "ASSISTANT", "Question", "Instruction", "Response"),
    "chat": (),
}

# Whether the tokenizer should add its special tokens (BOS) itself: chat templates write them.
ADD_SPECIAL_TOKENS = {"alpaca": True, "xwin": True, "chat": False}


# The prompt format a model was fine-tuned with, written into its checkpoint directory (and
# copied with the tokenizer files into an HF export and back), so the sampler can use it.
PROMPT_FORMAT_FILE = "prompt_format.json"
DEFAULT_TEMPLATE = "chat"   # for a checkpoint that records none (e.g. an instruct model from a hub)


def save_prompt_format(directory: str | Path, template: str,
                       system_prompt: str | None = None) -> Path:
  check_template(template)
  path = Path(directory) / PROMPT_FORMAT_FILE
  path.write_text(json.dumps({"template": template, "system_prompt": system_prompt,
                              "stop_strings": list(STOP_STRINGS[template])}, indent=2) + "\n")
  return path


def load_prompt_format(directory: str | Path) -> dict[str, Any] | None:
  """The recorded prompt format of a checkpoint dir, or None when it records none."""
  path = Path(directory) / PROMPT_FORMAT_FILE
  if not path.is_file():
    return None
  try:
    fmt = json.loads(path.read_text())
    check_template(fmt["template"])
  except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
    raise ValueError(f"{path}: not a prompt format record ({e})") from None
  return fmt


def check_template(template: str) -> None:
  if template not in TEMPLATES:
    raise ValueError(f"unknown prompt template {template!r}; known: {TEMPLATES}")


def render_prompt(template: str, question: str, tokenizer: Any = None,
                  system_prompt: str | None = None) -> str:
  """The prompt text for one question (no BOS for alpaca/xwin: the tokenizer adds it)."""
  check_template(template)
  if template == "alpaca":
    return ALPACA.format(question=question)
  if template == "xwin":
    return XWIN.format(question=question)
  if tokenizer is None or not getattr(tokenizer, "chat_template", None):
    raise ValueError("template 'chat' needs a tokenizer with a chat template")
  messages = [{"role": "user", "content": question}]
  if system_prompt is not None:
    messages.insert(0, {"role": "system", "content": system_prompt})
  return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def render_response(template: str, response: str) -> str:
  """The answer text as it follows the prompt (EOS is added as a token id, not as text)."""
  check_template(template)
  return RESPONSE_PREFIX[template] + response
