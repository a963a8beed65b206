"""The local engine on a tiny random checkpoint: streaming, stop, errors, settings, families."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from PIL import Image

from app.config import Settings
from app.engine import ChatRequest, CheckpointNotFound, GenerationOptions
from app.engine.local import LocalEngine, choose_attention
from app.engine.worker import generate_kwargs
from app.errors import UserFacingError
from tests.uploads import clip, part, picture


def image_request(tokens: int, **options) -> ChatRequest:
    image = picture(Image.new("RGB", (56, 84), (200, 30, 30)))
    question = [part(image), {"type": "text", "text": "What is this?"}]
    return ChatRequest(
        messages=[{"role": "user", "content": question}],
        options=GenerationOptions(max_new_tokens=tokens, **options),
    )


def make_engine(path) -> LocalEngine:
    return LocalEngine(Settings(checkpoint_path=str(path), cpu_only=True)).start(background=False)


@pytest.fixture(scope="module")
def engine(tiny_checkpoint) -> LocalEngine:
    return make_engine(tiny_checkpoint)


def answer(engine: LocalEngine, request: ChatRequest) -> tuple[str, int]:
    text, tokens = "", 0
    for delta in engine.stream(request):
        text += delta.text
        tokens += delta.tokens
    return text, tokens


def test_streams_the_requested_number_of_tokens(engine):
    deltas = list(engine.stream(image_request(12)))
    text = "".join(d.text for d in deltas)
    assert engine.status().state == "ready"
    assert sum(d.tokens for d in deltas) == 12  # random weights: EOS is all but impossible
    assert len([d for d in deltas if d.text]) > 1, "the answer arrives in pieces, not at once"
    assert text and "<|im_end|>" not in text


def test_greedy_answers_are_reproducible_and_match_raw_generate(engine):
    first, _ = answer(engine, image_request(10))
    second, _ = answer(engine, image_request(10))
    assert first == second
    inputs = engine.encode(image_request(10))
    raw = engine.model.generate(**inputs, max_new_tokens=10, do_sample=False)
    decoded = engine.processor.tokenizer.decode(
        raw[0, inputs["input_ids"].shape[1] :], skip_special_tokens=False
    )
    assert decoded.replace("<|im_end|>", "") == first


def test_seeded_sampling_is_reproducible_and_differs_from_greedy(engine):
    sampled = [answer(engine, image_request(16, temperature=1.5, seed=7))[0] for _ in range(2)]
    greedy, _ = answer(engine, image_request(16))
    assert sampled[0] == sampled[1]
    assert sampled[0] != greedy


def test_stop_ends_generation_and_frees_the_worker(engine):
    stream = engine.stream(image_request(100_000))
    for delta in stream:
        if delta.text:
            break
    stream.close()  # what Gradio does on Stop or a closed tab
    started = time.monotonic()
    text, tokens = answer(engine, image_request(4))
    assert tokens == 4 and text
    # Had the first request kept going, this one would wait behind 100k tokens.
    assert time.monotonic() - started < 120


def test_a_generation_error_reaches_the_caller_and_the_next_turn_works(engine):
    with pytest.raises(UserFacingError, match="Generation failed"):
        answer(engine, image_request(4, temperature=1.0, top_p=-1.0))
    text, tokens = answer(engine, image_request(4))
    assert tokens == 4


def test_video_input(engine):
    video = clip((56, 56), frames=4, rate=2)
    request = ChatRequest(
        messages=[{"role": "user", "content": [part(video), {"type": "text", "text": "What?"}]}],
        options=GenerationOptions(max_new_tokens=5),
    )
    inputs = engine.encode(request)
    assert inputs["video_grid_thw"].tolist() == [[2, 4, 4]]
    assert answer(engine, request)[1] == 5


def test_qwen2_5_vl_family(tiny_checkpoint_25):
    engine = make_engine(tiny_checkpoint_25)
    assert engine.family == "qwen2_5_vl"
    assert answer(engine, image_request(6))[1] == 6


def test_missing_checkpoint_raises_a_typed_error_with_a_hint(tmp_path):
    with pytest.raises(CheckpointNotFound, match="HF_HUB_OFFLINE"):
        LocalEngine(Settings(checkpoint_path=str(tmp_path / "nope"), cpu_only=True))


@pytest.mark.parametrize(
    ("want", "cuda", "installed", "expected"),
    [
        (False, True, True, "sdpa"),
        (True, False, True, "sdpa"),
        (True, True, False, "sdpa"),
        (True, True, True, "flash_attention_2"),
    ],
)
def test_choose_attention_falls_back_with_a_reason(want, cuda, installed, expected):
    attention, reason = choose_attention(want, cuda, installed)
    assert attention == expected
    assert reason


def test_generate_kwargs_greedy_and_sampling():
    greedy = generate_kwargs(GenerationOptions(max_new_tokens=7))
    assert greedy["do_sample"] is False and greedy["max_new_tokens"] == 7
    sampled = generate_kwargs(replace(GenerationOptions(), temperature=0.7, top_p=0.9, top_k=20))
    assert sampled["do_sample"] is True
    assert (sampled["temperature"], sampled["top_p"], sampled["top_k"]) == (0.7, 0.9, 20)
