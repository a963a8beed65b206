"""GPU check (run only where a GPU is lent): Qwen2-VL-2B-Instruct's shape, random bf16 weights.

Builds a randomly initialised model with the 2B's shape and vocabulary on the GPU, saves it,
loads it through the demo's real path (LocalEngine: dtype="auto", device_map="auto",
--flash-attn2 if flash_attn imports), then measures, all in one run:
1. one image prompt, --tokens tokens, through the engine and through raw `generate` (the
   Qwen2-VL README reports 35.3 tokens/s for the 2B in BF16 on an A100);
2. a batch: --batch requests at once through the engine, tokens/s together vs one alone;
3. a 64-frame video prompt: its first-token time;
4. the prefix cache: a 4-turn conversation about that video, first-token time of each turn
   with and without the kept KV cache (bench/turns.py), and whether the answers are the same.
Random weights never emit EOS, so every run generates exactly its tokens; token ids outside
the small test tokenizer decode to nothing, which only changes the text, not the work.

    python bench/gpu_check.py [--tokens 256] [--shape 2b|bench|tiny] [--flash-attn2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

from app.config import Settings
from app.engine import ChatRequest, GenerationOptions
from app.engine.local import LocalEngine
from app.media import MediaLimits, prepare
from app.scratch import new_folder
from app.tiny_checkpoint import (
    build_config,
    build_generation_config,
    build_processor,
    build_tokenizer,
)
from bench import turns
from bench.overhead import _Clock

ROOT = Path(__file__).resolve().parent.parent

REAL_VOCAB = 151936  # Qwen2-VL's embedding rows: the lm_head is a real share of decode work


def build(out: Path, shape: str, device: str) -> Path:
    tokenizer = build_tokenizer()
    config = build_config("qwen2_vl", shape, tokenizer)
    config.text_config.vocab_size = REAL_VOCAB
    config.dtype = "bfloat16" if device == "cuda" else "float32"
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=getattr(torch, config.dtype))
    model.generation_config = build_generation_config(tokenizer)
    model.save_pretrained(out)
    build_processor("qwen2_vl", tokenizer).save_pretrained(out)
    del model
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--shape", default="2b", choices=("2b", "bench", "tiny"))
    parser.add_argument("--flash-attn2", action="store_true")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--turns", type=int, default=4)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    checkpoint = build(Path(tempfile.mkdtemp(prefix="gpu-check-")), args.shape, device)
    settings = Settings(
        checkpoint_path=str(checkpoint), cpu_only=not cuda, flash_attn2=args.flash_attn2
    )
    engine = LocalEngine(settings).start(background=False)
    print(
        engine.status().message,
        "| attention:",
        engine.model.config._attn_implementation,
        "| dtype:",
        engine.model.dtype,
        "| device:",
        engine.model.device,
    )

    image_path = new_folder("bench") / "gpu-check.png"
    Image.effect_mandelbrot((448, 448), (-2, -1.5, 1, 1.5), 100).convert("RGB").save(image_path)
    image = prepare(image_path, MediaLimits())
    request = ChatRequest(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": image},
                    {"type": "text", "text": "Describe this image."},
                ],
            }
        ],
        options=GenerationOptions(max_new_tokens=args.tokens),
    )
    for label in ("warm-up", "engine", "raw generate"):
        start = time.perf_counter()
        first, last, tokens = (
            raw_run(engine, request) if label == "raw generate" else (engine_run(engine, request))
        )
        if label != "warm-up":
            rate = (tokens - 1) / (last - first)
            print(
                f"{label:13s}: {tokens} tokens, TTFT {(first - start) * 1000:.0f} ms, "
                f"{rate:.1f} tokens/s after the first (README: 35.3 tok/s, 2B BF16, A100)"
            )
    batch(engine, image, args)
    video_and_turns(engine, args)


def batch(engine: LocalEngine, image: Any, args: argparse.Namespace) -> None:
    """--batch different requests at once (one picture, different questions) vs one alone."""

    def ask(index: int) -> int:
        question = [{"type": "image", "image": image}, {"type": "text", "text": f"Q{index}?"}]
        request = ChatRequest(
            [{"role": "user", "content": question}],
            GenerationOptions(max_new_tokens=args.tokens),
            client=f"b{index}",
        )
        return engine_run(engine, request)[2]  # fmt: skip

    start = time.perf_counter()
    alone = ask(0) / (time.perf_counter() - start)
    start = time.perf_counter()
    with ThreadPoolExecutor(args.batch) as pool:
        together = sum(pool.map(ask, range(1, args.batch + 1))) / (time.perf_counter() - start)
    print(f"batch of {args.batch}  : {together:.1f} tokens/s together vs {alone:.1f} alone "
          f"= {together / alone:.2f}x")  # fmt: skip


def video_and_turns(engine: LocalEngine, args: argparse.Namespace) -> None:
    """A 64-frame video's first token, then follow-ups with and without the kept cache."""
    video = turns.media("video", frames=64)
    print(f"video        : 64 frames, {video['video'].tokens} visual tokens")
    twin = turns.uncached_twin(engine)
    for turn, (cold, warm, reused, prompt, same) in enumerate(
        turns.conversation(engine, twin, video, args), 1
    ):
        print(f"turn {turn}       : prompt {prompt} tokens, {reused} from the cache; TTFT "
              f"{cold * 1000:.0f} ms uncached, {warm * 1000:.0f} ms cached = {warm / cold:.2f}x; "
              f"same answer: {'yes' if same else 'no'}")  # fmt: skip


def engine_run(engine: LocalEngine, request: ChatRequest) -> tuple[float, float, int]:
    """(first token time, last token time, tokens) streaming through the engine."""
    first = last = None
    tokens = 0
    for delta in engine.stream(request):
        if delta.tokens:
            last = time.perf_counter()
            first = first or last
            tokens += delta.tokens
    return first, last, tokens


def raw_run(engine: LocalEngine, request: ChatRequest) -> tuple[float, float, int]:
    """The same for `generate` on the same inputs, with a clock as its only streamer."""
    clock = _Clock()
    inputs = {k: v.to(engine.model.device) for k, v in engine.encode(request).items()}
    with torch.inference_mode():
        engine.model.generate(
            **inputs, max_new_tokens=request.options.max_new_tokens, do_sample=False, streamer=clock
        )
    return clock.first, clock.last, clock.tokens


if __name__ == "__main__":
    main()
