"""What an upload is, judged from its content (never its name), and the messages for bad ones.

Every bad input ends as a UserFacingError that names the file by its display name.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import av
from PIL import Image, features

from app.errors import UserFacingError

log = logging.getLogger(__name__)

Kind = Literal["image", "video"]
KINDS: tuple[Kind, ...] = ("image", "video")

# Pillow formats we open; others (EPS, PSD, ICO, TGA, ...) are refused, as TGA's weak signature
# would otherwise let Pillow "identify" random bytes. MPO is what cameras' JPEGs often open as.
_PILLOW_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# Formats whose extra frames are motion (MPO's and TIFF's are previews or pages).
_ANIMATED_FORMATS = frozenset({"GIF", "PNG", "WEBP"})
# FFmpeg demuxers we let probe an upload (format_whitelist): common video containers, plus audio
# containers only so that an audio file gets a precise message; never playlists or raw streams.
_DEMUXERS = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,mpegts,mpeg,ogg,flv,asf,wav,mp3,flac"


def check_file(path: Path, max_bytes: int | None, name: str) -> int:
    """The upload's size: it exists, is a regular file, is not empty and not over max_bytes."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise UserFacingError(f"'{name}' could not be found or opened.") from exc
    if not stat.S_ISREG(info.st_mode):
        raise UserFacingError(f"'{name}' is not a file.")
    if info.st_size == 0:
        raise UserFacingError(f"'{name}' is empty.")
    if max_bytes is not None and info.st_size > max_bytes:
        raise UserFacingError(
            f"'{name}' is {info.st_size / 2**20:.1f} MB; uploads are limited to "
            f"{max_bytes / 2**20:.0f} MB."
        )
    return info.st_size


def too_large(name: str, detail: str, limit_pixels: int | None) -> UserFacingError:
    """The message for a source image (or video frame) over a pixel limit."""
    limit = f"; the limit is {limit_pixels / 1e6:.0f} megapixels" if limit_pixels else ""
    return UserFacingError(f"'{name}' is too large an image ({detail}){limit}.")


def accepted() -> str:
    images = ["JPEG", "PNG", "WebP", "GIF", "BMP", "TIFF"]
    images += [
        label for fmt, label in (("HEIF", "HEIC"), ("AVIF", "AVIF")) if fmt in image_formats()
    ]
    return f"images ({', '.join(images)}) and videos (MP4, WebM, MOV, MKV, AVI)"


def unrecognized(path: Path, name: str) -> UserFacingError:
    """The message for content neither Pillow nor FFmpeg could open, guided by its signature."""
    try:
        with open(path, "rb") as f:
            kind = magic_kind(f.read(16))
    except OSError:
        kind = None
    if kind is not None:
        what = "an image" if kind == "image" else "a video"
        return UserFacingError(
            f"'{name}' could not be read as {what}: the file looks corrupt or truncated."
        )
    return UserFacingError(f"'{name}' is not a supported file. Accepted: {accepted()}.")


def magic_kind(head: bytes) -> Kind | None:
    """What a file claims to be from its first bytes: words error messages, and keeps a video
    or picture whose metadata holds "%PDF-" from being taken for a document."""
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        return "image" if brand in (b"heic", b"heix", b"mif1", b"msf1", b"avif") else "video"
    if head.startswith(b"RIFF"):
        return {b"WEBP": "image", b"AVI ": "video"}.get(head[8:12])  # type: ignore[return-value]
    if head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF8", b"II*\x00", b"MM\x00*")):
        return "image"
    if head.startswith((b"\x1a\x45\xdf\xa3", b"OggS")) or head[4:8] in (b"moov", b"mdat"):
        return "video"
    return None


@contextlib.contextmanager
def reading(name: str, what: str) -> Iterator[None]:
    """Turn any decoding failure into a UserFacingError naming the file."""
    try:
        yield
    except UserFacingError:
        raise
    # Pillow's plugins and FFmpeg raise many exception types for malformed input (OSError,
    # SyntaxError, ValueError, struct.error, av.FFmpegError, ...): all mean "bad upload".
    except Exception as exc:
        log.info("could not read %s as %s: %r", name, what, exc)
        raise UserFacingError(
            f"'{name}' could not be read as {what}: the file looks corrupt or truncated."
        ) from exc


@functools.cache
def image_formats() -> tuple[str, ...]:
    """Pillow formats to try, registering HEIC support once if pillow-heif is installed."""
    try:
        import pillow_heif
    except ImportError:
        pass
    else:
        pillow_heif.register_heif_opener()
    Image.init()  # load every plugin: Image.open(formats=...) fails on names not loaded yet
    wanted = _PILLOW_FORMATS + (("AVIF",) if features.check("avif") else ()) + ("HEIF",)
    return tuple(f for f in wanted if f in Image.OPEN)


def open_image(path: Path, name: str) -> Image.Image | None:
    """Pillow's lazy open (header only), or None when the content is no image we accept."""
    # Pillow refuses over 2 * MAX_IMAGE_PIXELS itself (and warns above MAX_IMAGE_PIXELS: left
    # alone, as silencing warnings is not thread-safe); max_image_pixels is checked after this.
    try:
        return Image.open(path, formats=image_formats())
    except Image.DecompressionBombError as exc:
        detail = f"over {2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} megapixels"
        raise too_large(name, detail, None) from exc
    except Exception:  # unidentified, or a header broken enough to fail: try other readers
        return None


def is_animation(im: Image.Image) -> bool:
    return im.format in _ANIMATED_FORMATS and getattr(im, "is_animated", False)


def open_container(path: Path) -> av.container.InputContainer:
    return av.open(
        str(path), container_options={"format_whitelist": _DEMUXERS}, metadata_errors="ignore"
    )


def sniff_kind(path: str | os.PathLike[str], name: str | None = None) -> Kind:
    """'image' or 'video' (animations included) judged from the content, never the name."""
    path = Path(path)
    name = name or path.name
    check_file(path, None, name)
    kind = _sniff_image(path, name) or _sniff_video(path, name)
    if kind is None:
        raise unrecognized(path, name)
    return kind


def _sniff_image(path: Path, name: str) -> Kind | None:
    try:
        im = open_image(path, name)
    except UserFacingError:
        return "image"  # a decompression bomb is still an image; loading it explains
    if im is None:
        return None
    with im:
        try:
            animated = is_animation(im)
        except Exception:  # a broken second frame: treated as a still, loading explains
            animated = False
    return "video" if animated else "image"


def _sniff_video(path: Path, name: str) -> Kind | None:
    try:
        with open_container(path) as container:
            has_video = bool(container.streams.video)
    except Exception:  # FFmpeg refuses the content (or the whitelist does)
        return None
    if not has_video:
        raise UserFacingError(f"'{name}' has no video track (audio alone is not supported).")
    return "video"


def wrong_kind(path: Path, name: str, wanted: str) -> UserFacingError:
    """For a file that is not `wanted`: say what it is, or why it is unreadable."""
    actual = "an image" if sniff_kind(path, name) == "image" else "a video"
    return UserFacingError(f"'{name}' is {actual}, not {wanted}.")
