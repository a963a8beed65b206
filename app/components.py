"""Gradio components with the app's rules built in.

In a module of their own because Gradio writes a `.pyi` stub next to the module that defines
a component subclass (git-ignored).
- `Chatbot` shows users' text as typed and models' Markdown inert (`app.markup`), and gives the
  app back exactly what was typed or generated.
- `Number`, `Slider`, `Checkbox` and `Textbox` pass a client's value on unchanged: Gradio's own
  conversion fails on NaN or a string with a generic error (or lets NaN through), while
  `app.options` checks every setting with a message naming it. Their API types stay.
- `HistoryJSON` is the /chat API's history: the chatbot's messages format, with plain-string
  content accepted too (Gradio's Chatbot input refuses it before the app runs).
- `LikeEvent` is the thumbs' event data, read without trusting its shape.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import gradio as gr

from app.markup import inert_markdown, model_text, shown_user_text, typed_user_text

_SHOW: Mapping[str, Callable[[str], str]] = {"user": shown_user_text, "assistant": inert_markdown}
_READ: Mapping[str, Callable[[str], str]] = {"user": typed_user_text, "assistant": model_text}


def _map_texts(messages: Any, functions: Mapping[str, Callable[[str], str]]) -> Any:
    """The messages with each text part changed by its role's function (other parts kept)."""
    if not isinstance(messages, list):
        return messages
    mapped = []
    for message in messages:
        role = message.get("role") if isinstance(message, dict) else None
        change = functions.get(role) if isinstance(role, str) else None
        if change is None:
            mapped.append(message)
            continue
        content = message.get("content")
        if isinstance(content, str):
            content = change(content)
        elif isinstance(content, list):
            content = [
                {**part, "text": change(part["text"])}
                if isinstance(part, dict) and part.get("type") == "text"
                and isinstance(part.get("text"), str)
                else part
                for part in content
            ]  # fmt: skip
        mapped.append({**message, "content": content})
    return mapped


class Chatbot(gr.Chatbot):
    """A chatbot that displays text safely and hands the app the raw text back."""

    def preprocess(self, payload: Any) -> Any:
        return _map_texts(super().preprocess(payload), _READ)

    def postprocess(self, value: Any) -> Any:
        return super().postprocess(_map_texts(value, _SHOW))


class Number(gr.Number):
    """A number setting whose value `app.options` checks (not Gradio)."""

    def preprocess(self, payload: Any) -> Any:
        return payload


class Slider(gr.Slider):
    """A slider setting whose value `app.options` checks (not Gradio)."""

    def preprocess(self, payload: Any) -> Any:
        return payload


class Checkbox(gr.Checkbox):
    """A checkbox setting whose value `app.options` checks (not Gradio)."""

    def preprocess(self, payload: Any) -> Any:
        return payload


class Textbox(gr.Textbox):
    """A text setting whose value `app.options` checks (not Gradio)."""

    def preprocess(self, payload: Any) -> Any:
        return payload


class HistoryJSON(gr.JSON):
    """The /chat API's history parameter, typed in the API description."""

    def api_info(self) -> dict[str, Any]:
        part = {
            "anyOf": [
                {"type": "object", "description": '{"type": "text", "text": "..."}'},
                {"type": "object", "description": '{"type": "file", "file": handle_file(...)}'},
            ]
        }
        return {
            "type": "array",
            "description": "earlier messages: {role: user|assistant, content: text or parts}",
            "items": {
                "type": "object",
                "properties": {
                    "role": {"type": "string", "enum": ["user", "assistant"]},
                    "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": part}]},
                },
            },
        }


class CameraClip(gr.Video):
    """A webcam clip as the browser recorded it (WebM, no sound): gr.Video would run the ffmpeg
    program to drop the sound track it was told not to record. The media layer reads the
    video stream with PyAV (and judges the file by its content, like any upload)."""

    is_template = True  # the page draws it as gr.Video

    def preprocess(self, payload: Any) -> str | None:
        return None if payload is None else str(payload.path)


class LikeEvent(gr.EventData):
    """A like event's data that never raises: `gr.LikeData` indexes the client's event data
    unchecked (a missing or non-dict value is a bare error); app.feedback checks both fields."""

    def __init__(self, target: Any, data: Any):
        super().__init__(target, data)
        fields = data if isinstance(data, dict) else {}
        self.index: Any = fields.get("index")
        self.liked: Any = fields.get("liked")
