"""PDF documents end to end through /chat_details: pages as labelled images, the page range,
pages beyond the budget left out with a notice, refusals naming the file, exports keeping it."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from app.budget import trim_pages
from app.engine import QWEN2_FORMAT
from app.media import Document, MediaLimits, prepare
from app.messages import attach_media, media_of, page_label
from app.transcript import export_transcript, import_transcript
from tests.browser import demo_with
from tests.conftest import Recording
from tests.test_pdf import THREE_PAGES, encrypted, pdf_bytes

# Five pages: the three of test_pdf (red, green, blue on white), then two more.
FIVE_PAGES = THREE_PAGES + THREE_PAGES[:2]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("documents") / "report.pdf"
    path.write_bytes(pdf_bytes(FIVE_PAGES))
    return path


def ask(client: Client, files: list[Path], **settings) -> dict:
    message = {"text": "What is on these pages?", "files": [handle_file(f) for f in files]}
    details, _ = client.predict(message, api_name="/chat_details", max_new_tokens=4, **settings)
    return details


def texts(request) -> list[str]:
    return [p["text"] for p in request.messages[-1]["content"] if p["type"] == "text"]


def test_each_page_is_an_image_after_its_label(client, app, report):
    details = ask(client, [report])
    request = app[1].requests[-1]
    pages = media_of(request.messages)
    assert [page.page for page in pages] == [1, 2, 3, 4, 5]
    assert texts(request)[:5] == [f"Page {n} of report.pdf:\n" for n in range(1, 6)]
    # What the model saw: page 1 red on its left half, page 3 turned to show blue on top.
    first, third = pages[0].decode().image, pages[2].decode().image
    assert first.getpixel((first.width // 4, first.height // 2)) == (255, 0, 0)
    assert third.getpixel((third.width // 2, third.height // 4)) == (0, 0, 255)
    inputs = app[1].engine.encode(request)
    assert inputs["image_grid_thw"].shape[0] == 5, "five images reached the processor"
    assert details["done"] and details["notices"] == []


def test_the_page_range_setting_chooses_pages(client, app, report):
    ask(client, [report], pdf_pages="2, 4-")
    assert [page.page for page in media_of(app[1].requests[-1].messages)] == [2, 4, 5]
    with pytest.raises(AppError, match="write pages like 1-3"):
        ask(client, [report], pdf_pages="three")


def test_an_earlier_turns_document_keeps_the_pages_it_was_sent_with(client, app, report):
    first = ask(client, [report], pdf_pages="1")
    history = [
        {"role": "user", "content": [{"type": "file", "file": handle_file(report)}]},
        {"role": "user", "content": [{"type": "text", "text": "What is on these pages?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": first["text"]}]},
    ]
    for setting in ("", "3", "201"):  # the setting now applies to this turn's documents only
        message = {"text": "And the colours?", "files": []}
        details, _ = client.predict(
            message, history, api_name="/chat_details", max_new_tokens=4, pdf_pages=setting
        )
        assert details["done"], setting
        assert [page.page for page in media_of(app[1].requests[-1].messages)] == [1], setting


@pytest.fixture(scope="module")
def small_app(tiny_checkpoint):
    """A demo with a 2000-token context: two or three of the report's pages fit."""
    with demo_with(tiny_checkpoint, Recording, max_context=2000) as (url, engine):
        yield Client(url, verbose=False), engine


def test_pages_beyond_the_budget_are_left_out_with_a_notice(small_app, report):
    client, engine = small_app
    details = ask(client, [report])
    request = engine.requests[-1]
    kept = [page.page for page in media_of(request.messages)]
    assert 1 < len(kept) < 5 and kept == list(range(1, len(kept) + 1)), "the first pages"
    first_left = len(kept) + 1
    assert details["notices"] == [f"📄 Left out: pages {first_left}–5 of report.pdf"]
    prompt = engine.encode(request)["input_ids"].shape[1]
    assert prompt + 4 <= 2000, "the prompt and the answer fit in the context"
    assert texts(request)[-1] == "What is on these pages?", "the question is never left out"


def test_a_turn_keeps_the_pages_it_had_in_later_turns(report):
    """Pages are trimmed per turn, judged alone: a later request sends the same pages."""
    limits = MediaLimits()

    def open_file(path: str, turn: int, current: bool) -> Document:
        return prepare(path, limits)

    def words(text: str) -> int:
        return len(text.split())

    turn = {"role": "user", "content": [{"type": "file", "path": str(report)}]}
    messages = attach_media([turn], open_file)
    costs = [page.tokens for page in media_of(messages)]
    room = sum(costs[:2]) + 30  # two pages and their labels
    alone = trim_pages(messages, words, room, prompt_format=QWEN2_FORMAT)
    assert [p.page for p in alone.pages_left_out] == [3, 4, 5]
    later = [*messages, {"role": "assistant", "content": "Red."}, {"role": "user", "content": "?"}]
    again = trim_pages(later, words, room, prompt_format=QWEN2_FORMAT)
    assert again.messages[0] == alone.messages[0] and again.pages_left_out == ()
    kept = alone.messages[0]["content"]
    assert [p.get("text") for p in kept[::2]] == [page_label(p["image"]) for p in kept[1::2]]


def test_exports_keep_the_pdf_and_imports_accept_it(report, tmp_path):
    history = [
        {"role": "user", "content": {"path": str(report)}},
        {"role": "user", "content": "Summarise."},
        {"role": "assistant", "content": "A report."},
    ]
    exported = export_transcript(history, tmp_path / "chat.zip")
    with zipfile.ZipFile(exported) as archive:
        [member] = [n for n in archive.namelist() if n.endswith(".pdf")]
        assert archive.read(member) == report.read_bytes()
    imported = import_transcript(exported, tmp_path / "imported")
    [file_part] = [m for m in imported if isinstance(m["content"], list)][0]["content"]
    assert Path(file_part["file"]["path"]).read_bytes() == report.read_bytes()


@pytest.mark.parametrize(
    ("name", "data", "says"),
    [
        ("broken.pdf", b"%PDF-1.7\n" + bytes(range(256)) * 4, "could not be read as a PDF"),
        ("empty-doc.pdf", pdf_bytes([]), "has no pages"),
    ],
)
def test_a_bad_pdf_gets_a_message_naming_it(client, tmp_path, name, data, says):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(AppError, match=says) as refused:
        ask(client, [path])
    assert name in str(refused.value)


def test_a_password_protected_pdf_gets_a_message_naming_it(client, tmp_path):
    path = tmp_path / "secret.pdf"
    path.write_bytes(encrypted("secret"))
    with pytest.raises(AppError, match="protected by a password") as refused:
        ask(client, [path])
    assert "secret.pdf" in str(refused.value)
