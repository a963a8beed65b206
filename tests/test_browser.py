"""The page in headless chromium: upload an image, ask, see the image and a streamed answer."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.browser import browser_page, screenshot

pytestmark = pytest.mark.browser


def test_upload_ask_and_see_a_streamed_answer(app, tmp_path):
    url, recording = app
    image = tmp_path / "red_square.png"
    Image.new("RGB", (96, 96), (220, 20, 20)).save(image)
    with browser_page(url) as page:
        textarea = page.locator("textarea").first
        textarea.wait_for()
        page.wait_for_function(
            "() => { const t = document.querySelector('textarea'); return t && !t.disabled; }",
            timeout=60_000,
        )
        page.locator("input[type=file]").first.set_input_files(str(image))
        page.wait_for_selector("img[src*='red_square'], .thumbnail-image", timeout=30_000)
        textarea.fill("What colour is this square?")
        textarea.press("Enter")
        bot = page.locator(".message.bot, [data-testid='bot']").first
        bot.wait_for(timeout=60_000)
        seen = set()
        for _ in range(100):
            text = bot.inner_text()
            seen.add(text)
            if "tokens" in page.locator(".message-wrap, [role='log']").first.inner_text():
                break
            page.wait_for_timeout(100)
        shot = screenshot(page, "chat-image-answer")
        user_images = page.locator(".message.user img, [data-testid='user'] img")
        assert user_images.count() >= 1, "the uploaded image shows in the chat"
        assert len(seen) > 1, "the answer was seen growing"
        assert shot.stat().st_size > 10_000
    assert (
        recording.requests[-1].messages[-1]["content"][-1]["text"] == "What colour is this square?"
    )
