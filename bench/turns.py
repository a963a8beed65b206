"""Follow-up questions with and without the conversation's kept KV cache: time to first token.

A 6-turn conversation about (a) a 448x448 picture and (b) a 32-frame video, on the ~100M-parameter
random "bench" checkpoint, through the local engine (no Gradio): turn 1 brings the picture or
video, turns 2-6 are short text follow-ups whose history holds every earlier answer. Each turn
runs twice, in the same process, interleaved: on an engine with the prefix cache
(--prefix-cache-mb 1024) and on one without (0); both share the model's weights. Prints the
first-token time of each turn, the ratio cached/uncached, and how many prompt tokens came from
the cache. Random weights never end an answer, so each one is exactly --tokens tokens.

    python bench/turns.py [--tokens 32] [--turns 6]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from PIL import Image

from app.config import Settings
from app.engine import ChatRequest, GenerationOptions
from app.engine.local import LocalEngine, prefix_cache
from app.engine.worker import ModelWorker
from app.media import MediaLimits, prepare
from app.scratch import new_folder
from app.tiny_checkpoint import build_tiny_checkpoint
from tests.media_corpus import write_video

ROOT = Path(__file__).resolve().parent.parent


def engines(checkpoint: Path) -> tuple[LocalEngine, LocalEngine]:
    """One loaded model behind two workers: with a prefix cache, and without."""
    settings = Settings(checkpoint_path=str(checkpoint), cpu_only=True, prefix_cache_mb=1024)
    cached = LocalEngine(settings).start(background=False)
    return cached, uncached_twin(cached)


def uncached_twin(engine: LocalEngine) -> LocalEngine:
    """An engine on the same loaded model whose worker keeps no KV caches."""
    twin = LocalEngine(engine.settings)
    twin.model = engine.model
    pad = engine.processor.tokenizer.pad_token_id
    twin._worker = ModelWorker(engine.model, pad, 1, prefix_cache(engine.model, 0))
    twin._status = engine.status()
    return twin


def ask(engine: LocalEngine, messages: list[dict], tokens: int) -> tuple[float, str, int]:
    """(first-token seconds, answer, prompt tokens from the cache)."""
    request = ChatRequest(messages, GenerationOptions(max_new_tokens=tokens), client="bench")
    start = time.perf_counter()
    first, text, cached = None, "", 0
    for delta in engine.stream(request):
        if delta.tokens and first is None:
            first = time.perf_counter() - start
        text += delta.text
        cached = delta.cached_tokens or cached
    assert first is not None
    return first, text, cached


def media(kind: str, frames: int = 32) -> dict:
    """A 448x448 picture, or a 16-second 336x336 video sampled to `frames` frames."""
    folder = new_folder("bench")  # a trusted folder (app.trust)
    if kind == "picture":
        path = folder / "picture.png"
        Image.effect_mandelbrot((448, 448), (-2, -1.5, 1, 1.5), 100).convert("RGB").save(path)
    else:
        path = write_video(folder / "clip.mp4", size=(336, 336), frames=64, rate=4, gop=8)
    item = prepare(path, MediaLimits(max_frames=frames, video_fps=4.0))
    return {"type": item.kind, item.kind: item}


def conversation(
    cached: LocalEngine, uncached: LocalEngine, first_part: dict, args: argparse.Namespace
) -> list[tuple]:
    """Per turn: (uncached TTFT, cached TTFT, cached tokens, prompt tokens, same answers)."""
    first = {"role": "user", "content": [first_part, {"type": "text", "text": "Describe it."}]}
    history: dict[str, list[dict]] = {"cached": [first], "uncached": [first]}
    rows = []
    for turn in range(args.turns):
        if turn:
            question = {"role": "user", "content": [{"type": "text", "text": f"And {turn}?"}]}
            for key in history:
                history[key].append(question)
        cold, cold_answer, _ = ask(uncached, history["uncached"], args.tokens)
        warm, warm_answer, reused = ask(cached, history["cached"], args.tokens)
        prompt = cached.encode(ChatRequest(history["cached"]))["input_ids"].shape[1]
        rows.append((cold, warm, reused, prompt, cold_answer == warm_answer))
        history["uncached"].append({"role": "assistant", "content": cold_answer})
        history["cached"].append({"role": "assistant", "content": warm_answer})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--turns", type=int, default=6)
    args = parser.parse_args()
    checkpoint = build_tiny_checkpoint(ROOT / "build" / "bench" / "bench-qwen2-vl", size="bench")
    cached, uncached = engines(checkpoint)
    ask(uncached, [{"role": "user", "content": "warm-up"}], 2)
    for kind in ("picture", "video"):
        print(f"\n{kind}: {args.turns} turns, {args.tokens} tokens each (bench checkpoint, CPU)")
        print("turn | prompt tokens | from cache | TTFT uncached | TTFT cached | ratio | same")
        for turn, (cold, warm, reused, prompt, same) in enumerate(
            conversation(cached, uncached, media(kind), args), 1
        ):
            print(
                f"{turn:4d} | {prompt:13d} | {reused:10d} | {cold * 1000:10.0f} ms | "
                f"{warm * 1000:8.0f} ms | {warm / cold:5.2f} | {'yes' if same else 'no'}"
            )


if __name__ == "__main__":
    main()
