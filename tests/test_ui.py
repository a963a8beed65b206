"""The page's wiring without a browser: labels, settings, examples, edit/undo/retry, the API."""

from __future__ import annotations

import importlib.util
import json
import re
import urllib.request
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from app.config import Settings
from app.engine import QWEN2_FORMAT, EngineStatus, GenerationOptions
from app.i18n import EN, GRADIO_ZH, TRANSLATIONS, ZH, key
from app.messages import conversation_messages
from app.options import FIELDS, chat_options
from app.ui import (
    ASSETS,
    EXAMPLES,
    build_demo,
    examples,
    export_conversation,
    import_conversation,
    render_chat,
)


def stub_engine(state: str = "ready") -> SimpleNamespace:
    return SimpleNamespace(
        family="qwen2_vl",
        status=lambda: EngineStatus(state, "stub"),
        generation_defaults={},
        prompt_format=QWEN2_FORMAT,
    )


def test_both_languages_have_every_label():
    assert EN.keys() == ZH.keys()
    assert all(text.strip() for text in [*EN.values(), *ZH.values()])
    assert TRANSLATIONS["zh"].items() >= GRADIO_ZH.items()
    assert TRANSLATIONS["en"][key("settings")] == EN["settings"]


def test_every_translated_label_of_the_page_exists_in_both_languages():
    config = json.dumps(build_demo(stub_engine(), Settings()).get_config_file(), default=str)
    used = set(re.findall(r"qwen_demo_\w+", config))
    assert {key("header"), key("settings"), key("export"), key("max_new_tokens")} <= used
    assert used <= TRANSLATIONS["en"].keys() and used <= TRANSLATIONS["zh"].keys()


def test_the_page_brings_its_labels_theme_and_logo(app):
    with urllib.request.urlopen(f"{app[0]}config") as response:
        config = json.load(response)
    assert config["i18n_translations"]["zh"][key("settings")] == ZH["settings"]
    assert config["theme"] == "soft"
    assert "#header" in config["css"]
    logo = re.search(r'src=\\"(gradio_api/file=[^"\\]+)', json.dumps(config)).group(1)
    with urllib.request.urlopen(app[0] + logo) as response:
        assert response.read().startswith(b"<svg")  # served from assets/, no remote URL


def test_settings_reach_the_engine_request(client, app):
    answer = client.predict(
        {"text": "Hi", "files": []},
        [],
        "Answer in French.",  # system prompt
        max_new_tokens=3,
        temperature=0.5,
        top_p=0.8,
        top_k=5,
        repetition_penalty=1.2,
        seed=7,
        api_name="/chat",
    )
    assert answer
    request = app[1].requests[-1]
    assert request.options == GenerationOptions(3, 0.5, 0.8, 5, 1.2, 7)
    assert request.messages[0] == {"role": "system", "content": "Answer in French."}
    assert request.client not in ("", "-"), "the API request says whose it is (a keyed hash)"


def test_the_api_documents_chat_only_with_the_settings(client):
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert "/chat" in endpoints and "/chat_ui" not in endpoints
    names = [parameter["parameter_name"] for parameter in endpoints["/chat"]["parameters"]]
    assert names[:3] == ["message", "history", "system_prompt"]
    assert "request" not in names and len(names) == 2 + len(FIELDS)
    details = [p["parameter_name"] for p in endpoints["/chat_details"]["parameters"]]
    assert details == names


def test_examples_use_the_committed_media_and_assets_stay_small():
    messages, labels = examples()
    assert len(messages) == len(labels) == 4
    files = [Path(f) for [message] in messages for f in message["files"]]
    assert all(f.is_file() and f.parent == EXAMPLES for f in files)
    assert {f.suffix for f in files} == {".png", ".mp4"}
    size = sum(p.stat().st_size for p in ASSETS.rglob("*") if p.is_file())
    assert size < 1024 * 1024


def test_the_grounding_example_picture_has_its_objects_inside_the_scripted_boxes():
    spec = importlib.util.spec_from_file_location("make_examples", ASSETS / "make_examples.py")
    make_examples = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_examples)
    picture = np.asarray(make_examples.park())
    assert np.array_equal(picture, np.asarray(Image.open(EXAMPLES / "park.png").convert("RGB")))
    height, width, _ = picture.shape
    for colour, (x1, y1, x2, y2) in [((240, 150, 60), (100, 200, 500, 800)),
                                     ((220, 30, 40), (640, 600, 860, 860))]:  # fmt: skip
        ys, xs = np.nonzero((picture == colour).all(axis=-1))
        assert xs.min() >= x1 * width / 1000 and xs.max() <= x2 * width / 1000
        assert ys.min() >= y1 * height / 1000 and ys.max() <= y2 * height / 1000


@pytest.fixture
def chat() -> gr.ChatInterface:
    with gr.Blocks():
        return render_chat(lambda message, history: iter(()), [])


def normalized(messages: list[dict]) -> list[dict]:
    """Messages as gr.Chatbot hands them to event functions."""
    return gr.Chatbot().preprocess(gr.Chatbot().postprocess(messages))


def test_a_turn_is_kept_as_one_message_per_file_and_one_for_the_text(chat):
    history = chat._append_message_to_history({"text": "Same?", "files": ["/a.png", "/b.png"]}, [])
    assert history == [
        {"role": "user", "content": {"path": "/a.png"}},
        {"role": "user", "content": {"path": "/b.png"}},
        {"role": "user", "content": "Same?"},
    ]


def test_editing_a_question_keeps_the_turns_picture(chat, tmp_path):
    picture = tmp_path / "cat.png"
    Image.new("RGB", (8, 8)).save(picture)
    turn = chat._append_message_to_history({"text": "What is it?", "files": [str(picture)]}, [])
    history = normalized([*turn, {"role": "assistant", "content": "A dog."}])
    history[1]["content"] = [{"type": "text", "text": "What colour is it?"}]  # as the page does
    kept, _, message = chat._edit_message(
        history,
        gr.EditData(
            None, {"index": 1, "value": "What colour is it?", "previous_value": "What is it?"}
        ),
    )
    resent = conversation_messages(kept, message)
    assert resent == [
        {
            "role": "user",
            "content": [
                {"type": "file", "path": kept[0]["content"][0]["file"]["path"]},
                {"type": "text", "text": "What colour is it?"},
            ],
        }
    ]


def test_undo_and_retry_take_back_the_whole_turn(chat, tmp_path):
    picture = tmp_path / "cat.png"
    Image.new("RGB", (8, 8)).save(picture)
    first = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi."}]
    turn = chat._append_message_to_history({"text": "And this?", "files": [str(picture)]}, first)
    history = normalized([*turn, {"role": "assistant", "content": "A cat."}])
    before, message = chat._pop_last_user_message(history)
    assert before == history[:2]
    assert message["text"] == "And this?" and len(message["files"]) == 1
    again = chat._append_message_to_history(message, before)
    assert [m["role"] for m in again] == ["user", "assistant", "user", "user"]


def test_exporting_nothing_changes_nothing_and_a_bad_import_says_why(tmp_path):
    with pytest.warns(UserWarning, match="nothing to export"):
        assert isinstance(export_conversation([]), type(gr.skip()))
    bad = tmp_path / "holiday.zip"
    bad.write_text("not a zip")
    with pytest.raises(gr.Error, match="holiday.zip is not a conversation file"):
        import_conversation(str(bad), Settings())


def test_an_exported_chat_imports_as_a_new_conversation(tmp_path):
    picture = tmp_path / "cat.png"
    Image.new("RGB", (8, 8)).save(picture)
    history = normalized([{"role": "user", "content": {"path": str(picture)}}])
    exported = export_conversation(history)
    messages, conversation_id = import_conversation(exported.value["path"], Settings())
    assert conversation_id is None
    assert Path(messages[0]["content"][0]["file"]["path"]).read_bytes() == picture.read_bytes()


def test_the_settings_are_upper_bounded_by_the_server_flags():
    settings = replace(Settings(), min_pixels=784, max_pixels=4000, max_frames=8)
    values = {"max_new_tokens": 10, "seed": -1, "min_pixels": 5000, "max_pixels": 10**9,
              "max_frames": 64}  # fmt: skip
    options = chat_options(values, settings)
    assert (options.media.max_pixels, options.media.min_pixels) == (4000, 4000)
    assert options.media.max_frames == 8 and options.generation.seed is None
