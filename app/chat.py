"""One chat turn: history + new message + options -> engine request -> growing chat messages.

Everything between the UI and the engine: validation, media loading, and turning the engine's
raw text into what the chat shows. The UI only wires this to components.
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from app.config import Settings
from app.engine import ChatRequest, Engine, GenerationOptions
from app.errors import UserFacingError
from app.grounding import display_text, draw_boxes, parse_boxes
from app.media import ImageInput, MediaLimits, VideoInput, load_media, sniff_kind
from app.messages import content_parts, conversation_messages, media_items, user_message_parts

ChatMessages = list[dict[str, Any]]
DRAWINGS = Path(tempfile.gettempdir()) / "qwen2-vl-demo" / "boxes"
# Seconds between two updates of a streaming answer: smooth to read, and a fast model's tokens
# are sent in small groups instead of one message each (the first token is sent at once).
STREAM_INTERVAL = 0.05


@dataclass(frozen=True)
class ChatOptions:
    """Per-session settings (the Settings accordion and the /chat API's extra parameters)."""

    system_prompt: str = ""
    add_vision_id: bool = True  # label "Picture N:" only when the conversation has >1 item
    generation: GenerationOptions = field(default_factory=GenerationOptions)
    media: MediaLimits = field(default_factory=MediaLimits)


def limits_from_settings(settings: Settings) -> MediaLimits:
    return replace(
        MediaLimits(),
        min_pixels=settings.min_pixels,
        max_pixels=settings.max_pixels,
        video_fps=settings.video_fps,
        max_frames=settings.max_frames,
        max_upload_bytes=int(settings.max_upload_mb * 1024 * 1024),
        max_video_seconds=settings.max_video_seconds,
    )


def notice(title: str, text: str = "", done: bool = False) -> dict[str, Any]:
    """An app message (error, statistics, queue place): shown to the user, never to the model."""
    metadata = {"title": title, "status": "done"} if done else {"title": title}
    return {"role": "assistant", "content": text, "metadata": metadata}


def format_stats(tokens: int, ttft: float | None, seconds: float) -> str:
    if not tokens or ttft is None:
        return f"{tokens} tokens"
    rate = (tokens - 1) / (seconds - ttft) if tokens > 1 and seconds > ttft else 0.0
    return f"{tokens} tokens · first token {ttft:.2f} s · {rate:.1f} tokens/s"


@functools.lru_cache(maxsize=256)
def _kind(path: str, mtime: float) -> str:
    return sniff_kind(path)


def classify(path: str) -> str:
    """Image or video, from the file's content (cached per path and modification time)."""
    try:
        return _kind(path, os.path.getmtime(path))
    except OSError:
        raise UserFacingError(
            f"The file {os.path.basename(path)} is no longer available."
        ) from None


@functools.lru_cache(maxsize=32)
def _load(path: str, mtime: float, limits: MediaLimits) -> ImageInput | VideoInput:
    return load_media(path, limits)


def load(path: str, limits: MediaLimits) -> ImageInput | VideoInput:
    """Decoded, resized media; cached so that earlier turns are not decoded again each turn."""
    try:
        return _load(path, os.path.getmtime(path), limits)
    except OSError:
        raise UserFacingError(
            f"The file {os.path.basename(path)} is no longer available."
        ) from None


def _usable(path: str, limits: MediaLimits) -> bool:
    try:
        load(path, limits)
        return True
    except UserFacingError:
        return False


def _drop_unusable_history_media(
    history: Sequence[Mapping[str, Any]], limits: MediaLimits
) -> list[Mapping[str, Any]]:
    """Earlier uploads that failed (their turn already said why) must not break later turns."""
    kept = []
    for message in history:
        parts = content_parts(message.get("content"))
        bad = [v for k, v in parts if k == "file" and not _usable(v, limits)]
        if message.get("role") == "user" and bad:
            if all(k == "file" for k, _ in parts):
                continue
            parts = [(k, v) for k, v in parts if v not in bad]
            message = {**message, "content": [{"path": v} if k == "file" else v for k, v in parts]}
        kept.append(message)
    return kept


def validate_message(message: Mapping[str, Any] | str, settings: Settings) -> None:
    parts = user_message_parts(message)
    files = [v for k, v in parts if k == "file"]
    if not parts:
        raise UserFacingError("Type a question or attach an image or video.")
    if len(files) > settings.max_files_per_turn:
        raise UserFacingError(
            f"{len(files)} files in one message; at most {settings.max_files_per_turn} are "
            "accepted (--max-files-per-turn). Send them over several turns."
        )


def build_request(
    message: Mapping[str, Any] | str,
    history: Sequence[Mapping[str, Any]],
    options: ChatOptions,
    settings: Settings,
) -> ChatRequest:
    """The engine request for a turn; bad files in this turn raise UserFacingError."""
    validate_message(message, settings)
    for kind, path in user_message_parts(message):
        if kind == "file":
            load(path, options.media)  # this turn's files: errors reach the user
    history = _drop_unusable_history_media(history, options.media)
    messages = conversation_messages(history, message, classify, options.system_prompt)
    items = media_items(messages)
    media = [load(item[item["type"]], options.media) for item in items]
    return ChatRequest(
        messages=messages,
        media=media,
        options=options.generation,
        add_vision_id=options.add_vision_id and len(items) > 1,
    )


def boxes_image(raw: str, family: str, media: Sequence[ImageInput | VideoInput]) -> str | None:
    """A PNG of the conversation's latest image with the answer's grounding boxes, if any."""
    image = next((m.image for m in reversed(media) if isinstance(m, ImageInput)), None)
    if image is None:
        return None
    boxes = parse_boxes(raw, family, image_size=image.size)  # image.size: what the model saw
    if not boxes:
        return None
    DRAWINGS.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=DRAWINGS, suffix=".png", delete=False) as out:
        draw_boxes(image, boxes).save(out, format="PNG")
    return out.name


def respond(
    engine: Engine,
    settings: Settings,
    message: Mapping[str, Any] | str,
    history: Sequence[Mapping[str, Any]],
    options: ChatOptions,
) -> Iterator[ChatMessages]:
    """Yields the growing assistant messages of one turn; raises UserFacingError on bad input.

    The engine's raw text keeps Qwen's special tokens (grounding markers); the chat shows
    `display_text` of it, plus an image with the boxes drawn once the answer is complete.
    """
    request = build_request(message, history, options, settings)
    raw, tokens, ttft, shown_at = "", 0, None, 0.0
    start = time.perf_counter()
    for delta in engine.stream(request):
        now = time.perf_counter()
        if delta.queue_position is not None and not raw:
            yield [notice(f"⏳ Waiting for the model: position {delta.queue_position} in line")]
            continue
        raw += delta.text
        tokens += delta.tokens
        if ttft is None and delta.tokens:
            ttft, shown_at = now - start, 0.0
        if now - shown_at >= STREAM_INTERVAL:  # also the heartbeat that lets Stop close us
            shown_at = now
            yield [{"role": "assistant", "content": display_text(raw)}]
    answer = [{"role": "assistant", "content": display_text(raw)}]
    drawing = boxes_image(raw, engine.family, request.media)
    if drawing:
        answer.append({"role": "assistant", "content": {"path": drawing}})
    stats = format_stats(tokens, ttft, time.perf_counter() - start)
    yield answer + [notice(stats, done=True)]
