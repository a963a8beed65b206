"""The demo as tools for agents: `ask` and `find_objects`, served over MCP with `--mcp`.

Each tool is a documented API endpoint of the page (`/ask`, `/find_objects`) built on
`app.chat.answer`, like `/chat`; Gradio's MCP server (`launch(mcp_server=True)`) lists the
page's public endpoints as tools, with each function's docstring as the tool's description
and hidden components typing the parameters (a `gr.File` parameter is a file in the tool's
schema). A tool call reaches the function through Gradio's queue like any API call, so the
page's trust rule (`Page.preprocess_data`), the upload limit and the fair-use bounds apply.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import gradio as gr

from app.admission import Abandoned
from app.chat import Shared, Update, answer
from app.config import Settings
from app.engine import Engine
from app.errors import UserFacingError
from app.hosting import StreamTracker, caller_of, refusal

FIND_PROMPT = "Find {objects} in this picture and give their bounding boxes."
NO_BOXES = "The model gave no boxes for {objects!r}. Its answer: {text}"
MCP_FILES = 4  # file parameters of `ask`


def final_update(updates: Iterator[Update]) -> Update:
    """The finished answer of a turn (the last update)."""
    last = Update()
    for update in updates:
        last = update
    return last


def answer_with_notes(update: Update) -> str:
    """The answer's text, followed by every notice of the turn (pages left out, cut off while
    thinking): an agent must know what the model did not see."""
    notes = [
        f"{m['metadata']['title']}: {m['content']}" if m["content"] else m["metadata"]["title"]
        for m in (*update.lead, *update.trailer)
    ]
    return "\n\n".join([update.text, *notes]) if notes else update.text


def register_tools(
    engine: Engine, settings: Settings, shared: Shared, streams: StreamTracker
) -> None:
    """Adds the tools' endpoints to the page; call it inside the page's `with` block."""

    def finished(message: dict[str, Any], request: gr.Request | None) -> Update:
        """The whole answer to one message with the page's default settings, as `/chat` has
        it; refusals become the client's error."""
        caller = caller_of(request, streams)
        updates = answer(engine, settings, message, [], {}, caller=caller, shared=shared)
        try:
            return final_update(updates)
        except UserFacingError as exc:
            raise refusal(exc) from None
        except Abandoned:
            raise gr.Error("Nobody read the answer.", print_exception=False) from None

    def ask(
        question: str,
        file_1: str | None = None,
        file_2: str | None = None,
        file_3: str | None = None,
        file_4: str | None = None,
        request: gr.Request | None = None,
    ) -> str:
        """Ask the vision-language model about images, a video or a document; returns its answer.
        Give each file as a data: URL (base64); links are not fetched.

        Args:
            question: what to ask, e.g. "What is written on the sign?"
            file_1: an image, a video or a document (none: a text-only question)
            file_2: another image, e.g. one to compare with file_1
            file_3: another image
            file_4: another image
        Returns:
            The model's answer as text.
        """
        files = [f for f in (file_1, file_2, file_3, file_4) if f]
        return answer_with_notes(finished({"text": question, "files": files}, request))

    def find_objects(
        image: str, objects: str, request: gr.Request | None = None
    ) -> tuple[str, str | None]:
        """Find objects in a picture; returns their boxes in the picture's pixels as JSON
        {"image", "name", "size": [width, height], "boxes": [{"label", "bbox": [x1, y1, x2, y2]}]},
        and the picture with the boxes drawn. Give the picture as a data: URL (base64); links
        are not fetched.

        Args:
            image: the picture to search
            objects: what to find, e.g. "the cat and the ball"
        Returns:
            The boxes as JSON (a plain message when the model gave no boxes); the drawn picture.
        """
        if not image:
            raise gr.Error("Give the picture to search as `image`.", print_exception=False)
        question = FIND_PROMPT.format(objects=(objects or "").strip() or "the main objects")
        update = finished({"text": question, "files": [image]}, request)
        found = update.details()["grounding"]
        if found is None or not found["boxes"]:
            return NO_BOXES.format(objects=objects, text=answer_with_notes(update)), None
        return json.dumps(found, ensure_ascii=False), update.drawing

    with gr.Group(visible=False):  # the parameters' types (see the module's docstring)
        question, objects = gr.Textbox(label="question"), gr.Textbox(label="objects")
        # One gr.File per file: Gradio 6.31's MCP server converts no list of files (see
        # tests/test_mcp.py). gr.File, not gr.Image: Gradio would decode and re-encode a
        # picture; the app checks what each file holds (app.media) and names a bad one.
        file_inputs = [gr.File(label=f"file_{n}", type="filepath") for n in range(1, MCP_FILES + 1)]
        image = gr.File(label="image", type="filepath")
        text, boxes = gr.Textbox(label="answer"), gr.Textbox(label="boxes")  # JSON as text
        drawn = gr.Image(label="drawing", type="filepath", format="png")
    button = gr.Button(visible=False)
    button.click(ask, [question, *file_inputs], text, api_name="ask", concurrency_limit=64)
    button.click(
        find_objects, [image, objects], [boxes, drawn], api_name="find_objects",
        concurrency_limit=64,
    )  # fmt: skip
