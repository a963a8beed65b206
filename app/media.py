"""Sniff, validate and load uploads into model-ready RGB images and sampled video frames.

Every bad input ends as a UserFacingError that names the file by its basename. Images are resized
once with Qwen2-VL's smart_resize, so the processor need not resize them again; videos are sampled
like qwen-vl-utils' smart_nframes, but decoded with PyAV frame by frame (seeking between keyframes
and shrinking each sampled frame as it is decoded), so memory is bounded by the sampled frames.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import logging
import math
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np
from PIL import ExifTags, Image, features

from app.errors import UserFacingError

log = logging.getLogger(__name__)

FACTOR = 28  # Qwen2-VL: 14-pixel patches merged 2x2, so every side is a multiple of 28
FRAME_FACTOR = 2  # Qwen2-VL merges frame pairs (temporal_patch_size), so frame counts are even
MAX_RATIO = 200  # smart_resize refuses images more than 200 times wider than tall (or taller)
GIF_DEFAULT_DELAY_MS = 100  # browsers show GIF frames with a delay of 10 ms or less for 100 ms

# Pillow formats we open; others (EPS, PSD, ICO, TGA, ...) are refused, as TGA's weak signature
# would otherwise let Pillow "identify" random bytes. MPO is what cameras' JPEGs often open as.
_PILLOW_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# Formats whose extra frames are motion (MPO's and TIFF's are previews or pages).
_ANIMATED_FORMATS = frozenset({"GIF", "PNG", "WEBP"})
# FFmpeg demuxers we let probe an upload (format_whitelist): common video containers, plus audio
# containers only so that an audio file gets a precise message; never playlists or raw streams.
_DEMUXERS = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,mpegts,mpeg,ogg,flv,asf,wav,mp3,flac"
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ROTATION = {
    90: Image.Transpose.ROTATE_90,
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_270,
}  # display-matrix angles are counterclockwise

Kind = Literal["image", "video"]


@dataclass(frozen=True)
class MediaLimits:
    """Bounds on what an upload may be and on how many visual tokens it may cost."""

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

    def __post_init__(self) -> None:
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError("need 0 < min_pixels <= max_pixels")
        if not 0 < self.video_min_pixels <= self.video_max_pixels:
            raise ValueError("need 0 < video_min_pixels <= video_max_pixels")
        if not (self.video_fps > 0 and self.min_frames >= 1):
            raise ValueError("need video_fps > 0 and min_frames >= 1")
        if self.max_frames < FRAME_FACTOR:  # may be below min_frames: max_frames wins
            raise ValueError(f"max_frames must be at least {FRAME_FACTOR}")


@dataclass(frozen=True)
class ImageInput:
    """One RGB image already at its smart_resize size (sides multiples of 28)."""

    image: Image.Image


@dataclass(frozen=True)
class VideoInput:
    """An even number (>= 2) of same-size RGB frames sampled at `fps` from `duration` seconds."""

    frames: list[Image.Image]
    fps: float
    duration: float


@dataclass(frozen=True)
class _Index:
    """Presentation timestamps of all frames and of the keyframes, sorted, in stream time base."""

    pts: list[int]
    keys: list[int]

    def keyframe_before(self, ts: int) -> int:
        i = bisect.bisect_right(self.keys, ts) - 1
        return self.keys[i] if i >= 0 else self.pts[0]


@dataclass(frozen=True)
class _Plan:
    targets: list[int]  # timestamps of the frames to keep, ascending, possibly repeated
    fps: float
    duration: float


@dataclass(frozen=True)
class _Shape:
    """How to turn a decoded frame into a sampled image: scale to `size`, then rotate."""

    size: tuple[int, int]
    transpose: Image.Transpose | None


class _SeekFailed(Exception):
    """A seek landed after its target: this file's index cannot be trusted."""


# --- sizes (after qwen-vl-utils 0.0.14 vision_process.py: smart_resize, smart_nframes) ---------


def smart_resize(
    height: int,
    width: int,
    factor: int = FACTOR,
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


def _fit(
    width: float, height: float, min_pixels: float, max_pixels: float, name: str
) -> tuple[int, int]:
    """(width, height) for smart_resize, or a clear message for an extreme aspect ratio."""
    if max(width, height) / min(width, height) > MAX_RATIO:
        raise UserFacingError(
            f"'{name}' is too narrow or too wide ({round(width)}x{round(height)} pixels): "
            f"its long side may be at most {MAX_RATIO} times its short side."
        )
    h, w = smart_resize(round(height) or 1, round(width) or 1, FACTOR, min_pixels, max_pixels)
    return w, h


def _frame_count(total: int, duration: float, limits: MediaLimits) -> int:
    """How many frames to sample: smart_nframes' rule, but a 1-frame clip gives 2 (duplicated)."""
    lo = math.ceil(limits.min_frames / FRAME_FACTOR) * FRAME_FACTOR
    hi = limits.max_frames // FRAME_FACTOR * FRAME_FACTOR
    wanted = Fraction(duration) * Fraction(limits.video_fps)
    n = min(max(wanted, lo), hi, total)
    return max(FRAME_FACTOR, math.floor(n / FRAME_FACTOR) * FRAME_FACTOR)


def _frame_size(
    width: float, height: float, n: int, limits: MediaLimits, name: str
) -> tuple[int, int]:
    """Per-frame (width, height): the total pixel budget shared by n frames, within bounds."""
    per_frame = limits.video_total_pixels / n
    per_frame = min(max(per_frame, limits.video_min_pixels), limits.video_max_pixels)
    return _fit(width, height, limits.video_min_pixels, per_frame, name)


def _sample_indices(total: int, n: int) -> list[int]:
    """n evenly spaced frame indices over [0, total - 1], rounded like qwen-vl-utils."""
    return [int(i) for i in np.linspace(0, total - 1, n).round()]


# --- entry points -----------------------------------------------------------------------------


def load_media(path: str | os.PathLike[str], limits: MediaLimits) -> ImageInput | VideoInput:
    """Load an upload of any accepted kind; animated GIF/WebP/PNG come back as videos."""
    path = Path(path)
    _check_size(path, limits)
    if sniff_kind(path) == "image":
        return load_image(path, limits)
    return load_video(path, limits)


def sniff_kind(path: str | os.PathLike[str]) -> Kind:
    """'image' or 'video' (animations included) judged from the content, never the name."""
    path = Path(path)
    _check_size(path, None)
    kind = _sniff_image(path) or _sniff_video(path)
    if kind is None:
        raise _unrecognized(path)
    return kind


def load_image(path: str | os.PathLike[str], limits: MediaLimits) -> ImageInput:
    """Decode one still image (the first frame of an animation) to RGB at its final size."""
    path = Path(path)
    _check_size(path, limits)
    im = _open_image(path)
    if im is None:
        raise _wrong_kind(path, "an image")
    with im, _reading(path, "an image"):
        _check_image_pixels(im, path.name, limits)
        return ImageInput(_decode_still(im, path.name, limits))


def load_video(path: str | os.PathLike[str], limits: MediaLimits) -> VideoInput:
    """Sample frames from a video file or an animated image."""
    path = Path(path)
    _check_size(path, limits)
    im = _open_image(path)
    if im is None:
        with _reading(path, "a video"):
            return _load_container_video(path, limits)
    with im:
        if not _is_animation(im):
            raise UserFacingError(f"'{path.name}' is a still image, not a video.")
        with _reading(path, "an animated image"):
            _check_image_pixels(im, path.name, limits)
            return _load_animation(im, path.name, limits)


# --- checks and messages ----------------------------------------------------------------------


def _check_size(path: Path, limits: MediaLimits | None) -> None:
    """The upload exists, is a regular file, is not empty and (given limits) not too big."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise UserFacingError(f"'{path.name}' could not be found or opened.") from exc
    if not stat.S_ISREG(info.st_mode):
        raise UserFacingError(f"'{path.name}' is not a file.")
    size = info.st_size
    if size == 0:
        raise UserFacingError(f"'{path.name}' is empty.")
    if limits is not None and size > limits.max_upload_bytes:
        raise UserFacingError(
            f"'{path.name}' is {size / 2**20:.1f} MB; uploads are limited to "
            f"{limits.max_upload_bytes / 2**20:.0f} MB."
        )


def _check_image_pixels(im: Image.Image, name: str, limits: MediaLimits) -> None:
    """Refuse absurd sizes from the header alone, before anything is decoded."""
    if im.width * im.height > limits.max_image_pixels:
        raise _too_large(name, f"{im.width}x{im.height} pixels", limits)


def _too_large(name: str, detail: str, limits: MediaLimits | None) -> UserFacingError:
    """The message for a source image (or video frame) over max_image_pixels."""
    limit = f"; the limit is {limits.max_image_pixels / 1e6:.0f} megapixels" if limits else ""
    return UserFacingError(f"'{name}' is too large an image ({detail}){limit}.")


def _accepted() -> str:
    images = ["JPEG", "PNG", "WebP", "GIF", "BMP", "TIFF"]
    images += [
        label for fmt, label in (("HEIF", "HEIC"), ("AVIF", "AVIF")) if fmt in _image_formats()
    ]
    return f"images ({', '.join(images)}) and videos (MP4, WebM, MOV, MKV, AVI)"


def _unrecognized(path: Path) -> UserFacingError:
    """The message for content neither Pillow nor FFmpeg could open, guided by its signature."""
    try:
        with open(path, "rb") as f:
            kind = _magic_kind(f.read(16))
    except OSError:
        kind = None
    if kind == "image":
        return UserFacingError(
            f"'{path.name}' could not be read as an image: the file looks corrupt or truncated."
        )
    if kind == "video":
        return UserFacingError(
            f"'{path.name}' could not be read as a video: the file looks corrupt or truncated."
        )
    return UserFacingError(f"'{path.name}' is not a supported file. Accepted: {_accepted()}.")


def _wrong_kind(path: Path, wanted: str) -> UserFacingError:
    """For a file that is not `wanted`: say what it is, or why it is unreadable."""
    actual = "an image" if sniff_kind(path) == "image" else "a video"
    return UserFacingError(f"'{path.name}' is {actual}, not {wanted}.")


def _magic_kind(head: bytes) -> Kind | None:
    """What a file claims to be from its first bytes; only used to word error messages."""
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        return "image" if brand in (b"heic", b"heix", b"mif1", b"msf1", b"avif") else "video"
    if head.startswith(b"RIFF"):
        return {b"WEBP": "image", b"AVI ": "video"}.get(head[8:12])
    if head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF8", b"II*\x00", b"MM\x00*")):
        return "image"
    if head.startswith((b"\x1a\x45\xdf\xa3", b"OggS")) or head[4:8] in (b"moov", b"mdat"):
        return "video"
    return None


@contextlib.contextmanager
def _reading(path: Path, what: str) -> Iterator[None]:
    """Turn any decoding failure into a UserFacingError naming the file."""
    try:
        yield
    except UserFacingError:
        raise
    # Pillow's plugins and FFmpeg raise many exception types for malformed input (OSError,
    # SyntaxError, ValueError, struct.error, av.FFmpegError, ...): all mean "bad upload".
    except Exception as exc:
        log.info("could not read %s as %s: %r", path, what, exc)
        raise UserFacingError(
            f"'{path.name}' could not be read as {what}: the file looks corrupt or truncated."
        ) from exc


# --- sniffing ---------------------------------------------------------------------------------


@functools.cache
def _image_formats() -> tuple[str, ...]:
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


def _open_image(path: Path) -> Image.Image | None:
    """Pillow's lazy open (header only), or None when the content is no image we accept."""
    # Pillow refuses over 2 * MAX_IMAGE_PIXELS itself (and warns above MAX_IMAGE_PIXELS: left
    # alone, as silencing warnings is not thread-safe); max_image_pixels is checked after this.
    try:
        return Image.open(path, formats=_image_formats())
    except Image.DecompressionBombError as exc:
        detail = f"over {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels"
        raise _too_large(path.name, detail, None) from exc
    except Exception:  # unidentified, or a header broken enough to fail: try other readers
        return None


def _is_animation(im: Image.Image) -> bool:
    return im.format in _ANIMATED_FORMATS and getattr(im, "is_animated", False)


def _sniff_image(path: Path) -> Kind | None:
    try:
        im = _open_image(path)
    except UserFacingError:
        return "image"  # a decompression bomb is still an image; load_image explains
    if im is None:
        return None
    with im:
        try:
            animated = _is_animation(im)
        except Exception:  # a broken second frame: treated as a still, load_image explains
            animated = False
    return "video" if animated else "image"


def _sniff_video(path: Path) -> Kind | None:
    try:
        with _open_container(path) as container:
            has_video = bool(container.streams.video)
    except Exception:  # FFmpeg refuses the content (or the whitelist does)
        return None
    if not has_video:
        raise UserFacingError(f"'{path.name}' has no video track (audio alone is not supported).")
    return "video"


def _open_container(path: Path) -> av.container.InputContainer:
    return av.open(
        str(path), container_options={"format_whitelist": _DEMUXERS}, metadata_errors="ignore"
    )


# --- images -----------------------------------------------------------------------------------


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # malformed EXIF is common and harmless: ignore it
        return 1
    return value if value in _ORIENTATION else 1


def _decode_still(im: Image.Image, name: str, limits: MediaLimits) -> Image.Image:
    """Decode (at reduced scale when JPEG allows), orient, convert to RGB, resize once."""
    orientation = _orientation(im)
    swap = orientation in (5, 6, 7, 8)
    width, height = (im.height, im.width) if swap else im.size
    size = _fit(width, height, limits.min_pixels, limits.max_pixels, name)
    if im.format in ("JPEG", "MPO"):  # DCT scaling: decode 1/2, 1/4 or 1/8 size, still >= size
        im.draft(None, (size[1], size[0]) if swap else size)
    im.load()
    out = im.transpose(_ORIENTATION[orientation]) if orientation != 1 else im
    return _rgb_at(out, size, source=im)


def _rgb_at(im: Image.Image, size: tuple[int, int], source: Image.Image) -> Image.Image:
    """RGB copy of `im` at `size`, never `source` itself (it is closed or re-seeked after)."""
    out = _to_rgb(im)
    if out.size != size:
        out = out.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    return out.copy() if out is source else out


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB with transparency composited on white and 16-bit/float levels scaled, not clipped."""
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


def _load_animation(im: Image.Image, name: str, limits: MediaLimits) -> VideoInput:
    """Sample an animated GIF/WebP/PNG like a video, timed by its first frame's delay."""
    total = im.n_frames
    delay_ms = im.info.get("duration") or 0
    fps = 1000 / (delay_ms if delay_ms > 10 else GIF_DEFAULT_DELAY_MS)
    duration = total / fps
    _check_duration(duration, name, limits)
    n = _frame_count(total, duration, limits)
    size = _frame_size(im.width, im.height, n, limits, name)
    frames: list[Image.Image] = []
    last = -1
    for i in _sample_indices(total, n):
        if frames and i == last:
            frames.append(frames[-1])
            continue
        try:
            im.seek(i)
            frames.append(_rgb_at(im, size, source=im))
        except (EOFError, OSError):  # truncated animation: keep the frames before the damage
            break
        last = i
    return _video_input(frames, n, duration, name)


def _video_input(frames: list[Image.Image], n: int, duration: float, name: str) -> VideoInput:
    """Pad frames lost to a damaged tail with the last good one, so the count stays n."""
    if not frames:
        raise UserFacingError(f"'{name}' contains no video frames that could be decoded.")
    frames += [frames[-1]] * (n - len(frames))
    return VideoInput(frames=frames, fps=n / duration, duration=duration)


def _check_duration(seconds: float, name: str, limits: MediaLimits) -> None:
    if seconds > limits.max_video_seconds:
        raise UserFacingError(
            f"'{name}' is {_clock(seconds)} long; videos may be at most "
            f"{_clock(limits.max_video_seconds)}."
        )


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    if minutes >= 60:
        return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"


# --- videos -----------------------------------------------------------------------------------


def _load_container_video(path: Path, limits: MediaLimits) -> VideoInput:
    """Probe, index (demux only), plan, then decode just the sampled frames."""
    try:
        container = _open_container(path)
    except Exception:
        raise _wrong_kind(path, "a video") from None
    with container:
        stream = _video_stream(container, path.name, limits)
        index = _scan(container, stream, path.name, limits)
        plan = _plan(index, stream, limits)
        try:
            frames = _sample(container, stream, index, plan, path.name, limits, seek=True)
        except _SeekFailed:
            frames = None
    if frames is None:  # one sequential pass from the start, keeping only the sampled frames
        with _open_container(path) as container:
            stream = _video_stream(container, path.name, limits)
            frames = _sample(container, stream, index, plan, path.name, limits, seek=False)
    return _video_input(frames, len(plan.targets), plan.duration, path.name)


def _video_stream(
    container: av.container.InputContainer, name: str, limits: MediaLimits
) -> av.video.stream.VideoStream:
    """The first video stream, checked against the limits it declares."""
    if not container.streams.video:
        raise UserFacingError(f"'{name}' has no video track (audio alone is not supported).")
    stream = container.streams.video[0]
    if stream.codec_context.width * stream.codec_context.height > limits.max_image_pixels:
        raise UserFacingError(
            f"'{name}' has frames too large to decode ({stream.codec_context.width}x"
            f"{stream.codec_context.height}); the limit is "
            f"{limits.max_image_pixels / 1e6:.0f} megapixels."
        )
    if stream.duration and stream.time_base:
        _check_duration(float(stream.duration * stream.time_base), name, limits)
    elif container.duration:
        _check_duration(container.duration / av.time_base, name, limits)
    stream.thread_type = "AUTO"
    return stream


def _packets(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> Iterator[av.Packet]:
    """Demuxed packets of `stream`, ending quietly where a damaged file stops making sense."""
    demuxer = container.demux(stream)
    while True:
        try:
            packet = next(demuxer)
        except StopIteration:
            return
        except av.FFmpegError:
            log.info("demuxing stopped early: %s", container.name, exc_info=True)
            return
        yield packet


def _scan(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    name: str,
    limits: MediaLimits,
) -> _Index:
    """Index every frame's timestamp by demuxing (reading, not decoding) the whole stream."""
    pts: list[int] = []
    keys: list[int] = []
    longest = limits.max_video_seconds / stream.time_base
    for packet in _packets(container, stream):
        ts = packet.pts if packet.pts is not None else packet.dts
        if ts is None or packet.size == 0:
            continue
        if pts and ts - pts[0] > longest:  # the header did not say, or said less
            _check_duration(float((ts - pts[0]) * stream.time_base), name, limits)
        pts.append(ts)
        if packet.is_keyframe:
            keys.append(ts)
    if not pts:
        raise UserFacingError(f"'{name}' contains no video frames.")
    pts.sort()
    keys.sort()
    return _Index(pts=pts, keys=keys)


def _plan(index: _Index, stream: av.video.stream.VideoStream, limits: MediaLimits) -> _Plan:
    """Which frames to sample: smart_nframes' count, evenly spaced over the frame indices."""
    total = len(index.pts)
    span = Fraction(index.pts[-1] - index.pts[0]) * stream.time_base
    rate = stream.average_rate or stream.guessed_rate
    if not rate or not 0 < rate < 1000:  # missing or absurd metadata: trust the timestamps
        rate = Fraction(total - 1) / span if span > 0 else Fraction(1)
    duration = span + 1 / Fraction(rate)
    n = _frame_count(total, duration, limits)
    targets = [index.pts[i] for i in _sample_indices(total, n)]
    return _Plan(targets=targets, fps=float(n / duration), duration=float(duration))


def _decode(packet: av.Packet) -> list[av.VideoFrame]:
    """Decode one packet; a corrupt packet costs its frames, not the whole video."""
    try:
        return packet.decode()
    except av.FFmpegError:
        return []


def _frames(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> Iterator[av.VideoFrame]:
    for packet in _packets(container, stream):
        for frame in _decode(packet):
            if frame.pts is not None:
                yield frame


def _sample(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    index: _Index,
    plan: _Plan,
    name: str,
    limits: MediaLimits,
    seek: bool,
) -> list[Image.Image]:
    """For each target, the first frame at or after it, seeking when a keyframe lies between."""
    images: list[Image.Image] = []
    # After _scan the demuxer sits at the end, so the first target always needs a seek.
    frames = _frames(container, stream) if not seek else iter(())
    cursor = -math.inf
    last_pts, shape = -math.inf, None
    for target in plan.targets:
        if target <= last_pts:  # a frame sampled twice (short clips)
            images.append(images[-1])
            continue
        key = index.keyframe_before(target)
        if seek and key > cursor:  # decoding on from the cursor would pass a keyframe: jump
            container.seek(key, stream=stream, backward=True)
            frames = _checked_after_seek(_frames(container, stream), target)
        frame = next((f for f in frames if f.pts >= target), None)
        if frame is None:
            break
        shape = shape or _shape(frame, stream, len(plan.targets), name, limits)
        images.append(_to_image(frame, shape))
        cursor = last_pts = frame.pts
    return images


def _checked_after_seek(frames: Iterator[av.VideoFrame], target: int) -> Iterator[av.VideoFrame]:
    """Frames after a seek, raising _SeekFailed if the first one is already past the target."""
    first = next(frames, None)
    if first is None or first.pts > target:
        raise _SeekFailed
    yield first
    yield from frames


def _shape(
    frame: av.VideoFrame,
    stream: av.video.stream.VideoStream,
    n: int,
    name: str,
    limits: MediaLimits,
) -> _Shape:
    """Sampled-frame size from the first decoded frame, honoring pixel aspect and rotation."""
    rotation = round((getattr(frame, "rotation", 0) or 0) / 90) * 90 % 360  # PyAV >= 14
    width = frame.width * float(stream.sample_aspect_ratio or 1)
    height = frame.height
    if rotation in (90, 270):
        width, height = height, width
    w, h = _frame_size(width, height, n, limits, name)
    size = (h, w) if rotation in (90, 270) else (w, h)
    return _Shape(size=size, transpose=_ROTATION.get(rotation))


def _to_image(frame: av.VideoFrame, shape: _Shape) -> Image.Image:
    """Scale while converting (swscale), so only the small image outlives the decoded frame."""
    image = frame.to_image(width=shape.size[0], height=shape.size[1], interpolation="AREA")
    return image.transpose(shape.transpose) if shape.transpose is not None else image
