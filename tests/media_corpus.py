"""Odd and bad upload files, generated in about a second, for media and end-to-end tests.

`make_corpus(dir)` writes one file per entry of EXPECTED and returns name -> path; EXPECTED says
what `app.media.load_media` must make of each: an image, a video, or a UserFacingError.
Videos are written with PyAV (no FFmpeg CLI needed); frame i of a generated clip shows its index
in two flat gray halves, which `frame_index` reads back, so a test can tell which frames were
sampled.
"""

from __future__ import annotations

import io
import random
import struct
import zipfile
import zlib
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np
from PIL import Image

Outcome = Literal["image", "video", "error"]

EXPECTED: dict[str, Outcome] = {
    # --- images, however odd ---
    "png_named_mp4": "image",  # content decides, not the extension
    "jpeg_named_txt": "image",
    "unicode_name_png": "image",  # a name with spaces and Cyrillic letters
    "tiny_1x1_png": "image",  # upscaled to min_pixels
    "gray16_png": "image",  # 16-bit levels scaled to 8 bits, not clipped
    "gray_jpeg": "image",
    "cmyk_jpeg": "image",
    "palette_transparent_png": "image",  # transparent palette entry -> white
    "rgb_transparent_key_png": "image",  # tRNS color key on a truecolor PNG -> white
    "rgba_png": "image",  # alpha composited on white
    "la_png": "image",
    "exif_rotated_jpeg": "image",  # orientation 6: 120x40 stored, 40x120 shown
    "mpo_jpeg": "image",  # camera JPEG with a second picture: not an animation
    "static_gif": "image",  # one frame
    "bmp": "image",
    "tiff": "image",
    "webp": "image",
    "avif": "image",
    "heic": "image",  # written only where pillow-heif can encode
    # --- animations and videos ---
    "animated_gif": "video",
    "animated_webp": "video",
    "animated_png": "video",
    "tiny_mp4": "video",  # h264, 20 frames at 10 fps
    "mp4_named_jpg": "video",
    "webm_vp9": "video",
    "webm_vp8": "video",
    "mkv_h264": "video",
    "avi_mpeg4": "video",
    "avi_mjpeg": "video",
    "mov_mpeg4": "video",
    "one_frame_mp4": "video",  # the frame is duplicated to make 2
    "rotated_phone_mp4": "video",  # display matrix: stored 64x48, shown 48x64
    "video_8k": "video",  # 7680x4320, 2 frames
    "truncated_faststart_mp4": "video",  # index intact, data cut: the frames that decode
    # --- errors ---
    "empty": "error",
    "truncated_jpeg": "error",
    "truncated_png": "error",
    "text_named_png": "error",
    "html_named_jpg": "error",
    "svg": "error",
    "pdf": "error",
    "zip_archive": "error",
    "random_garbage": "error",
    "decompression_bomb_png": "error",  # header says 30000x30000, file is tiny
    "extreme_aspect_png": "error",  # 5000x10: smart_resize refuses ratios over 200
    "audio_only_m4a": "error",
    "audio_wav": "error",
    "zero_frame_avi": "error",  # a video stream with no packets
    "corrupt_mp4_header": "error",  # a valid ftyp box, then noise
    "truncated_mp4": "error",  # cut before the moov box (written at the end)
    "long_video": "error",  # 21:40 long (64x64, 1 fps), over the default 20 minutes
}


LEVEL_STEP = 13  # gray levels between digits: far above codec noise, 16 digits fit in 24..219


def frame_index(image: Image.Image) -> int:
    """Which frame of a `write_video` clip (modulo 256) an RGB image of it shows."""
    digits = []
    for x in (0.25, 0.75):
        r, _, _ = image.getpixel((int(x * image.width), image.height // 2))
        luma = r * 219 / 255 + 16  # the decoder expanded limited-range Y to 0..255
        digits.append(round((luma - 24) / LEVEL_STEP))
    return digits[0] + 16 * digits[1]


def write_video(
    path: Path,
    *,
    codec: str = "libx264",
    size: tuple[int, int] = (64, 48),
    frames: int = 20,
    rate: int = 10,
    gop: int | None = None,
    container_format: str | None = None,
    rotation: int | None = None,
    muxer_options: dict[str, str] | None = None,
    codec_options: dict[str, str] | None = None,
) -> Path:
    """A clip whose frame i shows i (see frame_index) at `rate` fps, written with PyAV."""
    width, height = size
    options = {
        "libx264": {"preset": "ultrafast"},
        "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8"},
    }.get(codec, {})
    options = {**options, **(codec_options or {})}
    with av.open(str(path), "w", format=container_format, options=muxer_options) as out:
        stream = out.add_stream(codec, rate=rate, options=options)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if gop:
            stream.codec_context.gop_size = gop
        if rotation is not None:
            stream.set_display_rotation(rotation)
        if frames == 0:
            out.start_encoding()  # header and an empty stream
        for i in range(frames):
            planes = np.full((height * 3 // 2, width), 128, np.uint8)
            planes[:height, : width // 2] = 24 + LEVEL_STEP * (i % 16)
            planes[:height, width // 2 :] = 24 + LEVEL_STEP * (i // 16 % 16)
            frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            frame.pts = i
            frame.time_base = Fraction(1, rate)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def _write_audio(path: Path, codec: str, container_format: str | None = None) -> Path:
    rate = 8000
    with av.open(str(path), "w", format=container_format) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        fmt = "s16" if codec.startswith("pcm") else "fltp"
        dtype = np.int16 if fmt == "s16" else np.float32
        for i in range(4):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), dtype), format=fmt, layout="mono"
            )
            frame.sample_rate, frame.pts = rate, i * 1024
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def _gradient(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], -1).astype(np.uint8), "RGB")


def _save(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png() -> bytes:
    """A valid PNG header declaring 30000x30000 grayscale, with almost no data after it."""
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 30001))
        + _png_chunk(b"IEND", b"")
    )


def _frames_for_animation() -> list[Image.Image]:
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]
    return [Image.new("RGB", (40, 30), c) for c in colors]


ANIMATION_COLORS = [f.getpixel((0, 0)) for f in _frames_for_animation()]


def _animation(fmt: str) -> bytes:
    first, *rest = _frames_for_animation()
    return _save(first, fmt, save_all=True, append_images=rest, duration=100, loop=0)


def _rgba() -> Image.Image:
    """Left half fully transparent red, right half opaque blue."""
    a = np.zeros((40, 60, 4), np.uint8)
    a[:, :30] = (255, 0, 0, 0)
    a[:, 30:] = (0, 0, 255, 255)
    return Image.fromarray(a, "RGBA")


def _palette_transparent() -> bytes:
    """Palette PNG: index 0 (black) is transparent on the left half, index 1 green on the right."""
    im = Image.new("P", (60, 40), 0)
    im.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    im.paste(1, (30, 0, 60, 40))
    return _save(im, "PNG", transparency=0)


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    return _save(_gradient(120, 40), "JPEG", exif=exif.tobytes())


def _heic() -> bytes | None:
    try:
        import pillow_heif
    except ImportError:
        return None
    pillow_heif.register_heif_opener()
    try:
        return _save(_gradient(64, 48), "HEIF")
    except Exception:  # libheif built without an encoder
        return None


def _corrupt_mp4(tiny_mp4: bytes) -> bytes:
    return tiny_mp4[:32] + random.Random(1).randbytes(2000)


def _image_bytes() -> dict[str, tuple[str, Callable[[], bytes | None]]]:
    jpeg = _save(_gradient(64, 48), "JPEG")
    png = _save(_gradient(64, 48), "PNG")
    return {
        "png_named_mp4": ("picture.mp4", lambda: png),
        "jpeg_named_txt": ("photo.txt", lambda: jpeg),
        "unicode_name_png": ("фото с пробелом.png", lambda: png),
        "tiny_1x1_png": ("dot.png", lambda: _save(Image.new("RGB", (1, 1), (9, 99, 199)), "PNG")),
        "gray16_png": (
            "gray16.png",
            lambda: _save(Image.fromarray(np.full((40, 60), 32768, np.uint16)), "PNG"),
        ),
        "gray_jpeg": ("gray.jpg", lambda: _save(_gradient(64, 48).convert("L"), "JPEG")),
        "cmyk_jpeg": (
            "cmyk.jpg",
            lambda: _save(Image.new("CMYK", (64, 48), (0, 255, 255, 0)), "JPEG"),
        ),
        "palette_transparent_png": ("palette.png", _palette_transparent),
        "rgb_transparent_key_png": (
            "keyed.png",
            lambda: _save(Image.new("RGB", (60, 40), (1, 2, 3)), "PNG", transparency=(1, 2, 3)),
        ),
        "rgba_png": ("rgba.png", lambda: _save(_rgba(), "PNG")),
        "la_png": ("la.png", lambda: _save(_rgba().convert("LA"), "PNG")),
        "exif_rotated_jpeg": ("rotated.jpg", _exif_rotated),
        "mpo_jpeg": (
            "camera.jpg",
            lambda: _save(
                _gradient(64, 48), "MPO", save_all=True, append_images=[_gradient(32, 24)]
            ),
        ),
        "static_gif": ("still.gif", lambda: _save(_gradient(64, 48), "GIF")),
        "bmp": ("image.bmp", lambda: _save(_gradient(64, 48), "BMP")),
        "tiff": ("image.tiff", lambda: _save(_gradient(64, 48), "TIFF")),
        "webp": ("image.webp", lambda: _save(_gradient(64, 48), "WEBP")),
        "avif": ("image.avif", lambda: _save(_gradient(64, 48), "AVIF")),
        "heic": ("image.heic", _heic),
        "animated_gif": ("anim.gif", lambda: _animation("GIF")),
        "animated_webp": ("anim.webp", lambda: _animation("WEBP")),
        "animated_png": ("anim.png", lambda: _animation("PNG")),
        "truncated_jpeg": ("cut.jpg", lambda: jpeg[: len(jpeg) // 2]),
        "truncated_png": ("cut.png", lambda: png[: len(png) // 2]),
        "decompression_bomb_png": ("bomb.png", _bomb_png),
        "extreme_aspect_png": ("strip.png", lambda: _save(_gradient(5000, 10), "PNG")),
    }


def _other_bytes() -> dict[str, tuple[str, Callable[[], bytes]]]:
    def zipped() -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("notes.txt", "not a picture")
        return buf.getvalue()

    return {
        "empty": ("empty.png", lambda: b""),
        "text_named_png": ("notes.png", lambda: b"just some text\n" * 20),
        "html_named_jpg": ("page.jpg", lambda: b"<!doctype html><html><body>hi</body></html>"),
        "svg": (
            "drawing.svg",
            lambda: (
                b'<svg xmlns="http://www.w3.org/2000/svg" width="9" '
                b'height="9"><rect width="9" height="9"/></svg>'
            ),
        ),
        "pdf": ("doc.pdf", lambda: b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"),
        "zip_archive": ("archive.zip", zipped),
        "random_garbage": ("noise.bin", lambda: random.Random(0).randbytes(4096)),
    }


def _videos(d: Path) -> dict[str, Path]:
    tiny = write_video(d / "tiny.mp4")
    data = tiny.read_bytes()
    faststart = write_video(
        d / "faststart.mp4", frames=40, gop=10, muxer_options={"movflags": "faststart"}
    )
    _write(faststart, faststart.read_bytes()[: faststart.stat().st_size * 3 // 4])
    return {
        "tiny_mp4": tiny,
        "mp4_named_jpg": _write(d / "clip.jpg", data),
        "webm_vp9": write_video(d / "vp9.webm", codec="libvpx-vp9"),
        "webm_vp8": write_video(d / "vp8.webm", codec="libvpx"),
        "mkv_h264": write_video(d / "h264.mkv"),
        "avi_mpeg4": write_video(d / "mpeg4.avi", codec="mpeg4"),
        "avi_mjpeg": write_video(d / "mjpeg.avi", codec="mjpeg"),
        "mov_mpeg4": write_video(d / "mpeg4.mov", codec="mpeg4"),
        "one_frame_mp4": write_video(d / "one.mp4", frames=1),
        "rotated_phone_mp4": write_video(d / "portrait.mp4", frames=4, rotation=90),
        "video_8k": write_video(d / "8k.mp4", codec="mpeg4", size=(7680, 4320), frames=2),
        "truncated_faststart_mp4": faststart,
        "audio_only_m4a": _write_audio(d / "voice.m4a", "aac"),
        "audio_wav": _write_audio(d / "voice.wav", "pcm_s16le"),
        "zero_frame_avi": write_video(d / "zero.avi", codec="mpeg4", frames=0),
        "corrupt_mp4_header": _write(d / "corrupt.mp4", _corrupt_mp4(data)),
        "truncated_mp4": _write(d / "cut.mp4", data[: len(data) // 2]),
        "long_video": write_video(
            d / "long.mp4", codec="mpeg4", size=(64, 64), frames=1300, rate=1, gop=600
        ),
    }


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def make_corpus(dir: Path) -> dict[str, Path]:
    """Write every corpus file into `dir` (created if needed); return name -> path.

    An entry whose encoder is missing here (HEIC without pillow-heif) is left out of the result.
    """
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, (filename, make) in {**_image_bytes(), **_other_bytes()}.items():
        data = make()
        if data is not None:
            paths[name] = _write(dir / filename, data)
    paths.update(_videos(dir))
    assert set(paths) <= set(EXPECTED), set(paths) - set(EXPECTED)
    return paths
