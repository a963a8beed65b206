"""End to end: the launched app driven through its documented /chat API with gradio_client."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from app.messages import media_of


@pytest.fixture(scope="module")
def red_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("media") / "red.png"
    Image.new("RGB", (64, 48), (220, 20, 20)).save(path)
    return path


def test_image_turn_streams_a_growing_answer(client, app, red_png):
    job = client.submit(
        {"text": "What is this?", "files": [handle_file(red_png)]}, api_name="/chat"
    )
    outputs = list(job)
    answers = [o for o in outputs if o]
    assert answers, "the answer streamed"
    assert len(set(answers)) > 1, "it arrived in several growing pieces"
    assert all(b.startswith(a) for a, b in zip(answers, answers[1:], strict=False))
    request = app[1].requests[-1]
    assert [item["type"] for item in request.messages[-1]["content"]] == ["image", "text"]
    assert media_of(request.messages)[0].decode().image.size[0] % 28 == 0


def test_second_turn_sends_the_history(client, app, red_png):
    first = client.predict(
        {"text": "Describe it.", "files": [handle_file(red_png)]}, api_name="/chat"
    )
    history = [
        {"role": "user", "content": [{"type": "file", "file": handle_file(red_png)}]},
        {"role": "user", "content": [{"type": "text", "text": "Describe it."}]},
        {"role": "assistant", "content": [{"type": "text", "text": first}]},
    ]
    second = client.predict({"text": "And the colour?", "files": []}, history, api_name="/chat")
    assert second
    messages = app[1].requests[-1].messages
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == first
    assert messages[0]["content"][0]["type"] == "image"
    assert len(media_of(app[1].requests[-1].messages)) == 1


def test_stop_ends_generation_at_once_and_the_server_serves_on(client, app):
    worker = app[1].engine._worker
    steps = worker.steps
    job = client.submit(
        {"text": "Talk for a long time.", "files": []}, max_new_tokens=8000, api_name="/chat"
    )
    deadline = time.monotonic() + 60
    while not any(job.outputs()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any(job.outputs()), "the answer started"
    job.cancel()
    deadline = time.monotonic() + 120
    while worker.steps == steps and time.monotonic() < deadline:
        time.sleep(0.05)
    # Unstopped, the tiny model answers this prompt with about 600 tokens before it ends.
    assert 0 < worker.steps - steps < 300, "few tokens follow the Stop"
    answer = client.predict({"text": "Short one.", "files": []}, max_new_tokens=4, api_name="/chat")
    assert answer


def test_bad_file_raises_a_clear_error_and_the_app_survives(client, tmp_path, red_png):
    fake = tmp_path / "holiday.png"
    fake.write_text("this is not an image")
    with pytest.raises(AppError, match="holiday.png"):
        client.predict({"text": "What is this?", "files": [handle_file(fake)]}, api_name="/chat")
    assert client.predict({"text": "Hi", "files": [handle_file(red_png)]}, api_name="/chat")


def test_empty_message_is_refused(client):
    with pytest.raises(AppError, match="Type a question"):
        client.predict({"text": "", "files": []}, api_name="/chat")
