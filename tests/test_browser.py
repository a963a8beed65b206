"""The page in headless chromium: chat, grounding, conversation controls, files, looks, language.

Most tests share the session's demo (`app`); the grounding, stop and closed-tab tests use a demo
whose tiny model is scripted by its generation config (tests/browser.py): it answers the
grounding example with known boxes and never ends any other answer.
"""

from __future__ import annotations

import io
import json
import logging
import time
import zipfile
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from PIL import Image

from app.config import Settings
from app.grounding import DRAWING_MIN_SIDE, PALETTE
from app.ui import GROUNDING_EXAMPLE
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

GROUNDING_ANSWER = (
    "The <|object_ref_start|>cat<|object_ref_end|><|box_start|>(100,200),(500,800)<|box_end|>"
    " watches the <|object_ref_start|>ball<|object_ref_end|>"
    "<|box_start|>(640,600),(860,860)<|box_end|>."
)
USER = "[data-testid='user']"
BOT = "[data-testid='bot']"
# Records every text the first answer shows, however fast it streams.
WATCH_ANSWER = """() => {
    window.shownAnswers = new Set();
    new MutationObserver(() => {
        const bot = document.querySelector("[data-testid='bot']");
        if (bot) window.shownAnswers.add(bot.innerText);
    }).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


@pytest.fixture(scope="module")
def scripted_app(tiny_checkpoint):
    """A demo whose model answers the grounding example with two boxes and talks on otherwise."""
    checkpoint = scripted_checkpoint(
        tiny_checkpoint, CACHE / "tiny-qwen2-vl-scripted", {GROUNDING_EXAMPLE: GROUNDING_ANSWER}
    )
    settings = Settings(
        checkpoint_path=str(checkpoint),
        cpu_only=True,
        server_port=free_port(),
        max_new_tokens=4096,  # unscripted answers run until stopped
    )
    from app.engine.local import LocalEngine

    engine = Recording(LocalEngine(settings).start(background=False))
    demo = launch_demo(engine, settings)
    yield f"http://127.0.0.1:{settings.server_port}/", engine
    demo.close()


@pytest.fixture
def red_square(tmp_path) -> Path:
    path = tmp_path / "red_square.png"
    Image.new("RGB", (96, 96), (220, 20, 20)).save(path)
    return path


def alphanumeric(text: str) -> str:
    """Text without what Markdown may hide (the tiny model writes backticks, asterisks...)."""
    return "".join(char for char in text if char.isalnum())


def texts(page, selector: str) -> list[str]:
    return [text.strip() for text in page.locator(selector).all_inner_texts()]


def test_upload_ask_see_a_streamed_answer_and_the_settings(app, red_square):
    url, recording = app
    with browser_page(url) as page:
        wait_ready(page)
        page.evaluate(WATCH_ANSWER)
        send(page, "What colour is this square?", [red_square])
        wait_answers(page, 1)
        assert page.locator(f"{USER} img").count() == 1, "the uploaded image shows in the chat"
        assert page.evaluate("window.shownAnswers.size") > 1, "the answer was seen growing"
        page.get_by_text("Settings").first.click()
        page.get_by_text("Repetition penalty").wait_for()
        screenshot(page, "settings")
    content = recording.requests[-1].messages[-1]["content"]
    assert [part["type"] for part in content] == ["image", "text"]
    assert content[1]["text"] == "What colour is this square?"


def test_grounding_example_draws_the_boxes_on_the_image(scripted_app):
    url, recording = scripted_app
    with browser_page(url, viewport={"width": 1280, "height": 1400}) as page:
        png = ask_the_grounding_example(page)
        screenshot(page, "grounding")
    image = Image.open(io.BytesIO(png)).convert("RGB")
    width, height = image.size  # the example as the model saw it (448x336), enlarged to draw on
    assert (min(width, height), round(width / height, 2)) == (DRAWING_MIN_SIDE, round(448 / 336, 2))
    # The scripted boxes: cat (100,200)-(500,800), ball (640,600)-(860,860) on the 0-1000 grid.
    assert image.getpixel((round(0.1 * width) + 1, height // 2)) == PALETTE[0], "cat, left edge"
    assert image.getpixel((round(0.64 * width) + 1, round(0.73 * height))) == PALETTE[1], "ball"
    assert recording.requests[-1].messages[-1]["content"][-1]["text"] == GROUNDING_EXAMPLE


def ask_the_grounding_example(page) -> bytes:
    """Click the grounding example; check the answer's text; return the drawn image (PNG)."""
    wait_ready(page)
    page.get_by_text("Find the cat and the ball").click()
    wait_answers(page, 1)
    answer = page.locator(BOT).first
    assert answer.inner_text().strip() == "The cat watches the ball."
    assert answer.locator("strong").all_inner_texts() == ["cat", "ball"]
    drawn = page.locator(f"{BOT} img").first
    drawn.wait_for()
    page.wait_for_timeout(300)  # the conversation list updates after the answer
    return page.request.get(drawn.get_attribute("src")).body()


def test_chat_details_give_the_boxes_in_the_original_pixels_and_the_drawing(scripted_app):
    """/chat_details: the grounding as data (the scripted answer's boxes in park.png's 448x336
    pixels) and the drawn image, through gradio_client."""
    url, _ = scripted_app
    park = Path(__file__).resolve().parent.parent / "assets" / "examples" / "park.png"
    message = {"text": GROUNDING_EXAMPLE, "files": [handle_file(park)]}
    details, drawing = Client(url, verbose=False).predict(message, api_name="/chat_details")
    assert details["done"] and details["text"] == "The **cat** watches the **ball**."
    assert details["grounding"] == {
        "image": 1,
        "name": "park.png",
        "size": [448, 336],
        "boxes": [
            {"label": "cat", "bbox": [45, 67, 224, 269]},
            {"label": "ball", "bbox": [287, 202, 385, 289]},
        ],
    }
    assert "<|box_start|>" in details["raw"]
    assert Image.open(drawing).getpixel((round(0.1 * DRAWING_MIN_SIDE * 448 / 336) + 1,
                                         DRAWING_MIN_SIDE // 2)) == PALETTE[0]  # fmt: skip


def test_dark_theme(scripted_app):
    url, _ = scripted_app
    with browser_page(f"{url}?__theme=dark", viewport={"width": 1280, "height": 1400}) as page:
        ask_the_grounding_example(page)
        assert page.evaluate("document.querySelector('.dark') !== null"), "the dark theme is on"
        screenshot(page, "dark")


def test_chinese_labels_on_a_phone(scripted_app):
    url, _ = scripted_app
    with browser_page(url, locale="zh-CN", viewport={"width": 390, "height": 844}) as page:
        wait_ready(page)
        assert page.get_by_text("就图片、视频和 PDF 文档进行对话").is_visible()
        assert page.get_by_text("设置").first.is_visible()
        assert page.get_by_role("button", name="导出对话").is_visible()
        assert (
            page.locator("textarea").first.get_attribute("placeholder")
            == "就图片、视频或 PDF 提问…"
        )
        screenshot(page, "phone-zh")
        ask_the_grounding_example(page)
        width = page.evaluate("document.documentElement.scrollWidth")
        screenshot(page, "phone-zh-answer")
    assert width <= 390, "nothing sticks out sideways on a phone"


def test_stop_keeps_the_partial_answer_for_the_next_turn(scripted_app):
    url, recording = scripted_app
    with browser_page(url) as page:
        wait_ready(page)
        send(page, "Tell me a very long story.")
        page.wait_for_function(f'() => document.querySelector("{BOT}")?.innerText.length > 30')
        page.get_by_role("button", name="Stop").click()
        wait_ready(page, timeout=10_000)
        partial = page.locator(BOT).first.inner_text()
        page.wait_for_timeout(300)
        assert page.locator(BOT).first.inner_text() == partial, "the answer stopped growing"
        send(page, "And then?")
        page.wait_for_function(f'() => document.querySelectorAll("{BOT}").length >= 2')
        page.get_by_role("button", name="Stop").click()
        wait_ready(page, timeout=10_000)
    history = recording.requests[-1].messages
    assert [m["role"] for m in history] == ["user", "assistant", "user"]
    assert alphanumeric(history[1]["content"])[:40] == alphanumeric(partial)[:40]


def test_closing_the_tab_mid_answer_frees_the_model(scripted_app, caplog):
    caplog.set_level(logging.INFO, logger="app.requests")
    url, recording = scripted_app
    with browser_page(url) as page:
        wait_ready(page)
        page.get_by_text("Settings").first.click()
        page.get_by_text("Max new tokens").wait_for()
        page.locator("#settings input[type=range]").first.fill("8192")
        number = "document.querySelector('#settings input[type=number]')"
        page.wait_for_function(f"() => {number}.value === '8192'")
        send(page, "Talk for as long as you can.")
        page.wait_for_function(f'() => document.querySelector("{BOT}")?.innerText.length > 30')
        page.close()  # the tab; the browser stays open
        assert recording.requests[-1].options.max_new_tokens == 8192, "the setting reached it"
        stopped = _wait_for_log_line(caplog, "stopped")
        assert stopped["generated_tokens"] < 8192, "the closed tab's answer was cut short"
        answer = Client(url, verbose=False).predict(
            {"text": "Short one.", "files": []}, max_new_tokens=4, api_name="/chat"
        )
    assert answer


def _wait_for_log_line(caplog, outcome: str, seconds: float = 120) -> dict:
    """The first app.requests line with this outcome (the server logs it when the turn ends)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for record in caplog.records:
            if record.name == "app.requests" and f'"outcome": "{outcome}"' in record.getMessage():
                return json.loads(record.getMessage())
        time.sleep(0.1)
    raise AssertionError(f"no {outcome!r} request line in {seconds} s")


def test_copy_edit_retry_undo_and_clear(app, red_square):
    url, recording = app
    with browser_page(url, permissions=["clipboard-read", "clipboard-write"]) as page:
        wait_ready(page)
        send(page, "What is in the picture?", [red_square])
        wait_answers(page, 1)
        asked = len(recording.requests)
        answer_buttons = page.locator(".bot-row").first.locator(
            "xpath=following-sibling::div[contains(@class, 'message-buttons')][1]"
        )
        answer_buttons.get_by_role("button", name="Copy message").click()
        copied = page.evaluate("navigator.clipboard.readText()")
        assert alphanumeric(copied) == alphanumeric(page.locator(BOT).first.inner_text())

        page.locator(USER).last.hover()
        page.get_by_role("button", name="Edit").click()
        page.locator(".message-wrap textarea").fill("What colour is the square?")
        page.locator(".message-wrap").get_by_role("button", name="Submit").click()
        _wait_for_requests(recording, asked + 1)
        wait_answers(page, 1)
        edited = recording.requests[-1].messages
        assert len(edited) == 1, "the history before the edited message only"
        assert [part["type"] for part in edited[0]["content"]] == ["image", "text"]
        assert edited[0]["content"][1]["text"] == "What colour is the square?"
        assert texts(page, USER)[-1] == "What colour is the square?"

        page.get_by_role("button", name="Retry").click()
        _wait_for_requests(recording, asked + 2)
        wait_answers(page, 1)
        assert recording.requests[-1].messages == edited, "regenerated from the same turn"

        page.get_by_role("button", name="Undo").click()
        page.wait_for_function(f'() => !document.querySelector("{USER}")')
        assert page.locator("textarea").first.input_value() == "What colour is the square?"

        send(page, "Hello?")
        wait_answers(page, 1)
        page.get_by_role("button", name="Clear").click()
        page.wait_for_function(f'() => !document.querySelector("{BOT}")')
        assert page.get_by_text("Read a chart").is_visible(), "the examples are back"


def _wait_for_requests(recording: Recording, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while len(recording.requests) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(recording.requests) >= count


def test_reload_then_export_and_import_restore_the_conversation(app, red_square, tmp_path):
    url, _ = app
    with browser_page(url) as page:
        wait_ready(page)
        send(page, "Describe the picture.", [red_square])
        wait_answers(page, 1)
        before = texts(page, USER), texts(page, BOT)
        page.locator("#export").click()
        with page.expect_download() as download:
            page.locator("#conversation-zip a").first.click()
        exported = tmp_path / "conversation.zip"
        download.value.save_as(exported)

        page.reload()  # the conversation list is kept in the browser (save_history)
        wait_ready(page)
        page.get_by_text("Describe the picture.").click()
        page.wait_for_function(f'() => document.querySelectorAll("{BOT}").length >= 2')
        assert (texts(page, USER), texts(page, BOT)) == before

        page.get_by_role("button", name="New chat").click()
        page.wait_for_function(f'() => !document.querySelector("{USER}")')
        page.locator("#conversation-file input[type=file]").set_input_files(str(exported))
        page.wait_for_function(f'() => document.querySelectorAll("{BOT}").length >= 2')
        assert (texts(page, USER), texts(page, BOT)) == before
        assert page.locator(f"{USER} img").count() == 1

        bad = tmp_path / "holiday.zip"
        bad.write_text("not a zip")
        page.locator("#conversation-file input[type=file]").set_input_files(str(bad))
        page.get_by_text("holiday.zip is not a conversation file").wait_for()
        assert (texts(page, USER), texts(page, BOT)) == before, "nothing was lost"
    with zipfile.ZipFile(exported) as archive:
        transcript = json.loads(archive.read("transcript.json"))
        assert [m["role"] for m in transcript["messages"]][:2] == ["user", "user"]
        assert any(name.startswith("media/") for name in archive.namelist())


def test_the_page_says_loading_until_the_model_is_ready(tiny_checkpoint):
    from app.engine.local import LocalEngine

    settings = Settings(
        checkpoint_path=str(tiny_checkpoint), cpu_only=True, server_port=free_port()
    )
    engine = LocalEngine(settings)  # not started: loading
    demo = launch_demo(engine, settings, wait=False)
    try:
        with browser_page(f"http://127.0.0.1:{settings.server_port}/") as page:
            status = page.locator("#engine-status")
            page.get_by_text("Loading the model").wait_for()
            assert page.locator("textarea").first.is_disabled()
            engine.start(background=False)
            wait_ready(page, timeout=10_000)
            assert "Ready" in status.inner_text()
    finally:
        demo.close()


def test_the_api_streams_only_the_text_of_a_grounding_answer(scripted_app):
    """The drawn-boxes image is for the page; /chat streams the answer's text."""
    url, _ = scripted_app
    park = Path(__file__).resolve().parent.parent / "assets" / "examples" / "park.png"
    answer = Client(url, verbose=False).predict(
        {"text": GROUNDING_EXAMPLE, "files": [handle_file(park)]}, api_name="/chat"
    )
    assert answer == "The **cat** watches the **ball**."
