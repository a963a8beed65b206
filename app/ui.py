"""The Gradio page. It only wires components to `app.chat` and `app.transcript`; no logic here.

Layout: header (logo, title, licence note), engine status, the chat (conversation list, messages
with clickable examples, input with Stop), the Settings accordion (made from `app.options`),
the conversation file buttons (export / import .zip), and the hidden but documented API
endpoints `/chat` (the growing answer) and `/chat_details` (the answer as data, with its
grounding boxes and drawing). Labels are translated with `gr.I18n` (app/i18n.py).

Choices:
- Every event's inputs pass the trust rule before Gradio touches them (`Page.preprocess_data`):
  any event can be called directly by fn_index, with any value.
- Conversations survive a page reload through ChatInterface's `save_history=True`: a
  `gr.BrowserState` list in the browser's localStorage, shown beside the chat with "New chat".
  Gradio encrypts it with a key drawn per server process, so a server restart forgets them (and
  their files live in Gradio's cache); a .zip export is the way to keep a conversation.
- A user turn is one message per file plus one for the text (`app.messages.user_turn_messages`),
  so that editing a question keeps its images and videos.
- The page brings its theme, CSS, labels, favicon and head script to `launch()` (see `Page`).
"""

from __future__ import annotations

import html
import inspect
import time
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

from app import components
from app.admission import Abandoned, Admission
from app.chat import ChatMessages, Shared, answer, respond
from app.config import Settings
from app.cost import preview_turn
from app.engine import Engine
from app.errors import UserFacingError
from app.feedback import rate_answer
from app.hosting import StreamTracker, caller_of, refusal
from app.i18n import TRANSLATIONS, key
from app.markup import EDIT_BOX_SCRIPT, typed_user_text
from app.messages import user_turn_messages
from app.options import FIELDS, NAMES, Field, defaults
from app.requestlog import client_scope, log_refusal
from app.scratch import new_folder
from app.tools import register_tools
from app.transcript import export_transcript, import_transcript
from app.trust import ASSETS, check_client_value

LOGO = ASSETS / "logo.svg"
EXAMPLES = ASSETS / "examples"
FILE_TYPES = ["image", "video", ".pdf"]
GROUNDING_EXAMPLE = "Find the cat and the ball in this picture and give their bounding boxes."
# Gradio's copies of uploads and outputs: checked hourly, removed a day after their last use.
DELETE_CACHE = (3600, 24 * 3600)
PREVIEWS_AT_ONCE = 2  # cost previews computed at once: each reads the headers of a turn's files
STATUS_KEYS = {"loading": "status_loading", "ready": "status_ready", "failed": "status_failed"}
CSS = """
#header { align-items: flex-start; flex-wrap: nowrap; gap: var(--spacing-xl); }
#header-logo { flex: 0 0 56px; min-width: 56px; margin-top: var(--spacing-sm); }
#header-logo img { width: 56px; height: 56px; display: block; }
#header-text h1 { margin: 0 0 var(--spacing-sm) 0; font-size: var(--text-xxl); }
#header-text p { margin: 0; }
#license, #engine-status, #cost-preview {
  font-size: var(--text-sm); color: var(--body-text-color-subdued);
}
#conversation-file { flex-wrap: wrap; }
#chatbot .user-row img { max-height: 12rem; width: auto; }  /* uploads: thumbnails, answers big */
/* Thumbs only under answers (app.feedback): not under notices (statistics, reasoning, queue
   place) nor the drawn boxes, which belong to the answer above them. */
#chatbot .bot-row:has(.thought-group) + .message-buttons button[aria-label$="ike"],
#chatbot .bot-row:has(img) + .message-buttons button[aria-label$="ike"] { display: none; }
/* Nothing a message holds may cover the page: each bubble clips and contains its content. */
#chatbot .message-content { contain: paint; }
#chatbot pre.user-text {
  white-space: pre-wrap; font: inherit; background: none; border: 0; padding: 0; margin: 0;
}
@media (max-width: 640px) {  /* phones: the conversation list scrolls, not pushing the chat down */
  #chat-area .row > .column:first-child > .block { max-height: 7.5rem; overflow-y: auto; }
}
"""


def t(name: str) -> Any:
    """A translated label (the browser's language picks EN or ZH). An I18nData, which Gradio's
    components take wherever they take text, though their type hints say str."""
    return gr.i18n.I18nData(key(name))


MALFORMED = (
    "The request could not be read: its values do not have the form this page sends "
    '(a message is {"text": ..., "files": [...]}; see "Use via API" below the page).'
)


class Page(gr.Blocks):
    """The demo's Blocks: its own theme, CSS, labels, favicon and head script for `launch()`,
    and the trust rule on every event's raw inputs.

    Gradio 6 takes the look in `launch()` rather than `Blocks()`; here it travels with the
    page, so the caller of `launch` (web_demo_mm.serve) passes network options only.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **({"delete_cache": DELETE_CACHE} | kwargs))
        self.streams = StreamTracker()  # whose answer streams are read (web_demo_mm.serve)

    def launch(self, *args: Any, **kwargs: Any) -> Any:
        look: dict[str, Any] = {
            "theme": gr.themes.Soft(primary_hue="indigo", secondary_hue="indigo"),
            "css": CSS,
            "i18n": gr.I18n(**TRANSLATIONS),
            "favicon_path": str(LOGO),
            "head": EDIT_BOX_SCRIPT,
        }
        return super().launch(*args, **(look | kwargs))

    async def preprocess_data(
        self, block_fn: Any, inputs: list[Any], state: Any, explicit_call: bool = False
    ) -> list[Any]:
        """Applies the trust rule to every raw client value of every event.

        This is the one place that sees client values before Gradio downloads the URLs they
        name or copies the files (`processing_utils.async_move_files_to_cache`, and
        `Chatbot.preprocess` for component parts); component-level `preprocess` runs after.
        Undocumented, so tests/test_security.py calls every event with every shape of path.
        Values Gradio cannot read (wrong types, missing inputs, a PDF for a picture) get a
        plain message, with no traceback in the log.
        """
        if explicit_call:
            return await super().preprocess_data(block_fn, inputs, state, explicit_call)
        event = getattr(block_fn, "name", "?")
        try:
            for value in inputs:
                check_client_value(value)
        except UserFacingError as exc:
            log_refusal(event)
            raise refusal(exc) from None
        try:
            return await super().preprocess_data(block_fn, inputs, state, explicit_call)
        except gr.Error:
            raise
        except Exception:  # Gradio's own checks of the values' shapes: a client's mistake
            log_refusal(event)
            raise refusal(UserFacingError(MALFORMED)) from None


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

    def _edit_message(self, history: list, edit_data: gr.EditData) -> Any:
        """The edit box's text comes straight from the event, not through the Chatbot's
        preprocess: read it as typed here too (the page may hold the displayed form)."""
        value = edit_data.value
        if isinstance(value, str):
            edit_data.value = typed_user_text(value)
        return super()._edit_message(history, edit_data)


def setting_component(spec: Field, value: Any, settings: Settings) -> gr.Component:
    """The form control of one setting (unrendered: `render_settings` places it)."""
    common = {"value": value, "label": t(spec.name), "render": False}
    low, high = spec.bounds(settings)
    if spec.kind is str:
        lines = 2 if spec.name == "system_prompt" else 1
        return components.Textbox(lines=lines, placeholder=t(f"{spec.name}_placeholder"), **common)
    if spec.kind is bool:
        return components.Checkbox(visible=spec.name != "enable_thinking", **common)
    if spec.step is not None and low is not None and high is not None:
        return components.Slider(low, high, step=spec.step, **common)
    return components.Number(precision=0 if spec.kind is int else None, **common)


def settings_inputs(settings: Settings, values: dict[str, Any]) -> list[gr.Component]:
    """The settings, in `app.options.FIELDS` order (the order the chat functions receive)."""
    return [setting_component(spec, values[spec.name], settings) for spec in FIELDS]


def render_settings(inputs: list[gr.Component]) -> None:
    """The Settings accordion: text and switches, then the numbers two by two (one on a phone)."""
    numbers = [c for c, spec in zip(inputs, FIELDS, strict=True) if spec.kind in (int, float)]
    with gr.Accordion(t("settings"), open=False, elem_id="settings"):
        for component in inputs:
            if component not in numbers:
                component.render()
        for pair in zip(numbers[::2], numbers[1::2], strict=True):
            with gr.Row():
                for component in pair:
                    component.render()


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


def render_header(title: str) -> None:
    """Logo, the loaded model's name, what the demo does, the licence note."""
    with gr.Row(elem_id="header"):
        gr.HTML(
            f'<img src="gradio_api/file={LOGO}" alt="" width="56" height="56">',
            elem_id="header-logo",
        )
        with gr.Column(elem_id="header-text", scale=1, min_width=0):
            gr.Markdown(f"# {html.escape(title)}", elem_id="model-name")
            gr.Markdown(t("header"))
            gr.Markdown(t("license"), elem_id="license")


def attach_capture(capture: str | None, message: Any) -> tuple[Any, Any]:
    """The message being written with the camera's photo or clip added to its files; the
    camera is cleared for the next one. (Both values come from the client.)"""
    if not capture:
        return gr.skip(), gr.skip()
    message = message if isinstance(message, dict) else {}
    files = message.get("files")
    files = [f for f in files if isinstance(f, str)] if isinstance(files, list) else []
    text = message.get("text") if isinstance(message.get("text"), str) else ""
    return {"text": text, "files": [*files, capture]}, None


def render_camera(textbox: gr.Component) -> None:
    """A photo or a short clip from the webcam, attached to the message (the multimodal
    textbox offers only uploads). Browsers open the camera on HTTPS or localhost only; phones'
    file pickers offer their camera anyway."""
    mirror = gr.WebcamOptions(mirror=False)  # what the camera sees is what the model sees
    with gr.Accordion(t("camera"), open=False, elem_id="camera"), gr.Row():
        photo = gr.Image(
            sources=["webcam"], type="filepath", label=t("camera_photo"), webcam_options=mirror,
            elem_id="camera-photo", height=240,
        )  # fmt: skip
        clip = components.CameraClip(
            sources=["webcam"], label=t("camera_clip"), webcam_options=mirror,
            include_audio=False, elem_id="camera-clip", height=240,
        )  # fmt: skip
    for capture in (photo, clip):
        capture.change(
            attach_capture, [capture, textbox], [textbox, capture], api_visibility="private"
        )


def export_conversation(history: list[dict]) -> Any:
    """The chat as a .zip for the File component (a warning if there is nothing to export)."""
    if not history:
        gr.Warning("There is nothing to export yet.")
        return gr.skip()
    path = new_folder("conversations") / time.strftime("qwen2-vl-conversation-%Y%m%d-%H%M%S.zip")
    return gr.File(value=str(export_transcript(history, path)), visible=True)


def import_conversation(path: str | None, settings: Settings) -> tuple[Any, Any]:
    """The chat of an uploaded .zip, as a new conversation; a bad file changes nothing and
    says why."""
    if not path:
        return gr.skip(), gr.skip()
    limit = int(settings.max_upload_mb * 1024 * 1024)
    try:
        imported = import_transcript(path, new_folder("conversations") / "imported", limit)
    except UserFacingError as exc:
        raise refusal(exc) from None
    return imported, None


def render_conversation_file(chat: gr.ChatInterface, settings: Settings) -> None:
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
        lambda path: import_conversation(path, settings),
        upload,
        [chat.chatbot_value, chat.conversation_id],
        api_visibility="private",
    )


def with_api_signature(function: Callable[..., Any], values: dict[str, Any]) -> Callable:
    """`function(message, history, *settings, request)` documented with the settings' names and
    defaults (from app.options), as Gradio reads a signature for the API description."""
    keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD
    parameters = [
        inspect.Parameter("message", keyword, annotation=dict),
        inspect.Parameter("history", keyword, default=None, annotation=list),
        *(
            inspect.Parameter(spec.name, keyword, default=values[spec.name], annotation=spec.kind)
            for spec in FIELDS
        ),
        inspect.Parameter("request", keyword, default=None, annotation=gr.Request),
    ]
    function.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    # Gradio finds the gr.Request parameter through the type hints, not the signature.
    function.__annotations__ = {p.name: p.annotation for p in parameters}
    return function


def build_demo(engine: Engine, settings: Settings) -> gr.Blocks:
    """The whole page; `launch()` is the caller's."""
    shared = Shared(Admission(settings.max_chats_per_client))
    values = defaults(settings, engine.generation_defaults, engine.prompt_format.thinks)

    def chat_in_ui(
        message: dict, history: list[dict], request: gr.Request, *settings_values: Any
    ) -> Iterator[ChatMessages]:
        yield from respond(
            engine,
            settings,
            message,
            history,
            dict(zip(NAMES, settings_values, strict=True)),
            caller=caller_of(request, demo.streams),
            shared=shared,
        )

    def api_answer(args: tuple[Any, ...]) -> Iterator[Any]:
        message, history, *settings_values, request = args
        try:
            yield from answer(
                engine,
                settings,
                message,
                [] if history is None else history,
                dict(zip(NAMES, settings_values, strict=True)),
                caller=caller_of(request, demo.streams),
                shared=shared,
            )
        except UserFacingError as exc:
            raise refusal(exc) from None
        except Abandoned:
            return  # nobody reads this answer: there is no one to tell

    def chat_api(*args: Any) -> Iterator[str]:
        """Streams the growing answer to `message` after `history` (the chatbot's format)."""
        for update in api_answer(args):
            yield update.text

    def chat_details(*args: Any) -> Iterator[tuple[dict[str, Any], str | None]]:
        """Streams the answer as data; the last one has its statistics and grounding: the boxes
        in the original image's pixels, and the image with the boxes drawn."""
        for update in api_answer(args):
            yield update.details(), update.drawing

    def rate(history: list[dict], data: components.LikeEvent, request: gr.Request) -> None:
        """A thumbs up or down, written to the request log with the rated request's id."""
        caller = caller_of(request, demo.streams)
        try:
            rate_answer(shared.ratings, history, data.index, data.liked, caller.client,
                        caller.session)  # fmt: skip
        except UserFacingError as exc:
            gr.Warning(str(exc))

    def show_cost(
        message: dict | None, history: list[dict] | None, request: gr.Request, *settings_values: Any
    ) -> str:
        """What the attached files will cost, and how full the context will be (app.cost)."""
        preview = preview_turn(
            engine,
            settings,
            message,
            history,
            dict(zip(NAMES, settings_values, strict=True)),
            client_scope(caller_of(request, demo.streams).client),
            shared,
        )
        return preview.markdown() if preview else ""

    def show_status() -> tuple[Any, gr.MultimodalTextbox, gr.Checkbox, gr.Timer]:
        status = engine.status()
        ready = status.state == "ready"
        textbox = gr.MultimodalTextbox(
            interactive=ready, placeholder=t("placeholder" if ready else "placeholder_loading")
        )
        thinking = gr.Checkbox(visible=ready and engine.prompt_format.thinking_switch)
        text = t(STATUS_KEYS[status.state]) + " · " + status.message
        return text, textbox, thinking, gr.Timer(active=status.state == "loading")

    with Page(title=settings.model_title) as demo:
        render_header(settings.model_title)
        status = gr.Markdown(elem_id="engine-status")
        # Page order: the chat, its settings, the conversation file; filled in below, as the
        # ChatInterface needs the settings already placed (else it adds its own accordion).
        chat_area = gr.Column(elem_id="chat-area")
        settings_area, file_area = gr.Column(), gr.Column()
        inputs = settings_inputs(settings, values)
        with settings_area:
            render_settings(inputs)
        with chat_area:
            chat = render_chat(chat_in_ui, inputs)
        with file_area:
            render_conversation_file(chat, settings)
        render_api(
            with_api_signature(chat_api, values),
            with_api_signature(chat_details, values),
            settings,
            values,
        )
        register_tools(engine, settings, shared, demo.streams)
        chat.chatbot.like(rate, chat.chatbot, None, api_visibility="private")
        with chat_area:
            cost = gr.Markdown(elem_id="cost-preview")
            render_camera(chat.textbox)
        gr.on(
            [chat.textbox.change, *(c.change for c in inputs)],  # type: ignore[attr-defined]
            show_cost,
            [chat.textbox, chat.chatbot, *inputs],
            cost,
            api_visibility="private",
            trigger_mode="always_last",
            show_progress="hidden",
            concurrency_limit=PREVIEWS_AT_ONCE,
            concurrency_id="cost-preview",
        )
        timer = gr.Timer(0.5)
        thinking = inputs[NAMES.index("enable_thinking")]  # shown for templates with the switch
        outputs = [status, chat.textbox, thinking, timer]
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
    chatbot = components.Chatbot(
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
    settings: list[str | gr.Component] = [*inputs]
    return ChatInterface(
        fn,
        multimodal=True,
        chatbot=chatbot,
        textbox=textbox,
        additional_inputs=settings,
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


def render_api(
    chat_api: Callable, chat_details: Callable, settings: Settings, values: dict[str, Any]
) -> None:
    """The documented endpoints: hidden components give their parameters their types."""
    with gr.Group(visible=False):
        # No file_types: Gradio would refuse files by extension, without naming them; the app
        # checks what each file holds and names the file it refuses.
        api_message = gr.MultimodalTextbox(file_count="multiple")
        api_history = components.HistoryJSON()
        api_settings = settings_inputs(settings, values)
        for component in api_settings:
            component.render()
        api_answer = gr.Textbox()
        api_details = gr.JSON()
        api_drawing = gr.Image(type="filepath", format="png")
    inputs = [api_message, api_history, *api_settings]
    button = gr.Button(visible=False)
    button.click(chat_api, inputs, api_answer, api_name="chat", concurrency_limit=64)
    button.click(
        chat_details, inputs, [api_details, api_drawing], api_name="chat_details",
        concurrency_limit=64,
    )  # fmt: skip
