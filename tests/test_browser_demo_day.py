"""The demo-day features in the browser: rating answers, the camera, the cost before sending."""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import pytest
from PIL import Image

from app.messages import media_of
from tests.browser import (
    browser_page,
    demo_with,
    screenshot,
    send,
    wait_answers,
    wait_ready,
)
from tests.conftest import Recording

pytestmark = pytest.mark.browser
LIKE, DISLIKE = "[aria-label=Like]:visible", "[aria-label=Dislike]:visible"


def request_lines(caplog, count: int, seconds: float = 30) -> list[dict]:
    """The app.requests lines so far, once there are `count` of them."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "app.requests"]
        if len(lines) >= count:
            return lines
        time.sleep(0.1)
    raise AssertionError(f"fewer than {count} request log lines in {seconds} s")


def test_thumbs_under_an_answer_rate_its_request_in_the_log(app, caplog):
    caplog.set_level(logging.INFO, logger="app.requests")
    url, _ = app
    with browser_page(url) as page:
        wait_ready(page)
        send(page, "Say something.")
        wait_answers(page, 1)
        [answered] = request_lines(caplog, 1)
        # One pair of thumbs, under the answer (not under its statistics).
        assert page.locator(LIKE).count() == 1 and page.locator(DISLIKE).count() == 1
        page.locator(LIKE).click()
        screenshot(page, "feedback")
        page.locator(DISLIKE).click()
        _, up, down = request_lines(caplog, 3)
    assert answered["outcome"] == "ok" and len(answered["request"]) == 12
    rating = {"event": "feedback", "request": answered["request"], "session": answered["session"]}
    assert up == rating | {"rating": "up"} and down == rating | {"rating": "down"}
    assert "answer" not in up, "content only with --log-content"


# --- the cost before sending ------------------------------------------------------------------

PREVIEW = "#cost-preview"
FILL = re.compile(r"fill ([\d,]+) of ([\d,]+) tokens")


@pytest.fixture(scope="module")
def small_context_app(tiny_checkpoint):
    """A demo whose context (--max-context 700) a 640×480 picture and its answer nearly fill."""
    with demo_with(tiny_checkpoint, Recording, max_context=700, max_new_tokens=8) as served:
        yield served


def picture(folder: Path, name: str, size: tuple[int, int]) -> Path:
    path = folder / name
    Image.new("RGB", size, (200, 30, 30)).save(path)
    return path


def number(text: str) -> int:
    return int(text.replace(",", ""))


def test_the_cost_shown_before_sending_is_what_the_engine_counts(small_context_app, tmp_path):
    url, engine = small_context_app
    files = [picture(tmp_path, "wide.png", (640, 480)), picture(tmp_path, "tall.png", (90, 300))]
    with browser_page(url) as page:
        wait_ready(page)
        assert page.locator(PREVIEW).inner_text() == "", "nothing attached, nothing shown"
        textarea = page.locator("textarea").first
        textarea.fill("What colour is it?")  # the question counts too
        page.locator("input[type=file]").first.set_input_files([str(f) for f in files[1:]])
        page.wait_for_function(
            f"() => /tall.png/.test(document.querySelector('{PREVIEW}').innerText)"
        )
        shown = page.locator(PREVIEW).inner_text()
        screenshot(page, "cost-preview")
        textarea.press("Enter")
        wait_answers(page, 1)
        page.wait_for_function(f"() => document.querySelector('{PREVIEW}').innerText === ''")
        # The second turn's preview counts the whole conversation, the first picture included.
        textarea.fill("And now?")
        page.locator("input[type=file]").first.set_input_files([str(files[0])])
        page.wait_for_function(
            f"() => /wide.png/.test(document.querySelector('{PREVIEW}').innerText)"
        )
        second = page.locator(PREVIEW).inner_text()
        textarea.press("Enter")
        wait_answers(page, 2)
    for preview, request in zip((shown, second), engine.requests[-2:], strict=True):
        inputs = engine.encode(request)
        pads = int((inputs["input_ids"] == engine.model.config.image_token_id).sum())
        [tokens] = re.findall(r"([\d,]+) visual tokens", preview)
        filled, context = map(number, FILL.search(preview).groups())
        assert context == 700 and filled - 8 == inputs["input_ids"].shape[1]
        assert number(tokens) == pads - sum(m.tokens for m in _earlier_media(request))


def _earlier_media(request):
    from app.messages import media_of

    return media_of(request.messages[:-1])


def test_a_turn_that_will_not_fit_says_so_with_the_setting_to_lower(small_context_app, tmp_path):
    url, engine = small_context_app
    asked = len(engine.requests)
    big = picture(tmp_path, "big.png", (1280, 960))
    with browser_page(url) as page:
        wait_ready(page)
        page.locator("input[type=file]").first.set_input_files([str(big)])
        page.get_by_text("too large for the model's context").wait_for(timeout=30_000)
        warning = page.locator(PREVIEW).inner_text()
        screenshot(page, "cost-preview-too-large")
        page.get_by_text("Settings").first.click()
        pixels = page.get_by_label("Image max pixels")
        pixels.fill(str(320 * 240))
        pixels.press("Enter")
        page.wait_for_function(
            f"() => /big.png/.test(document.querySelector('{PREVIEW}').innerText)"
        )
        fits = page.locator(PREVIEW).inner_text()
    assert "too large for the model's context" in warning and "'Image max pixels'" in warning
    filled, _ = map(number, FILL.search(fits).groups())
    assert filled <= 700 and "big.png" in fits
    assert len(engine.requests) == asked, "a preview never asks the model"


# --- documents --------------------------------------------------------------------------------

FONT = "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"


def text_pdf(path: Path, lines: list[str]) -> Path:
    """A PDF of one A6 page per line of text (Helvetica)."""
    from tests.test_pdf import pdf_bytes

    pages = [(298, 420, 0, f"BT /F1 28 Tf 30 300 Td ({line}) Tj ET") for line in lines]
    font = 3 + 2 * len(pages)
    path.write_bytes(pdf_bytes(pages, f"/Resources << /Font << /F1 {font} 0 R >> >>", (FONT,)))
    return path


def test_a_pdf_is_read_as_its_pages(app, tmp_path):
    url, recording = app
    pdf = text_pdf(tmp_path / "menu.pdf", ["Soup 4.50", "Salad 6.00", "Cake 3.20"])
    with browser_page(url, viewport={"width": 1280, "height": 1300}) as page:
        wait_ready(page)
        page.locator("textarea").first.fill("Which dish is the cheapest?")
        page.locator("input[type=file]").first.set_input_files([str(pdf)])
        page.get_by_text("menu.pdf: 3 pages").wait_for(timeout=30_000)
        page.locator("textarea").first.press("Enter")
        wait_answers(page, 1)
        page.get_by_text("menu.pdf").first.wait_for()  # the user's bubble holds the document
        page.wait_for_timeout(300)  # the conversation list updates after the answer
        screenshot(page, "pdf")
    pages = media_of(recording.requests[-1].messages)
    assert [p.page for p in pages] == [1, 2, 3] and {p.name for p in pages} == {"menu.pdf"}
    first = pages[0].decode().image
    dark = sum(1 for pixel in first.getdata() if sum(pixel) < 200)
    assert dark > 50, "the page's text was rendered"


# --- the camera -------------------------------------------------------------------------------

FAKE_CAMERA = ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")
PLAYING = "id => document.querySelector(id + ' video')?.readyState >= 2"  # the camera shows


def test_a_photo_and_a_clip_from_the_camera_join_the_message(app):
    url, recording = app
    with browser_page(url, args=FAKE_CAMERA, viewport={"width": 1280, "height": 1300}) as page:
        wait_ready(page)
        page.locator("#camera").click()
        page.locator("#camera-photo").get_by_text("Click to Access Webcam").click()
        page.wait_for_function(PLAYING, arg="#camera-photo")
        page.get_by_label("capture photo").click()
        thumbnails = page.locator(".thumbnail-item")
        thumbnails.first.wait_for(timeout=30_000)
        page.locator("#camera-clip").get_by_text("Click to Access Webcam").click()
        page.wait_for_function(PLAYING, arg="#camera-clip")
        page.get_by_label("start recording").click()
        page.wait_for_timeout(1500)
        screenshot(page, "camera")
        page.locator("#camera-clip button", has_text="Stop").click()
        page.wait_for_function(
            "() => document.querySelectorAll('.thumbnail-item').length === 2",
            timeout=30_000,
        )
        send(page, "What do you see?")
        wait_answers(page, 1)
    photo, clip = media_of(recording.requests[-1].messages)
    assert photo.kind == "image" and photo.header.width >= 320, "the camera's picture"
    assert clip.kind == "video" and clip.frames >= 2 and clip.header.duration > 0.5
