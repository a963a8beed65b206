"""The Gradio page. It only wires components to `app.chat` and `app.transcript`; no logic here.

Layout: header (logo, title, licence note), engine status, the chat (conversation list, messages
with clickable examples, input with Stop), the Settings accordion, the conversation file
buttons (export / import .zip), and the hidden but documented `/chat` API endpoint. Labels are
translated with `gr.I18n` (app/i18n.py).

Choices:
- Conversations survive a page reload through ChatInterface's `save_history=True`: a
  `gr.BrowserState` list in the browser's localStorage, shown beside the chat with "New chat".
  Gradio encrypts it with a key drawn per server process, so a server restart forgets them (and
  their files live in Gradio's cache); a .zip export is the way to keep a conversation.
- A user turn is one message per file plus one for the text (see `ChatInterface`), so that
  editing a question keeps its images and videos.
- The page brings its theme, CSS, labels and favicon to `launch()` itself (see `Page`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import gradio as gr

from app.chat import (
    ChatMessages,
    ChatOptions,
    answer_text,
    limits_from_settings,
    notice,
    respond,
)
from app.config import Settings
from app.engine import Engine, GenerationOptions
from app.errors import UserFacingError
from app.i18n import TRANSLATIONS, key
from app.messages import is_notice
from app.scratch import new_folder
from app.transcript import export_transcript, import_transcript, user_turn_messages

ASSETS = Path(__file__).resolve().parent.parent / "assets"
LOGO = ASSETS / "logo.svg"
EXAMPLES = ASSETS / "examples"
FILE_TYPES = ["image", "video"]
GROUNDING_EXAMPLE = "Find the cat and the ball in this picture and give their bounding boxes."
STATUS_KEYS = {"loading": "status_loading", "ready": "status_ready", "failed": "status_failed"}
CSS = """
#header { align-items: flex-start; flex-wrap: nowrap; gap: var(--spacing-xl); }
#header-logo { flex: 0 0 56px; min-width: 56px; margin-top: var(--spacing-sm); }
#header-logo img { width: 56px; height: 56px; display: block; }
#header-text h1 { margin: 0 0 var(--spacing-sm) 0; font-size: var(--text-xxl); }
#header-text p { margin: 0; }
#license, #engine-status { font-size: var(--text-sm); color: var(--body-text-color-subdued); }
#conversation-file { flex-wrap: wrap; }
#chatbot .user-row img { max-height: 12rem; width: auto; }  /* uploads: thumbnails, answers big */
@media (max-width: 640px) {  /* phones: the conversation list scrolls, not pushing the chat down */
  #chat-area .row > .column:first-child > .block { max-height: 7.5rem; overflow-y: auto; }
}
"""


def t(name: str) -> gr.i18n.I18nData:
    """A translated label (the browser's language picks EN or ZH)."""
    return gr.i18n.I18nData(key(name))


class Page(gr.Blocks):
    """The demo's Blocks, bringing its own theme, CSS, labels and favicon to `launch()`.

    Gradio 6 takes these in `launch()` rather than `Blocks()`; here they travel with the page,
    so the caller of `launch` (web_demo_mm.serve) passes network options only.
    """

    def launch(self, *args: Any, **kwargs: Any) -> Any:
        look = {
            "theme": gr.themes.Soft(primary_hue="indigo", secondary_hue="indigo"),
            "css": CSS,
            "i18n": gr.I18n(**TRANSLATIONS),
            "favicon_path": str(LOGO),
        }
        return super().launch(*args, **(look | kwargs))


class ChatInterface(gr.ChatInterface):
    """gr.ChatInterface that keeps a turn's files when its text is edited.

    Gradio 6.31's page replaces an edited message's whole content with the new text, and fails
    to edit a bubble that holds a file. So each file of a turn and its text are separate
    messages (`user_turn_messages`), each in its own bubble (`group_consecutive_messages=False`):
    an edit then reruns the turn with its files, which are still in the history before it.
    """

    def _message_as_message_dict(self, message: Any, role: Any) -> list:
        if role == "user" and isinstance(message, dict) and "content" not in message:
            message = user_turn_messages(message)
        return super()._message_as_message_dict(message, role)


def settings_inputs(settings: Settings) -> list[gr.Component]:
    """The settings, in the order the chat functions receive the values (placed by
    `render_settings`)."""
    hidden = {"render": False}
    return [
        gr.Textbox(
            value="",
            label=t("system_prompt"),
            placeholder=t("system_prompt_placeholder"),
            lines=2,
            **hidden,
        ),
        gr.Checkbox(value=True, label=t("add_vision_id"), **hidden),
        gr.Slider(
            1, 8192, value=settings.max_new_tokens, step=1, label=t("max_new_tokens"), **hidden
        ),
        gr.Slider(0.0, 2.0, value=0.0, step=0.05, label=t("temperature"), **hidden),
        gr.Slider(0.05, 1.0, value=1.0, step=0.05, label=t("top_p"), **hidden),
        gr.Slider(0, 200, value=0, step=1, label=t("top_k"), **hidden),
        gr.Slider(1.0, 2.0, value=1.05, step=0.01, label=t("repetition_penalty"), **hidden),
        gr.Number(value=-1, precision=0, label=t("seed"), **hidden),
        gr.Number(value=settings.min_pixels, precision=0, label=t("min_pixels"), **hidden),
        gr.Number(value=settings.max_pixels, precision=0, label=t("max_pixels"), **hidden),
        gr.Slider(0.1, 8.0, value=settings.video_fps, step=0.1, label=t("video_fps"), **hidden),
        gr.Slider(
            2,
            settings.max_frames,
            value=settings.max_frames,
            step=2,
            label=t("max_frames"),
            **hidden,
        ),
    ]


def render_settings(inputs: list[gr.Component]) -> None:
    """The Settings accordion: prompt options, then the numbers two by two (one on a phone)."""
    with gr.Accordion(t("settings"), open=False, elem_id="settings"):
        inputs[0].render()
        inputs[1].render()
        for pair in zip(inputs[2::2], inputs[3::2], strict=True):
            with gr.Row():
                for component in pair:
                    component.render()


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


def examples() -> tuple[list[list[dict[str, Any]]], list[str]]:
    """The clickable examples (made by assets/make_examples.py) and their labels."""
    files = {name: str(EXAMPLES / name) for name in ("chart.png", "park.png", "ball.mp4")}
    shapes = [str(EXAMPLES / "shapes_1.png"), str(EXAMPLES / "shapes_2.png")]
    messages = [
        {"text": "Which day had the most visitors, and how many?", "files": [files["chart.png"]]},
        {"text": "What is different in Picture 2 compared with Picture 1?", "files": shapes},
        {"text": "What happens in this video?", "files": [files["ball.mp4"]]},
        {"text": GROUNDING_EXAMPLE, "files": [files["park.png"]]},
    ]
    labels = [
        "📊 Read a chart",
        "🔍 Spot the differences",
        "🎬 What happens in the video?",
        "🎯 Find the cat and the ball",
    ]  # English only: Gradio does not translate the labels of chat examples
    return [[message] for message in messages], labels


def render_header() -> None:
    with gr.Row(elem_id="header"):
        gr.HTML(
            f'<img src="gradio_api/file={LOGO}" alt="" width="56" height="56">',
            elem_id="header-logo",
        )
        with gr.Column(elem_id="header-text", scale=1, min_width=0):
            gr.Markdown(t("header"))
            gr.Markdown(t("license"), elem_id="license")


def export_conversation(history: list[dict]) -> Any:
    """The chat as a .zip for the File component (a warning if there is nothing to export)."""
    if not history:
        gr.Warning("There is nothing to export yet.")
        return gr.skip()
    path = new_folder("conversations") / time.strftime("qwen2-vl-conversation-%Y%m%d-%H%M%S.zip")
    return gr.File(value=str(export_transcript(history, path)), visible=True)


def import_conversation(path: str | None) -> tuple[Any, Any]:
    """The chat of an uploaded .zip, as a new conversation; a bad file changes nothing and
    says why."""
    if not path:
        return gr.skip(), gr.skip()
    try:
        return import_transcript(path, new_folder("conversations") / "imported"), None
    except UserFacingError as exc:
        raise gr.Error(str(exc)) from None


def render_conversation_file(chat: gr.ChatInterface) -> None:
    """Export / import buttons; an import opens as a new conversation (the current one stays
    in the history list)."""
    with gr.Row(elem_id="conversation-file"):
        export = gr.Button(t("export"), size="sm", scale=0, min_width=200, elem_id="export")
        upload = gr.UploadButton(
            t("import"), file_types=[".zip"], size="sm", scale=0, min_width=200, elem_id="import"
        )
    file = gr.File(
        label=t("conversation_file"), visible=False, interactive=False, elem_id="conversation-zip"
    )
    export.click(export_conversation, chat.chatbot, file, api_visibility="private")
    upload.upload(
        import_conversation,
        upload,
        [chat.chatbot_value, chat.conversation_id],
        api_visibility="private",
    )


def build_demo(engine: Engine, settings: Settings) -> gr.Blocks:
    """The whole page; `launch()` is the caller's."""

    def chat_in_ui(
        message: dict, history: list[dict], request: gr.Request, *values: Any
    ) -> Iterator[ChatMessages]:
        shown: ChatMessages = []
        options = options_from_values(settings, values)
        try:
            for shown in respond(
                engine, settings, message, history, options, session_id=request.session_hash
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
        request: gr.Request | None = None,
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
        options = options_from_values(settings, values)
        session = request.session_hash if request else ""
        try:
            for shown in respond(
                engine, settings, message, history or [], options, session_id=session
            ):
                yield answer_text(shown)
        except UserFacingError as exc:
            raise gr.Error(str(exc)) from None

    def show_status() -> tuple[str, dict, gr.Timer]:
        status = engine.status()
        ready = status.state == "ready"
        textbox = gr.MultimodalTextbox(
            interactive=ready, placeholder=t("placeholder" if ready else "placeholder_loading")
        )
        text = t(STATUS_KEYS[status.state]) + " · " + status.message
        return text, textbox, gr.Timer(active=status.state == "loading")

    with Page(title="Qwen2-VL") as demo:
        render_header()
        status = gr.Markdown(elem_id="engine-status")
        # Page order: the chat, its settings, the conversation file; filled in below, as the
        # ChatInterface needs the settings already placed (else it adds its own accordion).
        chat_area = gr.Column(elem_id="chat-area")
        settings_area, file_area = gr.Column(), gr.Column()
        inputs = settings_inputs(settings)
        with settings_area:
            render_settings(inputs)
        with chat_area:
            chat = render_chat(chat_in_ui, inputs)
        with file_area:
            render_conversation_file(chat)
        render_api(chat_api, inputs)
        timer = gr.Timer(0.5)
        outputs = [status, chat.textbox, timer]
        timer.tick(show_status, None, outputs, api_visibility="private")
        demo.load(show_status, None, outputs, api_visibility="private")
    return demo


def render_chat(fn: Any, inputs: list[gr.Component]) -> gr.ChatInterface:
    """The chat: history list, messages with examples, input; Stop, retry, undo, edit, clear."""
    textbox = gr.MultimodalTextbox(
        file_types=FILE_TYPES,
        file_count="multiple",
        interactive=False,  # until the model is ready (show_status)
        placeholder=t("placeholder_loading"),
        sources=["upload"],
        stop_btn=True,  # shown while an answer streams (a custom textbox must ask for it)
        render=False,
    )
    chatbot = gr.Chatbot(
        label=t("chatbot"),
        show_label=False,
        elem_id="chatbot",
        height="60vh",
        buttons=["copy", "copy_all"],
        group_consecutive_messages=False,  # see ChatInterface
        latex_delimiters=[
            {"left": "$$", "right": "$$", "display": True},
            {"left": "$", "right": "$", "display": False},
            {"left": "\\(", "right": "\\)", "display": False},
            {"left": "\\[", "right": "\\]", "display": True},
        ],
        render=False,
    )
    example_messages, example_labels = examples()
    return ChatInterface(
        fn,
        multimodal=True,
        chatbot=chatbot,
        textbox=textbox,
        additional_inputs=inputs,
        examples=example_messages,
        example_labels=example_labels,
        cache_examples=False,  # on Spaces the default would run the model at start-up
        editable=True,
        save_history=True,
        api_name="chat_ui",
        api_visibility="private",
        concurrency_limit=64,
        fill_height=False,
    )


def render_api(fn: Any, inputs: list[gr.Component]) -> None:
    """The documented `/chat` endpoint: hidden components give its parameters their types."""
    with gr.Group(visible=False):
        # No file_types: Gradio would refuse files by extension, without naming them; the app
        # checks what each file holds and names the file it refuses.
        api_message = gr.MultimodalTextbox(file_count="multiple")
        api_history = gr.Chatbot()
        api_answer = gr.Textbox()
    gr.Button(visible=False).click(
        fn, [api_message, api_history, *inputs], api_answer, api_name="chat", concurrency_limit=64
    )
