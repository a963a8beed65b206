"""Still images: their header facts, and decoding to RGB at the size the model is fed.

Images are resized once with smart_resize, so the processor need not resize them again. EXIF
orientation is applied, transparency composited on white, 16-bit levels scaled, not clipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image

from app.media.sniff import too_large

_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True)
class ImageInput:
    """One decoded RGB image at the size the model is fed (sides multiples of the factor)."""

    image: Image.Image


@dataclass(frozen=True)
class ImagePlan:
    """The (width, height) an image is fed at; for a document's page, which page (0-based)."""

    size: tuple[int, int]
    page: int | None = None


@dataclass(frozen=True)
class ImageHeader:
    """A still image as its header describes it; width and height as displayed (EXIF applied)."""

    width: int
    height: int
    format: str
    orientation: int = 1


def image_header(im: Image.Image, name: str, max_pixels: int) -> ImageHeader:
    """Header facts of an opened (not decoded) image; absurd sizes are refused here."""
    if im.width * im.height > max_pixels:
        raise too_large(name, f"{im.width}x{im.height} pixels", max_pixels)
    orientation = _orientation(im)
    swap = orientation in (5, 6, 7, 8)
    width, height = (im.height, im.width) if swap else im.size
    return ImageHeader(width, height, im.format or "", orientation)


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # malformed EXIF is common and harmless: ignore it
        return 1
    return value if value in _ORIENTATION else 1


def decode_still(im: Image.Image, header: ImageHeader, size: tuple[int, int]) -> Image.Image:
    """Decode (at reduced scale when JPEG allows), orient, convert to RGB, resize to `size`."""
    swap = header.orientation in (5, 6, 7, 8)
    if im.format in ("JPEG", "MPO"):  # DCT scaling: decode 1/2, 1/4 or 1/8 size, still >= size
        im.draft(None, (size[1], size[0]) if swap else size)
    im.load()
    out = im.transpose(_ORIENTATION[header.orientation]) if header.orientation != 1 else im
    return rgb_at(out, size, source=im)


def rgb_at(im: Image.Image, size: tuple[int, int], source: Image.Image) -> Image.Image:
    """RGB copy of `im` at `size`, never `source` itself (it is closed or re-seeked after)."""
    out = rgb_on_white(im)
    if out.size != size:
        out = out.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    return out.copy() if out is source else out


def rgb_on_white(im: Image.Image) -> Image.Image:
    """RGB with transparency composited on white and 16-bit/float levels scaled, not clipped.

    May return `im` itself when it is already plain RGB (callers copy when they draw on it).
    """
    im.load()  # a GIF frame's mode is only final once loaded (P, RGB or RGBA)
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        return _to_8bit(im).convert("RGB")
    if "A" in im.mode or "a" in im.mode or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def _to_8bit(im: Image.Image) -> Image.Image:
    """Grayscale 8-bit from 16-bit, 32-bit int or float levels, keeping mid-gray mid-gray."""
    a = np.nan_to_num(np.asarray(im, dtype=np.float32))
    if im.mode == "F" and a.min() >= 0 and a.max() <= 1:
        lo, hi = 0.0, 1.0
    elif im.mode != "F" and a.min() >= 0 and a.max() <= 65535:  # I;16, or a 16-bit PNG as "I"
        lo, hi = 0.0, 65535.0
    else:  # levels of unknown range: stretch what is there
        lo, hi = float(a.min()), float(a.max())
    scaled = (a - lo) * (255.0 / max(hi - lo, 1e-6)) + 0.5
    return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), "L")
