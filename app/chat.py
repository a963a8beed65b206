"""One chat turn: history + new message + options -> engine request -> growing answer.

Everything between the UI and the engine: validation, the media objects (`app.media.prepare`:
headers only), the token budget (`app.budget`: oldest turns left out beyond --max-context,
before anything is decoded), the fair-use checks (`app.admission`), turning the engine's raw
text into what the chat shows, and one `app.requests` log line per turn (`app.requestlog`).
`answer` yields `Update`s (the API reads them); `respond` shows them as chat messages, with
errors as notices. Gradio runs both (sync generators) in worker threads, so decoding uploads
here never blocks the event loop or other users.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from app.admission import Abandoned, Admission, Caller
from app.budget import fit, trim_pages
from app.config import Settings
from app.engine import ChatRequest, Delta, Engine
from app.errors import UserFacingError
from app.feedback import Ratings
from app.grounding import Grounding, display_text, drawing, locate
from app.lru import Lru
from app.media import Document, Media, by_document, prepare
from app.messages import (
    REASONING_ICON,
    attach_media,
    conversation_messages,
    is_notice,
    media_of,
    template_token_filter,
    user_message_parts,
)
from app.options import ChatOptions, chat_options
from app.requestlog import (
    LOGGER,
    RequestLog,
    anonymous_id,
    client_scope,
    format_line,
    new_request_id,
    outcome_of,
    tokens_per_second,
)
from app.scratch import new_folder
from app.thinking import Split, split_reasoning

ChatMessages = list[dict[str, Any]]
# Seconds between two updates of a streaming answer: smooth to read, and a fast model's tokens
# are sent in small groups instead of one message each (the first token is sent at once).
STREAM_INTERVAL = 0.05
ERROR_TITLE = "⚠️ Could not answer"
CUT_OFF_TITLE = "✂️ The answer ran out of tokens while still thinking"
CUT_OFF_ADVICE = (
    "The model used all its 'Max new tokens' on reasoning and did not get to the answer. "
    "Raise 'Max new tokens' in the settings (thinking models often need thousands), or turn "
    "thinking off where the model allows it."
)
HISTORY_FORM = (
    'The history must be a list of messages such as [{"role": "user", "content": "Hi"}, '
    '{"role": "assistant", "content": "Hello!"}]; content may also be a list of parts: '
    '{"type": "text", "text": ...} or {"type": "file", "file": handle_file(...)}.'
)
request_log = logging.getLogger(LOGGER)


def notice(title: str, text: str = "", done: bool = False, pending: bool = False) -> dict[str, Any]:
    """An app message (error, statistics, queue place, reasoning): shown to the user, never to
    the model. `done` shows it closed, `pending` open with a spinner."""
    metadata: dict[str, Any] = {"title": title}
    if done or pending:
        metadata["status"] = "done" if done else "pending"
    return {"role": "assistant", "content": text, "metadata": metadata}


def format_stats(
    tokens: int, ttft: float | None, seconds: float, prompt: int = 0, cached: int | None = None
) -> str:
    """The answer's statistics line; times are seconds since the request arrived. `cached` is
    how many of the `prompt` tokens came from the conversation's kept cache."""
    reuse = f" · {cached} of {prompt} prompt tokens cached" if cached else ""
    if not tokens or ttft is None:
        return f"{tokens} tokens{reuse}"
    rate = tokens_per_second(tokens, ttft, seconds) or 0.0
    return f"{tokens} tokens · first token {ttft:.2f} s · {rate:.1f} tokens/s{reuse}"


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
        f"room for the answer included, at most the newest images and videos), so the model "
        f"did not see the {turns} oldest turn{plural}. Clear the chat to start afresh.",
        done=True,
    )


def pages_left_out_notice(pages: Sequence[Media]) -> dict[str, Any]:
    """Shown before an answer for which a document's last pages did not fit."""
    named = "; ".join(
        f"{page_ranges([page.page or 0 for page in document])} of {document[0].name}"
        for document in by_document(pages)
    )
    return notice(
        f"📄 Left out: {named}",
        "They do not fit in the model's context with the rest of this message, so the model "
        "did not see them. Choose the pages to read with the 'PDF pages' setting (e.g. 5-12), "
        "or lower 'Image max pixels' to fit more pages at a lower resolution.",
        done=True,
    )


def page_ranges(numbers: Sequence[int]) -> str:
    """1, 2, 3, 5, 7, 8 → "pages 1–3, 5, 7–8"."""
    runs: list[list[int]] = []
    for number in numbers:
        if runs and number == runs[-1][-1] + 1:
            runs[-1].append(number)
        else:
            runs.append([number])
    shown = ", ".join(f"{r[0]}–{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)
    return f"{'pages' if len(numbers) > 1 else 'page'} {shown}"


def validate_message(message: Mapping[str, Any] | str, settings: Settings) -> None:
    if not isinstance(message, str | Mapping):
        raise UserFacingError(
            'The message must be text or {"text": "...", "files": [...]}; '
            f"got {type(message).__name__}."
        )
    parts = user_message_parts(message)
    files = [v for k, v in parts if k == "file"]
    if not parts:
        raise UserFacingError("Type a question or attach an image or video.")
    if len(files) > settings.max_files_per_turn:
        raise UserFacingError(
            f"{len(files)} files in one message; at most {settings.max_files_per_turn} are "
            "accepted (--max-files-per-turn). Send them over several turns."
        )


class Answers:
    """The model's own text of recent answers, per client (a bounded LRU).

    The history holds what the chat showed (grounding markers hidden, reasoning apart); the
    next prompt gets what the model wrote, so that it sees its own boxes and the conversation's
    kept KV cache covers the answer too. A reloaded page or an imported conversation of the
    same client finds them; after a restart (or for another client) the shown text is sent.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self._raw = Lru(capacity)  # (client, shown text) -> the model's own text

    def keep(self, scope: str, shown: str, raw: str) -> None:
        if scope and shown != raw:
            self._raw.put((scope, shown), raw)

    def restore(self, scope: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The messages with each assistant text the model's own, where it is known."""
        return [
            {**m, "content": self._raw.get((scope, m["content"]), m["content"])}
            if m["role"] == "assistant" and isinstance(m["content"], str)
            else m
            for m in messages
        ]


class PageChoices:
    """The 'PDF pages' value each turn's document was sent with, per client (a bounded LRU).

    A later turn reads the same pages of an earlier turn's PDF whatever the setting says now,
    so an earlier turn never changes (what the model saw, and the kept KV cache of it). Keyed
    by the client, the upload's path and the turn's place among the user turns (a turn edited
    or sent again records its new choice). Unknown (an import, a restart): every page, within
    the token budget.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self._chosen = Lru(capacity)  # (client, upload path, user turn) -> 'PDF pages'

    def keep(self, scope: str, path: str, turn: int, pages: str) -> None:
        self._chosen.put((scope, path, turn), pages)

    def chosen(self, scope: str, path: str, turn: int) -> str:
        return str(self._chosen.get((scope, path, turn), ""))


@dataclass
class Shared:
    """What the turns of all sessions share: the fair-use counts, the answers' own text, the
    pages chosen of each document, and which answers each client may rate."""

    admission: Admission
    answers: Answers = field(default_factory=Answers)
    pages: PageChoices = field(default_factory=PageChoices)
    ratings: Ratings = field(default_factory=Ratings)


@dataclass(frozen=True)
class Turn:
    """A request ready for the engine, and what the token budget made of the conversation."""

    request: ChatRequest
    prompt_tokens: int
    turns_left_out: int
    pages_left_out: tuple[Media, ...] = ()  # the current turn's document pages that did not fit

    @property
    def media(self) -> list[Media]:
        return media_of(self.request.messages)


def build_request(
    message: Mapping[str, Any] | str,
    history: Sequence[Mapping[str, Any]],
    options: ChatOptions,
    settings: Settings,
    engine: Engine,
    client: str = "",
    shared: Shared | None = None,
) -> Turn:
    """The engine request for a turn, oldest turns left out to fit --max-context.

    Every file becomes a media object from its header alone; only the turns that fit are ever
    decoded (by the engine). Bad files in this turn, a file outside the trust rule anywhere, or
    a turn too large on its own raise UserFacingError. The 'PDF pages' setting applies to this
    turn's documents; an earlier turn's keep the pages they were sent with (`PageChoices`).
    """
    validate_message(message, settings)
    clean = template_token_filter(engine.template_tokens)
    messages = conversation_messages(history, message, options.system_prompt, clean)
    if shared is not None:
        messages = shared.answers.restore(client, messages)

    def open_file(path: str, turn: int, current: bool) -> Media | Document:
        pages = options.media.pdf_pages
        if shared is not None and current:
            shared.pages.keep(client, path, turn, pages)
        elif shared is not None:
            pages = shared.pages.chosen(client, path, turn)
        limits = replace(options.media, pdf_pages=pages)
        return prepare(path, limits, engine.geometry, scope=client)

    messages = attach_media(messages, open_file)
    room = settings.max_context - options.generation.max_new_tokens
    trimmed = trim_pages(
        messages,
        engine.count_tokens,
        room,
        options.add_vision_id,
        settings.max_media,
        engine.prompt_format,
    )
    fitted = fit(
        trimmed.messages,
        engine.count_tokens,
        settings.max_context,
        options.generation.max_new_tokens,
        options.add_vision_id,
        settings.max_media,
        engine.prompt_format,
    )
    request = ChatRequest(
        messages=fitted.messages,
        options=options.generation,
        add_vision_id=options.add_vision_id,
        client=client,
        enable_thinking=options.enable_thinking,
    )
    return Turn(request, fitted.tokens, fitted.turns_left_out, trimmed.pages_left_out)


@dataclass(frozen=True)
class Update:
    """One turn's answer so far: the notices before it, the raw and the shown text; once
    `done`, its statistics and grounding (boxes, and the drawn image's path)."""

    lead: tuple[dict[str, Any], ...] = ()
    raw: str = ""
    done: bool = False
    stats: str = ""
    grounding: Grounding | None = None
    drawing: str | None = None
    opened: bool = False  # the prompt opened a <think> block (a thinking model)
    thought_seconds: float | None = None  # how long the reasoning took (or has taken so far)
    trailer: tuple[dict[str, Any], ...] = ()  # notices after the answer (cut off while thinking)
    request_id: str = ""  # on every message of the answer, for its rating (app.feedback)

    @property
    def split(self) -> Split:
        return split_reasoning(self.raw, self.opened)

    @property
    def text(self) -> str:
        """The answer as the chat shows it (the reasoning apart)."""
        return display_text(self.split.answer)

    def reasoning_message(self) -> dict[str, Any] | None:
        """The reasoning as a collapsible block: open while it streams, closed once done."""
        split = self.split
        if split.reasoning is None:
            return None
        seconds = round(self.thought_seconds or 0)
        if split.thinking and not self.done:
            return notice(f"{REASONING_ICON} Thinking… {seconds} s", split.reasoning, pending=True)
        return notice(f"{REASONING_ICON} Thought for {seconds} s", split.reasoning, done=True)

    def details(self) -> dict[str, Any]:
        """The update as data (the /chat_details API): boxes in the original image's pixels."""
        found = self.grounding
        return {
            "id": self.request_id,
            "text": self.text,
            "raw": self.raw,
            "done": self.done,
            "stats": self.stats,
            "reasoning": self.split.reasoning,
            "notices": [m["metadata"]["title"] for m in (*self.lead, *self.trailer)],
            "grounding": None
            if found is None
            else {
                "image": found.image,
                "name": found.name,
                "size": list(found.size),
                "boxes": found.pixel_boxes(),
            },
        }

    def messages(self) -> ChatMessages:
        """The update as the chatbot shows it."""
        shown: ChatMessages = list(self.lead)
        reasoning = self.reasoning_message()
        if reasoning:
            shown.append(reasoning)
        if self.text or self.done and not reasoning:
            shown.append({"role": "assistant", "content": self.text})
        if self.drawing:
            shown.append({"role": "assistant", "content": {"path": self.drawing}})
        shown.extend(self.trailer)
        if self.done:
            shown.append(notice(self.stats, done=True))
        if not self.request_id:
            return shown
        return [{**m, "metadata": {**m.get("metadata", {}), "id": self.request_id}} for m in shown]


@dataclass
class _Progress:
    """How far one turn got (time.perf_counter values), for its statistics and its log line."""

    started: float = field(default_factory=time.perf_counter)
    request_id: str = field(default_factory=new_request_id)
    prepared: float | None = None  # the request was built and handed to the engine
    engine_started: float | None = None  # the engine no longer reports a place in its queue
    first_token: float | None = None
    raw: str = ""
    tokens: int = 0
    cached_tokens: int | None = None  # prompt tokens from a kept cache (None: not known)
    thought_until: float | None = None  # when the reasoning ended (None: still thinking)

    def thought(self, now: float) -> float | None:
        """Seconds of reasoning so far (from the first token)."""
        if self.first_token is None:
            return None
        return (self.thought_until or now) - self.first_token

    def add(self, delta: Delta, now: float) -> None:
        if self.engine_started is None:
            self.engine_started = now
        self.raw += delta.text
        self.tokens += delta.tokens
        if delta.cached_tokens is not None:
            self.cached_tokens = delta.cached_tokens
        if self.first_token is None and delta.tokens:
            self.first_token = now

    def since_start(self, moment: float | None) -> float | None:
        return None if moment is None else moment - self.started


def answer(
    engine: Engine,
    settings: Settings,
    message: Mapping[str, Any] | str,
    history: Sequence[Mapping[str, Any]],
    options: ChatOptions | Mapping[str, Any],
    *,
    caller: Caller = Caller(),
    shared: Shared | None = None,
) -> Iterator[Update]:
    """Yields the growing answer to `message` after `history`; raises UserFacingError.

    `options` may be a client's raw settings (by `app.options` name), checked here. One line
    goes to the `app.requests` log however the turn ends (stop and disconnect included); only
    keyed hashes of the session and the client are kept or logged.
    """
    progress = _Progress()
    turn: Turn | None = None
    error: BaseException | None = None
    scope = client_scope(caller.client)
    try:
        if not isinstance(options, ChatOptions):
            thinks = engine.prompt_format.thinks
            options = chat_options(options, settings, engine.generation_defaults, thinks)
        if not isinstance(history, list):
            raise UserFacingError(HISTORY_FORM)
        admitted = shared.admission.enter(caller) if shared else contextlib.nullcontext()
        with admitted:
            turn = build_request(message, history, options, settings, engine, scope, shared)
            if shared:  # only a request that will be answered can be rated
                shared.ratings.issue(progress.request_id, scope)
            progress.prepared = time.perf_counter()
            left_out = turn.turns_left_out
            lead = (
                *([left_out_notice(left_out, settings.max_context)] if left_out else []),
                *([pages_left_out_notice(turn.pages_left_out)] if turn.pages_left_out else []),
            )
            for update in _stream(engine, turn, progress, lead):
                if update.done and shared is not None:
                    clean = template_token_filter(engine.template_tokens)
                    shared.answers.keep(scope, update.text, clean(update.raw))
                yield update
    except BaseException as exc:  # GeneratorExit included: the user stopped or left
        error = exc
        raise
    finally:
        entry = _log_entry(anonymous_id(caller.session), progress, turn, error)
        if settings.log_content:
            entry = replace(entry, message=_message_text(message), answer=progress.raw)
            if shared:
                shared.ratings.issue(progress.request_id, scope, progress.raw)
        request_log.info(format_line(entry))


def respond(
    engine: Engine,
    settings: Settings,
    message: Mapping[str, Any] | str,
    history: Sequence[Mapping[str, Any]],
    options: ChatOptions | Mapping[str, Any],
    *,
    caller: Caller = Caller(),
    shared: Shared | None = None,
) -> Iterator[ChatMessages]:
    """The growing answer as chat messages; bad input ends it with an error notice."""
    shown: ChatMessages = []
    try:
        for update in answer(
            engine, settings, message, history, options, caller=caller, shared=shared
        ):
            shown = update.messages()
            yield shown
    except UserFacingError as exc:
        yield [m for m in shown if not is_notice(m)] + [notice(ERROR_TITLE, str(exc))]
    except Abandoned:
        return  # nobody reads this answer: there is no one to tell


def _stream(
    engine: Engine, turn: Turn, progress: _Progress, lead: tuple[dict[str, Any], ...]
) -> Iterator[Update]:
    """The engine's answer as Updates after `lead`, then the finished one.

    The engine's raw text keeps Qwen's special tokens (grounding markers) and the reasoning of a
    thinking model; the chat shows the reasoning in its own block and `display_text` of the
    answer, plus an image with the boxes drawn once the answer is complete.
    """
    template = engine.prompt_format
    opened = template.thinks and (turn.request.enable_thinking or not template.thinking_switch)
    shown_at = 0.0
    rid = progress.request_id
    for delta in engine.stream(turn.request):
        now = time.perf_counter()
        if delta.queue_position is not None and not progress.raw:
            place = waiting_notice(delta.queue_position, delta.wait_seconds)
            yield Update(lead=(*lead, place), request_id=rid)
            continue
        if progress.first_token is None and delta.tokens:
            shown_at = 0.0  # the first token is shown at once
        progress.add(delta, now)
        if progress.thought_until is None and not split_reasoning(progress.raw, opened).thinking:
            progress.thought_until = now
        if now - shown_at >= STREAM_INTERVAL:  # also the heartbeat that lets Stop close us
            shown_at = now
            seconds = progress.thought(now)
            yield Update(lead, progress.raw, opened=opened, thought_seconds=seconds, request_id=rid)
    split = split_reasoning(progress.raw, opened)
    images = [m for m in turn.media if m.kind == "image"]
    found = locate(split.answer, engine.family, images)
    ttft = progress.since_start(progress.first_token)
    elapsed = time.perf_counter() - progress.started
    stats = format_stats(progress.tokens, ttft, elapsed, turn.prompt_tokens, progress.cached_tokens)
    path = _save_drawing(found, images) if found else None
    cut_off = split.thinking and progress.tokens >= turn.request.options.max_new_tokens
    trailer = (notice(CUT_OFF_TITLE, CUT_OFF_ADVICE, done=True),) if cut_off else ()
    seconds = progress.thought(time.perf_counter())
    yield Update(lead, progress.raw, True, stats, found, path, opened, seconds, trailer, rid)


def _save_drawing(found: Grounding, images: Sequence[Media]) -> str:
    """The drawn boxes as a PNG in the app's scratch folder."""
    seen = images[found.image - 1].decode()
    path = new_folder("boxes") / "boxes.png"
    drawing(found, seen.image).save(path, format="PNG")  # type: ignore[union-attr]
    return str(path)


def _log_entry(
    session: str, progress: _Progress, turn: Turn | None, error: BaseException | None
) -> RequestLog:
    """The request's log line (without content) from how far it got."""
    now = time.perf_counter()
    media = turn.media if turn else []
    waited = (
        progress.engine_started - progress.prepared
        if progress.engine_started is not None and progress.prepared is not None
        else None
    )
    return RequestLog(
        session=session,
        request=progress.request_id,
        outcome=outcome_of(error, engine_asked=turn is not None),
        prompt_tokens=turn.prompt_tokens if turn else None,
        generated_tokens=progress.tokens,
        queue_wait_s=waited,
        ttft_s=progress.since_start(progress.first_token),
        tokens_per_s=tokens_per_second(progress.tokens, progress.first_token, now),
        prepare_s=progress.since_start(progress.prepared),
        total_s=now - progress.started,
        images=sum(m.kind == "image" for m in media),
        videos=sum(m.kind == "video" for m in media),
        turns_left_out=turn.turns_left_out if turn else 0,
        cached_tokens=progress.cached_tokens,
    )


def _message_text(message: Mapping[str, Any] | str) -> str:
    return "\n".join(value for kind, value in user_message_parts(message) if kind == "text")
