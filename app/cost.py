"""What a turn will cost, shown under the input box while files are attached, before sending.

It takes the path of sending itself (`app.chat.build_request`): the media objects made from
the files' headers (nothing decoded) and the budget's count of the prompt as the model will see
it, so the numbers are the ones the engine then counts (exact for the local engine, an estimate
for a remote server, whose tokenizer is not here). A turn that will not fit says why, with the
setting to lower, in the words the send itself would use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.chat import Shared, build_request, pages_left_out_notice
from app.config import Settings
from app.engine import Engine
from app.errors import UserFacingError
from app.media import Media, by_document
from app.messages import media_of, user_message_parts
from app.options import chat_options

ICONS = {"image": "🖼️", "video": "🎬"}  # a document's pages: 📄


@dataclass(frozen=True)
class CostPreview:
    """The cost of the current turn's files and of the whole prompt, or why it will not fit."""

    files: tuple[Media, ...] = ()
    prompt_tokens: int = 0
    answer_tokens: int = 0  # kept for the answer (max new tokens)
    max_context: int = 0
    turns_left_out: int = 0
    pages_left_out: tuple[Media, ...] = ()
    problem: str | None = None

    def markdown(self) -> str:
        if self.problem:
            return f"⚠️ {self.problem}"
        files = " · ".join(_cost(items) for items in by_document(self.files))
        used = self.prompt_tokens + self.answer_tokens
        share = round(100 * used / self.max_context) if self.max_context else 0
        fill = (
            f"The conversation will fill {used:,} of {self.max_context:,} tokens ({share}%), "
            f"{self.answer_tokens:,} of them kept for the answer."
        )
        left = self.turns_left_out
        dropped = (
            f" The {left} oldest turn{'s' if left > 1 else ''} will be left out to make room."
            if left
            else ""
        )
        if self.pages_left_out:
            dropped += f" {pages_left_out_notice(self.pages_left_out)['metadata']['title']}."
        return f"🧮 **Before sending:** {files}  \n{fill}{dropped}"


def preview_turn(
    engine: Engine,
    settings: Settings,
    message: Any,
    history: Any,
    values: Mapping[str, Any],
    client: str = "",
    shared: Shared | None = None,
) -> CostPreview | None:
    """The cost of sending `message` after `history` with the settings `values` (all the
    client's); None while the message has no files."""
    if not isinstance(message, Mapping | str):
        return None
    if not any(kind == "file" for kind, _ in user_message_parts(message)):
        return None
    try:
        thinks = engine.prompt_format.thinks
        options = chat_options(values, settings, engine.generation_defaults, thinks)
        if not isinstance(history, Sequence) or isinstance(history, str):
            history = []
        turn = build_request(message, history, options, settings, engine, client, shared)
    except UserFacingError as exc:
        return CostPreview(problem=str(exc))
    current = turn.request.messages[-1:]
    return CostPreview(
        files=tuple(media_of(current)),
        prompt_tokens=turn.prompt_tokens,
        answer_tokens=options.generation.max_new_tokens,
        max_context=settings.max_context,
        turns_left_out=turn.turns_left_out,
        pages_left_out=turn.pages_left_out,
    )


def _cost(items: Sequence[Media]) -> str:
    """One file's cost; a document's pages summed under its name."""
    first, tokens = items[0], sum(item.tokens for item in items)
    if first.page is not None:
        count = f"{len(items)} page{'s' if len(items) > 1 else ''}"
        return f"📄 {first.name}: {count}, {tokens:,} visual tokens"
    width, height = first.fed_size
    frames = f", {first.frames} frames" if first.kind == "video" else ""
    return f"{ICONS[first.kind]} {first.name}: {tokens:,} visual tokens ({width}×{height}{frames})"
