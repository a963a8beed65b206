"""The Gradio page. It only wires components to `app.chat`; no logic lives here."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import gradio as gr

from app.chat import ChatMessages, ChatOptions, limits_from_settings, notice, respond
from app.config import Settings
from app.engine import Engine, GenerationOptions
from app.errors import UserFacingError
from app.messages import is_notice

ASSETS = Path(__file__).resolve().parent.parent / "assets"
FILE_TYPES = ["image", "video"]


def settings_inputs(settings: Settings) -> list[gr.Component]:
    """The Settings accordion, in the order the chat functions receive the values.

    Created unrendered: the ChatInterface places them in its accordion under the chat.
    """
    hidden = {"render": False}
    return [
        gr.Textbox(
            value="",
            label="System prompt",
            placeholder="You are a helpful assistant.",
            lines=2,
            **hidden,
        ),
        gr.Checkbox(
            value=True, label='Label images and videos ("Picture 1:") when several', **hidden
        ),
        gr.Slider(1, 8192, value=settings.max_new_tokens, step=1, label="Max new tokens", **hidden),
        gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="Temperature (0 = greedy)", **hidden),
        gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p", **hidden),
        gr.Slider(0, 200, value=0, step=1, label="Top-k (0 = off)", **hidden),
        gr.Slider(1.0, 2.0, value=1.05, step=0.01, label="Repetition penalty", **hidden),
        gr.Number(value=-1, precision=0, label="Seed (-1 = random)", **hidden),
        gr.Number(value=settings.min_pixels, precision=0, label="Image min pixels", **hidden),
        gr.Number(value=settings.max_pixels, precision=0, label="Image max pixels", **hidden),
        gr.Slider(
            0.1, 8.0, value=settings.video_fps, step=0.1, label="Video frames per second", **hidden
        ),
        gr.Slider(
            2,
            settings.max_frames,
            value=settings.max_frames,
            step=2,
            label="Video max frames",
            **hidden,
        ),
    ]


def options_from_values(settings: Settings, values: tuple[Any, ...]) -> ChatOptions:
    """ChatOptions from the accordion's values; the server's flags are upper bounds."""
    (
        system_prompt,
        add_vision_id,
        max_new_tokens,
        temperature,
        top_p,
        top_k,
        repetition_penalty,
        seed,
        min_pixels,
        max_pixels,
        video_fps,
        max_frames,
    ) = values
    limits = limits_from_settings(settings)
    max_pixels = min(int(max_pixels or limits.max_pixels), limits.max_pixels)
    media = replace(
        limits,
        min_pixels=max(1, min(int(min_pixels or limits.min_pixels), max_pixels)),
        max_pixels=max_pixels,
        video_fps=float(video_fps or limits.video_fps),
        max_frames=max(2, min(int(max_frames or limits.max_frames), limits.max_frames)),
    )
    generation = GenerationOptions(
        max_new_tokens=int(max_new_tokens),
        temperature=float(temperature),
        top_p=float(top_p),
        top_k=int(top_k),
        repetition_penalty=float(repetition_penalty),
        seed=None if seed is None or int(seed) < 0 else int(seed),
    )
    return ChatOptions((system_prompt or "").strip(), bool(add_vision_id), generation, media)


def build_demo(engine: Engine, settings: Settings) -> gr.Blocks:
    """The whole page; `launch()` is the caller's."""

    def chat_in_ui(message: dict, history: list[dict], *values: Any) -> Iterator[ChatMessages]:
        shown: ChatMessages = []
        try:
            for shown in respond(
                engine, settings, message, history, options_from_values(settings, values)
            ):
                yield shown
        except UserFacingError as exc:
            yield [m for m in shown if not is_notice(m)] + [notice("⚠️ Could not answer", str(exc))]

    def chat_api(
        message: dict,
        history: list[dict] | None = None,
        system_prompt: str = "",
        add_vision_id: bool = True,
        max_new_tokens: int = settings.max_new_tokens,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        repetition_penalty: float = 1.05,
        seed: int = -1,
        min_pixels: int = settings.min_pixels,
        max_pixels: int = settings.max_pixels,
        video_fps: float = settings.video_fps,
        max_frames: int = settings.max_frames,
    ) -> Iterator[str]:
        """Streams the growing answer to `message` after `history` (the chatbot's format)."""
        values = (
            system_prompt,
            add_vision_id,
            max_new_tokens,
            temperature,
            top_p,
            top_k,
            repetition_penalty,
            seed,
            min_pixels,
            max_pixels,
            video_fps,
            max_frames,
        )
        try:
            for shown in respond(
                engine, settings, message, history or [], options_from_values(settings, values)
            ):
                yield "".join(m["content"] for m in shown if not is_notice(m))
        except UserFacingError as exc:
            raise gr.Error(str(exc)) from None

    def show_status() -> tuple[str, dict, gr.Timer]:
        status = engine.status()
        ready = status.state == "ready"
        icon = {"loading": "⏳", "ready": "✅", "failed": "❌"}[status.state]
        textbox = gr.MultimodalTextbox(
            interactive=ready,
            placeholder="Ask about an image or a video…" if ready else status.message,
        )
        return f"{icon} {status.message}", textbox, gr.Timer(active=status.state == "loading")

    with gr.Blocks(title="Qwen2-VL") as demo:
        gr.Markdown("# Qwen2-VL\nChat about images and videos with Qwen2-VL.")
        status = gr.Markdown(elem_id="engine-status")
        textbox = gr.MultimodalTextbox(
            file_types=FILE_TYPES,
            file_count="multiple",
            interactive=False,
            placeholder="Loading the model…",
            sources=["upload"],
        )
        chatbot = gr.Chatbot(
            label="Qwen2-VL",
            height="65vh",
            buttons=["copy", "copy_all"],
            latex_delimiters=[
                {"left": "$$", "right": "$$", "display": True},
                {"left": "$", "right": "$", "display": False},
                {"left": "\\(", "right": "\\)", "display": False},
                {"left": "\\[", "right": "\\]", "display": True},
            ],
        )
        inputs = settings_inputs(settings)
        gr.ChatInterface(
            chat_in_ui,
            multimodal=True,
            chatbot=chatbot,
            textbox=textbox,
            additional_inputs=inputs,
            additional_inputs_accordion=gr.Accordion("Settings", open=False, render=False),
            editable=True,
            api_name="chat_ui",
            api_visibility="private",
            concurrency_limit=64,
            fill_height=False,
        )
        with gr.Group(visible=False):
            api_message = gr.MultimodalTextbox(file_types=FILE_TYPES, file_count="multiple")
            api_history = gr.Chatbot()
            api_answer = gr.Textbox()
        gr.Button(visible=False).click(
            chat_api,
            [api_message, api_history, *inputs],
            api_answer,
            api_name="chat",
            concurrency_limit=64,
        )
        timer = gr.Timer(0.5)
        timer.tick(show_status, None, [status, textbox, timer], api_visibility="private")
        demo.load(show_status, None, [status, textbox, timer], api_visibility="private")
    return demo
