"""The tools for agents (app/tools.py) over MCP, end to end with the `mcp` package's client.

What Gradio 6.31's MCP server does with them, found here:
- A `gr.File` parameter is a string in the tool's schema; the client sends a data: URL
  (base64), which Gradio writes to its temp folder and uploads to the app through its own
  client, or a link, which the app's trust rule refuses. A list of files cannot be a
  parameter: its schema's `$ref` points nowhere (the call fails validation) and Gradio would
  not convert its items, hence `ask`'s file_1…file_4.
- An endpoint with two outputs comes back as separate parts (text, image, image URL) only when
  the client asks for progress; otherwise as one text holding both outputs.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import Awaitable, Callable
from typing import TypeVar

import gradio as gr
import httpx
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client
from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE
from mcp.types import CallToolResult
from PIL import Image

from app.config import Settings
from app.engine import Delta
from app.messages import media_of
from app.requestlog import anonymous_id
from tests.browser import demo_with
from tests.conftest import Recording
from tests.test_pdf import THREE_PAGES, pdf_bytes
from tests.test_security import (
    SECRET,
    attacks,
    call_event,
    config,
    secrets,  # noqa: F401  (a fixture the trust-rule test uses)
)
from web_demo_mm import main, mcp_body_bytes, serve

T = TypeVar("T")
TOOLS = ("ask", "find_objects")
UPLOAD_MB = 1
GROUNDED = (
    "<|object_ref_start|>the ball<|object_ref_end|><|box_start|>(100,200),(500,800)<|box_end|>"
)


class Scripted(Recording):
    """The tiny model, or `script` in its place (a grounding answer), keeping every request."""

    script: str | None = None

    def stream(self, request):
        if self.script is None:
            yield from super().stream(request)
        else:
            self.requests.append(request)
            yield Delta(self.script, 1)


@pytest.fixture(scope="module")
def mcp_app(tiny_checkpoint):
    """The demo with --mcp on a free port: (url, the scripted engine)."""
    flags = {"max_new_tokens": 8, "max_upload_mb": UPLOAD_MB, "mcp": True}
    with demo_with(tiny_checkpoint, Scripted, **flags) as served:
        yield served


def with_session(
    url: str, work: Callable[[ClientSession], Awaitable[T]], headers: dict | None = None
) -> T:
    """Runs `work` in an MCP session with the app (streamable HTTP, Gradio's /gradio_api/mcp/)."""

    async def run() -> T:
        address = url + "gradio_api/mcp/"
        async with streamablehttp_client(address, headers=headers) as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await work(session)

    return asyncio.run(run())


def call(
    url: str, tool: str, arguments: dict, progress: bool = False, headers: dict | None = None
) -> CallToolResult:
    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        pass

    async def work(session: ClientSession) -> CallToolResult:
        callback = on_progress if progress else None  # progress: Gradio sends outputs apart
        return await session.call_tool(tool, arguments, progress_callback=callback)

    return with_session(url, work, headers)


def texts(result: CallToolResult) -> str:
    return "\n".join(part.text for part in result.content if part.type == "text")


def data_url(content: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(content).decode()


def png(width: int = 640, height: int = 480) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def script(mcp_app):
    """Sets the engine's scripted answer for one test."""
    engine = mcp_app[1]

    def set_script(text: str) -> None:
        engine.script = text

    yield set_script
    engine.script = None


def test_the_tools_are_listed_with_their_parameters_and_descriptions(mcp_app):
    assert httpx.get(mcp_app[0] + "gradio_api/mcp/schema").status_code == 200
    listed = with_session(mcp_app[0], lambda s: s.list_tools()).tools
    tools = {tool.name: tool for tool in listed}
    assert set(TOOLS) <= tools.keys()
    ask, find = tools["ask"], tools["find_objects"]
    assert ask.description.startswith("Ask the vision-language model about images, a video")
    assert "data: URL" in ask.description and "Returns: The model's answer" in ask.description
    parameters = ask.inputSchema["properties"]
    assert list(parameters) == ["question", "file_1", "file_2", "file_3", "file_4"]
    assert ask.inputSchema["required"] == ["question"]
    assert parameters["question"]["type"] == "string"
    assert "What is written on the sign?" in parameters["question"]["description"]
    assert parameters["file_1"]["type"] == "string"
    assert "Gradio File Input" in parameters["file_1"]["format"]  # Gradio converts it to a file
    assert find.description.startswith("Find objects in a picture")
    assert find.inputSchema["required"] == ["image", "objects"]
    assert find.inputSchema["properties"]["objects"]["description"].startswith("what to find")
    assert "Gradio File Input" in find.inputSchema["properties"]["image"]["format"]


def test_ask_answers_about_a_picture(mcp_app):
    url, engine = mcp_app
    result = call(url, "ask", {"question": "What is this?", "file_1": data_url(png(64, 48))})
    assert not result.isError, texts(result)
    assert [part.type for part in result.content] == ["text"] and texts(result).strip()
    request = engine.requests[-1]
    assert [item["type"] for item in request.messages[-1]["content"]] == ["image", "text"]
    assert media_of(request.messages)[0].header.width == 64
    text_only = call(url, "ask", {"question": "Hi"})
    assert not text_only.isError and media_of(engine.requests[-1].messages) == []


def test_ask_tells_the_agent_which_pages_the_model_did_not_see(mcp_app):
    url, engine = mcp_app
    document = data_url(pdf_bytes(THREE_PAGES * 12), "application/pdf")  # 36 pages: 32 fit
    result = call(url, "ask", {"question": "Summarise it.", "file_1": document})
    assert not result.isError, texts(result)
    assert len(media_of(engine.requests[-1].messages)) == 32, "--max-media pages"
    assert "Left out: pages 33–36 of" in texts(result)


def test_an_mcp_call_is_bounded_below_the_mcp_librarys_own_limit():
    """Beyond it the library answers a bare 413; the app's limit says what to do instead."""
    assert mcp_body_bytes(Settings(max_upload_mb=200)) == DEFAULT_MAX_REQUEST_BODY_SIZE
    assert mcp_body_bytes(Settings(max_upload_mb=1)) < DEFAULT_MAX_REQUEST_BODY_SIZE


def test_ask_takes_several_pictures(mcp_app):
    url, engine = mcp_app
    pictures = {"file_1": data_url(png(64, 48)), "file_2": data_url(png(32, 32))}
    result = call(url, "ask", {"question": "Same colour?", **pictures})
    assert not result.isError, texts(result)
    assert [m.header.width for m in media_of(engine.requests[-1].messages)] == [64, 32]


def test_find_objects_gives_the_boxes_in_the_pictures_pixels_and_the_drawing(mcp_app, script):
    url, _ = mcp_app
    script(GROUNDED)
    arguments = {"image": data_url(png(640, 480)), "objects": "the ball"}
    result = call(url, "find_objects", arguments, progress=True)
    assert not result.isError, texts(result)
    assert [part.type for part in result.content] == ["text", "image", "text"]
    found = json.loads(result.content[0].text)
    assert found["size"] == [640, 480]
    assert found["boxes"] == [{"label": "the ball", "bbox": [64, 96, 320, 384]}]
    drawing = Image.open(io.BytesIO(base64.b64decode(result.content[1].data)))
    assert drawing.format == "PNG" and result.content[1].mimeType == "image/png"
    assert result.content[2].text.startswith(f"Image URL: {url}gradio_api/file=")
    # A client that asks for no progress gets both outputs in one text (Gradio 6.31).
    plain = call(url, "find_objects", arguments)
    assert not plain.isError and result.content[0].text in texts(plain)


def test_find_objects_without_boxes_says_so(mcp_app, script):
    script("I cannot see any ball.")
    arguments = {"image": data_url(png(64, 48)), "objects": "the ball"}
    result = call(mcp_app[0], "find_objects", arguments, progress=True)
    assert not result.isError
    assert result.content[0].text == (
        "The model gave no boxes for 'the ball'. Its answer: I cannot see any ball."
    )


def test_tool_calls_count_for_the_fair_use_bounds_as_the_loopback_client(mcp_app, monkeypatch):
    """Gradio calls the tool through its own client: off Spaces every MCP caller is 127.0.0.1
    (one client for --max-chats-per-client); on Spaces the proxy's forwarded address is kept."""
    url, engine = mcp_app
    assert not call(url, "ask", {"question": "Hi"}).isError
    assert engine.requests[-1].client == anonymous_id("address:127.0.0.1")
    monkeypatch.setenv("SPACE_ID", "someone/demo")
    forwarded = {"X-Forwarded-For": "203.0.113.7"}
    assert not call(url, "ask", {"question": "Hi"}, headers=forwarded).isError
    assert engine.requests[-1].client == anonymous_id("address:203.0.113.7")


def test_the_tools_are_api_endpoints_too(mcp_app):
    client = Client(mcp_app[0], verbose=False)
    assert client.predict("Hi", api_name="/ask")
    with pytest.raises(AppError, match="Give the picture to search"):
        client.predict(None, "a cat", api_name="/find_objects")


def test_a_bad_file_gets_a_clear_error(mcp_app):
    url, engine = mcp_app
    before = len(engine.requests)
    fake = data_url(b"this is not an image")  # a text file sent as a PNG
    for tool, arguments in [("ask", {"question": "What?", "file_1": fake}),
                            ("find_objects", {"image": fake, "objects": "a cat"})]:  # fmt: skip
        result = call(url, tool, arguments)
        assert result.isError and "'file.png' is not a supported file" in texts(result), tool
    assert len(engine.requests) == before


@pytest.mark.parametrize(
    ("file", "words"),
    [
        ("https://example.com/cat.png", "'cat.png' is not a file uploaded to this demo"),
        ("{url}gradio_api/file=/etc/passwd", "'passwd' is not a file uploaded to this demo"),
        ("/etc/passwd", "Invalid file data format, provide a url"),  # refused by Gradio
    ],
)
def test_links_and_paths_are_refused(mcp_app, file, words):
    url, engine = mcp_app
    before = len(engine.requests)
    result = call(url, "ask", {"question": "What?", "file_1": file.format(url=url)})
    assert result.isError and words in texts(result)
    assert len(engine.requests) == before


def test_a_file_over_the_upload_limit_is_refused(mcp_app):
    big = data_url(b"\x89PNG" + bytes(UPLOAD_MB * 1024 * 1024))
    result = call(mcp_app[0], "ask", {"question": "What?", "file_1": big})
    assert result.isError and "exceeds the maximum file size" in texts(result)


def test_a_call_larger_than_one_file_at_the_limit_is_refused_before_it_is_read(mcp_app):
    """Gradio writes a call's base64 files to disk before checking them: web_demo_mm's
    middleware bounds the body by its declared length, so one call cannot fill the disk."""
    url = mcp_app[0] + "gradio_api/mcp/"
    body = b'{"jsonrpc": "2.0", "padding": "' + b"A" * (3 * UPLOAD_MB * 1024 * 1024) + b'"}'
    declared = httpx.post(url, content=body, headers={"content-type": "application/json"})
    assert declared.status_code == 413 and "larger than" in declared.text

    def chunks():  # no Content-Length: the size is not known before it is read
        yield b'{"jsonrpc": "2.0"}'

    streamed = httpx.post(url, content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 411


def test_the_tools_events_open_no_file_outside_the_trust_rule(mcp_app, secrets):  # noqa: F811
    """Called directly by fn_index with every shape of path, as tests/test_security.py does
    for the page's events (which include the tools once build_demo registers them)."""
    url, engine = mcp_app
    dependencies = [d for d in config(url)["dependencies"] if d.get("api_name") in TOOLS]
    assert len(dependencies) == len(TOOLS)
    before = len(engine.requests)
    for name, value in attacks(secrets).items():
        for dependency in dependencies:
            succeeded, answer = call_event(url, dependency, [value] * len(dependency["inputs"]))
            assert not succeeded and SECRET not in answer, (name, dependency["api_name"])
    assert len(engine.requests) == before


def test_mcp_with_a_password_refuses_to_start(monkeypatch):
    with pytest.raises(SystemExit, match="--mcp cannot be combined with --auth"):
        main(["--mcp", "--auth", "ann:secret", "-c", "no-such-checkpoint"])
    monkeypatch.setenv("QWEN_DEMO_MCP", "true")
    monkeypatch.setenv("QWEN_DEMO_AUTH", "ann:secret")
    with pytest.raises(SystemExit, match="does not check the login"):
        main(["-c", "no-such-checkpoint"])
    with pytest.raises(SystemExit, match="--mcp cannot be combined with --auth"):
        serve(gr.Blocks(), None, Settings(mcp=True, auth="ann:secret"))  # type: ignore[arg-type]


def test_without_the_flag_there_is_no_mcp_server(app):
    assert httpx.get(app[0] + "gradio_api/mcp/schema").status_code == 404
