"""Uploads end to end: every odd or bad file of the corpus through the running app's /chat.

Each file gets a correct answer (and the engine receives model-ready media) or a clear message
that names it; the server keeps serving, later turns survive a failed upload in their history,
limits are enforced with clear messages, and preparing one user's big video does not hold up
another user.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client import utils as client_utils
from gradio_client.exceptions import AppError
from PIL import Image

from app import media as media_module
from app.config import Settings
from app.media import QWEN2_VL, ImageInput, VideoInput
from app.messages import media_of
from tests.conftest import Recording, free_port
from tests.media_corpus import EXPECTED, make_corpus, write_video

# Answers are random text from the tiny model: one token is enough to know it was generated.
SHORT = {"max_new_tokens": 1, "api_name": "/chat"}
ONE_TOKEN = {"max_new_tokens": 1, "api_name": "/chat_details"}


def one_token_generated(details: tuple[dict, str | None]) -> bool:
    """Whether a /chat_details answer is finished with exactly one generated token."""
    data, _ = details
    return data["done"] and data["stats"].startswith("1 tokens")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def strict_app(app, tiny_checkpoint):
    """A second page on the same engine with tight limits: (url, its recording engine)."""
    settings = Settings(
        checkpoint_path=str(tiny_checkpoint),
        cpu_only=True,
        server_port=free_port(),
        max_new_tokens=4,
        max_upload_mb=0.05,
        max_files_per_turn=2,
        max_video_seconds=1.0,
        max_context=300,
    )
    from app.ui import build_demo
    from web_demo_mm import serve

    recording = Recording(app[1].engine)
    demo = serve(build_demo(recording, settings), recording, settings, block=False)
    yield f"http://127.0.0.1:{settings.server_port}/", recording
    demo.close()


def request_with(recording: Recording, marker: str):
    """The last request whose current turn contains `marker` in its text."""
    for request in reversed(recording.requests):
        texts = [c.get("text", "") for c in request.messages[-1]["content"]]
        if any(marker in text for text in texts):
            return request
    raise AssertionError(f"no request with {marker!r} reached the engine")


def decoded(request) -> list[ImageInput | VideoInput]:
    """The pixels of a request's media, as the engine decoded them."""
    return [media.decode() for media in media_of(request.messages)]


def check_model_ready(item: ImageInput | VideoInput, expected: str) -> None:
    factor, group = QWEN2_VL.factor, QWEN2_VL.temporal_patch_size
    if expected == "image":
        assert isinstance(item, ImageInput)
        sizes = [item.image.size]
    else:
        assert isinstance(item, VideoInput)
        assert len(item.frames) >= group and len(item.frames) % group == 0
        sizes = {frame.size for frame in item.frames}
        assert len(sizes) == 1, "every frame has the same size"
    assert all(w % factor == 0 and h % factor == 0 for w, h in sizes)


def refused_by_extension(client: Client, path: Path) -> bool:
    """Whether Gradio itself refuses the file by its extension, before the app sees it.

    It does when the /chat textbox has `file_types` (MultimodalTextbox.preprocess checks the
    extension's MIME type): then a JPEG named .txt is refused, and an unsupported file gets
    "Invalid file type: None" without its name, instead of the app's content-sniffed verdict.
    """
    dependency = next(d for d in client.config["dependencies"] if d.get("api_name") == "chat")
    textbox = next(c for c in client.config["components"] if c["id"] == dependency["inputs"][0])
    file_types = textbox["props"].get("file_types")
    return bool(file_types) and not client_utils.is_valid_file(str(path), file_types)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_file_through_chat(name, corpus, client, app):
    if name not in corpus:
        pytest.skip(f"{name} cannot be written here (encoder missing)")
    path, expected = corpus[name], EXPECTED[name]
    if refused_by_extension(client, path):
        pytest.xfail("Gradio refuses it by extension: the /chat textbox in ui.py has file_types")
    message = {"text": f"[{name}] What is this?", "files": [handle_file(path)]}
    if expected == "error":
        with pytest.raises(AppError) as error:
            client.predict(message, **SHORT)
        assert path.name in str(error.value), "the message names the file"
        return
    assert one_token_generated(client.predict(message, **ONE_TOKEN))
    request = request_with(app[1], f"[{name}]")
    assert [c["type"] for c in request.messages[-1]["content"]] == [expected, "text"]
    check_model_ready(decoded(request)[-1], expected)


def test_the_server_still_answers_after_the_corpus(client, corpus):
    answer = client.predict(
        {"text": "Still there?", "files": [handle_file(corpus["tiny_mp4"])]}, **ONE_TOKEN
    )
    assert one_token_generated(answer)


def file_part(path: Path) -> dict:
    return {"role": "user", "content": [{"type": "file", "file": handle_file(path)}]}


def text_part(role: str, text: str, **extra: object) -> dict:
    return {"role": role, "content": [{"type": "text", "text": text}], **extra}


def test_a_failed_upload_in_the_history_does_not_break_later_turns(client, app, corpus):
    bad, good = corpus["truncated_jpeg"], corpus["webp"]
    failed_turn = [  # what the chat shows after the upload failed
        file_part(bad),
        text_part("user", "What is this?"),
        text_part("assistant", "'cut.jpg' could not be read", metadata={"title": "⚠️ Failed"}),
    ]
    client.predict(
        {"text": "[after-failure] And this?", "files": [handle_file(good)]}, failed_turn, **SHORT
    )
    request = request_with(app[1], "[after-failure]")
    assert [m["role"] for m in request.messages] == ["user"], "the failed turn is left out"
    assert len(media_of(request.messages)) == 1

    answered_turn = [  # a client that kept the bad file in a turn that was answered
        file_part(bad),
        file_part(good),
        text_part("user", "Compare them."),
        text_part("assistant", "They differ."),
    ]
    client.predict({"text": "[bad-file-kept] Why?", "files": []}, answered_turn, **SHORT)
    request = request_with(app[1], "[bad-file-kept]")
    assert [m["role"] for m in request.messages] == ["user", "assistant", "user"]
    assert [c["type"] for c in request.messages[0]["content"]] == ["image", "text"]
    assert len(media_of(request.messages)) == 1, "the bad file is skipped, the good one kept"


# --- limits, on a page with tight ones ------------------------------------------------------


@pytest.fixture(scope="module")
def strict_client(strict_app) -> Client:
    return Client(strict_app[0], verbose=False)


def test_an_upload_over_the_size_limit_is_refused(strict_app, strict_client, tmp_path):
    big = tmp_path / "big-noise.png"
    noise = random.Random(0).randbytes(300 * 300)  # incompressible: a PNG of ~90 KB > 50 KB
    Image.frombytes("L", (300, 300), noise).save(big)
    with pytest.raises(ValueError, match=r"big-noise\.png exceeds the maximum file size"):
        strict_client.predict({"text": "hi", "files": [handle_file(big)]}, api_name="/chat")
    with big.open("rb") as data:  # a client that skips that check: the server refuses too
        response = httpx.post(f"{strict_app[0]}gradio_api/upload", files={"files": data})
    assert response.status_code == 413
    assert strict_client.predict({"text": "Still there?", "files": []}, api_name="/chat")


def test_too_many_files_in_one_turn_are_refused(strict_client, corpus):
    files = [handle_file(corpus[name]) for name in ("bmp", "tiff", "webp")]
    with pytest.raises(AppError, match=r"3 files in one message; at most 2"):
        strict_client.predict({"text": "All of them?", "files": files}, api_name="/chat")


def test_a_video_over_the_duration_limit_is_refused(strict_client, corpus):
    with pytest.raises(AppError, match=r"'tiny\.mp4' is 0:02 long; videos may be at most 0:01"):
        strict_client.predict(
            {"text": "What happens?", "files": [handle_file(corpus["tiny_mp4"])]},
            api_name="/chat",
        )


def test_the_oldest_turns_are_left_out_beyond_max_context(strict_app, strict_client, corpus):
    words = "the video begins with a sunrise over the lake then a boat crosses " * 3
    history = []
    for i in range(6):
        history += [
            file_part(corpus["webp"]),
            text_part("user", f"Turn {i}: {words}"),
            text_part("assistant", f"Answer {i}: {words}"),
        ]
    strict_client.predict({"text": "[budget] And now?", "files": []}, history, api_name="/chat")
    request = request_with(strict_app[1], "[budget]")
    kept = [m for m in request.messages if m["role"] == "user"]
    assert 1 < len(kept) < 7, "some, not all, earlier turns were left out"
    assert request.messages[0]["role"] == "user"
    assert "Turn 5:" in str(request.messages[-3]["content"]), "the newest ones are kept"
    assert len(media_of(request.messages)) == len(kept) - 1
    inputs = strict_app[1].engine.encode(request)
    assert inputs["input_ids"].shape[1] + 4 <= 300, "prompt + max_new_tokens fit"


def test_a_turn_too_large_alone_says_what_to_change(strict_client):
    with pytest.raises(AppError, match=r"too large for the model's context.*shorter text"):
        strict_client.predict({"text": "word " * 2000, "files": []}, api_name="/chat")


# --- preprocessing runs off the event loop -----------------------------------------------------


def test_preparing_a_big_video_does_not_hold_up_another_session(app, client, monkeypatch, tmp_path):
    video = write_video(tmp_path / "slow-8k.mp4", codec="mpeg4", size=(7680, 4320), frames=4)
    preparing, release = threading.Event(), threading.Event()
    decode = media_module._decode

    def held_decode(media):  # the 8K video's decoding is held until released
        if media.path.name == video.name:
            preparing.set()
            release.wait(timeout=30)
        return decode(media)

    monkeypatch.setattr(media_module, "_decode", held_decode)
    big = client.submit({"text": "[big] What?", "files": [handle_file(video)]}, **ONE_TOKEN)
    try:
        assert preparing.wait(timeout=30), "the big video is being prepared"
        other = Client(app[0], verbose=False)  # another user (session)
        small = other.submit({"text": "[small] Hi", "files": []}, **ONE_TOKEN)
        assert one_token_generated(small.result(timeout=20)), "served while it is prepared"
        assert not big.done()
    finally:
        release.set()
    assert one_token_generated(big.result(timeout=60))
    check_model_ready(decoded(request_with(app[1], "[big]"))[-1], "video")
