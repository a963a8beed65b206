"""Wall time and peak memory: app.media against qwen-vl-utils (decord) on a long video and a photo.

    .venv/bin/python bench/video.py [--minutes 10] [--cache build/bench] [--max-rss-gb 19]

Generates (once, cached) a synthetic 1280x720 30 fps H.264 clip with x264's default GOP of
250 frames (mostly static: a gradient with a moving square) and a 6000x4000 JPEG, then measures
each reader in a fresh subprocess, so each peak RSS is its own. A child whose RSS passes
--max-rss-gb is killed and reported as such (qwen-vl-utils holds every sampled frame at full
size, in float32 during its resize).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WIDTH, HEIGHT, RATE, GOP = 1280, 720, 30, 250
QWEN_MAX_FRAMES = 768  # qwen-vl-utils' FPS_MAX_FRAMES
QWEN_IMAGE_MAX_PIXELS = 16384 * 28 * 28  # qwen-vl-utils' IMAGE_MAX_TOKEN_NUM * 28 * 28


@dataclass(frozen=True)
class Result:
    label: str
    wall_s: float | None = None
    peak_rss_mb: float | None = None
    base_rss_mb: float | None = None
    output: str = ""
    error: str = ""


def make_video(path: Path, minutes: float) -> Path:
    """A mostly static 720p clip: cheap to encode, still a full-size decode per frame."""
    if path.exists():
        return path
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    y = np.linspace(16, 235, WIDTH, dtype=np.float32)[None, :].repeat(HEIGHT, 0)
    base = np.full((HEIGHT * 3 // 2, WIDTH), 128, np.uint8)
    base[:HEIGHT] = y.astype(np.uint8)
    tmp = path.with_suffix(".partial.mp4")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=RATE, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.gop_size = GOP  # FFmpeg's default of 12 would be unusually short
        for i in range(round(minutes * 60 * RATE)):
            planes = base.copy()
            x = (i * 8) % (WIDTH - 64)
            planes[300:364, x : x + 64] = 235
            frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    tmp.rename(path)
    return path


def make_photo(path: Path) -> Path:
    """A 6000x4000 JPEG with some texture, as a phone might produce."""
    if path.exists():
        return path
    from PIL import Image

    rng = np.random.default_rng(0)
    x = np.linspace(0, 255, 6000, dtype=np.float32)[None, :]
    yy = np.linspace(0, 255, 4000, dtype=np.float32)[:, None]
    noise = rng.integers(0, 24, (4000, 6000), dtype=np.uint8).astype(np.float32)
    rgb = np.stack([x + 0 * yy, yy + 0 * x, 255 - x + 0 * yy], -1) * 0.9 + noise[..., None]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB").save(path, quality=90)
    return path


def qwen_frame_pixels(n: int) -> float:
    """qwen-vl-utils 0.0.14 fetch_video's per-frame max_pixels for n frames (MODEL_SEQ_LEN 128k)."""
    return max(min(768 * 784, 128000 * 784 * 0.9 / n * 2), 128 * 784 * 1.05)


# --- child side: one measurement per process ---------------------------------------------------


def _status_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process: unlike ru_maxrss, VmHWM restarts at exec."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def _ours(path: str, case: str, n: int) -> tuple:
    from app.media import MediaLimits, load_media
    from app.media.sniff import image_formats

    image_formats()  # one-time plugin registration, like qwen-vl-utils' untimed imports

    limits = {
        "ours_video": replace(MediaLimits(), max_frames=QWEN_MAX_FRAMES),
        "ours_video_qwen_size": replace(
            MediaLimits(),
            max_frames=QWEN_MAX_FRAMES,
            video_max_pixels=768 * 784,
            video_total_pixels=int(qwen_frame_pixels(n) * n),
        ),
        "ours_image": MediaLimits(),
        "ours_image_qwen_size": replace(MediaLimits(), max_pixels=QWEN_IMAGE_MAX_PIXELS),
    }[case]
    return (
        lambda: load_media(path, limits),
        lambda r: (
            f"{len(r.frames)} frames of {r.frames[0].size}"
            if hasattr(r, "frames")
            else f"{r.image.size}"
        ),
    )


def _qwen(path: str, case: str) -> tuple:
    os.environ["FORCE_QWENVL_VIDEO_READER"] = "decord"
    from qwen_vl_utils import process_vision_info

    kind = "video" if case == "qwen_video" else "image"
    messages = [{"role": "user", "content": [{"type": kind, kind: path}]}]

    def describe(r: tuple) -> str:
        images, videos = r[0], r[1]
        return f"{tuple(videos[0].shape)} {videos[0].dtype}" if videos else f"{images[0].size}"

    return lambda: process_vision_info(messages), describe


def child(case: str, path: str, n: int) -> None:
    run, describe = _qwen(path, case) if case.startswith("qwen") else _ours(path, case, n)
    base = _status_mb("VmRSS")
    start = time.perf_counter()
    result = run()
    wall = time.perf_counter() - start
    peak = _status_mb("VmHWM")
    print(
        json.dumps(
            {"wall_s": wall, "peak_rss_mb": peak, "base_rss_mb": base, "output": describe(result)}
        )
    )


# --- parent side --------------------------------------------------------------------------------


def measure(label: str, case: str, path: Path, n: int, max_rss_gb: float) -> Result:
    """Run one case in a fresh interpreter, killing it if its RSS passes max_rss_gb."""
    import psutil

    cmd = [sys.executable, __file__, "--child", case, str(path), "--frames", str(n)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watched, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        if peak > max_rss_gb * 2**30:
            proc.kill()
            proc.wait()
            return Result(label, peak_rss_mb=peak / 2**20, error=f"killed: RSS > {max_rss_gb} GB")
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode != 0:
        return Result(label, error=f"exit {proc.returncode}: {err.strip().splitlines()[-1:]}")
    return Result(label, **json.loads(out.strip().splitlines()[-1]))


def _row(r: Result) -> str:
    if r.error:
        return f"{r.label:44s} {r.error}"
    delta = r.peak_rss_mb - r.base_rss_mb
    return (
        f"{r.label:44s} {r.wall_s:8.2f} s  peak {r.peak_rss_mb:8.0f} MB  "
        f"(+{delta:7.0f} MB over imports)  {r.output}"
    )


def _ratios(ours: Result, theirs: Result) -> str:
    if ours.error or theirs.error:
        return "    ratios: n/a"
    delta = (ours.peak_rss_mb - ours.base_rss_mb) / (theirs.peak_rss_mb - theirs.base_rss_mb)
    return (
        f"    memory ours/theirs: peak {ours.peak_rss_mb / theirs.peak_rss_mb:.3f}, "
        f"added {delta:.3f};  speedup theirs/ours: {theirs.wall_s / ours.wall_s:.1f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--cache", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument("--max-rss-gb", type=float, default=19.0)
    parser.add_argument("--child", nargs=2, metavar=("CASE", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--frames", type=int, default=QWEN_MAX_FRAMES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child, args.frames)
    start = time.perf_counter()
    video = make_video(args.cache / f"synthetic_{args.minutes:g}min_720p30.mp4", args.minutes)
    photo = make_photo(args.cache / "photo_6000x4000.jpg")
    print(f"inputs ready in {time.perf_counter() - start:.1f} s: {video.name}, {photo.name}")
    n = min(QWEN_MAX_FRAMES, math.floor(args.minutes * 60 * 2 / 2) * 2)
    video_cases = [
        ("ours: load_media, max_frames=768", "ours_video"),
        ("ours: same, qwen-vl-utils frame size", "ours_video_qwen_size"),
        ("qwen-vl-utils process_vision_info (decord)", "qwen_video"),
    ]
    image_cases = [
        ("ours: load_media, default max_pixels", "ours_image"),
        ("ours: max_pixels=16384*28*28 as qwen-vl-utils", "ours_image_qwen_size"),
        ("qwen-vl-utils process_vision_info", "qwen_image"),
    ]
    for title, path, cases in [
        (f"{args.minutes:g}-minute 1280x720 30 fps video", video, video_cases),
        ("6000x4000 JPEG", photo, image_cases),
    ]:
        print(f"\n{title}:")
        results = [measure(label, case, path, n, args.max_rss_gb) for label, case in cases]
        for r in results:
            print(_row(r))
        for r in results[:2]:
            print(f"  {r.label}")
            print(_ratios(r, results[2]))


if __name__ == "__main__":
    main()
