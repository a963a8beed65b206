"""The per-request log line: its format, the anonymous session id, and one line per /chat call."""

from __future__ import annotations

import json
import logging
import time

import pytest
from gradio_client import Client

from app.errors import UserFacingError
from app.requestlog import (
    RequestLog,
    anonymous_id,
    format_line,
    outcome_of,
    tokens_per_second,
)

KEY = b"k" * 16


def test_a_line_is_one_json_object_with_rounded_numbers():
    entry = RequestLog(
        session="5f0c2a9d41b7",
        outcome="ok",
        prompt_tokens=412,
        generated_tokens=64,
        queue_wait_s=0.10412,
        ttft_s=0.35149,
        tokens_per_s=21.349,
        total_s=3.3412,
    )
    line = format_line(entry)
    assert "\n" not in line
    fields = json.loads(line)
    assert fields["queue_wait_s"] == 0.104 and fields["ttft_s"] == 0.351
    assert fields["tokens_per_s"] == 21.3 and fields["prepare_s"] is None
    assert "message" not in fields and "answer" not in fields, "no content unless asked"


def test_content_stays_on_one_line():
    entry = RequestLog(session="-", outcome="ok", message="two\nlines", answer="日本語")
    line = format_line(entry)
    assert "\n" not in line and "日本語" in line
    assert json.loads(line)["message"] == "two\nlines"


def test_the_session_id_is_a_short_keyed_hash():
    raw = "x8k2mq9z1ab"
    first = anonymous_id(raw, KEY)
    assert first == anonymous_id(raw, KEY) and len(first) == 12 and raw not in first
    assert first != anonymous_id("other", KEY)
    assert first != anonymous_id(raw, b"another key....."), "another process, another id"
    assert anonymous_id(raw) == anonymous_id(raw), "one key per process"
    assert anonymous_id("") == "-"


@pytest.mark.parametrize(
    ("exc", "engine_asked", "outcome"),
    [
        (None, True, "ok"),
        (GeneratorExit(), True, "stopped"),
        (UserFacingError("bad file"), False, "rejected"),
        (UserFacingError("server down"), True, "error:engine"),
        (ValueError(), True, "error:ValueError"),
        (ValueError(), False, "error:ValueError"),
    ],
)
def test_outcomes(exc, engine_asked, outcome):
    assert outcome_of(exc, engine_asked) == outcome


def test_tokens_per_second_leaves_out_the_first_token():
    assert tokens_per_second(11, first_token=1.0, end=3.0) == 5.0
    assert tokens_per_second(1, first_token=1.0, end=3.0) is None
    assert tokens_per_second(5, first_token=None, end=3.0) is None


def lines_of(caplog, client: Client) -> list[dict]:
    """The log lines of this client's requests (the UI passes Gradio's session hash on)."""
    ours = anonymous_id(client.session_hash)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "app.requests"]
    return [line for line in lines if line["session"] == ours]


def test_each_chat_request_writes_one_line_without_content(app, caplog):
    caplog.set_level(logging.INFO, logger="app.requests")
    client = Client(app[0], verbose=False)
    client.predict({"text": "a private question", "files": []}, max_new_tokens=3, api_name="/chat")
    [line] = lines_of(caplog, client)
    assert line["outcome"] == "ok" and 1 <= line["generated_tokens"] <= 3
    assert line["prompt_tokens"] > 0 and line["ttft_s"] is not None
    assert client.session_hash not in caplog.text
    assert "private" not in caplog.text


def test_a_cancelled_chat_request_is_logged_as_stopped(app, caplog):
    caplog.set_level(logging.INFO, logger="app.requests")
    client = Client(app[0], verbose=False)
    job = client.submit({"text": "Talk a lot.", "files": []}, max_new_tokens=8000, api_name="/chat")
    deadline = time.monotonic() + 60
    while not any(job.outputs()) and time.monotonic() < deadline:
        time.sleep(0.05)
    job.cancel()  # what the Stop button does
    while not lines_of(caplog, client) and time.monotonic() < deadline:
        time.sleep(0.05)
    [line] = lines_of(caplog, client)
    assert line["outcome"] == "stopped" and 0 < line["generated_tokens"] < 8000
