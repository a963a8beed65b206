"""The tiny random checkpoints load through the real transformers path and behave like the real
families: Qwen2-VL, Qwen2.5-VL, Qwen3-VL (dense, MoE, Thinking) and Qwen3.5."""

from __future__ import annotations

import hashlib
import json
import os
import re
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
    QWEN3_ADDED_TOKENS,
    QWEN3_FAMILIES,
    SIZES,
    SPECIAL_TOKENS,
    TEMPLATES_DIR,
    build_config,
    build_tiny_checkpoint,
    build_tokenizer,
    main,
    mrope_section,
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

# Qwen3-VL's README shows the same example and expected outputs, with this first line
# (QwenLM/Qwen3-VL README.md at 96588727e44c, "Add ids for Multiple Visual Inputs"); it is left
# over from Qwen2-VL: Qwen3-VL's and Qwen3.5's templates have no default system prompt.
QWEN2_SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
THINKING_FAMILIES = ("qwen3_vl_thinking", "qwen3_5", "qwen3_5_moe")  # prompts end in "<think>\n"
CLASSES = {  # family -> model, processor, tokenizer class names
    "qwen2_vl": ("Qwen2VLForConditionalGeneration", "Qwen2VLProcessor", "Qwen2Tokenizer"),
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor", "Qwen2Tokenizer"),
    "qwen3_vl": ("Qwen3VLForConditionalGeneration", "Qwen3VLProcessor", "Qwen2Tokenizer"),
    "qwen3_vl_moe": ("Qwen3VLMoeForConditionalGeneration", "Qwen3VLProcessor", "Qwen2Tokenizer"),
    "qwen3_vl_thinking": ("Qwen3VLForConditionalGeneration", "Qwen3VLProcessor", "Qwen2Tokenizer"),
    "qwen3_5": ("Qwen3_5ForConditionalGeneration", "Qwen3VLProcessor", "Qwen3_5Tokenizer"),
    "qwen3_5_moe": ("Qwen3_5MoeForConditionalGeneration", "Qwen3VLProcessor", "Qwen3_5Tokenizer"),
}
# The official templates, verbatim below each file's source comment (app/tiny_checkpoint.py).
TEMPLATE_SHA256 = {
    "qwen3_vl_instruct.jinja": "3636d0f0bd6bef02654cdffdc447b79cb2cef8ab02cc75267345946291a489e4",
    "qwen3_vl_thinking.jinja": "36e042fe45641f067b1f2381fcc8955d10d956a3ed333ecdf7f7eb0916f68956",
    "qwen3_5.jinja": "a4aee8afcf2e0711942cf848899be66016f8d14a889ff9ede07bca099c28f715",
}

# A fixed multi-turn conversation for the Qwen3 templates: system, an image, an earlier answer
# whose reasoning the thinking templates strip, then a video.
EARLIER_ANSWER = "<think>\nR\n</think>\n\nA"
TEMPLATE_CONVERSATION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
    {"role": "assistant", "content": EARLIER_ANSWER},
    {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "And this?"}]},
]
# The ChatML turns every Qwen3 template renders for it, the earlier answer aside.
TEMPLATE_SYSTEM_AND_IMAGE = (
    "<|im_start|>system\nAnswer briefly.<|im_end|>\n"
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is this?<|im_end|>\n"
)
TEMPLATE_VIDEO = (
    "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>And this?<|im_end|>\n"
)


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


def _family(loaded: Loaded) -> str:
    return json.loads((loaded.path / MARKER_FILE).read_text())["family"]


def test_loads_as_the_family_classes(loaded: Loaded) -> None:
    model, processor, tokenizer = CLASSES[_family(loaded)]
    assert type(loaded.model).__name__ == model
    assert type(loaded.processor).__name__ == processor
    assert type(loaded.processor.tokenizer).__name__ == tokenizer
    assert loaded.model.dtype == torch.float32


def test_qwen3_processors_have_the_real_sizes(loaded: Loaded) -> None:
    if _family(loaded) not in QWEN3_FAMILIES:
        pytest.skip("Qwen3 families only")
    image, video = loaded.processor.image_processor, loaded.processor.video_processor
    assert type(video).__name__ == "Qwen3VLVideoProcessor"
    for processor in (image, video):  # resize factor 32
        sizes = (processor.patch_size, processor.merge_size, processor.temporal_patch_size)
        assert sizes == (16, 2, 2)
        assert list(processor.image_mean) == list(processor.image_std) == [0.5, 0.5, 0.5]
    assert image.size["shortest_edge"] == 256 * 256
    assert dict(video.size) == {"shortest_edge": 4096, "longest_edge": 25165824}
    config = loaded.model.config
    assert config.vision_config.patch_size == 16
    assert config.vision_config.out_hidden_size == config.get_text_config().hidden_size


def _readme_prompt(family: str, prompt: str) -> str:
    """The README's expected prompt as the family's official template writes it."""
    if family not in QWEN3_FAMILIES:
        return prompt
    prompt = prompt.removeprefix(QWEN2_SYSTEM)
    return prompt + "<think>\n" if family in THINKING_FAMILIES else prompt


def test_chat_template_reproduces_readme_prompts(loaded: Loaded) -> None:
    family = _family(loaded)
    apply = loaded.processor.apply_chat_template
    without_id = apply(README_CONVERSATION, add_generation_prompt=True)
    assert without_id == _readme_prompt(family, README_PROMPT_WITHOUT_ID)
    with_id = apply(README_CONVERSATION, add_generation_prompt=True, add_vision_id=True)
    assert with_id == _readme_prompt(family, README_PROMPT_WITH_ID)


def test_image_prompt_generates(loaded: Loaded) -> None:
    image = Image.new("RGB", (56, 56), (200, 40, 40))
    text = _prompt(loaded.processor, "image")
    inputs = loaded.processor(text=[text], images=[image], return_tensors="pt")
    if _family(loaded) in QWEN3_FAMILIES:
        # At least 256 x 256 px (the real minimum): 56 px is upscaled to 16 patches of 16.
        assert inputs["image_grid_thw"].tolist() == [[1, 16, 16]]
    else:
        assert inputs["image_grid_thw"].tolist() == [[1, 4, 4]]  # 56 px = 4 patches of 14
    assert _generate(loaded.model, inputs).shape == (1, NEW_TOKENS)


def test_pre_resized_image_keeps_its_size(loaded: Loaded) -> None:
    if _family(loaded) not in QWEN3_FAMILIES:
        pytest.skip("Qwen3 families only")
    image = Image.new("RGB", (96, 64), (40, 200, 40))  # multiples of 32
    text = _prompt(loaded.processor, "image")
    inputs = loaded.processor(text=[text], images=[image], do_resize=False, return_tensors="pt")
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 6]]
    assert (inputs["input_ids"] == loaded.model.config.image_token_id).sum().item() == 6
    assert _generate(loaded.model, inputs).shape == (1, NEW_TOKENS)


def test_video_frames_prompt_generates(loaded: Loaded) -> None:
    frames = [Image.new("RGB", (56, 56), (60 * i, 90, 90)) for i in range(4)]
    text = _prompt(loaded.processor, "video")
    if _family(loaded) in QWEN3_FAMILIES:
        _check_qwen3_video(loaded, text, frames)
        return
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


def _check_qwen3_video(loaded: Loaded, text: str, frames: list[Any]) -> None:
    # Pre-sampled frames: Qwen3VLVideoProcessor samples again unless do_sample_frames=False, and
    # writes "<t seconds>" before each group of 2 frames, t = the mean of frames_indices / fps
    # over the group: frames at 0, 1, 2, 3 s -> 0.5 and 2.5.
    inputs = loaded.processor(
        text=[text],
        videos=[frames],
        video_metadata=[{"fps": 1.0, "frames_indices": [0, 1, 2, 3], "total_num_frames": 4}],
        do_sample_frames=False,
        return_tensors="pt",
    )
    assert inputs["video_grid_thw"].tolist() == [[2, 4, 4]]  # 56 px -> 64 px = 4 patches of 16
    prompt = loaded.processor.decode(inputs["input_ids"][0])
    assert re.findall(r"<[\d.]+ seconds>", prompt) == ["<0.5 seconds>", "<2.5 seconds>"]
    assert (inputs["input_ids"] == loaded.model.config.video_token_id).sum().item() == 2 * 4
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


def test_qwen3_tokenizer_adds_think_and_tool_tokens_not_special(loaded: Loaded) -> None:
    if _family(loaded) not in QWEN3_FAMILIES:
        pytest.skip("Qwen3 families only")
    tokenizer = loaded.processor.tokenizer
    ids = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS + QWEN3_ADDED_TOKENS]
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # the real order, </think> last
    assert tokenizer.encode("<think>", add_special_tokens=False) == [ids[-2]]
    assert "<think>" not in tokenizer.all_special_tokens
    ids = tokenizer.encode(EARLIER_ANSWER + "<|im_end|>")
    assert tokenizer.decode(ids, skip_special_tokens=True) == EARLIER_ANSWER  # the app splits it


def test_generation_config_stops_on_im_end(loaded: Loaded) -> None:
    tokenizer = loaded.processor.tokenizer
    config = loaded.model.generation_config
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in config.eos_token_id
    end_of_text = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert config.eos_token_id == [tokenizer.convert_tokens_to_ids("<|im_end|>"), end_of_text]
    assert config.pad_token_id == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert config.do_sample is False


def test_rebuild_with_same_args_is_a_no_op(loaded: Loaded) -> None:
    family = _family(loaded)
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
        build_tiny_checkpoint(tmp_path, family="qwen4_vl")
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


def test_cli_builds_qwen3_5_small_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "small"
    assert main([str(out_dir), "--family", "qwen3_5", "--size", "small"]) == 0
    assert capsys.readouterr().out.strip() == str(out_dir)
    config = transformers.AutoConfig.from_pretrained(out_dir)
    assert config.model_type == "qwen3_5"
    text = config.get_text_config()
    assert (text.hidden_size, text.num_hidden_layers, text.head_dim) == (256, 4, 32)
    assert text.layer_types == ["linear_attention"] * 3 + ["full_attention"]


@pytest.fixture(scope="module")
def tokenizers() -> dict[str, Any]:
    return {family: build_tokenizer(family) for family in ("qwen3_vl", "qwen3_5")}


@pytest.mark.parametrize("size", [*SIZES, "2b"])
@pytest.mark.parametrize("family", QWEN3_FAMILIES)
def test_qwen3_configs_keep_the_rope_and_layer_rules(
    family: str, size: str, tokenizers: dict[str, Any]
) -> None:
    qwen3_5 = family.startswith("qwen3_5")
    config = build_config(family, size, tokenizers["qwen3_5" if qwen3_5 else "qwen3_vl"])
    text, vision = config.get_text_config(), config.vision_config
    rope = text.rope_parameters
    rotary_dim = int(text.head_dim * rope.get("partial_rotary_factor", 1.0))
    t, h, w = rope["mrope_section"]
    assert t + h + w == rotary_dim // 2 and min(t, h, w) > 0
    assert 3 * h - 2 < rotary_dim // 2 and 3 * w - 1 < rotary_dim // 2  # interleaved slots exist
    assert vision.out_hidden_size == text.hidden_size
    if qwen3_5:
        assert rope["partial_rotary_factor"] == 0.25
        assert len(text.layer_types) == text.num_hidden_layers
        assert text.layer_types[-1] == "full_attention"  # generate needs one
    else:
        assert all(index < vision.depth for index in vision.deepstack_visual_indexes)
    if family.endswith("_moe"):
        assert text.num_experts > text.num_experts_per_tok > 0


def test_mrope_sections_match_the_real_models() -> None:
    assert mrope_section("qwen3_vl", 128) == [24, 20, 20]  # Qwen3-VL: head_dim 128
    assert mrope_section("qwen3_5", 64) == [11, 11, 10]  # Qwen3.5: 256 x 0.25


@pytest.mark.parametrize("name", sorted(TEMPLATE_SHA256))
def test_template_files_are_official_below_a_source_comment(name: str) -> None:
    comment, template = (TEMPLATES_DIR / name).read_text(encoding="utf-8").split("\n", 1)
    assert comment.startswith("{#-") and comment.endswith("#}")
    assert hashlib.sha256(template.encode()).hexdigest() == TEMPLATE_SHA256[name]
    assert TEMPLATE_SHA256[name] in comment


def _render(path: Path, messages: list[dict[str, Any]], **kwargs: Any) -> str:
    processor = transformers.AutoProcessor.from_pretrained(path)
    return processor.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, **kwargs
    )


def test_checkpoints_get_the_official_template_bytes(
    tiny_checkpoint_3: Path, tiny_checkpoint_thinking: Path, tiny_checkpoint_35: Path
) -> None:
    for path, name in [
        (tiny_checkpoint_3, "qwen3_vl_instruct.jinja"),
        (tiny_checkpoint_thinking, "qwen3_vl_thinking.jinja"),
        (tiny_checkpoint_35, "qwen3_5.jinja"),
    ]:
        assert _sha256(path / "chat_template.jinja") == TEMPLATE_SHA256[name]
        # The source comment renders as nothing.
        with_comment = (TEMPLATES_DIR / name).read_text(encoding="utf-8")
        rendered = _render(path, TEMPLATE_CONVERSATION, chat_template=with_comment)
        assert rendered == _render(path, TEMPLATE_CONVERSATION)


def test_qwen3_vl_instruct_template_renders_the_official_format(tiny_checkpoint_3: Path) -> None:
    # No thinking logic: the earlier answer is kept as it is, the prompt ends after "assistant\n".
    assert _render(tiny_checkpoint_3, TEMPLATE_CONVERSATION) == (
        TEMPLATE_SYSTEM_AND_IMAGE
        + "<|im_start|>assistant\n<think>\nR\n</think>\n\nA<|im_end|>\n"
        + TEMPLATE_VIDEO
        + "<|im_start|>assistant\n"
    )


def test_qwen3_vl_thinking_template_renders_the_official_format(
    tiny_checkpoint_thinking: Path,
) -> None:
    # Reasoning before the last user turn is stripped; the model answers inside "<think>\n".
    assert _render(tiny_checkpoint_thinking, TEMPLATE_CONVERSATION) == (
        TEMPLATE_SYSTEM_AND_IMAGE
        + "<|im_start|>assistant\nA<|im_end|>\n"
        + TEMPLATE_VIDEO
        + "<|im_start|>assistant\n<think>\n"
    )


def test_qwen3_5_template_renders_the_official_format(tiny_checkpoint_35: Path) -> None:
    # As Qwen3-VL Thinking's (earlier reasoning stripped), with the enable_thinking switch.
    conversation = (
        TEMPLATE_SYSTEM_AND_IMAGE + "<|im_start|>assistant\nA<|im_end|>\n" + TEMPLATE_VIDEO
    )
    assert _render(tiny_checkpoint_35, TEMPLATE_CONVERSATION) == (
        conversation + "<|im_start|>assistant\n<think>\n"  # thinking on by default
    )
    assert _render(tiny_checkpoint_35, TEMPLATE_CONVERSATION, enable_thinking=False) == (
        conversation + "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
