"""app.media: every odd upload in the corpus, plus the conversions and sampling rules one by one."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.errors import UserFacingError
from app.media import (
    ImageInput,
    MediaLimits,
    VideoInput,
    load_image,
    load_media,
    load_video,
    prepare,
    smart_resize,
    sniff_kind,
)
from app.media import video as video_module
from app.media.pdf import is_pdf
from tests.media_corpus import ANIMATION_COLORS, EXPECTED, frame_index, make_corpus, write_video

LIMITS = MediaLimits()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def _assert_image(result: ImageInput | VideoInput, limits: MediaLimits) -> None:
    assert isinstance(result, ImageInput)
    image = result.image
    assert image.mode == "RGB"
    assert image.width % 28 == 0 and image.height % 28 == 0
    assert limits.min_pixels <= image.width * image.height <= limits.max_pixels


def _assert_video(result: ImageInput | VideoInput, limits: MediaLimits) -> None:
    assert isinstance(result, VideoInput)
    frames = result.frames
    assert len(frames) >= 2 and len(frames) % 2 == 0
    assert len(frames) <= limits.max_frames
    assert {f.size for f in frames} == {frames[0].size}
    assert {f.mode for f in frames} == {"RGB"}
    width, height = frames[0].size
    assert width % 28 == 0 and height % 28 == 0
    assert limits.video_min_pixels <= width * height <= limits.video_max_pixels
    assert result.fps > 0 and result.duration > 0


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_item_gets_its_expected_outcome(corpus: dict[str, Path], name: str) -> None:
    if name not in corpus:
        pytest.skip(f"{name} cannot be generated here")
    path = corpus[name]
    expected = EXPECTED[name]
    if expected == "error":
        with pytest.raises(UserFacingError) as caught:
            load_media(path, LIMITS)
        assert path.name in str(caught.value)
        return
    assert sniff_kind(path) == expected
    result = load_media(path, LIMITS)
    (_assert_image if expected == "image" else _assert_video)(result, LIMITS)


def _pixel(image: Image.Image, x: float, y: float) -> tuple[int, ...]:
    return image.getpixel((int(x * (image.width - 1)), int(y * (image.height - 1))))


def _close(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 6) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def test_exif_orientation_swaps_width_and_height(corpus: dict[str, Path]) -> None:
    image = load_image(corpus["exif_rotated_jpeg"], LIMITS).image  # stored 120x40
    assert image.height > image.width


@pytest.mark.parametrize(
    ("name", "left", "right"),
    [
        ("rgba_png", (255, 255, 255), (0, 0, 255)),  # transparent red must not show as red
        ("la_png", (255, 255, 255), (29, 29, 29)),  # blue as luminance
        ("palette_transparent_png", (255, 255, 255), (0, 255, 0)),
        ("rgb_transparent_key_png", (255, 255, 255), (255, 255, 255)),
    ],
)
def test_transparency_is_composited_on_white(
    corpus: dict[str, Path], name: str, left: tuple[int, ...], right: tuple[int, ...]
) -> None:
    image = load_image(corpus[name], LIMITS).image
    assert _close(_pixel(image, 0.05, 0.5), left)
    assert _close(_pixel(image, 0.95, 0.5), right)


def test_16_bit_mid_gray_stays_mid_gray(corpus: dict[str, Path]) -> None:
    image = load_image(corpus["gray16_png"], LIMITS).image
    assert _close(_pixel(image, 0.5, 0.5), (128, 128, 128), tolerance=1)


def test_cmyk_becomes_rgb(corpus: dict[str, Path]) -> None:
    image = load_image(corpus["cmyk_jpeg"], LIMITS).image  # C=0 M=255 Y=255 K=0: red
    r, g, b = _pixel(image, 0.5, 0.5)
    assert r > 200 and g < 60 and b < 60


def test_one_pixel_image_is_upscaled_to_min_pixels(corpus: dict[str, Path]) -> None:
    image = load_image(corpus["tiny_1x1_png"], LIMITS).image
    assert image.size == (56, 56)
    assert _close(_pixel(image, 0.5, 0.5), (9, 99, 199))


def test_large_photo_is_resized_within_max_pixels(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    Image.new("RGB", (4000, 3000), (10, 20, 30)).save(path, quality=50)
    image = load_image(path, LIMITS).image
    assert image.width * image.height <= LIMITS.max_pixels
    assert (image.height, image.width) == smart_resize(3000, 4000, 28, 1, LIMITS.max_pixels)


@pytest.mark.parametrize("name", ["animated_gif", "animated_webp", "animated_png"])
def test_animation_becomes_video_of_its_frames(corpus: dict[str, Path], name: str) -> None:
    result = load_media(corpus[name], LIMITS)
    assert isinstance(result, VideoInput)
    # 6 frames of 100 ms: 0.6 s * 2 fps < min_frames, so 4 frames at indices linspace(0, 5, 4)
    assert result.duration == pytest.approx(0.6)
    colors = [_pixel(f, 0.5, 0.5) for f in result.frames]
    expected = [ANIMATION_COLORS[i] for i in (0, 2, 3, 5)]
    assert all(_close(c, e, tolerance=3) for c, e in zip(colors, expected, strict=True))


def _expected_indices(total: int, n: int) -> list[int]:
    return [int(i) for i in np.linspace(0, total - 1, n).round()]


@pytest.mark.parametrize(("max_frames", "expected"), [(64, 20), (8, 8)])
def test_frames_sampled_at_video_fps_up_to_max_frames(
    tmp_path: Path, max_frames: int, expected: int
) -> None:
    path = write_video(tmp_path / "ten_seconds.mp4", frames=100, rate=10, gop=12)
    result = load_video(path, replace(LIMITS, max_frames=max_frames))
    assert len(result.frames) == expected
    assert result.duration == pytest.approx(10.0)
    assert result.fps == pytest.approx(expected / 10.0)
    assert [frame_index(f) for f in result.frames] == _expected_indices(100, expected)


@pytest.mark.parametrize(
    ("filename", "codec", "options"),
    [
        ("h264.mp4", "libx264", None),
        ("h264_bframes.mp4", "libx264", {"preset": "medium", "bf": "3"}),
        ("h264_bframes.mkv", "libx264", {"preset": "medium", "bf": "3"}),
        ("mpeg4_bframes.avi", "mpeg4", {"bf": "2", "b": "4M"}),
        ("mjpeg.avi", "mjpeg", None),
        ("vp9.webm", "libvpx-vp9", None),
    ],
)
def test_seeking_picks_the_same_frames_as_one_pass(
    tmp_path: Path,
    filename: str,
    codec: str,
    options: dict[str, str] | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = write_video(
        tmp_path / filename, codec=codec, frames=100, rate=10, gop=12, codec_options=options
    )
    limits = replace(LIMITS, max_frames=10)
    seeking = [frame_index(f) for f in load_video(path, limits).frames]

    def seek_fails(frames: object, target: int) -> None:
        raise video_module._SeekFailed

    monkeypatch.setattr(video_module, "_checked_after_seek", seek_fails)
    assert [frame_index(f) for f in load_video(path, limits).frames] == seeking
    assert seeking == _expected_indices(100, 10)


def test_long_video_decodes_only_around_the_sampled_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_video(tmp_path / "minute.mp4", frames=1800, rate=30, gop=30)
    decoded = 0
    decode = video_module._decode

    def counting(packet: object) -> list:
        nonlocal decoded
        frames = decode(packet)
        decoded += len(frames)
        return frames

    monkeypatch.setattr(video_module, "_decode", counting)
    result = load_video(path, replace(LIMITS, max_frames=8))
    assert len(result.frames) == 8
    assert decoded <= 8 * 30  # at most one GOP per sampled frame, not 1800 frames


def test_video_frames_share_the_total_pixel_budget(tmp_path: Path) -> None:
    path = write_video(tmp_path / "wide.mp4", size=(640, 360), frames=100, rate=10)
    limits = replace(LIMITS, video_total_pixels=20 * 300 * 28 * 28)
    result = load_video(path, limits)
    width, height = result.frames[0].size
    assert len(result.frames) == 20
    assert width * height * len(result.frames) <= limits.video_total_pixels
    assert width > height


def test_rotated_video_is_shown_upright(corpus: dict[str, Path]) -> None:
    frame = load_video(corpus["rotated_phone_mp4"], LIMITS).frames[0]  # stored 64x48
    assert frame.height > frame.width


def test_one_frame_video_is_duplicated(corpus: dict[str, Path]) -> None:
    result = load_video(corpus["one_frame_mp4"], LIMITS)
    assert len(result.frames) == 2
    assert np.array_equal(np.asarray(result.frames[0]), np.asarray(result.frames[1]))


def test_sniff_uses_content_not_extension(corpus: dict[str, Path]) -> None:
    assert sniff_kind(corpus["png_named_mp4"]) == "image"
    assert sniff_kind(corpus["jpeg_named_txt"]) == "image"
    assert sniff_kind(corpus["mp4_named_jpg"]) == "video"
    assert sniff_kind(corpus["animated_gif"]) == "video"


@pytest.mark.parametrize(
    ("name", "limits", "words"),
    [
        ("tiny_mp4", replace(LIMITS, max_upload_bytes=100), "uploads are limited"),
        ("tiny_mp4", replace(LIMITS, max_video_seconds=1.0), "at most 0:01"),
        ("animated_gif", replace(LIMITS, max_video_seconds=0.5), "at most 0:00"),
        ("png_named_mp4", replace(LIMITS, max_image_pixels=1000), "too large"),
        ("video_8k", replace(LIMITS, max_video_frame_pixels=20_000_000), "too large"),
        ("empty", LIMITS, "is empty"),
        ("audio_only_m4a", LIMITS, "no video track"),
        ("decompression_bomb_png", LIMITS, "too large"),
        ("extreme_aspect_png", LIMITS, "too narrow or too wide"),
        ("zip_archive", LIMITS, "Accepted: images"),
    ],
)
def test_limits_give_clear_messages(
    corpus: dict[str, Path], name: str, limits: MediaLimits, words: str
) -> None:
    with pytest.raises(UserFacingError, match=words) as caught:
        load_media(corpus[name], limits)
    assert corpus[name].name in str(caught.value)


def test_wrong_kind_and_missing_files_are_explained(
    corpus: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(UserFacingError, match="is a video, not an image"):
        load_image(corpus["tiny_mp4"], LIMITS)
    with pytest.raises(UserFacingError, match="still image, not a video"):
        load_video(corpus["bmp"], LIMITS)
    with pytest.raises(UserFacingError, match="gone.png"):
        load_media(tmp_path / "gone.png", LIMITS)


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        MediaLimits(min_pixels=10_000, max_pixels=5_000)
    with pytest.raises(ValueError):
        MediaLimits(max_frames=1)
    assert MediaLimits(max_frames=2).max_frames == 2  # below min_frames: max_frames wins


@pytest.mark.parametrize(
    ("height", "width"),
    [
        (1, 1),
        (10, 1999),
        (4000, 6000),
        (480, 640),
        (1080, 1920),
        (27, 29),
        (5000, 25),
    ],
)
def test_smart_resize_matches_qwen_vl_utils(height: int, width: int) -> None:
    vision_process = pytest.importorskip("qwen_vl_utils.vision_process")
    for lo, hi in [(LIMITS.min_pixels, LIMITS.max_pixels), (128 * 784, 768 * 784)]:
        expected = vision_process.smart_resize(height, width, 28, lo, hi)
        assert smart_resize(height, width, 28, lo, hi) == expected


def test_gif_frame_that_turns_rgba_when_loaded_still_gives_rgb(
    corpus: dict[str, Path], tmp_path: Path
) -> None:
    # Found by fuzzing: with these bytes changed, frame 3's mode reads "RGB" until it is loaded,
    # then "RGBA"; the mode must be taken after loading.
    data = bytearray(corpus["animated_gif"].read_bytes())
    for offset, value in {30: 100, 302: 152, 317: 188, 333: 7}.items():
        data[offset] = value
    path = tmp_path / "flipped.gif"
    path.write_bytes(bytes(data))
    frames = load_video(path, LIMITS).frames
    assert {f.mode for f in frames} == {"RGB"}


@pytest.mark.parametrize("seed", range(4))
def test_damaged_uploads_only_raise_user_facing_errors(
    corpus: dict[str, Path], tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    names = [
        "exif_rotated_jpeg",
        "palette_transparent_png",
        "animated_gif",
        "animated_webp",
        "webp",
        "tiff",
        "tiny_mp4",
        "webm_vp9",
        "avi_mjpeg",
        "mkv_h264",
    ]
    for k in range(40):
        data = bytearray(corpus[rng.choice(names)].read_bytes())
        if rng.random() < 0.3:
            data = data[: rng.randrange(1, len(data))]
        for _ in range(rng.randint(1, 20)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        path = tmp_path / f"damaged_{k}"
        path.write_bytes(bytes(data))
        try:
            result = load_media(path, LIMITS)
        except UserFacingError as exc:
            assert path.name in str(exc)
            continue
        if isinstance(result, ImageInput):
            _assert_image(result, LIMITS)
        else:
            _assert_video(result, LIMITS)


def test_a_video_whose_title_holds_the_pdf_signature_is_a_video(tmp_path):
    import av

    path = tmp_path / "talk.mkv"
    with av.open(str(path), "w") as out:
        out.metadata["title"] = "%PDF-1.7 slides"  # pdfium would look for it in the first 1 KB
        stream = out.add_stream("libx264", rate=10, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(10):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    assert is_pdf(path), "the signature is in the file's first kilobyte"
    assert prepare(path, MediaLimits(min_frames=2, max_frames=4)).kind == "video"
