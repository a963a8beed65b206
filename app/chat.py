"""One chat turn: history + new message + options -> engine request -> growing chat messages.

Everything between the UI and the engine: validation, media loading, the token budget
(app.budget: oldest turns left out beyond --max-context), turning the engine's raw text into
what the chat shows, and one `app.requests` log line per turn (app.requestlog). The UI only
wires this to components. Gradio runs `respond` (a sync generator) in a worker thread, so
decoding uploads here never blocks the event loop or other users.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from app.budget import CountTokens, fit
from app.config import Settings
from app.engine import ChatRequest, Delta, Engine, GenerationOptions
from app.errors import UserFacingError
from app.grounding import display_text, draw_boxes, parse_boxes
from app.media import ImageInput, MediaLimits, VideoInput, load_media, sniff_kind
from app.messages import (
    content_parts,
    conversation_messages,
    is_notice,
    media_items,
    user_message_parts,
)
from app.requestlog import (
    LOGGER,
    RequestLog,
    anonymous_id,
    format_line,
    outcome_of,
    tokens_per_second,
)
from app.scratch import new_folder

ChatMessages = list[dict[str, Any]]
DRAWING_MIN_SIDE = 640  # pixels: smaller images are enlarged before their boxes are drawn
# Seconds between two updates of a streaming answer: smooth to read, and a fast model's tokens
# are sent in small groups instead of one message each (the first token is sent at once).
STREAM_INTERVAL = 0.05
request_log = logging.getLogger(LOGGER)


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
    """The answer's statistics line; times are seconds since the request arrived."""
    if not tokens or ttft is None:
        return f"{tokens} tokens"
    rate = tokens_per_second(tokens, ttft, seconds) or 0.0
    return f"{tokens} tokens · first token {ttft:.2f} s · {rate:.1f} tokens/s"


def answer_text(shown: ChatMessages) -> str:
    """The answer's text in the chat messages of a turn (no notices, no drawn images)."""
    return "".join(
        m["content"] for m in shown if not is_notice(m) and isinstance(m["content"], str)
    )


def waiting_notice(position: int, seconds: float | None) -> dict[str, Any]:
    """The place in the model's queue, with the engine's estimate of the wait once it has one."""
    estimate = f" (about {max(1, round(seconds))} s)" if seconds is not None else ""
    return notice(f"⏳ Waiting for the model: position {position} in line{estimate}")


def left_out_notice(turns: int, max_context: int) -> dict[str, Any]:
    """Shown before an answer for which the oldest turns did not fit in the context."""
    plural = "s" if turns > 1 else ""
    return notice(
        f"✂️ {turns} earlier turn{plural} left out",
        f"The conversation no longer fits in the model's context ({max_context} tokens, "
        f"room for the answer included), so the model did not see the {turns} oldest "
        f"turn{plural}. Clear the chat to start afresh.",
        done=True,
    )


@functools.lru_cache(maxsize=256)
def _kind(path: str, mtime: float) -> str:
    return sniff_kind(path)


def _mtime(path: str) -> float:
    """The file's modification time (half of the caches' key); a vanished file is a message."""
    try:
        return os.path.getmtime(path)
    except OSError:
        raise UserFacingError(
            f"The file {os.path.basename(path)} is no longer available."
        ) from None


def classify(path: str) -> str:
    """Image or video, from the file's content (cached per path and modification time)."""
    return _kind(path, _mtime(path))


@functools.lru_cache(maxsize=32)
def _load(path: str, mtime: float, limits: MediaLimits) -> ImageInput | VideoInput:
    return load_media(path, limits)


def load(path: str, limits: MediaLimits) -> ImageInput | VideoInput:
    """Decoded, resized media; cached so that earlier turns are not decoded again each turn."""
    return _load(path, _mtime(path), limits)


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


@dataclass(frozen=True)
class Turn:
    """A request ready for the engine, and what the token budget made of the conversation."""

    request: ChatRequest
    prompt_tokens: int
    turns_left_out: int


def build_request(
    message: Mapping[str, Any] | str,
    history: Sequence[Mapping[str, Any]],
    options: ChatOptions,
    settings: Settings,
    count_tokens: CountTokens,
    session_id: str = "",
) -> Turn:
    """The engine request for a turn, oldest turns left out to fit --max-context.

    Bad files in this turn, or a turn too large on its own, raise UserFacingError.
    """
    validate_message(message, settings)
    for kind, path in user_message_parts(message):
        if kind == "file":
            load(path, options.media)  # this turn's files: errors reach the user
    history = _drop_unusable_history_media(history, options.media)
    messages = conversation_messages(history, message, classify, options.system_prompt)
    media = [load(item[item["type"]], options.media) for item in media_items(messages)]
    vision_id = options.add_vision_id and len(media) > 1  # numbering all: an upper bound
    fitted = fit(
        messages,
        media,
        count_tokens,
        settings.max_context,
        options.generation.max_new_tokens,
        vision_id,
    )
    request = ChatRequest(
        messages=fitted.messages,
        media=fitted.media,
        options=options.generation,
        add_vision_id=options.add_vision_id and len(fitted.media) > 1,
        session_id=session_id,
    )
    return Turn(request, fitted.tokens, fitted.turns_left_out)


def boxes_image(raw: str, family: str, media: Sequence[ImageInput | VideoInput]) -> str | None:
    """A PNG of the conversation's latest image with the answer's grounding boxes, if any."""
    image = next((m.image for m in reversed(media) if isinstance(m, ImageInput)), None)
    if image is None:
        return None
    boxes = parse_boxes(raw, family, image_size=image.size)  # image.size: what the model saw
    if not boxes:
        return None
    scale = DRAWING_MIN_SIDE / min(image.size)
    if scale > 1:  # boxes are relative: draw on a larger copy, so lines and labels stay legible
        image = image.resize((round(image.width * scale), round(image.height * scale)))
    path = new_folder("boxes") / "boxes.png"
    draw_boxes(image, boxes).save(path, format="PNG")
    return str(path)


@dataclass
class _Progress:
    """How far one turn got (time.perf_counter values), for its statistics and its log line."""

    started: float = field(default_factory=time.perf_counter)
    prepared: float | None = None  # the request was built and handed to the engine
    engine_started: float | None = None  # the engine no longer reports a place in its queue
    first_token: float | None = None
    raw: str = ""
    tokens: int = 0

    def add(self, delta: Delta, now: float) -> None:
        if self.engine_started is None:
            self.engine_started = now
        self.raw += delta.text
        self.tokens += delta.tokens
        if self.first_token is None and delta.tokens:
            self.first_token = now

    def since_start(self, moment: float | None) -> float | None:
        return None if moment is None else moment - self.started


def respond(
    engine: Engine,
    settings: Settings,
    message: Mapping[str, Any] | str,
    history: Sequence[Mapping[str, Any]],
    options: ChatOptions,
    *,
    session_id: str = "",
) -> Iterator[ChatMessages]:
    """Yields the growing assistant messages of one turn; raises UserFacingError on bad input.

    `session_id` is Gradio's session hash; only a keyed hash of it is kept or logged. One line
    goes to the `app.requests` log however the turn ends (stop and disconnect included).
    """
    session = anonymous_id(session_id)
    progress = _Progress()
    turn: Turn | None = None
    error: BaseException | None = None
    try:
        turn = build_request(message, history, options, settings, engine.count_tokens, session)
        progress.prepared = time.perf_counter()
        left_out = turn.turns_left_out
        lead = [left_out_notice(left_out, settings.max_context)] if left_out else []
        yield from _answer(engine, turn, progress, lead)
    except BaseException as exc:  # GeneratorExit included: the user stopped or left
        error = exc
        raise
    finally:
        entry = _log_entry(session, progress, turn, error)
        if settings.log_content:
            entry = replace(entry, message=_message_text(message), answer=progress.raw)
        request_log.info(format_line(entry))


def _answer(
    engine: Engine, turn: Turn, progress: _Progress, lead: ChatMessages
) -> Iterator[ChatMessages]:
    """The engine's answer as growing chat messages after `lead`, then with its statistics.

    The engine's raw text keeps Qwen's special tokens (grounding markers); the chat shows
    `display_text` of it, plus an image with the boxes drawn once the answer is complete.
    """
    shown_at = 0.0
    for delta in engine.stream(turn.request):
        now = time.perf_counter()
        if delta.queue_position is not None and not progress.raw:
            yield [*lead, waiting_notice(delta.queue_position, delta.wait_seconds)]
            continue
        if progress.first_token is None and delta.tokens:
            shown_at = 0.0  # the first token is shown at once
        progress.add(delta, now)
        if now - shown_at >= STREAM_INTERVAL:  # also the heartbeat that lets Stop close us
            shown_at = now
            yield [*lead, {"role": "assistant", "content": display_text(progress.raw)}]
    answer = [{"role": "assistant", "content": display_text(progress.raw)}]
    drawing = boxes_image(progress.raw, engine.family, turn.request.media)
    if drawing:
        answer.append({"role": "assistant", "content": {"path": drawing}})
    ttft = progress.since_start(progress.first_token)
    stats = format_stats(progress.tokens, ttft, time.perf_counter() - progress.started)
    yield [*lead, *answer, notice(stats, done=True)]


def _log_entry(
    session: str, progress: _Progress, turn: Turn | None, error: BaseException | None
) -> RequestLog:
    """The request's log line (without content) from how far it got."""
    now = time.perf_counter()
    media = turn.request.media if turn else ()
    waited = (
        progress.engine_started - progress.prepared
        if progress.engine_started is not None and progress.prepared is not None
        else None
    )
    return RequestLog(
        session=session,
        outcome=outcome_of(error, engine_asked=turn is not None),
        prompt_tokens=turn.prompt_tokens if turn else None,
        generated_tokens=progress.tokens,
        queue_wait_s=waited,
        ttft_s=progress.since_start(progress.first_token),
        tokens_per_s=tokens_per_second(progress.tokens, progress.first_token, now),
        prepare_s=progress.since_start(progress.prepared),
        total_s=now - progress.started,
        images=sum(isinstance(item, ImageInput) for item in media),
        videos=sum(isinstance(item, VideoInput) for item in media),
        turns_left_out=turn.turns_left_out if turn else 0,
    )


def _message_text(message: Mapping[str, Any] | str) -> str:
    return "\n".join(value for kind, value in user_message_parts(message) if kind == "text")
