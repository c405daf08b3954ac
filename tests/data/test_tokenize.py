"""Templates + tokenization: loss mask exactly on the response (and EOS), long-row policies."""

import numpy as np
import pytest

from mathjax_sft.data import templates
from mathjax_sft.data.sources import Row
from mathjax_sft.data.tokenize import load_tokenizer, tokenize_rows

ROW = Row(prompt="What is 7 times 6?", response="7 * 6 = 42\n#### 42", origin="t:1")


def _masked_text(tok, example):
  ids = example["targets"][example["loss_mask"] == 1]
  return tok.decode(ids)


@pytest.mark.parametrize("template", ["alpaca", "xwin"])
def test_byte_tokenizer_mask_is_response_plus_eos(byte_tokenizer, template):
  tok = load_tokenizer(byte_tokenizer)
  (ex,), stats = tokenize_rows([ROW], tok, template, seq_len=512)
  prompt = templates.render_prompt(template, ROW.prompt)
  response = templates.render_response(template, ROW.response)
  assert _masked_text(tok, ex) == response + "</s>"
  # inputs/targets are one shifted sequence: BOS + prompt + response + EOS
  full = np.concatenate([ex["inputs"], ex["targets"][-1:]])
  assert tok.decode(full) == "<s>" + prompt + response + "</s>"
  assert (ex["inputs"][1:] == ex["targets"][:-1]).all()
  # every masked position is a response byte: the mask starts right after the prompt
  first = int(np.argmax(ex["loss_mask"]))
  assert first + 1 == 1 + len(prompt.encode())  # BOS + prompt bytes precede the first target
  assert ex["loss_mask"][first:].all()
  assert stats.kept == 1 and stats.loss_tokens == len(response.encode()) + 1


def test_chat_template_with_real_tokenizer(smollm2_tokenizer):
  tok = smollm2_tokenizer
  (ex,), _ = tokenize_rows([ROW], tok, "chat", seq_len=512)
  assert _masked_text(tok, ex) == ROW.response + "<|im_end|>"
  prompt_ids = tok(templates.render_prompt("chat", ROW.prompt, tok), add_special_tokens=False)["input_ids"]
  n_prompt = len(prompt_ids)
  assert list(ex["inputs"][:n_prompt]) == prompt_ids
  assert not ex["loss_mask"][:n_prompt - 1].any() and ex["loss_mask"][n_prompt - 1:].all()
  # system prompt override: the default SmolLM system turn goes away
  (ex2,), _ = tokenize_rows([ROW], tok, "chat", seq_len=512, system_prompt="Solve it.")
  assert "Solve it." in tok.decode(ex2["inputs"]) and "SmolLM" not in tok.decode(ex2["inputs"])


def test_long_rows_truncate_drop_and_prompt_fill(byte_tokenizer):
  tok = load_tokenizer(byte_tokenizer)
  long = Row(prompt="p", response="x" * 400, origin="t:2")
  huge_prompt = Row(prompt="q" * 400, response="y", origin="t:3")
  prompt_len = len(templates.render_prompt("alpaca", "p").encode()) + 1  # + BOS
  seq_len = prompt_len + 50
  exs, stats = tokenize_rows([ROW, long, huge_prompt], tok, "alpaca", seq_len=seq_len)
  assert len(exs) == 2 and stats.truncated == 1 and stats.dropped_prompt_fills == 1
  assert len(exs[1]["inputs"]) == seq_len and exs[1]["loss_mask"].sum() == 51
  assert tok.decode(exs[1]["targets"][exs[1]["loss_mask"] == 1]) == "x" * 51  # no EOS: cut
  exs, stats = tokenize_rows([ROW, long, huge_prompt], tok, "alpaca", seq_len=seq_len,
                             long_rows="drop")
  assert len(exs) == 1 and stats.dropped_long == 2 and stats.truncated == 0
  assert stats.rows == 3 and stats.kept == 1


def test_unknown_template():
  with pytest.raises(ValueError, match="unknown prompt template"):
    templates.render_prompt("vicuna", "q")
