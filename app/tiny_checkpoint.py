"""Build a tiny, randomly initialised Qwen2-VL / Qwen2.5-VL checkpoint offline.

The checkpoint loads through the real path (`AutoProcessor` / `AutoModelForImageTextToText`
`.from_pretrained`), so tests, benchmarks and offline UI tries need no download:

    python -m app.tiny_checkpoint checkpoints/tiny
    python web_demo_mm.py -c checkpoints/tiny --cpu-only
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

# family -> transformers class-name prefix (Qwen2VLConfig, Qwen2_5_VLProcessor, ...)
_CLASS_PREFIX = {"qwen2_vl": "Qwen2VL", "qwen2_5_vl": "Qwen2_5_VL"}
FAMILIES = tuple(_CLASS_PREFIX)
SIZES = ("tiny", "small", "bench")  # "2b" is built by bench/gpu_check.py, on a GPU
MARKER_FILE = "tiny_checkpoint.json"
# Files every complete build holds (besides the marker, which is written last).
REQUIRED_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json")

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
    """Model sizes for one `size`; head_dim = hidden / heads and sum(mrope) = head_dim / 2."""

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


def build_tokenizer() -> Any:
    """Train a byte-level BPE like Qwen2's on the built-in corpus and add the special tokens."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer  # v5: tokenizers-backed; Qwen2TokenizerFast is an alias
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    raw = Tokenizer(models.BPE())
    # Same normaliser and pre-tokeniser as Qwen2Tokenizer, so training and use split alike.
    raw.normalizer = normalizers.NFC()
    raw.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
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
    tokenizer = Qwen2Tokenizer(vocab=model_json["vocab"], merges=merges)
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    return tokenizer


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


def _vision_config(family: str, dims: _Dims) -> dict[str, Any]:
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
    config_class = getattr(transformers, f"{_CLASS_PREFIX[family]}Config")
    return config_class(
        text_config=_text_config(dims, vocab_size, ids),
        vision_config=_vision_config(family, dims),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
        dtype="float32",
    )


def build_processor(family: str, tokenizer: Any) -> Any:
    """The processor: image and video processors with the real defaults, plus the template."""
    import transformers
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
    processor_class = getattr(transformers, f"{_CLASS_PREFIX[family]}Processor")
    return processor_class(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
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
    tokenizer = build_tokenizer()
    config = build_config(family, size, tokenizer)
    model_class = getattr(transformers, f"{_CLASS_PREFIX[family]}ForConditionalGeneration")
    model = model_class(config).to(torch.float32).eval()
    model.generation_config = build_generation_config(tokenizer)
    model.save_pretrained(out_dir)
    build_processor(family, tokenizer).save_pretrained(out_dir)
    (out_dir / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")


def _builder_digest() -> str:
    """Hash of this file: an edited builder invalidates checkpoints cached by earlier versions."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


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

    family: "qwen2_vl" or "qwen2_5_vl"; size: "tiny" (tests) or "small" (benchmarks). Raises
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
        description="Build a tiny random Qwen2-VL checkpoint offline (for tests and UI tries).",
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
