"""The token budget: exact counts against the real processor, and which turns are left out."""

from __future__ import annotations

import pytest
from PIL import Image

from app.budget import (
    Cost,
    fit,
    grid_tokens,
    render_messages,
    turn_starts,
    turns_to_leave_out,
    visual_tokens,
)
from app.errors import UserFacingError
from app.media import ImageInput, VideoInput


def image(width: int = 56, height: int = 28) -> ImageInput:
    return ImageInput(Image.new("RGB", (width, height)))


def video(frames: int = 4, width: int = 56, height: int = 56) -> VideoInput:
    return VideoInput([Image.new("RGB", (width, height))] * frames, fps=2.0, duration=frames / 2)


def user(text: str, *kinds: str) -> dict:
    return {"role": "user", "content": [{"type": k, k: f"x.{k}"} for k in kinds] + [text_(text)]}


def text_(text: str) -> dict:
    return {"type": "text", "text": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def words(text: str) -> int:
    """A stand-in tokenizer: one token per space-separated word."""
    return len(text.split())


def test_visual_tokens_follow_the_processor_grid():
    assert grid_tokens(56, 84) == 2 * 3
    assert visual_tokens(image(84, 56)) == 3 * 2
    assert visual_tokens(video(frames=6, width=56, height=84)) == 3 * 2 * 3  # frame pairs


@pytest.mark.parametrize("system", [True, False])
@pytest.mark.parametrize("add_vision_id", [True, False])
def test_counts_match_the_processor_exactly(tiny_checkpoint, system, add_vision_id):
    from transformers import AutoProcessor

    from app.engine.local import processor_inputs

    processor = AutoProcessor.from_pretrained(tiny_checkpoint)

    def count(text: str) -> int:
        return len(processor.tokenizer(text, add_special_tokens=False)["input_ids"])

    messages = [
        user("What is this? A cat, or a dog?", "image"),
        assistant("A cat <|box_start|>(1,2),(3,4)<|box_end|> on a mat.\nDone."),
        user("And now?\nTell me: what changed.", "video", "image"),
    ]
    if system:
        messages.insert(0, {"role": "system", "content": "Be brief, and kind."})
    media = [image(84, 140), video(6, 56, 84), image(28, 28)]
    prompt = processor.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, add_vision_id=add_vision_id
    )
    expected = processor_inputs(processor, prompt, media)["input_ids"].shape[1]
    assert fit(messages, media, count, 10_000, 100, add_vision_id).tokens == expected


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
        user("one " * 50, "image"),
        assistant("first answer"),
        user("two", "image"),
        assistant("second answer"),
        user("three", "image"),
    ]
    whole = fit(messages, [old, mid, new], words, 10_000, 10)
    assert whole.turns_left_out == 0 and whole.messages == messages
    fitted = fit(messages, [old, mid, new], words, whole.tokens - 1 + 10, 10)
    assert fitted.turns_left_out == 1
    assert fitted.messages == [messages[0], *messages[3:]], "system prompt and newer turns kept"
    assert fitted.media == [mid, new]
    assert fitted.tokens <= whole.tokens - 1


def test_the_answer_keeps_its_room():
    messages = [user("one two three"), assistant("four"), user("five")]
    tokens = fit(messages, [], words, 10_000, 0).tokens
    assert fit(messages, [], words, tokens + 100, 100).turns_left_out == 0
    assert fit(messages, [], words, tokens + 100, 101).turns_left_out == 1


def test_a_current_turn_too_large_alone_says_what_to_change():
    big, clip = image(28 * 20, 28 * 20), video(8, 28 * 10, 28 * 10)
    messages = [user("old"), assistant("answer"), user("look", "image", "video")]
    with pytest.raises(UserFacingError) as error:
        fit(messages, [big, clip], words, max_context=500, max_new_tokens=100)
    message = str(error.value)
    assert "too large for the model's context" in message
    assert "400 for images" in message and "400 for videos" in message
    assert "only 400 fit (--max-context 500)" in message
    assert "fewer or smaller images" in message and "shorter video" in message
    assert "'Max new tokens'" in message
    assert "shorter text" not in message


def test_long_text_alone_asks_for_a_shorter_text():
    with pytest.raises(UserFacingError, match="Try a shorter text, or a lower 'Max new tokens'"):
        fit([user("word " * 300)], [], words, max_context=200, max_new_tokens=50)


def test_costs_add_up():
    assert (Cost(1, 2, 3) + Cost(10, 20, 30)).total == 66
