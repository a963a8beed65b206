"""The token budget: exact counts against the real processor, and which turns are left out."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from PIL import Image

from app.budget import (
    Cost,
    fit,
    fixed_cost,
    message_costs,
    render_messages,
    trim_pages,
    turn_starts,
    turns_to_leave_out,
)
from app.chat import pages_left_out_notice
from app.cost import CostPreview
from app.engine import QWEN2_FORMAT
from app.errors import UserFacingError
from app.media import QWEN2_VL, MediaLimits, prepare
from app.messages import media_of, page_parts
from tests.media_corpus import write_video


@dataclass(frozen=True, eq=False)
class Sized:
    """Stands in for app.media.Media: what the budget reads of one is its token count."""

    kind: str
    tokens: int


def image(width: int = 56, height: int = 28) -> Sized:
    return Sized("image", QWEN2_VL.image_tokens(width, height))


def video(frames: int = 4, width: int = 56, height: int = 56) -> Sized:
    return Sized("video", QWEN2_VL.video_tokens(frames, width, height))


def user(text: str, *items: Sized | str) -> dict:
    parts = [
        {"type": i.kind, i.kind: i} if isinstance(i, Sized) else _placeholder(i) for i in items
    ]
    return {"role": "user", "content": parts + [text_(text)]}


def _placeholder(kind: str) -> dict:
    return {"type": kind, kind: Sized(kind, 0)}


def text_(text: str) -> dict:
    return {"type": "text", "text": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def words(text: str) -> int:
    """A stand-in tokenizer: one token per space-separated word."""
    return len(text.split())


def test_visual_tokens_follow_the_processor_grid():
    assert QWEN2_VL.image_tokens(56, 84) == 2 * 3
    assert image(84, 56).tokens == 3 * 2
    assert video(frames=6, width=56, height=84).tokens == 3 * 2 * 3  # frame pairs


@pytest.fixture(scope="module")
def uploads(tmp_path_factory) -> dict[str, str]:
    """Real files (in the upload folder, like uploads): two pictures and a 6-frame clip."""
    folder = tmp_path_factory.mktemp("uploads")
    Image.new("RGB", (84, 140), (200, 10, 10)).save(folder / "tall.png")
    Image.new("RGB", (20, 20), (10, 10, 200)).save(folder / "small.png")
    clip = write_video(folder / "clip.mp4", size=(56, 84), frames=6, rate=2)
    return {"tall": str(folder / "tall.png"), "small": str(folder / "small.png"), "clip": str(clip)}


@pytest.mark.parametrize("system", [True, False])
@pytest.mark.parametrize("add_vision_id", [True, False])
def test_counts_match_the_processor_exactly(tiny_checkpoint, uploads, system, add_vision_id):
    """The budget, from the media headers alone, equals the processor's input length."""
    from transformers import AutoProcessor

    from app.engine.local import processor_inputs

    processor = AutoProcessor.from_pretrained(tiny_checkpoint)

    def count(text: str) -> int:
        return len(processor.tokenizer(text, add_special_tokens=False)["input_ids"])

    limits = MediaLimits(video_min_pixels=28 * 28, video_total_pixels=6 * 56 * 84)
    tall, clip, small = (prepare(uploads[k], limits) for k in ("tall", "clip", "small"))

    def part(media) -> dict:
        return {"type": media.kind, media.kind: media}

    messages = [
        {"role": "user", "content": [part(tall), text_("What is this? A cat, or a dog?")]},
        assistant("A cat <|box_start|>(1,2),(3,4)<|box_end|> on a mat.\nDone."),
        {"role": "user", "content": [part(clip), part(small), text_("And now?\nTell me.")]},
    ]
    if system:
        messages.insert(0, {"role": "system", "content": "Be brief, and kind."})
    budget = fit(messages, count, 10_000, 100, add_vision_id).tokens
    prompt = processor.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, add_vision_id=add_vision_id
    )
    decoded = [media.decode() for media in media_of(messages)]
    assert budget == processor_inputs(processor, prompt, decoded)["input_ids"].shape[1]


def test_rendering_keeps_markers_and_labels_but_not_pads():
    messages = [user("hi", "image", "video"), assistant("yo"), user("and?", "image")]
    assert render_messages(messages, add_vision_id=True) == [
        "<|im_start|>user\nPicture 1: <|vision_start|><|vision_end|>"
        "Video 1: <|vision_start|><|vision_end|>hi<|im_end|>\n",
        "<|im_start|>assistant\nyo<|im_end|>\n",
        "<|im_start|>user\nPicture 2: <|vision_start|><|vision_end|>and?<|im_end|>\n",
    ]


@pytest.mark.parametrize(
    ("roles", "starts"),
    [
        (["user"], [0]),
        (["system", "user"], [1]),
        (["system", "user", "assistant", "user"], [1, 3]),
        (["assistant", "user", "assistant", "user"], [0, 1, 3]),  # an opening greeting
        (["system", "assistant", "user"], [1, 2]),
    ],
)
def test_turns_start_at_user_messages(roles, starts):
    assert turn_starts(roles) == starts


@pytest.mark.parametrize(
    ("limit", "dropped"),
    [(100, 0), (10 + 20 + 30 + 40, 0), (99, 1), (80, 1), (79, 2), (50, 2), (49, None)],
)
def test_the_oldest_turns_go_first(limit, dropped):
    # system 5 (+5 fixed), then turns of 20, 30 and 40 tokens
    costs = [5, 10, 10, 15, 15, 20, 20]
    assert turns_to_leave_out(costs, [1, 3, 5], fixed=5, limit=limit) == dropped


def test_fit_leaves_out_whole_old_turns_and_their_media():
    old, mid, new = image(), image(84, 84), image(28, 28)
    messages = [
        {"role": "system", "content": "Be brief."},
        user("one " * 50, old),
        assistant("first answer"),
        user("two", mid),
        assistant("second answer"),
        user("three", new),
    ]
    whole = fit(messages, words, 10_000, 10)
    assert whole.turns_left_out == 0 and whole.messages == messages
    fitted = fit(messages, words, whole.tokens - 1 + 10, 10)
    assert fitted.turns_left_out == 1
    assert fitted.messages == [messages[0], *messages[3:]], "system prompt and newer turns kept"
    assert media_of(fitted.messages) == [mid, new]
    assert fitted.tokens <= whole.tokens - 1


def test_beyond_max_media_the_oldest_turns_go_too():
    messages = [user("one", image(), image()), assistant("a"), user("two", image(), video())]
    fitted = fit(messages, words, 10_000, 10, max_media=3)
    assert fitted.turns_left_out == 1 and len(media_of(fitted.messages)) == 2
    assert fit(messages, words, 10_000, 10, max_media=4).turns_left_out == 0
    with pytest.raises(UserFacingError, match="more than 1 images and videos"):
        fit(messages, words, 10_000, 10, max_media=1)


def test_the_answer_keeps_its_room():
    messages = [user("one two three"), assistant("four"), user("five")]
    tokens = fit(messages, words, 10_000, 0).tokens
    assert fit(messages, words, tokens + 100, 100).turns_left_out == 0
    assert fit(messages, words, tokens + 100, 101).turns_left_out == 1


def test_a_current_turn_too_large_alone_says_what_to_change():
    big, clip = image(28 * 20, 28 * 20), video(8, 28 * 10, 28 * 10)
    messages = [user("old"), assistant("answer"), user("look", big, clip)]
    with pytest.raises(UserFacingError) as error:
        fit(messages, words, max_context=500, max_new_tokens=100)
    message = str(error.value)
    assert "too large for the model's context" in message
    assert "400 for images" in message and "400 for videos" in message
    assert "only 400 fit (--max-context 500)" in message
    assert "fewer or smaller images" in message and "shorter video" in message
    assert "'Max new tokens'" in message
    assert "shorter text" not in message


def test_long_text_alone_asks_for_a_shorter_text():
    with pytest.raises(UserFacingError, match="Try a shorter text, or a lower 'Max new tokens'"):
        fit([user("word " * 300)], words, max_context=200, max_new_tokens=50)


def test_costs_add_up():
    assert (Cost(1, 2, 3) + Cost(10, 20, 30)).total == 66


def test_turns_are_left_out_in_steps_so_the_prompt_start_stays_put():
    """A conversation growing by one 10-token turn at a time against a 100-token budget."""
    stepped = [turns_to_leave_out([10] * n, list(range(n)), 0, 100, steps=4) for n in range(9, 40)]
    minimal = [turns_to_leave_out([10] * n, list(range(n)), 0, 100) for n in range(9, 40)]
    changes = sum(a != b for a, b in zip(stepped, stepped[1:], strict=False))
    assert sum(a != b for a, b in zip(minimal, minimal[1:], strict=False)) == 29  # every turn
    assert changes <= 12, "the first kept turn moves in steps, not with every turn"
    for n, dropped in zip(range(9, 40), stepped, strict=True):
        assert dropped is not None and (n - dropped) * 10 <= 100, "what is kept fits"
        assert dropped >= minimal[n - 9]


@dataclass(frozen=True, eq=False)
class Page:
    """Stands in for a document's page (app.media.Media with a page number)."""

    name: str
    page: int
    tokens: int = 10
    kind: str = "image"
    path: str = "upload/p.pdf"


def test_many_pages_are_trimmed_by_bisection_to_the_most_that_fit():
    parts = [p for n in range(1, 201) for p in page_parts(Page("a.pdf", n))]
    message = {"role": "user", "content": [*parts, text_("Summarise.")]}
    calls: list[str] = []

    def counting(text: str) -> int:
        calls.append(text)
        return len(text.split())

    def cost(pages: int) -> int:
        kept = {**message, "content": [*parts[: 2 * pages], text_("Summarise.")]}
        [total] = message_costs([kept], lambda t: len(t.split()), False)
        return total.total

    limit = cost(57) + fixed_cost(["user"], lambda t: len(t.split()), QWEN2_FORMAT)
    trimmed = trim_pages([message], counting, limit)
    kept = [part["image"].page for part in trimmed.messages[0]["content"] if "image" in part]
    assert kept == list(range(1, 58)), "the most pages that fit, in order"
    assert [page.page for page in trimmed.pages_left_out] == list(range(58, 201))
    assert trimmed.messages[0]["content"][-1] == text_("Summarise."), "the question stays"
    assert len(calls) < 25, "a few counts (bisection), not one per page left out"


def test_the_notice_names_each_document_apart_even_with_one_name():
    pages = [Page("p.pdf", n) for n in (3, 4, 5)] + [Page("p.pdf", n) for n in (1, 2)]
    title = pages_left_out_notice(pages)["metadata"]["title"]
    assert title == "📄 Left out: pages 3–5 of p.pdf; pages 1–2 of p.pdf"
    other = [Page("p.pdf", 3), Page("p.pdf", 4, path="upload/other/p.pdf")]  # another file
    title = pages_left_out_notice(other)["metadata"]["title"]
    assert title == "📄 Left out: page 3 of p.pdf; page 4 of p.pdf"


def test_the_cost_preview_lists_each_document_apart_even_with_one_name():
    pages = [Page("p.pdf", n) for n in (1, 2)] + [Page("p.pdf", n, path="b/p.pdf") for n in (1, 2)]
    shown = CostPreview(files=tuple(pages), max_context=100).markdown()
    assert shown.count("📄 p.pdf: 2 pages, 20 visual tokens") == 2
