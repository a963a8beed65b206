"""The demo-day features in the browser: rating answers, the camera, the cost before sending."""

from __future__ import annotations

import json
import logging
import time

import pytest

from tests.browser import browser_page, screenshot, send, wait_answers, wait_ready

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
