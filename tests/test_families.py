"""Every supported family end to end: Qwen2-VL, Qwen2.5-VL, Qwen3-VL (dense, MoE, Thinking) and
Qwen3.5 (dense, MoE), through the engine and through the running app's /chat: an image, a video,
two turns;
their sizes from the loaded processor, Qwen3-VL's frame times and Qwen2.5-VL's time positions
from the frames really sampled, and the token budget from each family's template."""

from __future__ import annotations

from dataclasses import replace

import pytest
from gradio_client import Client, handle_file
from PIL import Image

from app.budget import fit
from app.config import Settings
from app.engine import ChatRequest, GenerationOptions
from app.engine.local import LocalEngine
from app.media import Media, MediaLimits, prepare
from tests.browser import launch_demo
from tests.conftest import free_port
from tests.media_corpus import write_video

FAMILIES = {
    "qwen2_vl": "tiny_checkpoint",
    "qwen2_5_vl": "tiny_checkpoint_25",
    "qwen3_vl": "tiny_checkpoint_3",
    "qwen3_vl_moe": "tiny_checkpoint_3_moe",
    "qwen3_vl_thinking": "tiny_checkpoint_thinking",
    "qwen3_5": "tiny_checkpoint_35",
    "qwen3_5_moe": "tiny_checkpoint_35_moe",
}
LIMITS = MediaLimits(min_frames=2, max_frames=8)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_engine(request) -> LocalEngine:
    checkpoint = request.getfixturevalue(FAMILIES[request.param])
    settings = Settings(checkpoint_path=str(checkpoint), cpu_only=True)
    return LocalEngine(settings).start(background=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("family-media")
    Image.new("RGB", (100, 70), (200, 40, 40)).save(folder / "red.png")
    video = write_video(folder / "clip.mp4", size=(64, 64), frames=8, rate=2)  # 0, 0.5 ... 3.5 s
    return {"image": folder / "red.png", "video": video}


def part(media: Media) -> dict:
    return {"type": media.kind, media.kind: media}


def ask(engine: LocalEngine, messages: list, tokens: int = 4) -> tuple[str, int]:
    request = ChatRequest(messages, GenerationOptions(max_new_tokens=tokens), client="c")
    deltas = list(engine.stream(request))
    return "".join(d.text for d in deltas), sum(d.tokens for d in deltas)


def test_an_image_a_video_and_two_turns(family_engine, files):
    factor = family_engine.geometry.factor
    assert factor == (32 if family_engine.family == "qwen3_vl" else 28), "sizes from the processor"
    image = prepare(files["image"], LIMITS, family_engine.geometry)
    video = prepare(files["video"], LIMITS, family_engine.geometry)
    assert all(side % factor == 0 for side in (*image.fed_size, *video.fed_size))
    turn1 = [{"role": "user", "content": [part(image), part(video), {"type": "text", "text": "?"}]}]
    first, tokens = ask(family_engine, turn1)
    assert tokens == 4
    turn2 = [*turn1, {"role": "assistant", "content": first}, {"role": "user", "content": "And?"}]
    assert ask(family_engine, turn2)[1] == 4


def test_the_budget_counts_each_familys_prompt_exactly(family_engine, files):
    image = prepare(files["image"], LIMITS, family_engine.geometry)
    video = prepare(files["video"], LIMITS, family_engine.geometry)
    messages = [
        {"role": "user", "content": [part(image), {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": "A red picture."},
        {"role": "user", "content": [part(video), {"type": "text", "text": "And this?"}]},
    ]
    budget = fit(
        messages, family_engine.count_tokens, 100_000, 10, True, None, family_engine.prompt_format
    )
    request = ChatRequest(messages, add_vision_id=True)
    assert budget.tokens == family_engine.encode(request)["input_ids"].shape[1]


def test_video_times_are_the_sampled_frames(family_engine, files):
    video = prepare(files["video"], LIMITS, family_engine.geometry)
    decoded = video.decode()
    assert decoded.timestamps == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5])
    request = ChatRequest([{"role": "user", "content": [part(video)]}])
    inputs = family_engine.encode(request)
    if family_engine.family == "qwen3_vl":  # Qwen3-VL: each frame pair's middle time, in the prompt
        prompt = family_engine.processor.tokenizer.decode(inputs["input_ids"][0])
        times = [f"<{t} seconds>" for t in ("0.2", "1.2", "2.2", "3.2")]
        assert all(t in prompt for t in times), prompt
        assert prompt.count("<|vision_start|>") == 4, "one pair of markers per frame pair"
    if family_engine.family == "qwen2_5_vl":  # Qwen2.5-VL: 2 frames per grid step, sampled at 2 fps
        assert inputs["second_per_grid_ts"] == pytest.approx([1.0])


@pytest.fixture(scope="module")
def served(family_engine):
    """The demo around this family's engine."""
    settings = replace(family_engine.settings, server_port=free_port(), max_new_tokens=4)
    demo = launch_demo(family_engine, settings)
    yield f"http://127.0.0.1:{settings.server_port}/"
    demo.close()


def test_chat_through_the_app(family_engine, served, files):
    client = Client(served, verbose=False)
    message = {"text": "What is it?", "files": [handle_file(files["image"])]}
    first = client.predict(message, max_new_tokens=3, api_name="/chat_details")[0]
    assert first["done"] and first["stats"].startswith("3 tokens")
    history = [
        {"role": "user", "content": [{"type": "file", "file": handle_file(files["video"])}]},
        {"role": "user", "content": "What happens?"},
        {"role": "assistant", "content": first["text"] or "Something."},
    ]
    again = client.predict({"text": "Why?", "files": []}, history, max_new_tokens=3,
                           api_name="/chat_details")[0]  # fmt: skip
    assert again["done"] and again["stats"].startswith("3 tokens")


def test_the_page_names_the_loaded_model(family_engine, served):
    page = Client(served, verbose=False).config
    title = family_engine.settings.model_title
    assert page["title"] == title and f"# {title}" in str(page["components"])
