"""Prompt rendering and reply parsing (replies are data: parsed, never evaluated)."""

from __future__ import annotations

import pytest

from mathjax_sft.synth import prompts
from mathjax_sft.synth.formats import GSM8K, MATH
from mathjax_sft.synth.references import Reference
from mathjax_sft.synth.replies import ReplyError, parse_answer, parse_new_question, parse_verify
from mathjax_sft.synth.steps import answer_parser


def test_render_is_single_pass_and_strict():
  assert prompts.render("a {{x}} b", x="{{y}} $\\frac{1}{2}$") == "a {{y}} $\\frac{1}{2}$ b"
  with pytest.raises(KeyError):
    prompts.render("{{missing}}")


def test_step_prompts_carry_rules_and_data():
  ref = Reference(id="train/algebra/1.json", question="Find $x$ if $2x+3=7$.", subject="Algebra")
  user = prompts.new_question_messages(MATH, ref, k=1)[1]["content"]
  assert "<reference_question>\nFind $x$ if $2x+3=7$.\n</reference_question>" in user
  assert "subject: Algebra" in user and "MATH" in user and prompts.VARIATIONS[1] in user
  for rule in ("common sense", "solvable on its own", "must not contain the answer", "follow the format"):
    assert rule in user
  verify = prompts.verify_messages(GSM8K, "Q?")[1]["content"]
  assert "solve the question step by step" in verify and "<verdict>VALID or INVALID</verdict>" in verify
  answer = prompts.answer_messages(GSM8K, "Q?")[1]["content"]
  assert "#### <number>" in answer and "<question>\nQ?\n</question>" in answer
  assert "\\boxed{}" in prompts.answer_messages(MATH, "Q?")[1]["content"]


def test_parse_new_question():
  assert parse_new_question("Sure!\n<question>\n Ann has 3 cats and 2 dogs. How many pets? \n</question>") == \
      "Ann has 3 cats and 2 dogs. How many pets?"
  for bad, reason in (("", "empty_content"), (None, "empty_content"), ("  \n", "empty_content"),
                      ("Ann has 3 cats. How many pets?", "malformed_reply"),
                      ("<question>Too short?</question>", "malformed_reply"),
                      ("<question>" + "word " * 2000 + "</question>", "malformed_reply")):
    with pytest.raises(ReplyError) as err:
      parse_new_question(bad)
    assert err.value.reason == reason


def test_parse_verify_valid_refined_invalid_and_malformed():
  q = "Ann has 3 cats and 2 dogs. How many pets does she have?"
  v = parse_verify(f"<solution>5</solution><verdict>VALID</verdict><reason>none</reason><question>{q}</question>", q)
  assert v.valid and v.question == q and not v.refined
  v = parse_verify("<solution>5</solution><verdict>valid</verdict><reason>fixed wording</reason>"
                   "<question>Ann has 3 cats and 2 dogs. How many pets does Ann have?</question>", q)
  assert v.valid and v.refined and v.question.endswith("does Ann have?")
  v = parse_verify("<verdict>VALID</verdict>", q)
  assert v.valid and v.question == q
  v = parse_verify("<verdict>INVALID</verdict><reason>missing the number of birds</reason><question></question>", q)
  assert not v.valid and v.reason == "missing the number of birds"
  for bad in ("VALID", "<verdict>MAYBE</verdict>", "__import__('os').system('echo pwned')"):
    with pytest.raises(ReplyError):
      parse_verify(bad, q)


def test_answer_parser_checks_format():
  assert parse_answer("  3 + 4 = 7\n#### 7 ") == "3 + 4 = 7\n#### 7"
  parse = answer_parser(GSM8K)
  assert parse("3 + 4 = 7\n#### 7").endswith("#### 7")
  with pytest.raises(ReplyError) as err:
    parse("The answer is 7.")
  assert err.value.reason == "answer_format"
  with pytest.raises(ReplyError) as err:
    answer_parser(MATH)("The answer is 7.")
  assert err.value.reason == "answer_format"
