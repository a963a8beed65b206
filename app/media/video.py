"""Videos and animated images: header facts (no decoding), then only the sampled frames decoded.

Frames are sampled like qwen-vl-utils' smart_nframes, but decoded with PyAV frame by frame:
seeking between keyframes and shrinking each sampled frame as it is decoded, so memory is
bounded by the sampled frames. The header comes from demuxing (reading packets, not decoding
them): every frame's timestamp and which are keyframes, so the frame count and the sampled
frames' times are exact before anything is decoded. Decoding has a budget (frame area x frames
decoded): a file built to make seeking expensive gets keyframes instead of exact frames.
"""

from __future__ import annotations

import bisect
import logging
import math
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
from PIL import Image

from app.errors import UserFacingError
from app.media.images import rgb_at
from app.media.sizing import (
    QWEN2_VL,
    Geometry,
    MediaLimits,
    frame_count,
    frame_size,
    sample_indices,
)
from app.media.sniff import is_animation, open_container, reading, too_large, wrong_kind

log = logging.getLogger(__name__)

GIF_DEFAULT_DELAY_MS = 100  # browsers show GIF frames with a delay of 10 ms or less for 100 ms
_ROTATION = {
    90: Image.Transpose.ROTATE_90,
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_270,
}  # display-matrix angles are counterclockwise


@dataclass(frozen=True)
class VideoHeader:
    """A video (or animated image) as its container describes it, read without decoding.

    `width` x `height` is the displayed frame size before any rotation (which only a decoded
    frame tells; it swaps the sides but never changes the cost). For a container video, `pts`
    holds every frame's timestamp and `keys` the keyframes', sorted, in `time_base` units.
    """

    width: float
    height: float
    frames: int
    duration: float
    animated: bool = False
    pts: array = field(default_factory=lambda: array("q"))
    keys: array = field(default_factory=lambda: array("q"))
    time_base: Fraction = Fraction(1)

    def seconds(self, index: int) -> float:
        """The time of frame `index` from the start of the video."""
        if self.animated or not self.pts:
            return index * self.duration / self.frames
        return float((self.pts[index] - self.pts[0]) * self.time_base)

    def keyframe_before(self, ts: int) -> int:
        i = bisect.bisect_right(self.keys, ts) - 1
        return self.keys[i] if i >= 0 else self.pts[0]


@dataclass(frozen=True)
class VideoPlan:
    """Which frames to sample and at what size: `indices` into the source's frames, ascending."""

    indices: tuple[int, ...]
    size: tuple[int, int]  # (width, height) of each sampled frame, as stored (before rotation)
    fps: float  # sampled frames per second of video
    duration: float
    times: tuple[float, ...] = ()  # the seconds of each planned frame


@dataclass(frozen=True)
class VideoInput:
    """An even number (>= 2) of same-size RGB frames sampled at `fps` from `duration` seconds;
    `timestamps` are the seconds of the frames actually decoded."""

    frames: list[Image.Image]
    fps: float
    duration: float
    timestamps: tuple[float, ...] = ()


class _SeekFailed(Exception):
    """A seek landed after its target: this file's index cannot be trusted."""


# --- headers ----------------------------------------------------------------------------------


def animation_header(im: Image.Image, name: str, limits: MediaLimits) -> VideoHeader:
    """An animated GIF/WebP/PNG's frames and timing, refused when decoding it would cost too much
    (seeking to a frame decodes every frame before it, on the whole canvas)."""
    if im.width * im.height > limits.max_image_pixels:
        raise too_large(name, f"{im.width}x{im.height} pixels", limits.max_image_pixels)
    total = getattr(im, "n_frames", 1)
    if im.width * im.height * total > limits.max_animation_pixels:
        raise UserFacingError(
            f"'{name}' is too large an animation ({im.width}x{im.height} pixels, {total} "
            f"frames); at most {limits.max_animation_pixels / 1e6:.0f} megapixels in all."
        )
    delay_ms = im.info.get("duration") or 0
    fps = 1000 / (delay_ms if delay_ms > 10 else GIF_DEFAULT_DELAY_MS)
    duration = total / fps
    check_duration(duration, name, limits)
    return VideoHeader(im.width, im.height, total, duration, animated=True)


def container_header(path: Path, name: str, limits: MediaLimits) -> VideoHeader:
    """Probe and index (demux only) a video file."""
    try:
        container = open_container(path)
    except Exception:
        raise wrong_kind(path, name, "a video") from None
    with container, reading(name, "a video"):
        stream = video_stream(container, name, limits)
        pts, keys = _scan(container, stream, name, limits)
        total = len(pts)
        time_base = _time_base(stream)
        span = Fraction(pts[-1] - pts[0]) * time_base
        rate = stream.average_rate or stream.guessed_rate
        if not rate or not 0 < rate < 1000:  # missing or absurd metadata: trust the timestamps
            rate = Fraction(total - 1) / span if span > 0 else Fraction(1)
        duration = span + 1 / Fraction(rate)
        width = stream.codec_context.width * float(stream.sample_aspect_ratio or 1)
        return VideoHeader(
            width,
            stream.codec_context.height,
            total,
            float(duration),
            pts=pts,
            keys=keys,
            time_base=time_base,
        )


def _time_base(stream: av.video.stream.VideoStream) -> Fraction:
    """The stream's time base (FFmpeg always sets one for a stream it demuxes)."""
    return Fraction(stream.time_base) if stream.time_base else Fraction(1, 90_000)


def video_stream(
    container: av.container.InputContainer, name: str, limits: MediaLimits
) -> av.video.stream.VideoStream:
    """The first video stream, checked against the limits it declares."""
    if not container.streams.video:
        raise UserFacingError(f"'{name}' has no video track (audio alone is not supported).")
    stream = container.streams.video[0]
    area = stream.codec_context.width * stream.codec_context.height
    if area > limits.max_video_frame_pixels:
        raise UserFacingError(
            f"'{name}' has frames too large to decode ({stream.codec_context.width}x"
            f"{stream.codec_context.height}); the limit is "
            f"{limits.max_video_frame_pixels / 1e6:.0f} megapixels."
        )
    if stream.duration and stream.time_base:
        check_duration(float(stream.duration * _time_base(stream)), name, limits)
    elif container.duration:
        check_duration(container.duration / av.time_base, name, limits)
    # Frame threads each hold frames in flight: many for small frames, few for huge ones.
    stream.thread_type = "AUTO"
    stream.codec_context.thread_count = 0 if area <= 2_100_000 else 2 if area <= 9_000_000 else 1
    return stream


def check_duration(seconds: float, name: str, limits: MediaLimits) -> None:
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
) -> tuple[array, array]:
    """Every frame's timestamp and the keyframes', sorted, by demuxing the whole stream."""
    pts, keys = array("q"), array("q")
    time_base = _time_base(stream)
    longest = limits.max_video_seconds / time_base
    for packet in _packets(container, stream):
        ts = packet.pts if packet.pts is not None else packet.dts
        if ts is None or packet.size == 0:
            continue
        if pts and ts - pts[0] > longest:  # the header did not say, or said less
            check_duration(float((ts - pts[0]) * time_base), name, limits)
        pts.append(ts)
        if len(pts) > limits.max_video_frames:
            raise UserFacingError(
                f"'{name}' has more than {limits.max_video_frames} frames; "
                "send a shorter video or one with a lower frame rate."
            )
        if packet.is_keyframe:
            keys.append(ts)
    if not pts:
        raise UserFacingError(f"'{name}' contains no video frames.")
    return array("q", sorted(pts)), array("q", sorted(keys))


# --- the plan: which frames, at what size (no decoding) ---------------------------------------


def plan_video(
    header: VideoHeader, limits: MediaLimits, name: str, geometry: Geometry = QWEN2_VL
) -> VideoPlan:
    """smart_nframes' count, evenly spaced over the frame indices; the total pixels shared."""
    n = frame_count(header.frames, header.duration, limits, geometry)
    size = frame_size(header.width, header.height, n, limits, name, geometry)
    indices = tuple(sample_indices(header.frames, n))
    times = tuple(header.seconds(i) for i in indices)
    return VideoPlan(indices, size, n / header.duration, header.duration, times)


# --- decoding ---------------------------------------------------------------------------------


def decode_animation(
    im: Image.Image, plan: VideoPlan, header: VideoHeader, name: str
) -> VideoInput:
    """The planned frames of an animated GIF/WebP/PNG."""
    if not is_animation(im):
        raise UserFacingError(f"'{name}' is a still image, not a video.")
    frames: list[Image.Image] = []
    times: list[float] = []
    last = -1
    with reading(name, "an animated image"):
        for i in plan.indices:
            if frames and i == last:
                frames.append(frames[-1])
                times.append(times[-1])
                continue
            try:
                im.seek(i)
                frames.append(rgb_at(im, plan.size, source=im))
            except (EOFError, OSError):  # truncated animation: keep the frames before the damage
                break
            times.append(header.seconds(i))
            last = i
    return _video_input(frames, times, plan, name)


def decode_container(path: Path, plan: VideoPlan, header: VideoHeader, name: str,
                     limits: MediaLimits) -> VideoInput:  # fmt: skip
    """Decode just the planned frames, seeking; one sequential pass if seeking misbehaves."""
    targets = [header.pts[i] for i in plan.indices]
    budget = _Budget(limits.max_decode_pixels)
    with reading(name, "a video"):
        with open_container(path) as container:
            stream = video_stream(container, name, limits)
            try:
                sampled = _sample(container, stream, header, targets, plan, budget, seek=True)
            except _SeekFailed:
                sampled = None
        if sampled is None:  # one sequential pass from the start, keeping only the sampled frames
            with open_container(path) as container:
                stream = video_stream(container, name, limits)
                sampled = _sample(container, stream, header, targets, plan, budget, seek=False)
    if budget.coarse:
        log.info("%s: decoding budget spent, later samples are keyframes", name)
    frames = [image for image, _ in sampled]
    times = [float((pts - header.pts[0]) * header.time_base) for _, pts in sampled]
    return _video_input(frames, times, plan, name)


def _video_input(
    frames: list[Image.Image], times: list[float], plan: VideoPlan, name: str
) -> VideoInput:
    """Pad frames lost to a damaged tail with the last good one, so the count stays planned."""
    if not frames:
        raise UserFacingError(f"'{name}' contains no video frames that could be decoded.")
    missing = len(plan.indices) - len(frames)
    frames = frames + [frames[-1]] * missing
    times = times + [times[-1]] * missing
    return VideoInput(frames, fps=plan.fps, duration=plan.duration, timestamps=tuple(times))


@dataclass
class _Budget:
    """Pixels decoded so far for one video; once past the limit, sampling turns coarse."""

    limit: int
    spent: int = 0
    coarse: bool = False  # past the limit: each remaining sample is the keyframe before it


class _BudgetSpent(Exception):
    """Decoding on to the next sampled frame would pass the video's decoding budget."""


def _decode(packet: av.Packet) -> list[av.VideoFrame]:
    """Decode one packet; a corrupt packet costs its frames, not the whole video."""
    try:
        return packet.decode()
    except av.FFmpegError:
        return []


def _frames(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, budget: _Budget
) -> Iterator[tuple[int, av.VideoFrame]]:
    """(timestamp, frame) of each decoded frame that has a timestamp."""
    for packet in _packets(container, stream):
        for frame in _decode(packet):
            budget.spent += frame.width * frame.height
            if budget.spent > budget.limit and not budget.coarse:
                raise _BudgetSpent
            if frame.pts is not None:
                yield frame.pts, frame


def _sample(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    header: VideoHeader,
    targets: list[int],
    plan: VideoPlan,
    budget: _Budget,
    seek: bool,
) -> list[tuple[Image.Image, int]]:
    """For each target, the first frame at or after it, seeking when a keyframe lies between.

    Once the decoding budget is spent, each remaining target takes the keyframe before it
    (about one decode each), or repeats the previous frame when that keyframe was already
    sampled; a sequential pass (no seeking) just stops, and the last frame is repeated.
    """
    sampled: list[tuple[Image.Image, int]] = []
    frames = _frames(container, stream, budget) if not seek else iter(())
    cursor: float = -math.inf
    transpose: Image.Transpose | None = None
    for target in targets:
        key = header.keyframe_before(target)
        if sampled and (target <= cursor or budget.coarse and key <= cursor):
            sampled.append(sampled[-1])  # a frame sampled twice (short clips, or coarse)
            continue
        try:
            if seek and (key > cursor or budget.coarse):  # jump instead of decoding past a key
                container.seek(key, stream=stream, backward=True)
                frames = _checked_after_seek(_frames(container, stream, budget), target)
            wanted = key if budget.coarse else target
            found = next((f for f in frames if f[0] >= wanted), None)
        except _BudgetSpent:
            if not seek:
                break
            budget.coarse = True
            container.seek(key, stream=stream, backward=True)
            found = next((f for f in _frames(container, stream, budget) if f[0] >= key), None)
        if found is None:
            break
        pts, frame = found
        if not sampled:
            transpose = _ROTATION.get(round((frame.rotation or 0) / 90) * 90 % 360)
        sampled.append((_to_image(frame, plan.size, transpose), pts))
        cursor = pts
    return sampled


def _checked_after_seek(
    frames: Iterator[tuple[int, av.VideoFrame]], target: int
) -> Iterator[tuple[int, av.VideoFrame]]:
    """Frames after a seek, raising _SeekFailed if the first one is already past the target."""
    first = next(frames, None)
    if first is None or first[0] > target:
        raise _SeekFailed
    yield first
    yield from frames


def _to_image(
    frame: av.VideoFrame, size: tuple[int, int], transpose: Image.Transpose | None
) -> Image.Image:
    """Scale while converting (swscale), so only the small image outlives the decoded frame.

    `size` is in the stored orientation (the header's); the rotation is applied after.
    """
    image = frame.to_image(width=size[0], height=size[1], interpolation="AREA")
    return image.transpose(transpose) if transpose is not None else image
