"""The tiny random checkpoint loads through the real transformers path and behaves like Qwen2-VL."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
Image = pytest.importorskip("PIL.Image")

from app.tiny_checkpoint import (  # noqa: E402  (after the optional-dependency skips)
    FAMILIES,
    MARKER_FILE,
    SPECIAL_TOKENS,
    build_tiny_checkpoint,
    main,
)

# Copied from the Qwen2-VL README, "Add ids for Multiple Image Inputs".
README_CONVERSATION = [
    {
        "role": "user",
        "content": [{"type": "image"}, {"type": "text", "text": "Hello, how are you?"}],
    },
    {
        "role": "assistant",
        "content": "I'm doing well, thank you for asking. How can I assist you today?",
    },
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Can you describe these images and video?"},
            {"type": "image"},
            {"type": "image"},
            {"type": "video"},
            {"type": "text", "text": "These are from my vacation."},
        ],
    },
    {
        "role": "assistant",
        "content": "I'd be happy to describe the images and video for you. "
        "Could you please provide more context about your vacation?",
    },
    {
        "role": "user",
        "content": "It was a trip to the mountains. Can you see the details in the images and "
        "video?",
    },
]
README_PROMPT_WITHOUT_ID = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Hello, how are you?<|im_end|>\n"
    "<|im_start|>assistant\nI'm doing well, thank you for asking. How can I assist you today?"
    "<|im_end|>\n"
    "<|im_start|>user\nCan you describe these images and video?"
    "<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|image_pad|><|vision_end|>"
    "<|vision_start|><|video_pad|><|vision_end|>These are from my vacation.<|im_end|>\n"
    "<|im_start|>assistant\nI'd be happy to describe the images and video for you. Could you "
    "please provide more context about your vacation?<|im_end|>\n"
    "<|im_start|>user\nIt was a trip to the mountains. Can you see the details in the images and "
    "video?<|im_end|>\n"
    "<|im_start|>assistant\n"
)
README_PROMPT_WITH_ID = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nPicture 1: <|vision_start|><|image_pad|><|vision_end|>Hello, how are you?"
    "<|im_end|>\n"
    "<|im_start|>assistant\nI'm doing well, thank you for asking. How can I assist you today?"
    "<|im_end|>\n"
    "<|im_start|>user\nCan you describe these images and video?"
    "Picture 2: <|vision_start|><|image_pad|><|vision_end|>"
    "Picture 3: <|vision_start|><|image_pad|><|vision_end|>"
    "Video 1: <|vision_start|><|video_pad|><|vision_end|>These are from my vacation.<|im_end|>\n"
    "<|im_start|>assistant\nI'd be happy to describe the images and video for you. Could you "
    "please provide more context about your vacation?<|im_end|>\n"
    "<|im_start|>user\nIt was a trip to the mountains. Can you see the details in the images and "
    "video?<|im_end|>\n"
    "<|im_start|>assistant\n"
)
NEW_TOKENS = 5


@dataclass(frozen=True)
class Loaded:
    """A built checkpoint, loaded the way the app loads it."""

    path: Path
    processor: Any
    model: Any


@pytest.fixture(scope="module", params=FAMILIES)
def loaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Loaded:
    path = build_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / request.param, request.param)
    processor = transformers.AutoProcessor.from_pretrained(path)
    model = transformers.AutoModelForImageTextToText.from_pretrained(path).eval()
    return Loaded(path, processor, model)


def _prompt(processor: Any, kind: str) -> str:
    messages = [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": "What?"}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def _generate(model: Any, inputs: Any) -> Any:
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    return output[:, inputs["input_ids"].shape[1] :]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_loads_as_the_family_classes(loaded: Loaded) -> None:
    family = json.loads((loaded.path / MARKER_FILE).read_text())["family"]
    prefix = "Qwen2VL" if family == "qwen2_vl" else "Qwen2_5_VL"
    assert type(loaded.model).__name__ == f"{prefix}ForConditionalGeneration"
    assert type(loaded.processor).__name__ == f"{prefix}Processor"
    assert loaded.model.dtype == torch.float32


def test_chat_template_reproduces_readme_prompts(loaded: Loaded) -> None:
    apply = loaded.processor.apply_chat_template
    assert apply(README_CONVERSATION, add_generation_prompt=True) == README_PROMPT_WITHOUT_ID
    with_id = apply(README_CONVERSATION, add_generation_prompt=True, add_vision_id=True)
    assert with_id == README_PROMPT_WITH_ID


def test_image_prompt_generates(loaded: Loaded) -> None:
    image = Image.new("RGB", (56, 56), (200, 40, 40))
    text = _prompt(loaded.processor, "image")
    inputs = loaded.processor(text=[text], images=[image], return_tensors="pt")
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 4]]  # 56 px = 4 patches of 14
    assert _generate(loaded.model, inputs).shape == (1, NEW_TOKENS)


def test_video_frames_prompt_generates(loaded: Loaded) -> None:
    frames = [Image.new("RGB", (56, 56), (60 * i, 90, 90)) for i in range(4)]
    text = _prompt(loaded.processor, "video")
    # Pre-sampled frames: a list of PIL images per video. The saved video processor has
    # do_sample_frames=False, so all 4 frames are kept; `fps=` is ignored for frame lists, and the
    # sampling rate goes in `video_metadata` (Qwen2.5 turns it into second_per_grid_ts; without it
    # transformers assumes 24 fps).
    inputs = loaded.processor(
        text=[text],
        videos=[frames],
        video_metadata=[{"total_num_frames": len(frames), "fps": 2.0}],
        return_tensors="pt",
    )
    assert inputs["video_grid_thw"][0, 0].item() == 2  # 4 frames / temporal_patch_size 2
    if "second_per_grid_ts" in inputs:
        assert inputs["second_per_grid_ts"].tolist() == [1.0]
    assert _generate(loaded.model, inputs).shape == (1, NEW_TOKENS)


def test_batch_of_two_prompts_generates(loaded: Loaded) -> None:
    images = [Image.new("RGB", (56, 56), "blue"), Image.new("RGB", (84, 56), "green")]
    text = _prompt(loaded.processor, "image")
    inputs = loaded.processor(
        text=[text, text], images=images, padding=True, padding_side="left", return_tensors="pt"
    )
    assert inputs["attention_mask"][:, -1].tolist() == [1, 1]  # left padded
    assert _generate(loaded.model, inputs).shape == (2, NEW_TOKENS)


def test_tokenizer_keeps_special_tokens_whole(loaded: Loaded) -> None:
    tokenizer = loaded.processor.tokenizer
    ids = [tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS]
    assert len(set(ids)) == len(SPECIAL_TOKENS)
    assert tokenizer.encode("<|box_start|>", add_special_tokens=False) == [ids[5]]
    text = "<|im_start|>user\n<|box_start|>(10,20),(30,40)<|box_end|> café 日本 🙂<|im_end|>"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert loaded.model.config.get_text_config().vocab_size >= len(tokenizer)


def test_generation_config_stops_on_im_end(loaded: Loaded) -> None:
    tokenizer = loaded.processor.tokenizer
    config = loaded.model.generation_config
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in config.eos_token_id
    assert config.pad_token_id == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert config.do_sample is False


def test_rebuild_with_same_args_is_a_no_op(loaded: Loaded) -> None:
    family = json.loads((loaded.path / MARKER_FILE).read_text())["family"]
    weights = loaded.path / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert build_tiny_checkpoint(loaded.path, family) == loaded.path
    assert weights.stat().st_mtime_ns == before


def test_same_seed_gives_same_weights_and_other_seed_rebuilds(tmp_path: Path) -> None:
    first = build_tiny_checkpoint(tmp_path / "a", seed=1)
    second = build_tiny_checkpoint(tmp_path / "b", seed=1)
    assert _sha256(first / "model.safetensors") == _sha256(second / "model.safetensors")
    assert (first / "tokenizer.json").read_text() == (second / "tokenizer.json").read_text()
    build_tiny_checkpoint(tmp_path / "b", seed=2)
    assert _sha256(first / "model.safetensors") != _sha256(second / "model.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no staging folder left


def test_refuses_to_overwrite_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileExistsError):
        build_tiny_checkpoint(tmp_path)
    assert (tmp_path / "config.json").read_text() == "{}"


def test_rejects_unknown_family_and_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="family"):
        build_tiny_checkpoint(tmp_path, family="qwen3_vl")
    with pytest.raises(ValueError, match="size"):
        build_tiny_checkpoint(tmp_path, size="huge")


def test_cli_builds_small_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "small"
    assert main([str(out_dir), "--family", "qwen2_5_vl", "--size", "small"]) == 0
    assert capsys.readouterr().out.strip() == str(out_dir)
    config = transformers.AutoConfig.from_pretrained(out_dir)
    assert config.model_type == "qwen2_5_vl"
    assert config.get_text_config().hidden_size == 256
    assert config.get_text_config().num_hidden_layers == 4
