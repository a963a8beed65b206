"""Headless Debian chromium driven by Playwright (a test tool's own browser download fails here)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

SCREENSHOTS = Path(__file__).resolve().parent.parent / "build" / "screenshots"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def chromium_or_skip() -> str:
    """The chromium executable; CI sets QWEN_DEMO_REQUIRE_BROWSER=1 so that absence fails."""
    path = shutil.which("chromium")
    if path:
        return path
    if os.environ.get("QWEN_DEMO_REQUIRE_BROWSER") == "1":
        pytest.fail("chromium is not installed (apt-get install chromium)")
    pytest.skip("chromium is not installed (apt-get install chromium)")


@contextmanager
def browser_page(url: str, **context_options) -> Iterator:
    from playwright.sync_api import sync_playwright

    executable = chromium_or_skip()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=FLAGS)
        try:
            context = browser.new_context(
                **({"viewport": {"width": 1280, "height": 900}} | context_options)
            )
            page = context.new_page()
            page.goto(url)
            yield page
        finally:
            browser.close()


def screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
