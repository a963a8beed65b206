"""Reasoning of thinking models: split from the answer as it streams, shown apart, kept out of
later prompts, and a turn stopped while thinking is not a failed turn."""

from __future__ import annotations

from dataclasses import replace
from unittest.mock import ANY

import pytest

from app.admission import Caller
from app.chat import CUT_OFF_TITLE, answer
from app.config import Settings
from app.engine import QWEN3_FORMAT, Delta, GenerationOptions
from app.messages import history_to_messages, is_notice
from app.options import ChatOptions
from app.thinking import split_reasoning
from tests.test_chat import ScriptedEngine

THINKING = replace(QWEN3_FORMAT, generation_prompt="<|im_start|>assistant\n<think>\n")


@pytest.mark.parametrize(
    ("raw", "opened", "reasoning", "answer", "thinking"),
    [
        ("Let me look.\n</think>\n\nA cat.", True, "Let me look.", "A cat.", False),
        ("<think>\nHm.</think>Yes.", False, "Hm.", "Yes.", False),
        ("Still looking", True, "Still looking", "", True),
        ("Almost</thi", True, "Almost", "", True),  # half a closing tag is not shown
        ("A cat.", False, None, "A cat.", False),
        (
            "A </think> in an ordinary answer",
            False,
            None,
            "A </think> in an ordinary answer",
            False,
        ),
    ],
)
def test_reasoning_is_split_from_the_answer(raw, opened, reasoning, answer, thinking):
    split = split_reasoning(raw, opened)
    assert (split.reasoning, split.answer, split.thinking) == (reasoning, answer, thinking)


def thinking_engine(*script: Delta) -> ScriptedEngine:
    engine = ScriptedEngine(*script)
    engine.prompt_format = THINKING
    return engine


def run(engine, options=ChatOptions(generation=GenerationOptions(max_new_tokens=10))) -> list:
    return list(answer(engine, Settings(), "What is it?", [], options, caller=Caller()))


def test_the_reasoning_streams_in_an_open_block_then_closes_above_the_answer():
    engine = thinking_engine(Delta("I see fur", 1), Delta(" and whiskers.", 1),
                             Delta("</think>\n\nA cat.", 1))  # fmt: skip
    updates = run(engine)
    first = updates[0].messages()[0]
    assert first["metadata"]["status"] == "pending" and "Thinking" in first["metadata"]["title"]
    assert first["content"] == "I see fur"
    final = updates[-1].messages()
    block, shown = final[0], final[1]
    assert block["metadata"] == {"title": block["metadata"]["title"], "status": "done", "id": ANY}
    assert block["metadata"]["title"].startswith("💭 Thought for ")
    assert block["content"] == "I see fur and whiskers." and shown["content"] == "A cat."
    assert updates[-1].details()["reasoning"] == "I see fur and whiskers."
    assert updates[-1].text == "A cat."


def test_reasoning_never_goes_back_to_the_model_and_a_stop_while_thinking_keeps_the_turn():
    stopped = run(thinking_engine(Delta("Hmm, let me", 1)))[-1].messages()
    assert is_notice(stopped[0]) and len(stopped) == 2  # the reasoning and the statistics
    history = [{"role": "user", "content": "What is it?"}, *stopped]
    later = history_to_messages([*history, {"role": "user", "content": "Well?"}])
    assert later == [
        {"role": "user", "content": [
            {"type": "text", "text": "What is it?"}, {"type": "text", "text": "Well?"},
        ]},
    ]  # fmt: skip


def test_an_answer_cut_off_while_thinking_says_so():
    engine = thinking_engine(*[Delta("thinking ", 1)] * 10)
    final = run(engine)[-1].messages()
    titles = [m["metadata"]["title"] for m in final if is_notice(m)]
    assert CUT_OFF_TITLE in titles


def test_a_model_without_thinking_shows_no_block():
    final = run(ScriptedEngine(Delta("A cat.", 1)))[-1].messages()
    assert final[0] == {"role": "assistant", "content": "A cat.", "metadata": {"id": ANY}}
