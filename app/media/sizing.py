"""Sizes fed to the model: Qwen-VL's smart_resize, how many frames to sample, what they cost.

After qwen-vl-utils 0.0.14 `vision_process.py` (smart_resize, smart_nframes). Pure functions of
numbers: header facts and limits in, sizes, frame indices and visual-token counts out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from app.errors import UserFacingError

MAX_RATIO = 200  # smart_resize refuses images more than 200 times wider than tall (or taller)


@dataclass(frozen=True)
class Geometry:
    """How the loaded model's vision encoder cuts pictures (from its processor).

    A side is a multiple of `patch_size * merge_size` (28 for Qwen2/2.5-VL, 32 for Qwen3-VL);
    a visual token covers one merged patch, of `temporal_patch_size` frames for a video.
    """

    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    def image_tokens(self, width: int, height: int) -> int:
        """Visual tokens of one image (or one group of video frames) at its resized size."""
        return (width // self.factor) * (height // self.factor)

    def video_tokens(self, frames: int, width: int, height: int) -> int:
        return frames // self.temporal_patch_size * self.image_tokens(width, height)


QWEN2_VL = Geometry()


@dataclass(frozen=True)
class MediaLimits:
    """Bounds on what an upload may be, on what it may cost to decode and in visual tokens."""

    min_pixels: int = 4 * 28 * 28  # per image: the processor's default floor (4 tokens)
    max_pixels: int = 1280 * 28 * 28  # per image: a phone photo costs <= 1280 tokens, not 16384
    video_fps: float = 2.0  # frames sampled per second of video (qwen-vl-utils' default)
    min_frames: int = 4  # short clips still get a few frames (qwen-vl-utils' default)
    max_frames: int = 64  # CPU-friendly; qwen-vl-utils allows 768
    video_min_pixels: int = 128 * 28 * 28  # per frame: below this a frame says little
    video_max_pixels: int = 768 * 28 * 28  # per frame cap, reached by clips of <= 32 frames
    # Pixels summed over all sampled frames; frames shrink (down to video_min_pixels) to fit.
    # Frame pairs share tokens, so a video costs at most about 24576 / 2 = 12288 visual tokens.
    video_total_pixels: int = 24576 * 28 * 28
    max_upload_bytes: int = 200 * 1024 * 1024  # bigger files are refused before being read
    max_video_seconds: float = 20 * 60  # longer videos would be sampled too sparsely to follow
    max_image_pixels: int = 100_000_000  # source size (from the header, before decoding): bombs
    # Decoding bounds, so that a small file cannot cost minutes or gigabytes:
    max_video_frame_pixels: int = 40_000_000  # a video frame's area (8K UHD is 33 megapixels)
    max_animation_pixels: int = 1_000_000_000  # canvas area x frames of a GIF/WebP/APNG
    max_video_frames: int = 200_000  # frames indexed in one video (500 fps for 400 s)
    # Frame area x frames decoded for one video (about 20 s of CPU): past it, the remaining
    # samples take the keyframe before them instead of decoding on to the exact frame.
    max_decode_pixels: int = 10_000_000_000
    pdf_pages: str = ""  # which pages of a PDF are read, e.g. "1-3, 7" (empty: all of them)

    def __post_init__(self) -> None:
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError("need 0 < min_pixels <= max_pixels")
        if not 0 < self.video_min_pixels <= self.video_max_pixels:
            raise ValueError("need 0 < video_min_pixels <= video_max_pixels")
        if not (self.video_fps > 0 and self.min_frames >= 1):
            raise ValueError("need video_fps > 0 and min_frames >= 1")
        if self.max_frames < 2:  # may be below min_frames: max_frames wins
            raise ValueError("max_frames must be at least 2")


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: float = 4 * 28 * 28,
    max_pixels: float = 16384 * 28 * 28,
) -> tuple[int, int]:
    """(height, width) by Qwen2-VL's rule: multiples of `factor`, area in range, aspect kept."""
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(f"absolute aspect ratio must be smaller than {MAX_RATIO}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        # max(factor, ...) added: qwen-vl-utils 0.0.14 can return 0 for tiny max_pixels
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def fit_size(
    width: float, height: float, min_pixels: float, max_pixels: float, name: str, factor: int
) -> tuple[int, int]:
    """(width, height) for smart_resize, or a clear message for an extreme aspect ratio."""
    if max(width, height) / max(min(width, height), 1e-9) > MAX_RATIO:
        raise UserFacingError(
            f"'{name}' is too narrow or too wide ({round(width)}x{round(height)} pixels): "
            f"its long side may be at most {MAX_RATIO} times its short side."
        )
    h, w = smart_resize(round(height) or 1, round(width) or 1, factor, min_pixels, max_pixels)
    return w, h


def image_size(
    width: int, height: int, limits: MediaLimits, name: str, geometry: Geometry = QWEN2_VL
) -> tuple[int, int]:
    """The (width, height) an image of this displayed size is fed at."""
    return fit_size(width, height, limits.min_pixels, limits.max_pixels, name, geometry.factor)


def frame_count(
    total: int, duration: float, limits: MediaLimits, geometry: Geometry = QWEN2_VL
) -> int:
    """How many frames to sample: smart_nframes' rule, but a 1-frame clip gives 2 (duplicated)."""
    group = geometry.temporal_patch_size
    lo = math.ceil(limits.min_frames / group) * group
    hi = limits.max_frames // group * group
    wanted = Fraction(duration) * Fraction(limits.video_fps)
    n: Fraction | int = min(max(wanted, Fraction(lo)), Fraction(hi), Fraction(total))
    return max(group, math.floor(n / group) * group)


def frame_size(
    width: float,
    height: float,
    n: int,
    limits: MediaLimits,
    name: str,
    geometry: Geometry = QWEN2_VL,
) -> tuple[int, int]:
    """Per-frame (width, height): the total pixel budget shared by n frames, within bounds."""
    per_frame = limits.video_total_pixels / n
    per_frame = min(max(per_frame, limits.video_min_pixels), limits.video_max_pixels)
    return fit_size(width, height, limits.video_min_pixels, per_frame, name, geometry.factor)


def sample_indices(total: int, n: int) -> list[int]:
    """n evenly spaced frame indices over [0, total - 1], rounded like qwen-vl-utils."""
    return [int(i) for i in np.linspace(0, total - 1, n).round()]
