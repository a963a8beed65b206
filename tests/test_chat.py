"""One chat turn with a scripted engine: budget notices, refusals, and the request log line."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from unittest.mock import ANY

import pytest
from PIL import Image

from app.admission import Admission, Caller
from app.chat import ERROR_TITLE, Shared, answer, format_stats, respond
from app.config import Settings
from app.engine import QWEN2_FORMAT, ChatRequest, Delta, EngineStatus, GenerationOptions
from app.errors import UserFacingError
from app.media import QWEN2_VL
from app.messages import TEMPLATE_TOKENS, is_notice
from app.options import ChatOptions
from app.requestlog import anonymous_id

OPTIONS = ChatOptions(generation=GenerationOptions(max_new_tokens=10))
SESSION = "abc123session"


class ScriptedEngine:
    """Streams the given deltas (raising an exception where one is given) and records requests."""

    family = "qwen2_vl"
    geometry = QWEN2_VL
    template_tokens = TEMPLATE_TOKENS
    generation_defaults: dict = {}
    prompt_format = QWEN2_FORMAT

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


def run(engine, message, history=(), settings=Settings(), session: str = "") -> list:
    """Every list of messages the turn yields (bad input raises, as `answer` does)."""
    caller = Caller(session=session)
    turn_ = answer(engine, settings, message, list(history), OPTIONS, caller=caller)
    return [update.messages() for update in turn_]


def turn(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def log_lines(caplog) -> list[dict]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "app.requests"]


@pytest.fixture(autouse=True)
def _capture_requests(caplog):
    caplog.set_level(logging.INFO, logger="app.requests")


# --- the answer and the budget ----------------------------------------------------------------


def test_the_answer_streams_then_gets_its_statistics(caplog):
    shown = run(ScriptedEngine(), "Hi")
    assert shown[-1][0] == {"role": "assistant", "content": "Hello there!", "metadata": ANY}
    assert is_notice(shown[-1][-1]) and shown[-1][-1]["metadata"]["title"].startswith("3 tokens")
    # Every message of the answer names its request, as the log line does (ratings use it).
    [line] = log_lines(caplog)
    assert {m["metadata"]["id"] for update in shown for m in update} == {line["request"]}
    assert len(line["request"]) == 12


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
    assert shown[-1][1] == {"role": "assistant", "content": "Hello there!", "metadata": ANY}
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


def test_respond_shows_bad_input_as_a_notice_and_keeps_what_was_shown():
    shown = list(respond(ScriptedEngine(), Settings(), "", [], OPTIONS))
    [[error]] = shown
    assert is_notice(error) and error["metadata"]["title"] == ERROR_TITLE
    assert "Type a question" in error["content"]
    failing = ScriptedEngine(Delta("Half", 1), UserFacingError("The server is down."))
    last = list(respond(failing, Settings(), "Hi", [], OPTIONS))[-1]
    assert last[0] == {"role": "assistant", "content": "Half", "metadata": ANY}
    assert last[-1]["metadata"]["title"] == ERROR_TITLE and "down" in last[-1]["content"]


def test_raw_settings_are_checked_with_a_message_naming_the_setting():
    with pytest.raises(UserFacingError, match="Temperature"):
        list(answer(ScriptedEngine(), Settings(), "Hi", [], {"temperature": "hot"}))
    with pytest.raises(UserFacingError, match="history must be a list"):
        list(answer(ScriptedEngine(), Settings(), "Hi", "not a list", OPTIONS))  # type: ignore


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
    run(engine, message, session=SESSION)
    [line] = log_lines(caplog)
    assert line["outcome"] == "ok"
    assert line["session"] == anonymous_id(SESSION)
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
    turn_ = respond(engine, Settings(), "Talk", [], OPTIONS, caller=Caller(session=SESSION))
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


def test_boxes_are_drawn_on_the_latest_image_enlarged_when_small(tmp_path: Path):
    from app.grounding import DRAWING_MIN_SIDE
    from tests.media_corpus import write_video

    Image.new("RGB", (56, 56), "white").save(tmp_path / "old.png")
    Image.new("RGB", (280, 140), "white").save(tmp_path / "latest.png")
    clip = write_video(tmp_path / "clip.mp4", frames=4)
    raw = "<|object_ref_start|>cat<|object_ref_end|><|box_start|>(0,0),(500,1000)<|box_end|>"
    files = [str(tmp_path / "old.png"), str(tmp_path / "latest.png"), str(clip)]
    [*_, last] = run(ScriptedEngine(Delta(raw, 1)), {"text": "Find the cat", "files": files})
    [path] = [m["content"]["path"] for m in last if isinstance(m["content"], dict)]
    drawing = Image.open(path)
    assert min(drawing.size) == DRAWING_MIN_SIDE and drawing.size[0] == 2 * drawing.size[1]
    assert drawing.getpixel((drawing.width // 2, drawing.height // 2)) != (255, 255, 255)
    no_boxes = run(ScriptedEngine(Delta("no boxes here", 1)), {"text": "?", "files": files})
    assert not any(isinstance(m["content"], dict) for m in no_boxes[-1])
    video_only = run(ScriptedEngine(Delta(raw, 1)), {"text": "?", "files": [str(clip)]})
    assert not any(isinstance(m["content"], dict) for m in video_only[-1])


def test_the_next_prompt_gets_the_models_own_answer_for_the_same_client():
    raw = "The <|object_ref_start|>cat<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>."
    shared = Shared(Admission(per_client=4))
    ann = Caller(client="address:1.1.1.1")
    first = list(answer(ScriptedEngine(Delta(raw, 5)), Settings(), "Where?", [], OPTIONS,
                        caller=ann, shared=shared))[-1]  # fmt: skip
    assert first.text == "The **cat**."
    history = [{"role": "user", "content": "Where?"}, {"role": "assistant", "content": first.text}]
    engine = ScriptedEngine()
    list(answer(engine, Settings(), "And?", history, OPTIONS, caller=ann, shared=shared))
    assert engine.requests[0].messages[1]["content"] == raw, "markers and all, as generated"
    bob = Caller(client="address:2.2.2.2")
    list(answer(engine, Settings(), "And?", history, OPTIONS, caller=bob, shared=shared))
    assert engine.requests[1].messages[1]["content"] == "The **cat**.", "not another client's"


def test_statistics_say_how_much_of_the_prompt_came_from_the_cache(caplog):
    engine = ScriptedEngine(Delta("Hi", 1, cached_tokens=30), Delta("!", 1))
    shown = run(engine, "Hello")
    assert "· 30 of" in shown[-1][-1]["metadata"]["title"]
    assert log_lines(caplog)[0]["cached_tokens"] == 30
    assert "cached" not in format_stats(3, 0.1, 1.0, 40, 0)
