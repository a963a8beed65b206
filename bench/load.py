"""Many users at once: N concurrent gradio_client sessions x T turns with images, vs one alone.

Runs web_demo_mm.py in a subprocess on the "bench" random checkpoint (~100M parameters), then
1 session alone, then N sessions at once (each its own history and image), once with batching
(--max-batch-size) and once without (1), each on a fresh server. Prints per run: turns
completed, p50/p95 time to first token, aggregate tokens/s, and the server's memory before and
after. Random weights never emit EOS, so every turn generates exactly --tokens tokens.

    .venv/bin/python bench/load.py [--sessions 8] [--turns 5] [--tokens 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import psutil
from gradio_client import Client, handle_file
from PIL import Image, ImageDraw

from app.tiny_checkpoint import build_tiny_checkpoint
from bench.overhead import free_port, start_app

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    ttfts: list[float] = field(default_factory=list)
    turns: int = 0
    failures: list[str] = field(default_factory=list)


def session_image(index: int) -> Path:
    path = Path(tempfile.gettempdir()) / f"bench-load-{index}.png"
    image = Image.new("RGB", (336, 336), (40 * index % 255, 90, 200 - 20 * index % 200))
    ImageDraw.Draw(image).ellipse((40 + index * 10, 60, 250, 280), fill=(250, 250, 250))
    image.save(path)
    return path


def one_session(url: str, index: int, turns: int, tokens: int, result: Result, lock) -> None:
    """A user: their own image on the first turn, then follow-ups that carry the history."""
    client = Client(url, verbose=False)
    image = session_image(index)
    history: list[dict] = []
    for turn in range(turns):
        files = [handle_file(image)] if turn == 0 else []
        message = {"text": f"Session {index}, turn {turn}: what do you see?", "files": files}
        start = time.perf_counter()
        first, answer = None, ""
        try:
            for output in client.submit(message, history, max_new_tokens=tokens, api_name="/chat"):
                if output and first is None:
                    first = time.perf_counter() - start
                answer = output or answer
        except Exception as exc:  # counted, printed, and the session goes on
            with lock:
                result.failures.append(f"session {index} turn {turn}: {exc}")
            continue
        content = [{"type": "file", "file": files[0]}] if files else []
        history += [
            {"role": "user", "content": content + [{"type": "text", "text": message["text"]}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ]
        with lock:
            result.turns += 1
            result.ttfts.append(first or 0.0)


def run(url: str, sessions: int, turns: int, tokens: int) -> tuple[Result, float]:
    result, lock = Result(), threading.Lock()
    threads = [
        threading.Thread(target=one_session, args=(url, i, turns, tokens, result, lock))
        for i in range(sessions)
    ]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return result, time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def measure(checkpoint: Path, batch: int, sessions: int, turns: int, tokens: int) -> dict:
    port = free_port()
    app = start_app(checkpoint, port, ["--max-batch-size", str(batch)])
    url = f"http://127.0.0.1:{port}/"
    try:
        server = psutil.Process(app.pid)
        before = server.memory_info().rss
        alone, alone_s = run(url, 1, turns, tokens)
        crowd, crowd_s = run(url, sessions, turns, tokens)
        after = server.memory_info().rss
    finally:
        app.terminate()
        app.wait(30)
    return {
        "batch": batch,
        "alone_rate": alone.turns * tokens / alone_s,
        "crowd_rate": crowd.turns * tokens / crowd_s,
        "crowd": crowd,
        "expected": sessions * turns,
        "before_mb": before / 2**20,
        "after_mb": after / 2**20,
        "alone_ttft": statistics.median(alone.ttfts) if alone.ttfts else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--batch-sizes", default="8,4,1")
    args = parser.parse_args()
    checkpoint = build_tiny_checkpoint(ROOT / "build" / "bench" / "bench-qwen2-vl", size="bench")
    print(
        f"{args.sessions} sessions x {args.turns} turns, one 336x336 image each, "
        f"{args.tokens} new tokens a turn, bench checkpoint, 2-core CPU"
    )
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        m = measure(checkpoint, batch, args.sessions, args.turns, args.tokens)
        crowd = m["crowd"]
        print(
            f"--max-batch-size {batch}: {crowd.turns}/{m['expected']} turns completed"
            f"{' (' + str(len(crowd.failures)) + ' failed)' if crowd.failures else ''}; "
            f"TTFT p50 {percentile(crowd.ttfts, 0.5):.2f} s "
            f"p95 {percentile(crowd.ttfts, 0.95):.2f} s"
            f" (alone {m['alone_ttft']:.2f} s); {m['crowd_rate']:.1f} tokens/s together vs "
            f"{m['alone_rate']:.1f} alone = {m['crowd_rate'] / m['alone_rate']:.2f}x; "
            f"server RSS {m['before_mb']:.0f} -> {m['after_mb']:.0f} MB"
        )
        for failure in crowd.failures[:3]:
            print("   ", failure)


if __name__ == "__main__":
    main()
