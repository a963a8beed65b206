"""Browser-test helpers: headless Debian chromium (Playwright), demo servers, scripted model.

Playwright's own browser download fails here, so Debian's chromium is used.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

SCREENSHOTS = Path(__file__).resolve().parent.parent / "build" / "screenshots"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
READY = "() => { const t = document.querySelector('textarea'); return t && !t.disabled; }"
# The statistics notice closes every finished answer ("N tokens · first token ...").
ANSWERED = """n => [...document.querySelectorAll("[data-testid='bot']")]
    .filter(m => /\\d+ tokens/.test(m.innerText)).length >= n"""
FORCE = 1e5  # bias that makes a scripted token win over any logit of the random model
SUPPRESS = -1e4  # bias that keeps end-of-answer tokens out of unscripted answers


def chromium_or_skip() -> str:
    """The chromium executable; CI sets QWEN_DEMO_REQUIRE_BROWSER=1 so that absence fails."""
    path = shutil.which("chromium")
    if path:
        return path
    if os.environ.get("QWEN_DEMO_REQUIRE_BROWSER") == "1":
        pytest.fail("chromium is not installed (apt-get install chromium)")
    pytest.skip("chromium is not installed (apt-get install chromium)")


@contextmanager
def browser_page(url: str, args: tuple[str, ...] = (), **context_options: Any) -> Iterator:
    """A page at `url` in a fresh browser (its own cookies and local storage); `args` are more
    chromium flags."""
    from playwright.sync_api import sync_playwright

    executable = chromium_or_skip()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=[*FLAGS, *args])
        try:
            options = {"viewport": {"width": 1280, "height": 900}, "locale": "en-US"}
            page = browser.new_context(**(options | context_options)).new_page()
            page.goto(url)
            yield page
        finally:
            browser.close()


def screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def wait_ready(page, timeout: float = 60_000) -> None:
    """Until the input is enabled (the model is loaded)."""
    page.wait_for_function(READY, timeout=timeout)


def send(page, text: str, files: list[Path] = ()) -> None:
    """Type a message (with attachments) and press Enter."""
    if files:
        page.locator("input[type=file]").first.set_input_files([str(f) for f in files])
        page.locator(".thumbnail-item, .thumbnail-image").first.wait_for(timeout=10_000)
    textarea = page.locator("textarea").first
    textarea.fill(text)
    textarea.press("Enter")


def wait_answers(page, count: int, timeout: float = 60_000) -> None:
    """Until `count` answers of the chat are finished (each shows its statistics)."""
    page.wait_for_function(ANSWERED, arg=count, timeout=timeout)


def launch_demo(engine, settings, wait: bool = True):
    """The demo on settings.server_port, launched as web_demo_mm does; returns the Blocks."""
    from app.ui import build_demo
    from web_demo_mm import serve

    demo = serve(build_demo(engine, settings), engine, settings, block=False)
    deadline = time.monotonic() + 120
    while wait and engine.status().state == "loading" and time.monotonic() < deadline:
        time.sleep(0.05)
    return demo


@contextmanager
def demo_with(checkpoint: Path, wrap: Callable = lambda engine: engine, **flags) -> Iterator:
    """The demo of `checkpoint` with `flags` (Settings fields) on a free port, its engine
    wrapped by `wrap` (a recording or scripting one): yields (url, the wrapped engine)."""
    from app.config import Settings
    from app.engine.local import LocalEngine
    from tests.conftest import free_port

    flags = {"cpu_only": True, "server_port": free_port(), **flags}
    settings = Settings(checkpoint_path=str(checkpoint), **flags)
    engine = wrap(LocalEngine(settings).start(background=False))
    demo = launch_demo(engine, settings)
    try:
        yield f"http://127.0.0.1:{settings.server_port}/", engine
    finally:
        demo.close()


def scripted_checkpoint(
    base: Path,
    out: Path,
    answers: Mapping[str, str],
    generation_prompt: str = "<|im_start|>assistant\n",
) -> Path:
    """A copy of a tiny random checkpoint whose generation config scripts its answers.

    Its `generation_config.json` sets `sequence_bias` (applied inside `generate`, so the real
    engine, streamer and page are exercised): after a user message whose text is a key of
    `answers`, greedy decoding writes that answer (special tokens included) and ends; after any
    other message it never ends (the answer runs to max_new_tokens).
    """
    from transformers import AutoTokenizer

    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(base, out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ends = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    bias: list[list[Any]] = [[[token], SUPPRESS] for token in ends]
    for question, answer in answers.items():
        prompt = tokenizer.encode(
            f"{question}<|im_end|>\n{generation_prompt}", add_special_tokens=False
        )
        tokens = tokenizer.encode(answer + "<|im_end|>", add_special_tokens=False)
        bias += [[prompt + tokens[: i + 1], FORCE] for i in range(len(tokens))]
    config_path = out / "generation_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps(config | {"sequence_bias": bias}, indent=1))
    return out
