"""Build a tiny, randomly initialised Qwen2-VL / Qwen2.5-VL / Qwen3-VL / Qwen3.5 checkpoint offline.

The checkpoint loads through the real path (`AutoProcessor` / `AutoModelForImageTextToText`
`.from_pretrained`), so tests, benchmarks and offline UI tries need no download:

    python -m app.tiny_checkpoint checkpoints/tiny
    python -m app.tiny_checkpoint checkpoints/tiny-qwen3 --family qwen3_vl
    python web_demo_mm.py -c checkpoints/tiny --cpu-only

Families (`FAMILIES`), each with its real config, model, processor and tokenizer classes:

* `qwen2_vl`, `qwen2_5_vl`: patch 14 (resize factor 28), Qwen2-VL's template (`CHAT_TEMPLATE`).
* `qwen3_vl`, `qwen3_vl_moe`: Qwen3-VL (dense, MoE) with the Instruct template;
  `qwen3_vl_thinking`: the same model with the Thinking template (prompts end in "<think>\n").
* `qwen3_5`, `qwen3_5_moe`: Qwen3.5 (Gated DeltaNet linear-attention layers plus full-attention
  ones; dense, MoE), with the template of Qwen3.5-4B and larger (`enable_thinking`, on by default).

The Qwen3 families use `Qwen3VLProcessor` (`Qwen2VLImageProcessor` + `Qwen3VLVideoProcessor`):
patch 16, merge 2, temporal patch 2 (resize factor 32), image mean/std 0.5, as the real
preprocessor configs. Their tokenizers (`Qwen2Tokenizer`; `Qwen3_5Tokenizer` for Qwen3.5) have
the special tokens plus Qwen3's added non-special tokens (`QWEN3_ADDED_TOKENS`, up to `<think>`
and `</think>`) in the real id order. Every generation config stops on <|im_end|> or
<|endoftext|> and decodes greedily (do_sample=False), unlike the real thinking checkpoints.

The Qwen3 chat templates are files in app/templates/. The first line of each is a Jinja comment
naming its source (it renders as nothing); the rest is the official template, verbatim, and is
what a checkpoint gets (`chat_template`):

* qwen3_vl_instruct.jinja (Qwen3-VL *-Instruct): huggingface/trl at commit f2cd57710ae3,
  trl/chat_templates/qwen3_vl.jinja ("Original Qwen3-VL chat template"), sha256
  3636d0f0bd6bef02654cdffdc447b79cb2cef8ab02cc75267345946291a489e4.
* qwen3_vl_thinking.jinja (Qwen3-VL *-Thinking): no first-party copy was reachable offline; it is
  transcribed from two identical third-party verbatim copies of the model's template (a
  llama.cpp agent's `template_str`, an LM Studio setup script), sha256
  36e042fe45641f067b1f2381fcc8955d10d956a3ed333ecdf7f7eb0916f68956.
* qwen3_5.jinja (Qwen3.5-4B and larger): huggingface/trl at f2cd57710ae3,
  trl/chat_templates/qwen3_5_think.jinja, sha256
  a4aee8afcf2e0711942cf848899be66016f8d14a889ff9ede07bca099c28f715. TRL's qwen3_5_nothink.jinja
  (Qwen3.5-2B and smaller) differs only in enable_thinking's default (off).

A third-party test fixture quotes the same two sha256 for mlx-community/Qwen3-VL-4B-Instruct-4bit's
and mlx-community/Qwen3.5-35B-A3B-4bit's chat_template.jinja.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class _Family:
    """How one family is built."""

    prefix: str  # transformers class-name prefix: Qwen3VLConfig, Qwen3VLForConditionalGeneration
    processor: str  # processor class name
    template: str | None  # file in TEMPLATES_DIR; None: CHAT_TEMPLATE (Qwen2-VL's)


_FAMILIES = {
    "qwen2_vl": _Family("Qwen2VL", "Qwen2VLProcessor", None),
    "qwen2_5_vl": _Family("Qwen2_5_VL", "Qwen2_5_VLProcessor", None),
    "qwen3_vl": _Family("Qwen3VL", "Qwen3VLProcessor", "qwen3_vl_instruct.jinja"),
    "qwen3_vl_moe": _Family("Qwen3VLMoe", "Qwen3VLProcessor", "qwen3_vl_instruct.jinja"),
    "qwen3_vl_thinking": _Family("Qwen3VL", "Qwen3VLProcessor", "qwen3_vl_thinking.jinja"),
    "qwen3_5": _Family("Qwen3_5", "Qwen3VLProcessor", "qwen3_5.jinja"),
    "qwen3_5_moe": _Family("Qwen3_5Moe", "Qwen3VLProcessor", "qwen3_5.jinja"),
}
FAMILIES = tuple(_FAMILIES)
QWEN3_FAMILIES = tuple(family for family in FAMILIES if family.startswith("qwen3"))
SIZES = ("tiny", "small", "bench")  # "2b" is built by bench/gpu_check.py, on a GPU
MARKER_FILE = "tiny_checkpoint.json"
# Files every complete build holds (besides the marker, which is written last).
REQUIRED_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json")
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"

# Qwen2-VL's special tokens, in the real tokenizer's id order.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Qwen3's added tokens after them (Qwen3-VL: ids 151657-151668; Qwen3.5: 248058-248069), not
# special: decode(skip_special_tokens=True) keeps them. (Qwen3.5 has audio tokens after these.)
QWEN3_ADDED_TOKENS = (
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)
BPE_VOCAB_SIZE = 1536
VOCAB_MULTIPLE = 64  # embedding rows are rounded up, as in the real model (151936 > tokenizer)

# The processor chat template of Qwen/Qwen2-VL-7B-Instruct (chat_template.json), split at tag
# boundaries only; Qwen/Qwen2.5-VL-7B-Instruct ships the same one.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The real model's image limits (preprocessor_config.json of Qwen2-VL-7B-Instruct uses the same
# minimum; its maximum is larger, this one is the transformers default and keeps the CPU fast).
IMAGE_MIN_PIXELS = 56 * 56
IMAGE_MAX_PIXELS = 28 * 28 * 1280
# Qwen3-VL / Qwen3.5 (preprocessor_config.json): images of at least 256 x 256 pixels (the real
# minimum) and, to keep the CPU fast, at most 1280 merged tokens like the ones above (the real
# maximum is 16777216 pixels); videos: the real limits, over all frames.
QWEN3_IMAGE_MIN_PIXELS = 256 * 256
QWEN3_IMAGE_MAX_PIXELS = 32 * 32 * 1280
QWEN3_VIDEO_SIZE = {"shortest_edge": 4096, "longest_edge": 25165824}

_CORPUS = """\
You are a helpful assistant. Describe this image. What is in this picture? Can you describe
these images and video? These are from my vacation. It was a trip to the mountains. Can you see
the details in the images and video? I'm doing well, thank you for asking. How can I assist you
today? I'd be happy to describe the images and video for you. Could you please provide more
context about your vacation? The photo shows a red bicycle leaning against a stone wall, while a
small brown dog sleeps in the shade of an old oak tree. In the background, three children are
flying a yellow kite over a green field; the sky is clear and blue. A woman in a long coat reads
a newspaper at the bus stop, and a man on the left holds an umbrella even though it isn't raining.
The chart compares sales in 2021, 2022 and 2023: revenue grew by 12.5% and then by 7%, reaching
$4,300,000. The invoice number is INV-0042, dated 14/03/2024, with a total of 1,299.99 EUR.
Step 1: open the settings menu. Step 2: choose "Display". Step 3: press OK to confirm.
The box is at (120,340),(560,780) on a 0-1000 grid; the label reads "cat". {"bbox_2d": [12, 34,
56, 78], "label": "car"} Here is a list: apples, bananas, cherries, dates and elderberries.
Why does the river look so dark at night? Because the water reflects the black sky, and the
streetlights along the bridge are too far away. Q: How many people are there? A: There are four.
The video begins with a sunrise over the lake, then a boat crosses from left to right; at the end
a flock of birds lands on the pier. Temperature: -3 C; wind: 25 km/h; humidity: 80%.
def add(a, b):\n    return a + b\n# print(add(2, 3)) -> 5
Mountains, rivers, forests, beaches, deserts and cities: every place has its own light and color.
Good morning! Please summarize the following document in three short sentences. The report
explains how the company reduced energy consumption by installing solar panels on the roof,
replacing old heating systems, and encouraging employees to travel by bicycle or public transport.
Translate this sentence into French: "Where is the nearest pharmacy?" Write a poem about autumn
leaves falling slowly in the quiet garden. Which animal is the fastest? The cheetah can run at
about 110 kilometers per hour, but only for short distances. Identify the objects on the table: a
laptop, a coffee mug, a notebook, two pencils, a pair of glasses and a smartphone with a cracked
screen. The handwriting is difficult to read; however, the signature at the bottom seems to say
"Margaret Johnson". Outline the main differences between reptiles and amphibians. Frogs usually
begin life in water, breathe through gills, and later develop lungs, whereas lizards hatch from
eggs laid on land. Explain the joke in this comic strip. Count the windows on the front of the
house. Is the traffic light green, yellow or red? Recommend a healthy breakfast with oatmeal,
berries, yogurt and honey. The museum opens on Tuesday, Wednesday, Thursday, Friday, Saturday and
Sunday; it is closed on Monday and during public holidays in January, February and December.
Scientists measured the temperature of the ocean surface during summer and winter, observed the
migration of whales, and published their research in an international journal. The kitchen
smells of fresh bread, garlic, basil, tomatoes, cinnamon and roasted vegetables. A knight rides
through the village, crosses the wooden bridge, and climbs the hill toward the abandoned castle.
Engineers designed a lighter airplane wing; pilots tested it during difficult weather conditions.
Please answer briefly. Think step by step, then give the final answer. Thanks, that was useful!
"""
_SUBJECTS = ("The cat", "A young girl", "My neighbor", "The old train", "This small robot", "We")
_VERBS = ("looks at", "walks past", "carefully paints", "quickly finds", "never forgets", "sees")
_OBJECTS = (
    "the blue door.",
    "a bright window near the station.",
    "two white horses in the snow.",
    "the largest building in town!",
    "an empty chair by the sea?",
)


@dataclass(frozen=True)
class _Dims:
    """Model sizes for one `size`; head_dim = hidden / heads and sum(mrope) = head_dim / 2.

    The Qwen3 families derive the rest from these (`_qwen3_head_dim`, `mrope_section`,
    `_qwen3_5_layers`)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    mrope_section: tuple[int, int, int]
    vision_embed: int
    vision_depth: int
    vision_heads: int
    vision_intermediate: int


_DIMS = {
    "tiny": _Dims(64, 2, 4, 2, 128, (2, 3, 3), 32, 2, 2, 128),
    "small": _Dims(256, 4, 8, 2, 512, (4, 6, 6), 64, 2, 4, 256),
    # Benchmarks: ~100M parameters, about 20 ms a token on 2 CPU cores, like a 7B on a GPU.
    "bench": _Dims(1024, 8, 16, 4, 2816, (8, 12, 12), 256, 4, 4, 1024),
    # Qwen2-VL-2B-Instruct's shape (bench/gpu_check.py only: 2B parameters, needs a GPU).
    "2b": _Dims(1536, 28, 12, 2, 8960, (16, 24, 24), 1280, 32, 16, 5120),
}


def _corpus() -> list[str]:
    """A few KB of varied English, one string per line."""
    generated = (f"{s} {v} {o}" for s, v, o in itertools.product(_SUBJECTS, _VERBS, _OBJECTS))
    return _CORPUS.splitlines() + list(generated)


def _tokenizer_class(family: str) -> tuple[Any, str]:
    """The family's tokenizer class and its pre-tokenizer regex."""
    if _is_qwen3_5(family):
        from transformers import Qwen3_5Tokenizer
        from transformers.models.qwen3_5.tokenization_qwen3_5 import PRETOKENIZE_REGEX as regex

        return Qwen3_5Tokenizer, regex
    from transformers import Qwen2Tokenizer  # v5: tokenizers-backed; Qwen2TokenizerFast is an alias
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    return Qwen2Tokenizer, PRETOKENIZE_REGEX


def build_tokenizer(family: str = "qwen2_vl") -> Any:
    """Train a byte-level BPE like the family's on the built-in corpus, add its special tokens."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer_class, regex = _tokenizer_class(family)
    raw = Tokenizer(models.BPE())
    # Same normaliser and pre-tokeniser as the tokenizer class, so training and use split alike.
    raw.normalizer = normalizers.NFC()
    raw.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(regex), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte: any text encodes
        show_progress=False,
    )
    raw.train_from_iterator(_corpus(), trainer)
    model_json = json.loads(raw.to_str())["model"]
    merges: Any = [tuple(pair) for pair in model_json["merges"]]  # pairs, as the BPE wants
    # Built with <|endoftext|> as eos so it gets the first added id, as in the real tokenizer.
    tokenizer = tokenizer_class(vocab=model_json["vocab"], merges=merges)
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    if family in QWEN3_FAMILIES:
        _add_qwen3_tokens(tokenizer)
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    return tokenizer


def _add_qwen3_tokens(tokenizer: Any) -> None:
    """Qwen3's added tokens, after the special ones: not special, not normalised (as the real)."""
    from tokenizers import AddedToken

    added = [AddedToken(t, special=False, normalized=False) for t in QWEN3_ADDED_TOKENS]
    tokenizer.add_tokens(added)


def _text_config(dims: _Dims, vocab_size: int, ids: dict[str, int]) -> dict[str, Any]:
    return {
        "vocab_size": vocab_size,
        "hidden_size": dims.hidden,
        "intermediate_size": dims.intermediate,
        "num_hidden_layers": dims.layers,
        "num_attention_heads": dims.heads,
        "num_key_value_heads": dims.kv_heads,
        "max_position_embeddings": 32768,
        "max_window_layers": dims.layers,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": list(dims.mrope_section),
        },
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }


def _is_qwen3_5(family: str) -> bool:
    """Qwen3.5, dense or MoE: linear-attention layers, a quarter of head_dim rotated."""
    return family.startswith("qwen3_5")


def _qwen3_head_dim(dims: _Dims) -> int:
    """hidden / heads (Qwen3-VL-2B: 128), at least 32, so Qwen3.5's quarter has 4 frequencies."""
    return max(dims.hidden // dims.heads, 32)


def mrope_section(family: str, rotary_dim: int) -> list[int]:
    """[t, h, w] frequency counts of a Qwen3 family's interleaved MRoPE: sum = rotary_dim // 2.

    Frequency i belongs to h if i % 3 == 1 and i < 3h, to w if i % 3 == 2 and i < 3w, else to t.
    Qwen3-VL gives h and w 5/16 of them each (real: 128 -> [24, 20, 20]); Qwen3.5 deals them out
    in turn (real: 64 -> [11, 11, 10]). Wrong sections do not raise, they shift silently.
    """
    half = rotary_dim // 2
    if _is_qwen3_5(family):
        return [(half + 2) // 3, (half + 1) // 3, half // 3]
    spatial = half * 5 // 16
    return [half - 2 * spatial, spatial, spatial]


def _qwen3_5_layers(dims: _Dims) -> dict[str, Any]:
    """Qwen3.5's layer mix: linear attention (Gated DeltaNet), full attention every 4th and last
    (generate needs one); linear heads as the real ratio, value heads = 2 x key heads."""
    full = [(i + 1) % 4 == 0 or i == dims.layers - 1 for i in range(dims.layers)]
    return {
        "layer_types": ["full_attention" if f else "linear_attention" for f in full],
        "linear_conv_kernel_dim": 4,
        "linear_key_head_dim": dims.hidden // dims.heads,
        "linear_value_head_dim": dims.hidden // dims.heads,
        "linear_num_key_heads": dims.heads // 2,
        "linear_num_value_heads": dims.heads,
    }


def _qwen3_text_config(
    family: str, dims: _Dims, vocab_size: int, ids: dict[str, int]
) -> dict[str, Any]:
    head_dim = _qwen3_head_dim(dims)
    rotary_factor = 0.25 if _is_qwen3_5(family) else 1.0  # Qwen3.5 rotates a quarter of head_dim
    rope: dict[str, Any] = {
        "rope_type": "default",
        "rope_theta": 10000000.0 if _is_qwen3_5(family) else 5000000.0,
        "mrope_section": mrope_section(family, int(head_dim * rotary_factor)),
        "mrope_interleaved": True,
    }
    if _is_qwen3_5(family):
        rope["partial_rotary_factor"] = rotary_factor
    text = {
        **_text_config(dims, vocab_size, ids),
        "head_dim": head_dim,
        "rms_norm_eps": 1e-6,
        "rope_parameters": rope,
    }
    del text["max_window_layers"]  # Qwen2's sliding-window setting
    if _is_qwen3_5(family):
        text.update(_qwen3_5_layers(dims))
    if family == "qwen3_vl_moe":
        moe = {"num_experts": 4, "num_experts_per_tok": 2, "decoder_sparse_step": 1}
        text.update(moe, moe_intermediate_size=dims.intermediate // 4)
    if family == "qwen3_5_moe":  # routed experts plus one shared expert in every layer
        moe = {"num_experts": 4, "num_experts_per_tok": 2}
        quarter = dims.intermediate // 4
        text.update(moe, moe_intermediate_size=quarter, shared_expert_intermediate_size=quarter)
    return text


def _qwen3_vision_config(family: str, dims: _Dims) -> dict[str, Any]:
    vision: dict[str, Any] = {
        "depth": dims.vision_depth,
        "hidden_size": dims.vision_embed,
        "intermediate_size": dims.vision_intermediate,
        "num_heads": dims.vision_heads,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "out_hidden_size": dims.hidden,  # the merger's output: must be the text width
        "num_position_embeddings": 2304,  # the real value: a learned 48 x 48 grid (a square)
    }
    if not _is_qwen3_5(family):
        # ViT blocks whose features are added after the first LLM layers (real: 8, 16, 24).
        vision["deepstack_visual_indexes"] = list(range(min(3, dims.vision_depth)))
    return vision


def _vision_config(family: str, dims: _Dims) -> dict[str, Any]:
    if family in QWEN3_FAMILIES:
        return _qwen3_vision_config(family, dims)
    common = {
        "depth": dims.vision_depth,
        "num_heads": dims.vision_heads,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    if family == "qwen2_vl":
        # embed_dim is the ViT width; hidden_size is the merger's output (the text width).
        mlp_ratio = dims.vision_intermediate // dims.vision_embed
        return {
            **common,
            "embed_dim": dims.vision_embed,
            "hidden_size": dims.hidden,
            "mlp_ratio": mlp_ratio,
        }
    # Qwen2.5: hidden_size is the ViT width; out_hidden_size is the merger's output.
    return {
        **common,
        "hidden_size": dims.vision_embed,
        "intermediate_size": dims.vision_intermediate,
        "out_hidden_size": dims.hidden,
        "window_size": 112,  # the real value: 112 px = 4x4 merged patches per window
        "fullatt_block_indexes": [dims.vision_depth - 1],
        "tokens_per_second": 2,
    }


def build_config(family: str, size: str, tokenizer: Any) -> Any:
    """The model config for `family`/`size`, with token ids taken from `tokenizer`."""
    import transformers

    dims = _DIMS[size]
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    vocab_size = -(-len(tokenizer) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    if family in QWEN3_FAMILIES:
        text_config = _qwen3_text_config(family, dims, vocab_size, ids)
    else:
        text_config = _text_config(dims, vocab_size, ids)
    config_class = getattr(transformers, f"{_FAMILIES[family].prefix}Config")
    return config_class(
        text_config=text_config,
        vision_config=_vision_config(family, dims),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
        dtype="float32",
    )


def chat_template(family: str) -> str:
    """The family's official chat template (for Qwen3: its file without the source comment)."""
    name = _FAMILIES[family].template
    if name is None:
        return CHAT_TEMPLATE
    return (TEMPLATES_DIR / name).read_text(encoding="utf-8").split("\n", 1)[1]


def _qwen3_media_processors() -> tuple[Any, Any]:
    """Image and video processors as the real Qwen3-VL / Qwen3.5 preprocessor configs."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLVideoProcessor

    common: dict[str, Any] = {
        "patch_size": 16,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": QWEN3_IMAGE_MIN_PIXELS, "longest_edge": QWEN3_IMAGE_MAX_PIXELS},
        **common,
    )
    # do_sample_frames stays True, as the real one: callers passing pre-sampled frames set it
    # False and give video_metadata with fps and frames_indices (the <t seconds> timestamps).
    video_processor = Qwen3VLVideoProcessor(
        size=dict(QWEN3_VIDEO_SIZE), cap_pixels_per_frame=True, **common
    )
    return image_processor, video_processor


def _qwen2_media_processors() -> tuple[Any, Any]:
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor  # Qwen2.5 uses them too

    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": IMAGE_MIN_PIXELS, "longest_edge": IMAGE_MAX_PIXELS},
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
    )
    video_processor = Qwen2VLVideoProcessor(
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
        cap_pixels_per_frame=True,  # qwen-vl-utils' per-frame cap; unset, v5 warns on every video
    )
    return image_processor, video_processor


def build_processor(family: str, tokenizer: Any) -> Any:
    """The processor: image and video processors with the real defaults, plus the template."""
    import transformers

    if family in QWEN3_FAMILIES:
        image_processor, video_processor = _qwen3_media_processors()
    else:
        image_processor, video_processor = _qwen2_media_processors()
    processor_class = getattr(transformers, _FAMILIES[family].processor)
    return processor_class(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=chat_template(family),
    )


def build_generation_config(tokenizer: Any) -> Any:
    from transformers import GenerationConfig

    end_of_text = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return GenerationConfig(
        bos_token_id=end_of_text,
        eos_token_id=[tokenizer.convert_tokens_to_ids("<|im_end|>"), end_of_text],
        pad_token_id=end_of_text,
        do_sample=False,
    )


def _write_checkpoint(out_dir: Path, marker: dict[str, Any]) -> None:
    """Build and save everything into `out_dir`, the marker last."""
    import torch
    import transformers

    family, size = marker["family"], marker["size"]
    torch.manual_seed(marker["seed"])
    tokenizer = build_tokenizer(family)
    config = build_config(family, size, tokenizer)
    model_class = getattr(transformers, f"{_FAMILIES[family].prefix}ForConditionalGeneration")
    model = model_class(config).to(torch.float32).eval()
    model.generation_config = build_generation_config(tokenizer)
    model.save_pretrained(out_dir)
    build_processor(family, tokenizer).save_pretrained(out_dir)
    (out_dir / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")


def _builder_digest() -> str:
    """Hash of this file and the templates: an edited builder invalidates checkpoints cached by
    earlier versions."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for path in sorted(TEMPLATES_DIR.glob("*.jinja")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _read_marker(out_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out_dir / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None


def _is_complete(out_dir: Path, marker: dict[str, Any]) -> bool:
    return _read_marker(out_dir) == marker and all(
        (out_dir / name).is_file() for name in REQUIRED_FILES
    )


def build_tiny_checkpoint(
    out_dir: str | Path, family: str = "qwen2_vl", size: str = "tiny", seed: int = 0
) -> Path:
    """Build a random checkpoint into `out_dir` and return it; a no-op if already built alike.

    family: one of FAMILIES; size: "tiny" (tests), "small" or "bench" (benchmarks). Raises
    FileExistsError rather than replace a non-empty folder this module did not write.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    target = Path(out_dir).resolve()  # resolved, so "." has a real parent to stage in
    marker = {"family": family, "size": size, "seed": seed, "builder": _builder_digest()}
    if _is_complete(target, marker):
        return Path(out_dir)
    if target.exists() and any(target.iterdir()) and _read_marker(target) is None:
        raise FileExistsError(f"{target} is not empty and holds no tiny checkpoint")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and swap it in, so an interrupted build leaves no half checkpoint.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the checkpoint is an ordinary folder
    try:
        _write_checkpoint(staging, marker)
        _swap_in(staging, target, marker)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Path(out_dir)


def _swap_in(staging: Path, target: Path, marker: dict[str, Any]) -> None:
    """Replace `target` (empty, or an earlier build) with `staging`."""
    try:
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except OSError:
        if not _is_complete(target, marker):  # a concurrent build of the same args is fine
            raise


def main(argv: list[str] | None = None) -> int:
    """CLI: build a checkpoint and print its folder."""
    parser = argparse.ArgumentParser(
        prog="python -m app.tiny_checkpoint",
        description="Build a tiny random Qwen2-VL, Qwen3-VL or Qwen3.5 checkpoint offline "
        "(for tests and UI tries).",
    )
    parser.add_argument("out_dir", type=Path, help="folder to write (created if missing)")
    parser.add_argument("--family", choices=FAMILIES, default="qwen2_vl")
    parser.add_argument("--size", choices=SIZES, default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = build_tiny_checkpoint(args.out_dir, args.family, args.size, args.seed)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
