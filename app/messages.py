"""Chat history (Gradio's messages format) <-> Qwen message lists.

Pure functions: nothing here reads files or mutates its input. A file part stays a path
(`{"type": "file", "path": ...}`) until `attach_media` turns it into the media object the
caller's `open_file` makes of it (`app.media.prepare` in the app): `{"type": "image", "image":
<Media>}` or the same for a video; a document (PDF) becomes its pages, each an image after a
"Page N of name:" text. The request then carries its media inside its messages.

Conventions of the chat history this app writes:
- a user turn may span several consecutive user messages (files, then text); they are merged
  into one Qwen user turn, keeping their order (`user_turn_messages` writes them);
- an assistant message whose `metadata` has a `title` is a notice from the app (an error, the
  answer's statistics, "earlier turns were left out", the reasoning of a thinking model) and is
  never shown to the model; a user turn answered by notices alone (it failed) is left out with
  them, unless one is reasoning (a turn stopped while thinking did not fail);
- assistant media (e.g. the image with grounding boxes drawn on it) is for the user only.

What a client sends is untrusted: a `{"type": "component"}` part (Gradio's shape for a
component such as gr.Image(...)) is never read as a file or as text, since this app writes
none and Gradio does not check its value; paths are checked by `app.trust` where opened.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

from app.errors import UserFacingError

# Tokens that only the chat template may write: in a message's text they would open fake turns
# or claim images that are not there (random or confused answers do produce them). The engine
# gives the loaded tokenizer's list (`Engine.template_tokens`); this is Qwen2-VL's.
TEMPLATE_TOKENS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Grounding markers are special tokens too, but the model's answers need them to keep their
# boxes in later turns, and they cannot fake a turn or an image.
GROUNDING_MARKERS = frozenset(
    {
        "<|object_ref_start|>",
        "<|object_ref_end|>",
        "<|box_start|>",
        "<|box_end|>",
        "<|quad_start|>",
        "<|quad_end|>",
    }
)
MAX_NESTING = 32  # content nested deeper than this is not a chat message: ignored
REASONING_ICON = "💭"  # the title of a notice holding a thinking model's reasoning starts so

Part = tuple[Literal["text", "file"], str]
Message = dict[str, Any]


def content_parts(content: Any, depth: int = 0) -> list[Part]:
    """Normalises every content shape Gradio and its clients use into (kind, value) parts."""
    if content is None or depth > MAX_NESTING:
        return []
    if isinstance(content, str):
        return [("text", content)] if content else []
    if isinstance(content, (list, tuple)):
        return [part for item in content for part in content_parts(item, depth + 1)]
    if isinstance(content, Mapping):
        kind = content.get("type")
        if kind == "text":
            return content_parts(content.get("text"), depth + 1)
        if kind == "component":
            return []  # never a file: see the module docstring
        if "file" in content:
            return content_parts(content["file"], depth + 1)
        path = content.get("path")
        return [("file", path)] if isinstance(path, str) and path else []
    return []


def template_token_filter(tokens: Iterable[str]) -> Callable[[str], str]:
    """A function removing `tokens` from text until none is left (so that removing one cannot
    join the pieces of another: `<|im_st<|video_pad|>art|>`)."""
    ordered = sorted(set(tokens) - GROUNDING_MARKERS, key=len, reverse=True)
    if not ordered:
        return lambda text: text
    pattern = re.compile("|".join(map(re.escape, ordered)))

    def clean(text: str) -> str:
        while True:
            cleaned = pattern.sub("", text)
            if cleaned == text:
                return cleaned
            text = cleaned

    return clean


clean_text = template_token_filter(TEMPLATE_TOKENS)


def is_notice(message: Mapping[str, Any]) -> bool:
    """True for the app's own messages (errors, statistics, notices) in the history."""
    metadata = message.get("metadata")
    return (
        message.get("role") == "assistant"
        and isinstance(metadata, Mapping)
        and bool(metadata.get("title"))
    )


def user_message_parts(message: Mapping[str, Any] | str) -> list[Part]:
    """The parts of a new MultimodalTextbox message: its files in the order given, then its text."""
    if isinstance(message, str):
        return content_parts(message)
    if not isinstance(message, Mapping):
        return []
    files: list[Part] = []
    items = message.get("files") or []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, str):  # a plain path, as gradio_client and the textbox send it
            files.append(("file", item))
        else:
            files.extend(part for part in content_parts(item) if part[0] == "file")
    text = message.get("text")
    return files + content_parts(text if isinstance(text, str) else "")


def user_turn_messages(message: Mapping[str, Any] | str) -> list[Message]:
    """A new multimodal message as chat history: one message per file, then one for the text.

    Kept apart, each is a message of its own in the chat, so editing the text (which replaces
    the edited message's whole content) keeps the turn's images and videos in the history.
    """
    return [
        {"role": "user", "content": {"path": value} if kind == "file" else value}
        for kind, value in user_message_parts(message)
    ]


def history_to_messages(
    history: Iterable[Mapping[str, Any]],
    system_prompt: str | None = None,
    clean: Callable[[str], str] = clean_text,
) -> list[Message]:
    """Qwen messages for a history: user turns merged, notices and assistant media left out.

    File parts stay `{"type": "file", "path": ...}` (see `attach_media`).
    """
    messages: list[Message] = []
    system = clean(system_prompt or "")
    if system:
        messages.append({"role": "system", "content": system})
    failed = False  # notices, and no reasoning, came after the last user message
    reasoned = False
    for message in history:
        if not isinstance(message, Mapping):
            continue
        role = message.get("role")
        if is_notice(message):
            reasoned = reasoned or str(message["metadata"]["title"]).startswith(REASONING_ICON)
            failed = not reasoned
        elif role == "assistant":
            _add(messages, "assistant", _answer_text(message, clean))
        elif role == "user":
            if failed and messages and messages[-1]["role"] == "user":
                messages.pop()  # that turn got notices but no answer (it failed): leave it out
            failed = reasoned = False
            _add(messages, "user", _user_content(content_parts(message.get("content")), clean))
    return messages


def _user_content(parts: Iterable[Part], clean: Callable[[str], str]) -> list[dict[str, str]]:
    return [
        {"type": "text", "text": clean(value)}
        if kind == "text"
        else {"type": "file", "path": value}
        for kind, value in parts
    ]


def _answer_text(message: Mapping[str, Any], clean: Callable[[str], str]) -> str:
    parts = content_parts(message.get("content"))
    return clean("".join(value for kind, value in parts if kind == "text"))


def _add(messages: list[Message], role: str, content: str | list) -> None:
    """Appends a turn, or extends the last one when it has the same role (one turn, many parts)."""
    if not content:
        return
    if messages and messages[-1]["role"] == role:
        messages[-1] = {"role": role, "content": messages[-1]["content"] + content}
    else:
        messages.append({"role": role, "content": content})


def conversation_messages(
    history: Iterable[Mapping[str, Any]],
    message: Mapping[str, Any] | str,
    system_prompt: str | None = None,
    clean: Callable[[str], str] = clean_text,
) -> list[Message]:
    """The Qwen message list for answering `message` after `history` (files as paths)."""
    return history_to_messages([*history, *user_turn_messages(message)], system_prompt, clean)


def attach_media(
    messages: Sequence[Message], open_file: Callable[[str, int, bool], Any]
) -> list[Message]:
    """The messages with each file part replaced by `open_file(path, turn, current)` (`turn`:
    the message's place among the user messages; `current`: the turn being answered), a media
    object with a `kind` ("image" or "video"): `{"type": kind, kind: media}`, or a document,
    whose pages become labelled images.

    A file of the last message (the turn being answered) that cannot be opened raises: the user
    must hear why. One in an earlier turn is left out quietly (that turn already said why), so
    one bad upload never breaks the rest of the chat; a message left empty goes with it.
    """
    attached: list[Message] = []
    turn = -1
    for index, message in enumerate(messages):
        turn += message["role"] == "user"
        content = message["content"]
        if isinstance(content, str):
            attached.append(dict(message))
            continue
        current = index == len(messages) - 1
        parts = [part for raw in content for part in _open(raw, open_file, turn, current)]
        if parts:
            attached.append({**message, "content": parts})
    return attached


def _open(
    part: dict[str, Any], open_file: Callable[[str, int, bool], Any], turn: int, current: bool
) -> list[dict]:
    if part.get("type") != "file":
        return [part]
    try:
        media = open_file(part["path"], turn, current)
    except UserFacingError:
        if current:
            raise
        return []
    if hasattr(media, "pages"):  # a document: each page an image, after its label
        return [p for page in media.pages for p in page_parts(page)]
    return [{"type": media.kind, media.kind: media}]


def page_label(page: Any) -> str:
    """The text before a document's page in the prompt, naming the page and its file."""
    return f"Page {page.page} of {page.name}:\n"


def page_parts(page: Any) -> list[dict[str, Any]]:
    """A document's page as prompt parts: its label, then the page as an image."""
    return [{"type": "text", "text": page_label(page)}, {"type": "image", "image": page}]


def media_parts(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every image and video part of a message list, in prompt order."""
    return [
        part
        for message in messages
        if isinstance(message.get("content"), list)
        for part in message["content"]
        if part.get("type") in ("image", "video")
    ]


def media_of(messages: Iterable[Mapping[str, Any]]) -> list[Any]:
    """The media objects of a message list, in prompt order."""
    return [part[part["type"]] for part in media_parts(messages)]
