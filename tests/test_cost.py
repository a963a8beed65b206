"""The cost preview from the client's raw values: files, fill, left-out turns, problems."""

from __future__ import annotations

import pytest
from PIL import Image

from app.config import Settings
from app.cost import preview_turn


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    """The real engine's processor and geometry (the preview never needs the model)."""
    from app.engine.local import LocalEngine

    return LocalEngine(Settings(checkpoint_path=str(tiny_checkpoint), cpu_only=True))


@pytest.fixture
def red(tmp_path):
    path = tmp_path / "red.png"
    Image.new("RGB", (280, 280), (200, 30, 30)).save(path)
    return str(path)


def test_each_file_and_the_fill_of_the_context(engine, red):
    settings = Settings(max_context=4096)
    preview = preview_turn(engine, settings, {"text": "Colour?", "files": [red]}, [], {})
    assert preview is not None and preview.problem is None
    [media] = preview.files
    assert media.name == "red.png" and media.tokens == 100  # (280/28)² patches
    assert preview.answer_tokens == settings.max_new_tokens and preview.max_context == 4096
    shown = preview.markdown()
    assert "red.png: 100 visual tokens (280×280)" in shown
    used = preview.prompt_tokens + preview.answer_tokens
    assert f"fill {used:,} of 4,096 tokens" in shown


def test_nothing_is_shown_without_files(engine):
    assert preview_turn(engine, Settings(), {"text": "Hi", "files": []}, [], {}) is None
    assert preview_turn(engine, Settings(), None, [], {}) is None
    assert preview_turn(engine, Settings(), 12, "not a history", {}) is None


def test_problems_are_said_in_the_words_of_the_send(engine, red, tmp_path):
    message = {"text": "", "files": [red]}
    small = preview_turn(engine, Settings(max_context=150), message, [], {"max_new_tokens": 64})
    assert small and "too large for the model's context" in small.problem
    assert small.markdown().startswith("⚠️")
    typed = preview_turn(engine, Settings(), message, [], {"temperature": "hot"})
    assert typed and "Temperature" in typed.problem
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a picture")
    broken = preview_turn(engine, Settings(), {"text": "", "files": [str(junk)]}, [], {})
    assert broken and "junk.png" in broken.problem


def test_older_turns_to_be_left_out_are_announced(engine, red):
    words = "lorem ipsum " * 40
    history = [
        m
        for i in range(6)
        for m in (
            {"role": "user", "content": f"{i} {words}"},
            {"role": "assistant", "content": "ok"},
        )
    ]
    preview = preview_turn(
        engine,
        Settings(max_context=700),
        {"text": "", "files": [red]},
        history,
        {"max_new_tokens": 16},
    )
    assert preview and preview.turns_left_out > 0
    assert f"The {preview.turns_left_out} oldest turns will be left out" in preview.markdown()


def test_a_documents_pages_are_summed_under_its_name(engine, tmp_path):
    from tests.test_pdf import THREE_PAGES, pdf_bytes

    path = tmp_path / "report.pdf"
    path.write_bytes(pdf_bytes(THREE_PAGES))
    preview = preview_turn(engine, Settings(), {"text": "", "files": [str(path)]}, [], {})
    assert preview and preview.problem is None and len(preview.files) == 3
    tokens = sum(page.tokens for page in preview.files)
    assert f"📄 report.pdf: 3 pages, {tokens:,} visual tokens" in preview.markdown()
    narrow = preview_turn(
        engine,
        Settings(max_context=1000 + 8),
        {"text": "", "files": [str(path)]},
        [],
        {"max_new_tokens": 8, "max_pixels": 400 * 28 * 28},
    )
    assert narrow and narrow.pages_left_out, narrow
    assert "Left out: page" in narrow.markdown()
