"""Chat history (Gradio's messages format) to Qwen2-VL message lists.

Pure functions: nothing here reads files or mutates its input. What a file holds (image or
video) is decided by the `classify` callable the caller passes in (media.sniff_kind in the app).

Conventions of the chat history this app writes:
- a user turn may span several consecutive user messages (files, then text); they are merged
  into one Qwen2-VL user turn, keeping their order;
- an assistant message whose `metadata` has a `title` is a notice from the app (an error, the
  answer's statistics, "earlier turns were left out") and is never shown to the model; a user
  turn answered by notices alone (it failed) is left out with them;
- assistant media (e.g. the image with grounding boxes drawn on it) is for the user only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

# Tokens that only the chat template may write: in a message's text they would open fake turns
# or claim images that are not there (random or confused answers do produce them).
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

MediaKind = Literal["image", "video"]
Classify = Callable[[str], MediaKind]
Part = tuple[Literal["text", "file"], str]


def content_parts(content: Any) -> list[Part]:
    """Normalises every content shape Gradio and its clients use into (kind, value) parts."""
    if content is None:
        return []
    if isinstance(content, str):
        return [("text", content)] if content else []
    if isinstance(content, (list, tuple)):
        return [part for item in content for part in content_parts(item)]
    if isinstance(content, Mapping):
        kind = content.get("type")
        if kind == "text":
            return content_parts(content.get("text"))
        if kind == "component":
            return content_parts(content.get("value"))
        if "file" in content:
            return content_parts(content["file"])
        path = content.get("path") or content.get("url")
        return [("file", str(path))] if path else []
    value = getattr(content, "value", None)  # a Gradio component such as gr.Image(path)
    return content_parts(value) if value is not None else []


def clean_text(text: str) -> str:
    """Text without template tokens (grounding markers such as <|box_start|> stay)."""
    for token in TEMPLATE_TOKENS:
        text = text.replace(token, "")
    return text


def is_notice(message: Mapping[str, Any]) -> bool:
    """True for the app's own messages (errors, statistics, notices) in the history."""
    metadata = message.get("metadata") or {}
    return message.get("role") == "assistant" and bool(metadata.get("title"))


def _user_content(parts: Iterable[Part], classify: Classify) -> list[dict[str, str]]:
    content = []
    for kind, value in parts:
        if kind == "text":
            content.append({"type": "text", "text": clean_text(value)})
        else:
            media = classify(value)
            content.append({"type": media, media: value})
    return content


def history_to_messages(
    history: Iterable[Mapping[str, Any]],
    classify: Classify,
    system_prompt: str | None = None,
) -> list[dict[str, Any]]:
    """Qwen2-VL messages for a history: user turns merged, notices and assistant media left out."""
    messages: list[dict[str, Any]] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    noticed = False  # a notice came after the last user message
    for message in history:
        role = message.get("role")
        if is_notice(message):
            noticed = True
        elif role == "assistant":
            _add(messages, "assistant", _answer_text(message))
        elif role == "user":
            if noticed and messages and messages[-1]["role"] == "user":
                messages.pop()  # that turn got notices but no answer (it failed): leave it out
            noticed = False
            _add(messages, "user", _user_content(content_parts(message.get("content")), classify))
    return messages


def _answer_text(message: Mapping[str, Any]) -> str:
    parts = content_parts(message.get("content"))
    return clean_text("".join(value for kind, value in parts if kind == "text"))


def _add(messages: list[dict[str, Any]], role: str, content: str | list) -> None:
    """Appends a turn, or extends the last one when it has the same role (one turn, many parts)."""
    if not content:
        return
    if messages and messages[-1]["role"] == role:
        messages[-1] = {"role": role, "content": messages[-1]["content"] + content}
    else:
        messages.append({"role": role, "content": content})


def user_message_parts(message: Mapping[str, Any] | str) -> list[Part]:
    """The parts of a new MultimodalTextbox message: its files in the order given, then its text."""
    if isinstance(message, str):
        return content_parts(message)
    files: list[Part] = []
    for item in message.get("files") or []:
        if isinstance(item, str):  # a plain path, as gradio_client and the textbox send it
            files.append(("file", item))
        else:
            files.extend(part for part in content_parts(item) if part[0] == "file")
    return files + content_parts(message.get("text") or "")


def conversation_messages(
    history: Iterable[Mapping[str, Any]],
    message: Mapping[str, Any] | str,
    classify: Classify,
    system_prompt: str | None = None,
) -> list[dict[str, Any]]:
    """The Qwen2-VL message list for answering `message` after `history`."""
    parts = user_message_parts(message)
    new_turn = {"role": "user", "content": [{"path": v} if k == "file" else v for k, v in parts]}
    return history_to_messages([*history, new_turn], classify, system_prompt)


def media_items(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Every image and video entry of a message list, in prompt order."""
    return [
        item
        for message in messages
        if isinstance(message.get("content"), list)
        for item in message["content"]
        if item.get("type") in ("image", "video")
    ]
