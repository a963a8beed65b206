"""What the app adds to a model answer: TTFT and tokens/s through the running demo vs raw generate.

Same prompt (one 448x448 image + a question, 256 new tokens, greedy) on the "bench" random
checkpoint (~100M parameters). Raw = the README's recipe in this process: processor(...) then
model.generate with a streamer. Engine = app.chat.respond + the local engine in this process
(everything but Gradio). App = web_demo_mm.py in a subprocess, driven by gradio_client through
/chat (file upload, queue, SSE included). Runs alternate; medians are printed with their
ratios (this machine is noisy).

    .venv/bin/python bench/overhead.py [--runs 5] [--tokens 256]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from gradio_client import Client, handle_file
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
from transformers.generation.streamers import BaseStreamer

from app.config import Settings
from app.engine import GenerationOptions
from app.engine.local import LocalEngine, processor_inputs
from app.media import MediaLimits, load_media
from app.scratch import new_folder
from app.tiny_checkpoint import build_tiny_checkpoint

ROOT = Path(__file__).resolve().parent.parent

QUESTION = "Describe this image in detail."


class _Clock(BaseStreamer):
    """Records when the first and the last new token arrive."""

    def __init__(self) -> None:
        self.prompt_seen = False
        self.first: float | None = None
        self.last = 0.0
        self.tokens = 0

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        now = time.perf_counter()
        self.first = self.first or now
        self.last = now
        self.tokens += value.numel()

    def end(self) -> None:
        pass


def raw_run(model, processor, image_path: Path, tokens: int) -> tuple[float, float]:
    """(TTFT s, tokens/s after the first) for processor + generate, as the README does it."""
    start = time.perf_counter()
    media = [load_media(image_path, MediaLimits())]
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": str(image_path)},
                {"type": "text", "text": QUESTION},
            ],
        }
    ]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor_inputs(processor, prompt, media)
    clock = _Clock()
    with torch.inference_mode():
        model.generate(**inputs, max_new_tokens=tokens, do_sample=False, streamer=clock)
    return clock.first - start, (clock.tokens - 1) / (clock.last - clock.first)


def engine_run(engine, image_path: Path, tokens: int) -> tuple[float, float]:
    """(TTFT s, tokens/s after the first) through app.chat.respond and the engine, no UI."""
    from app.chat import respond
    from app.options import ChatOptions

    options = ChatOptions(generation=GenerationOptions(max_new_tokens=tokens))
    message = {"text": QUESTION, "files": [str(image_path)]}
    start = time.perf_counter()
    first = last = None
    for shown in respond(engine, engine.settings, message, [], options):
        if shown and shown[0].get("content") and not shown[0].get("metadata"):
            last = time.perf_counter()
            first = first or last
    return first - start, (tokens - 1) / (last - first)


def app_run(client: Client, image_path: Path, tokens: int) -> tuple[float, float]:
    """(TTFT s, tokens/s after the first) as a gradio_client user sees them."""
    start = time.perf_counter()
    job = client.submit(
        {"text": QUESTION, "files": [handle_file(image_path)]},
        max_new_tokens=tokens,
        repetition_penalty=1.0,
        api_name="/chat",
    )
    first = last = None
    for output in job:
        if output:
            last = time.perf_counter()
            first = first or last
    return first - start, (tokens - 1) / (last - first)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(checkpoint: Path, port: int, extra: list[str] = ()) -> subprocess.Popen:
    """web_demo_mm.py in a subprocess, returned once it answers (the model is loaded)."""
    log = open(Path(tempfile.gettempdir()) / f"bench-app-{port}.log", "w")  # noqa: SIM115
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "web_demo_mm.py"),
            "-c",
            str(checkpoint),
            "--cpu-only",
            "--server-port",
            str(port),
            *extra,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            client.predict({"text": "warm up", "files": []}, max_new_tokens=2, api_name="/chat")
            return process
        except Exception:  # not up yet, or the model is still loading
            time.sleep(1)
    process.kill()
    raise SystemExit("the app did not come up; see " + log.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=256)
    args = parser.parse_args()

    checkpoint = build_tiny_checkpoint(ROOT / "build" / "bench" / "bench-qwen2-vl", size="bench")
    image_path = new_folder("bench") / "bench-overhead.png"  # a trusted folder (app.trust)
    Image.effect_mandelbrot((448, 448), (-2, -1.5, 1, 1.5), 100).convert("RGB").save(image_path)

    model = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)
    port = free_port()
    app = start_app(checkpoint, port)
    engine = LocalEngine(Settings(checkpoint_path=str(checkpoint), cpu_only=True))
    engine.start(background=False)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        raw_run(model, processor, image_path, 8)  # warm-up
        engine_run(engine, image_path, 8)
        app_run(client, image_path, 8)
        raw, through_engine, through_app = [], [], []
        for _ in range(args.runs):
            raw.append(raw_run(model, processor, image_path, args.tokens))
            through_engine.append(engine_run(engine, image_path, args.tokens))
            through_app.append(app_run(client, image_path, args.tokens))
    finally:
        app.terminate()
        app.wait(30)

    def median(runs: list[tuple[float, float]], index: int) -> float:
        return statistics.median(run[index] for run in runs)

    raw_ttft, engine_ttft, app_ttft = (median(r, 0) for r in (raw, through_engine, through_app))
    raw_rate, engine_rate, app_rate = (median(r, 1) for r in (raw, through_engine, through_app))
    print(
        f"checkpoint: bench ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M params), "
        f"{args.tokens} new tokens, greedy, {args.runs} runs each, torch threads "
        f"{torch.get_num_threads()}"
    )
    print(f"raw generate : TTFT {raw_ttft * 1000:7.1f} ms   {raw_rate:6.1f} tokens/s")
    print(f"engine, no UI: TTFT {engine_ttft * 1000:7.1f} ms   {engine_rate:6.1f} tokens/s")
    print(f"through app  : TTFT {app_ttft * 1000:7.1f} ms   {app_rate:6.1f} tokens/s")
    print(
        f"TTFT added   : engine {(engine_ttft - raw_ttft) * 1000:+.1f} ms, "
        f"app {(app_ttft - raw_ttft) * 1000:+.1f} ms (target <= +30 ms)"
    )
    print(
        f"throughput   : engine {engine_rate / raw_rate:.3f}, app {app_rate / raw_rate:.3f} "
        "of raw (target >= 0.97)"
    )


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
