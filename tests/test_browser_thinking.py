"""A thinking model in the browser: its reasoning streams in an open block above the answer,
then closes under "Thought for N s" once the answer starts; screenshots of both moments.

The tiny Qwen3-VL-Thinking checkpoint is scripted by its generation config (tests/browser.py)
to reason and then answer one question; a wrapper paces its tokens so that the page can be
caught while the reasoning streams.
"""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from app.config import Settings
from tests.browser import (
    browser_page,
    launch_demo,
    screenshot,
    scripted_checkpoint,
    send,
    wait_answers,
    wait_ready,
)
from tests.conftest import CACHE, Recording, free_port

pytestmark = pytest.mark.browser

QUESTION = "Is the square red?"
REASONING = (
    "The user asks about the colour. I look at the square: its pixels are red, and the "
    "background is white. So the answer is yes."
)
ANSWER = "Yes, the square is red."
PACE_SECONDS = 0.02  # a character: the page can be caught while the reasoning streams


class Paced(Recording):
    """The real engine, its text handed on a character at a time (the tiny model is too fast to
    see it stream)."""

    def stream(self, request):
        for delta in super().stream(request):
            if not delta.text:
                yield delta
                continue
            for index, character in enumerate(delta.text):
                time.sleep(PACE_SECONDS)
                tokens = delta.tokens if index == 0 else 0
                yield replace(delta, text=character, tokens=tokens)


@pytest.fixture(scope="module")
def thinking_app(tiny_checkpoint_thinking):
    checkpoint = scripted_checkpoint(
        tiny_checkpoint_thinking,
        CACHE / "tiny-qwen3-vl-thinking-scripted",
        {QUESTION: f"{REASONING}\n</think>\n\n{ANSWER}"},
        generation_prompt="<|im_start|>assistant\n<think>\n",
    )
    settings = Settings(checkpoint_path=str(checkpoint), cpu_only=True, server_port=free_port())
    from app.engine.local import LocalEngine

    engine = Paced(LocalEngine(settings).start(background=False))
    demo = launch_demo(engine, settings)
    yield f"http://127.0.0.1:{settings.server_port}/", engine
    demo.close()


def test_the_reasoning_streams_open_then_closes_above_the_answer(thinking_app):
    url, recording = thinking_app
    with browser_page(url, viewport={"width": 1280, "height": 1000}) as page:
        wait_ready(page)
        send(page, QUESTION)
        streaming = page.get_by_text("Thinking…")
        streaming.first.wait_for(timeout=60_000)
        page.get_by_text("The user asks").first.wait_for(timeout=30_000)
        page.get_by_text("I look at the square").first.wait_for(timeout=30_000)
        screenshot(page, "thinking-streaming")
        assert page.get_by_text(ANSWER).count() == 0, "the answer has not started yet"
        wait_answers(page, 1)
        page.get_by_text(ANSWER).first.wait_for()
        done = page.get_by_text("Thought for")
        assert done.count() == 1 and streaming.count() == 0
        assert not page.get_by_text("The user asks").first.is_visible(), "closed once answered"
        page.wait_for_timeout(300)  # the conversation list updates after the answer
        screenshot(page, "thinking-done")
        done.first.click()  # it opens again on request
        page.get_by_text("The user asks").first.wait_for(state="visible")
    answer_turn = recording.requests[-1].messages[-1]["content"]
    assert answer_turn[-1]["text"] == QUESTION
