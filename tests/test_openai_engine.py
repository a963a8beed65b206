"""The remote engine: message conversion, stream parsing, and real servers on loopback.

The `server` tests run `transformers serve` on the tiny random checkpoint (CPU); the others use
pure functions or a few-line fake server that records when the client hangs up.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from PIL import Image

from app.engine import ChatRequest, Delta, GenerationOptions
from app.engine import openai as remote
from app.engine.openai import (
    OpenAIEngine,
    chat_body,
    normalize_api_base,
    parse_stream,
    rejected_fields,
    server_error_message,
    to_openai_messages,
)
from app.errors import UserFacingError
from app.media import Media
from tests.conftest import free_port
from tests.uploads import clip, part, picture

SERVER_START_SECONDS = 90


def image(width: int = 56, height: int = 84, color: str = "red") -> Media:
    return picture(Image.new("RGB", (width, height), color))


def video(frames: int = 4) -> Media:
    return clip((56, 28), frames=frames)


def asking() -> list[dict]:
    return [part(image()), {"type": "text", "text": "What is it?"}]


def decode_data_url(url: str) -> Image.Image:
    header, payload = url.split(",", 1)
    assert header == "data:image/jpeg;base64"
    return Image.open(io.BytesIO(base64.b64decode(payload)))


def sse(*chunks: object) -> list[str]:
    return [f"data: {json.dumps(chunk)}" for chunk in chunks]


def content(text: str) -> dict:
    return {"choices": [{"index": 0, "delta": {"content": text}}]}


# ----- conversion -----


def test_image_becomes_a_jpeg_data_url_of_the_resized_image():
    messages = [{"role": "user", "content": asking()}]
    [converted] = to_openai_messages(messages)
    assert converted["role"] == "user"
    picture, question = converted["content"]
    assert picture["type"] == "image_url"
    assert decode_data_url(picture["image_url"]["url"]).size == (56, 84)
    assert question == {"type": "text", "text": "What is it?"}


def test_order_roles_and_vision_ids_across_turns():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [part(image(color="red")), {"type": "text", "text": "?"}]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": [
            {"type": "text", "text": "And these?"},
            part(video(frames=2)),
            part(image(color="green")),
        ]},
    ]  # fmt: skip
    converted = to_openai_messages(messages, add_vision_id=True)
    assert [m["role"] for m in converted] == ["system", "user", "assistant", "user"]
    assert converted[0]["content"] == "Be brief." and converted[2]["content"] == "A cat."
    kinds = [p["text"] if p["type"] == "text" else p["type"] for p in converted[3]["content"]]
    frames = ["image_url", "image_url"]
    assert kinds == ["And these?", "Video 1: ", *frames, "Picture 2: ", "image_url"]
    assert converted[1]["content"][0] == {"type": "text", "text": "Picture 1: "}
    last = decode_data_url(converted[3]["content"][-1]["image_url"]["url"]).convert("RGB")
    assert last.getpixel((28, 28))[1] > 100  # the green image, not the red one


def test_vision_ids_match_the_chat_template(tiny_checkpoint):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    messages = [
        {"role": "user", "content": [part(image()), {"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": [
            part(image()), part(video()), {"type": "text", "text": "Compare."},
        ]},
    ]  # fmt: skip
    converted = to_openai_messages(messages, add_vision_id=True, video_format="video/jpeg")
    as_server_sees_it = [  # what an OpenAI-compatible server hands to the same template
        {
            **m,
            "content": [
                {"type": p["type"].removesuffix("_url")} if p["type"] != "text" else p
                for p in m["content"]
            ],
        }
        if isinstance(m["content"], list)
        else m
        for m in converted
    ]

    def render(msgs, vision_id):
        return processor.apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=True, add_vision_id=vision_id
        )

    assert render(as_server_sees_it, False) == render(messages, True)
    assert "Picture 2: <|vision_start|><|image_pad|>" in render(messages, True)


def test_video_as_frames_or_as_a_vllm_jpeg_video():
    messages = [{"role": "user", "content": [part(video(frames=4))]}]
    frames = to_openai_messages(messages)[0]["content"]
    assert [p["type"] for p in frames] == ["image_url"] * 4
    assert decode_data_url(frames[0]["image_url"]["url"]).size == (56, 28)
    [jpeg_video] = to_openai_messages(messages, video_format="video/jpeg")
    [sent] = jpeg_video["content"]
    header, _ = sent["video_url"]["url"].split(",", 1)
    assert sent["type"] == "video_url" and header == "data:video/jpeg;base64"
    assert len(sent["video_url"]["url"].split(",")) == 1 + 4


def test_two_turns_send_byte_identical_earlier_messages():
    """A server's prefix cache can hit: the same media give the same data URLs, turn after turn
    (each turn prepares its media anew; the decoded pixels are not reused from a cache here)."""
    from app import media as media_module

    first = [{"role": "user", "content": asking()}]
    turn1 = json.dumps(to_openai_messages(first, add_vision_id=True))
    media_module._decoded.clear()
    again = [{"role": "user", "content": asking()}]
    second = [*again, {"role": "assistant", "content": "A red square."}, user_text("And now?")]
    turn2 = json.dumps(to_openai_messages(second, add_vision_id=True))
    assert turn2.startswith(turn1[:-1])  # the same bytes, then the new messages


def user_text(text: str) -> dict:
    return {"role": "user", "content": [{"type": "text", "text": text}]}


def test_messages_are_not_mutated():
    messages = [{"role": "user", "content": asking()}]
    before = repr(messages)
    to_openai_messages(messages, add_vision_id=True)
    assert repr(messages) == before


# ----- request body -----


def test_body_leaves_out_default_extras_and_keeps_the_rest():
    body = chat_body("m", [], GenerationOptions(max_new_tokens=7, temperature=0.5, top_p=0.9))
    assert body["max_tokens"] == 7 and body["temperature"] == 0.5 and body["top_p"] == 0.9
    assert body["stream"] is True and body["skip_special_tokens"] is False
    assert "top_k" not in body and "repetition_penalty" not in body and "seed" not in body
    options = GenerationOptions(top_k=20, repetition_penalty=1.05, seed=3)
    body = chat_body("m", [], options)
    assert (body["top_k"], body["repetition_penalty"], body["seed"]) == (20, 1.05, 3)
    assert "top_k" not in chat_body("m", [], options, omit={"top_k"})


def test_rejected_fields_are_read_from_the_error_message():
    body = chat_body("m", [], GenerationOptions(top_k=5))
    message = "Unexpected fields in the request: {'top_k', 'skip_special_tokens'}"
    assert rejected_fields(message, body) == {"top_k", "skip_special_tokens"}
    assert rejected_fields("top_k must be at least 1, got 0", body) == set()
    assert rejected_fields("Extra inputs are not permitted: seed", body) == set()  # not sent


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("localhost:8000", "http://localhost:8000/v1"),
        ("http://localhost:8000/", "http://localhost:8000/v1"),
        ("http://gpu:8000/v1/", "http://gpu:8000/v1"),
        ("https://host/openai/v1/chat/completions", "https://host/openai/v1"),
    ],
)
def test_api_base_forms(given, expected):
    assert normalize_api_base(given) == expected


# ----- answer and errors -----


def test_stream_parsing_guards_empty_choices_and_counts_tokens():
    lines = [
        ": keep-alive",
        *sse({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}),
        "",
        *sse(content("<|box_start|>(1,2)"), content("<|im_end|>"), {"choices": []}),
        *sse({"choices": [], "usage": {"completion_tokens": 5}}),
        "data: [DONE]",
        "data: not json after the end",
    ]
    assert list(parse_stream(lines)) == [Delta("<|box_start|>(1,2)", 1), Delta(tokens=4)]


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ('data: {"error": "CUDA out of memory"}', "The model server failed: CUDA out of memory"),
        ('data: {"error": {"message": "too long", "code": 400}}', "failed: too long"),
        ("data: {not json", "malformed answer: {not json"),
        ("data: [1, 2]", "malformed answer"),
    ],
)
def test_stream_errors_reach_the_user(line, shown):
    with pytest.raises(UserFacingError, match=shown.replace("[", r"\[")):
        list(parse_stream([*sse(content("Hi")), line]))


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        (b'{"error": {"message": "The model `x` does not exist.", "code": 404}}',
         "The model `x` does not exist."),
        (b'{"detail": "Server is pinned to \'a\'"}', "Server is pinned to 'a'"),
        (b'{"detail": [{"loc": ["body"], "msg": "field required"}]}', "field required"),
        (b"Internal Server Error", "Internal Server Error"),
        (b"", "HTTP 502"),
    ],
)  # fmt: skip
def test_server_error_messages(body, shown):
    assert server_error_message(502, body) == shown


def test_long_error_messages_are_trimmed():
    assert len(server_error_message(500, b"x" * 5000)) == remote.MAX_ERROR_CHARS


def test_server_that_is_down_gives_a_clear_message():
    port = free_port()
    engine = OpenAIEngine(f"http://127.0.0.1:{port}", model="Qwen/Qwen2-VL-7B-Instruct")
    status = engine.status()  # "loading": the page keeps asking until the server is up
    assert status.state == "loading" and f"127.0.0.1:{port}/v1 is not reachable" in status.message
    request = ChatRequest([{"role": "user", "content": asking()}])
    with pytest.raises(UserFacingError, match=rf"127\.0\.0\.1:{port}/v1 is not reachable"):
        list(engine.stream(request))
    engine.close()


def test_family_comes_from_the_model_name():
    assert OpenAIEngine("h:1", model="Qwen/Qwen2.5-VL-7B-Instruct").family == "qwen2_5_vl"
    assert OpenAIEngine("h:1", model="Qwen/Qwen2-VL-2B-Instruct").family == "qwen2_vl"


# ----- a fake server that never answers: heartbeats, stop, late start -----


class _SilentServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _SilentHandler)
        self.hung_up = threading.Event()


class _SilentHandler(BaseHTTPRequestHandler):
    """Lists one model; a chat completion starts its stream, then sends nothing more."""

    server: _SilentServer

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self._send(200, "application/json", json.dumps({"data": [{"id": "Qwen/Qwen2.5-VL-3B"}]}))

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        self.wfile.write(b'data: {"choices": [{"delta": {"role": "assistant"}}]}\n\n')
        self.wfile.flush()
        self.connection.settimeout(10)
        if self.connection.recv(1) == b"":  # the client hung up
            self.server.hung_up.set()

    def _send(self, code: int, kind: str, text: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text.encode())


@pytest.fixture
def silent_server() -> Iterator[_SilentServer]:
    server = _SilentServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_heartbeats_while_waiting_and_stop_hangs_up_at_once(silent_server):
    engine = OpenAIEngine(f"127.0.0.1:{silent_server.server_port}")
    assert engine.status().state == "ready"
    assert (engine.model, engine.family) == ("Qwen/Qwen2.5-VL-3B", "qwen2_5_vl")
    deltas = engine.stream(ChatRequest([{"role": "user", "content": asking()}]))
    start = time.monotonic()
    assert [next(deltas), next(deltas), next(deltas)] == [Delta()] * 3
    assert time.monotonic() - start < 5.0  # heartbeats, not a wait for the silent server
    deltas.close()
    assert silent_server.hung_up.wait(2.0), "the server did not see the client hang up"
    engine.close()


def test_status_recovers_when_the_server_starts_later(monkeypatch):
    monkeypatch.setattr(remote, "RECHECK_SECONDS", 0.0)
    port = free_port()
    engine = OpenAIEngine(f"127.0.0.1:{port}")
    assert engine.status().state == "loading"
    with pytest.raises(UserFacingError, match="not reachable"):
        list(engine.stream(ChatRequest([{"role": "user", "content": asking()}])))
    server = _SilentServer(port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert engine.status().state == "ready" and engine.model == "Qwen/Qwen2.5-VL-3B"
    finally:
        server.shutdown()
        server.server_close()
        engine.close()


# ----- a real server: transformers serve on the tiny checkpoint -----


@pytest.fixture(scope="module")
def served(tiny_checkpoint, tmp_path_factory) -> Iterator[str]:
    """`transformers serve CHECKPOINT` on a free loopback port; yields its base URL."""
    command = Path(sys.executable).with_name("transformers")
    if not command.exists():
        pytest.skip("transformers serve is not installed: pip install 'transformers[serving]'")
    port = free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    argv = [str(command), "serve", str(tiny_checkpoint), "--host", "127.0.0.1",
            "--port", str(port), "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_until_ready(base, process, log_path)
        yield base
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _wait_until_ready(base: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"transformers serve exited:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/models", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"transformers serve was not ready in {SERVER_START_SECONDS} s")


def ask(max_new_tokens: int = 8, **options) -> ChatRequest:
    return ChatRequest(
        messages=[{"role": "user", "content": asking()}],
        options=GenerationOptions(max_new_tokens=max_new_tokens, **options),
    )


def test_streams_an_answer_about_an_image(served, tiny_checkpoint):
    engine = OpenAIEngine(served)  # no model given: the first one the server lists
    assert engine.status().state == "ready"
    assert engine.model == str(tiny_checkpoint) and engine.family == "qwen2_vl"
    deltas = [d for d in engine.stream(ask(max_new_tokens=8)) if d != Delta()]
    assert "".join(d.text for d in deltas).strip()
    assert 0 < sum(d.tokens for d in deltas) <= 8
    engine.close()


def test_stop_returns_at_once_and_the_server_answers_again(served):
    engine = OpenAIEngine(served)
    deltas = engine.stream(ask(max_new_tokens=2000))
    first = next(d for d in deltas if d.text)
    assert first.tokens == 1
    start = time.monotonic()
    deltas.close()
    assert time.monotonic() - start < 3.0  # not waiting for the rest of 2000 tokens
    again = "".join(d.text for d in engine.stream(ask(max_new_tokens=4)))
    assert again
    engine.close()


def test_fields_the_server_rejects_are_left_out(served, caplog):
    engine = OpenAIEngine(served)
    request = ask(max_new_tokens=4, temperature=0.7, top_k=5, repetition_penalty=1.1, seed=1)
    assert "".join(d.text for d in engine.stream(request))
    assert "rejects ['repetition_penalty', 'skip_special_tokens', 'top_k']" in caplog.text
    assert "".join(d.text for d in engine.stream(request))  # without asking again
    assert caplog.text.count("rejects") == 1
    engine.close()


def test_http_error_reaches_the_user(served):
    engine = OpenAIEngine(served, model="Qwen/No-Such-Model")
    with pytest.raises(UserFacingError, match=r"answered HTTP 400: Server is pinned to") as caught:
        list(engine.stream(ask()))
    assert served in str(caught.value)
    engine.close()


def test_the_app_answers_through_the_remote_backend(served, tmp_path):
    """web_demo_mm --backend openai: the /chat API and /health, end to end."""
    from gradio_client import Client, handle_file

    from app.config import Settings
    from app.engine import create_engine
    from app.ui import build_demo
    from web_demo_mm import serve

    settings = Settings(backend="openai", api_base=served, server_port=free_port())
    engine = create_engine(settings)
    demo = serve(build_demo(engine, settings), engine, settings, block=False)
    try:
        url = f"http://127.0.0.1:{settings.server_port}/"
        assert httpx.get(url + "health").json()["status"] == "ready"
        picture = tmp_path / "cat.png"
        Image.new("RGB", (64, 64), "orange").save(picture)
        answer = Client(url, verbose=False).predict(
            {"text": "What is this?", "files": [handle_file(picture)]},
            max_new_tokens=6,
            api_name="/chat",
        )
        assert answer.strip()
    finally:
        demo.close()
        engine.close()


def test_a_servers_reasoning_comes_back_inside_think_tags():
    chunks = [
        {"choices": [{"delta": {"reasoning": "Fur and "}}]},
        {"choices": [{"delta": {"reasoning_content": "whiskers."}}]},  # transformers serve
        {"choices": [{"delta": {"content": "A cat."}}]},
    ]
    text = "".join(d.text for d in parse_stream(sse(*chunks)))
    assert text == "<think>Fur and whiskers.</think>A cat."


def test_thinking_off_is_asked_of_the_server_template():
    body = chat_body("m", [], GenerationOptions(), enable_thinking=False)
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert "chat_template_kwargs" not in chat_body("m", [], GenerationOptions())
