"""Real media objects for engine tests: a picture or clip written to the upload folder (where
tests keep their files, see conftest) and prepared as the app prepares an upload."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from PIL import Image

from app.media import QWEN2_VL, Geometry, Media, MediaLimits, prepare
from app.trust import upload_folder
from tests.media_corpus import write_video

# Limits under which a picture or clip whose sides are multiples of 28 keeps its size.
EXACT = MediaLimits(
    min_pixels=28 * 28,
    max_pixels=4096 * 28 * 28,
    video_min_pixels=28 * 28,
    video_max_pixels=4096 * 28 * 28,
    video_total_pixels=1_000_000 * 28 * 28,
    min_frames=2,
)


def _folder() -> Path:
    folder = Path(upload_folder()) / "pytest" / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def picture(
    image: Image.Image, limits: MediaLimits = EXACT, geometry: Geometry = QWEN2_VL
) -> Media:
    """The media object of an uploaded PNG of `image` (stored once per content), sized for a
    family's `geometry`."""
    data = image.tobytes() + repr((image.mode, image.size)).encode()
    path = _folder() / f"{hashlib.blake2b(data, digest_size=8).hexdigest()}.png"
    if not path.exists():
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".png", delete=False) as f:
            image.save(f, format="PNG")
        Path(f.name).replace(path)
    return prepare(path, limits, geometry)


def clip(size: tuple[int, int], frames: int, rate: int = 2, limits: MediaLimits = EXACT) -> Media:
    """The media object of an uploaded MP4 of `frames` frames at `rate` fps."""
    path = _folder() / f"clip-{size[0]}x{size[1]}-{frames}-{rate}.mp4"
    if not path.exists():
        write_video(path, size=size, frames=frames, rate=rate)
    return prepare(path, limits)


def part(media: Media) -> dict:
    """A message part holding `media`, as the app builds them."""
    return {"type": media.kind, media.kind: media}
