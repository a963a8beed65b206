"""One chat turn with a scripted engine: budget notices, refusals, and the request log line."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from app.chat import ChatOptions, respond
from app.config import Settings
from app.engine import ChatRequest, Delta, EngineStatus, GenerationOptions
from app.errors import UserFacingError
from app.messages import is_notice

OPTIONS = ChatOptions(generation=GenerationOptions(max_new_tokens=10))
SESSION = "abc123session"


class ScriptedEngine:
    """Streams the given deltas (raising an exception where one is given) and records requests."""

    family = "qwen2_vl"

    def __init__(self, *script: Delta | BaseException) -> None:
        self.script = script or (Delta("Hello", 1), Delta(" there", 1), Delta("!", 1))
        self.requests: list[ChatRequest] = []
        self.closed = False

    def status(self) -> EngineStatus:
        return EngineStatus("ready")

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def stream(self, request: ChatRequest) -> Iterator[Delta]:
        self.requests.append(request)
        try:
            for step in self.script:
                if isinstance(step, BaseException):
                    raise step
                yield step
        finally:
            self.closed = True


def run(engine, message, history=(), settings=Settings(), **kwargs) -> list:
    """Every list of messages the turn yields."""
    return list(respond(engine, settings, message, list(history), OPTIONS, **kwargs))


def turn(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def log_lines(caplog) -> list[dict]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "app.requests"]


@pytest.fixture(autouse=True)
def _capture_requests(caplog):
    caplog.set_level(logging.INFO, logger="app.requests")


# --- the answer and the budget ----------------------------------------------------------------


def test_the_answer_streams_then_gets_its_statistics():
    shown = run(ScriptedEngine(), "Hi")
    assert shown[-1][0] == {"role": "assistant", "content": "Hello there!"}
    assert is_notice(shown[-1][-1]) and shown[-1][-1]["metadata"]["title"].startswith("3 tokens")


def test_a_queued_request_shows_its_place_and_the_estimated_wait():
    engine = ScriptedEngine(
        Delta(queue_position=2), Delta(queue_position=1, wait_seconds=4.4), Delta("ok", 1)
    )
    titles = [shown[0]["metadata"]["title"] for shown in run(engine, "Hi")[:2]]
    assert titles == [
        "⏳ Waiting for the model: position 2 in line",
        "⏳ Waiting for the model: position 1 in line (about 4 s)",
    ]


def long_history(turns: int) -> list[dict]:
    words = "lorem ipsum " * 20
    return [m for i in range(turns) for m in turn(f"Question {i}: {words}", f"Answer {i}.")]


def test_left_out_turns_are_announced_before_the_answer():
    engine = ScriptedEngine()
    settings = Settings(max_context=200)  # three of the five 47-token turns fit
    options = ChatOptions(system_prompt="Be brief.", generation=OPTIONS.generation)
    shown = list(respond(engine, settings, "Last one?", long_history(5), options))
    first = shown[-1][0]
    assert is_notice(first) and first["metadata"]["title"] == "✂️ 2 earlier turns left out"
    assert "2 oldest turns" in first["content"] and "200 tokens" in first["content"]
    assert shown[-1][1] == {"role": "assistant", "content": "Hello there!"}
    messages = engine.requests[0].messages
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert "Question 2:" in messages[1]["content"][0]["text"]
    assert messages[-1]["content"] == [{"type": "text", "text": "Last one?"}]


def test_the_turn_after_a_left_out_notice_still_sees_its_question():
    history = long_history(5)
    shown = run(ScriptedEngine(), "Last one?", history, Settings(max_context=200))
    history += [{"role": "user", "content": "Last one?"}, *shown[-1]]
    engine = ScriptedEngine()
    run(engine, "And then?", history)  # a large context: nothing left out
    texts = [str(m["content"]) for m in engine.requests[0].messages]
    assert any("Last one?" in text for text in texts)
    assert engine.requests[0].messages[-2] == {"role": "assistant", "content": "Hello there!"}


def test_a_turn_too_large_alone_is_refused_before_the_engine():
    engine = ScriptedEngine()
    with pytest.raises(UserFacingError, match="too large.*shorter text"):
        run(engine, "word " * 500, turn("a", "b"), Settings(max_context=400))
    assert engine.requests == []


# --- the request log --------------------------------------------------------------------------


def test_one_log_line_per_request_without_content(caplog, tmp_path: Path):
    picture = tmp_path / "secret-name.png"
    Image.new("RGB", (60, 40), "red").save(picture)
    engine = ScriptedEngine(Delta(queue_position=1), Delta(), Delta("Secret", 1), Delta("s", 1))
    message = {"text": "my secret question", "files": [str(picture)]}
    run(engine, message, session_id=SESSION)
    [line] = log_lines(caplog)
    assert line["outcome"] == "ok"
    assert line["session"] == engine.requests[0].session_id
    assert len(line["session"]) == 12 and SESSION not in json.dumps(line)
    assert line["generated_tokens"] == 2 and line["images"] == 1 and line["videos"] == 0
    assert line["prompt_tokens"] > 4  # the image's pads alone are 4 tokens
    assert 0 <= line["queue_wait_s"] <= line["ttft_s"] <= line["total_s"]
    assert line["prepare_s"] <= line["ttft_s"] and line["tokens_per_s"] > 0
    assert "secret" not in caplog.text.lower(), "nothing of the user's content"


def test_log_content_adds_the_message_and_the_answer(caplog):
    run(
        ScriptedEngine(), {"text": "What is 2+2?", "files": []}, settings=Settings(log_content=True)
    )
    [line] = log_lines(caplog)
    assert line["message"] == "What is 2+2?" and line["answer"] == "Hello there!"


def test_a_stopped_answer_is_logged_as_stopped(caplog):
    engine = ScriptedEngine(*[Delta("word ", 1)] * 100)
    turn_ = respond(engine, Settings(), "Talk", [], OPTIONS, session_id=SESSION)
    next(turn_)
    turn_.close()  # what Gradio does on Stop or disconnect
    assert engine.closed
    [line] = log_lines(caplog)
    assert line["outcome"] == "stopped" and line["generated_tokens"] == 1


def test_bad_input_is_logged_as_rejected(caplog, tmp_path: Path):
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    for message in ("", {"text": "What?", "files": [str(fake)]}):
        with pytest.raises(UserFacingError):
            run(ScriptedEngine(), message)
    lines = log_lines(caplog)
    assert [line["outcome"] for line in lines] == ["rejected", "rejected"]
    assert lines[0]["prompt_tokens"] is None and lines[0]["ttft_s"] is None


@pytest.mark.parametrize(
    ("failure", "outcome"),
    [
        (UserFacingError("The server is down."), "error:engine"),
        (RuntimeError(), "error:RuntimeError"),
    ],
)
def test_a_failing_engine_is_logged_with_the_kind_of_error(caplog, failure, outcome):
    with pytest.raises(type(failure)):
        run(ScriptedEngine(Delta("Half", 1), failure), "Hi")
    [line] = log_lines(caplog)
    assert line["outcome"] == outcome and line["generated_tokens"] == 1


def test_without_a_session_the_id_is_a_dash(caplog):
    run(ScriptedEngine(), "Hi")
    assert log_lines(caplog)[0]["session"] == "-"


def test_boxes_are_drawn_on_the_latest_image_enlarged_when_small():
    from PIL import Image

    from app.chat import DRAWING_MIN_SIDE, boxes_image
    from app.media import ImageInput, VideoInput

    old = ImageInput(image=Image.new("RGB", (56, 56), "white"))
    latest = ImageInput(image=Image.new("RGB", (280, 140), "white"))
    video = VideoInput(frames=[latest.image] * 2, fps=2.0, duration=1.0)
    raw = "<|object_ref_start|>cat<|object_ref_end|><|box_start|>(0,0),(500,1000)<|box_end|>"
    path = boxes_image(raw, "qwen2_vl", [old, latest, video])
    drawing = Image.open(path)
    assert min(drawing.size) == DRAWING_MIN_SIDE and drawing.size[0] == 2 * drawing.size[1]
    assert drawing.getpixel((drawing.width // 2, drawing.height // 2)) != (255, 255, 255)
    assert boxes_image("no boxes here", "qwen2_vl", [latest]) is None
    assert boxes_image(raw, "qwen2_vl", [video]) is None
