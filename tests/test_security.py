"""The trust rule and bounded costs, tried as an attacker would against the running app.

Every event the page registers is called directly by fn_index (as anyone can), with every shape
of value that names a file: Gradio's FileData with and without its marker, `..` and a link out
of the upload folder, URLs and streams, Chatbot component parts, messages, histories and saved
conversations. Nothing outside the trust rule may be read, copied, downloaded or shown. Then
the API's error messages, jobs nobody reads, per-client bounds and failed logins.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image

from app.admission import Abandoned, Admission, Caller
from app.config import Settings
from app.engine import Delta
from app.errors import UserFacingError
from app.hosting import FREE_LOGIN_FAILURES, LoginThrottle, content_security_policy
from app.trust import UntrustedPathError, check_client_value, trusted_file, upload_folder
from tests.browser import launch_demo
from tests.conftest import Recording, free_port

SECRET = f"top-secret-{uuid.uuid4().hex}"
FILE_DATA = {"_type": "gradio.FileData"}
# A 2x2 PNG as a data: URL (a picture the camera's event would have decoded in the server).
DATA_URL = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGPk5ORk"
    "YGBgYmBgYGBgAAABbgAfXn6dLgAAAABJRU5ErkJggg=="
)


# --- raw access to any event ------------------------------------------------------------------


def config(url: str) -> dict:
    return httpx.get(url + "config").json()


def call_event(url: str, dependency: dict, data: list, timeout: float = 30.0) -> tuple[bool, str]:
    """Calls one event by fn_index, as a client can: (succeeded, everything it answered)."""
    session = uuid.uuid4().hex[:12]
    body = {"data": data, "fn_index": dependency["id"], "session_hash": session}
    headers = {"content-type": "application/json"}  # json.dumps writes NaN, as clients may
    if dependency.get("queue") is False:
        sent = json.dumps(body)
        response = httpx.post(url + "gradio_api/run/predict", content=sent, headers=headers,
                              timeout=timeout)  # fmt: skip
        return response.status_code == 200, response.text
    sent = json.dumps(body | {"event_data": None, "trigger_id": None})
    joined = httpx.post(url + "gradio_api/queue/join", content=sent, headers=headers)
    if joined.status_code != 200:
        return False, joined.text
    answered = []
    params = {"session_hash": session}
    deadline = time.monotonic() + timeout  # heartbeats keep a stream alive: a wall-clock limit
    with httpx.stream("GET", url + "gradio_api/queue/data", params=params, timeout=timeout) as r:
        for line in r.iter_lines():
            answered.append(line)
            if '"process_completed"' in line:
                message = json.loads(line.removeprefix("data:"))
                return bool(message.get("success")), "\n".join(answered)
            if time.monotonic() > deadline:
                raise AssertionError(f"event {dependency['id']} did not end: {answered[-3:]}")
    return False, "\n".join(answered)


@pytest.fixture(scope="module")
def secrets() -> dict[str, Path]:
    """Files outside the trust rule, where Gradio's own output rule would serve them: the
    working directory and the temp folder (not Gradio's). Plus a link to one from inside the
    upload folder."""
    here = Path(tempfile.mkdtemp(prefix="secret-", dir=Path.cwd() / "build"))
    there = Path(tempfile.mkdtemp(prefix="secret-"))
    (here / "notes.txt").write_text(SECRET)
    Image.new("RGB", (40, 40), (1, 2, 3)).save(there / "private.png")
    (there / "config").write_text(SECRET)
    inside = Path(upload_folder()) / "pytest" / f"link-{uuid.uuid4().hex}"
    inside.mkdir(parents=True)
    (inside / "cat.png").symlink_to(there / "private.png")
    (inside / "notes.txt").symlink_to(here / "notes.txt")
    yield {
        "text": here / "notes.txt",
        "image": there / "private.png",
        "config": there / "config",
        "image_link": inside / "cat.png",
        "text_link": inside / "notes.txt",
    }
    for folder in (here, there, inside):
        shutil.rmtree(folder, ignore_errors=True)


def file_data(path: str) -> dict:
    return {"path": path, "meta": FILE_DATA, "orig_name": "cat.png"}


def component(kind: str, path: str) -> dict:
    value = {"path": path}
    return {"type": "component", "component": kind, "value": value, "constructor_args": {}}


def attacks(secrets: dict[str, Path]) -> dict[str, object]:
    """Every shape of client value that names a file, pointing outside the trust rule."""
    text, image = str(secrets["text"]), str(secrets["image"])
    escape = str(Path(upload_folder()) / ".." / ".." / str(secrets["config"]).lstrip("/"))
    as_part = [{"type": "file", "file": file_data(text)}]
    return {
        "file data": file_data(text),
        "file data without marker": {"path": text},
        "dot-dot out of the upload folder": file_data(escape),
        "link out of the upload folder": file_data(str(secrets["image_link"])),
        "text link": {"path": str(secrets["text_link"])},
        "url": file_data("https://huggingface.co/favicon.ico"),
        "url without a path": {"url": "https://huggingface.co/favicon.ico", "meta": FILE_DATA},
        "data url": {"url": DATA_URL, "meta": FILE_DATA, "orig_name": "x.png"},
        "stream": file_data("http://169.254.169.254/latest") | {"is_stream": True},
        "component file": component("file", text),
        "component image": component("image", image),
        "message": {"text": "What is this?", "files": [text]},
        "message with file data": {"text": "What is this?", "files": [file_data(image)]},
        "history": [{"role": "user", "content": as_part}],
        "history with a component": [{"role": "user", "content": [component("file", text)]}],
        "plain history": [{"role": "user", "content": {"path": image}}],
        "saved conversations": [[{"role": "user", "content": [component("image", image)]}]],
    }


def files_holding(folder: Path, needle: bytes) -> list[Path]:
    found = []
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_size < 5_000_000:
            if needle in path.read_bytes():
                found.append(path)
    return found


def test_no_event_opens_a_file_outside_the_trust_rule(app, secrets, monkeypatch):
    """Every registered event, every shape: nothing is read, copied, fetched or served."""
    url, recording = app
    import gradio.image_utils as image_utils
    import gradio.processing_utils as processing

    downloads = []
    monkeypatch.setattr(
        processing, "async_ssrf_protected_download", lambda *a, **k: downloads.append(a)
    )
    decoded = []  # Gradio decodes a data: URL picture in the server, unbounded
    monkeypatch.setattr(image_utils, "decode_base64_to_file", lambda *a, **k: decoded.append(a))
    secret_image = secrets["image"].read_bytes()
    requests_before = len(recording.requests)
    dependencies = config(url)["dependencies"]
    assert len(dependencies) > 40, "the page's events, ChatInterface's included"
    walked = {d.get("api_name") for d in dependencies}
    new_events = {"show_cost", "rate", "attach_capture", "ask", "find_objects"}
    assert new_events <= walked, "cost preview, feedback, camera and the MCP tools are walked"
    calls = [(name, value, d) for name, value in attacks(secrets).items() for d in dependencies]

    def attack(call: tuple) -> tuple[str, int, str]:
        name, value, dependency = call
        _, answer = call_event(url, dependency, [value] * len(dependency["inputs"]))
        return name, dependency["id"], answer

    with ThreadPoolExecutor(8) as pool:  # many clients at once, as an attacker would
        answers = list(pool.map(attack, calls))
    for name, event, answer in answers:
        assert SECRET not in answer, (name, event)
    assert downloads == [], "no URL was fetched"
    assert decoded == [], "no data: URL was decoded"
    assert any("not as links or data: URLs" in a for *_, a in answers), "with a reason"
    cache = Path(upload_folder())
    assert files_holding(cache, SECRET.encode()) == [], "no copy in Gradio's cache"
    copies = [p for p in files_holding(cache, secret_image) if not p.is_symlink()]
    assert copies == [], "the private picture was not copied either"
    assert len(recording.requests) == requests_before, "nothing reached the model"
    assert any("not a file uploaded to this demo" in a for *_, a in answers), "with a reason"
    for path in secrets.values():
        served = httpx.get(url + f"gradio_api/file={path}")
        assert served.status_code != 200 or SECRET not in served.text


def test_values_of_the_wrong_form_get_a_plain_message(app, caplog):
    """The cost preview, the thumbs and the camera, sent what the page never sends: each gets a
    message saying what is wrong (never Gradio's bare "Error"), and no traceback is logged."""
    url, _ = app
    events = {d.get("api_name"): d for d in config(url)["dependencies"]}
    cases = [
        ("show_cost", lambda n: ["a message", "a history", *[None] * (n - 2)]),
        ("show_cost", lambda n: [{"text": "?", "files": "x"}, [1, 2], *[None] * (n - 2)]),
        ("show_cost", lambda n: [{"text": "?"}]),  # too few values
        ("rate", lambda n: [[{"role": "user", "content": 5}]] * n),
        ("rate", lambda n: [[]] * n),  # a valid history, but no event data
        ("attach_capture", lambda n: [12, {"text": 5, "files": []}]),
    ]
    for name, values in cases:
        dependency = events[name]
        succeeded, answer = call_event(url, dependency, values(len(dependency["inputs"])))
        completed = json.loads(answer.splitlines()[-1].removeprefix("data:"))
        error = (completed.get("output") or {}).get("error")
        assert succeeded or (error and error != "Error"), (name, answer[-300:])
    assert "Traceback" not in caplog.text


def test_the_file_proxy_and_urls_are_refused(app):
    url, _ = app
    response = httpx.get(url + "gradio_api/file=https://huggingface.co/favicon.ico")
    assert response.status_code == 403


def test_the_trust_rule_resolves_links_and_dot_dot(secrets, tmp_path):
    inside = tmp_path / "photo.png"  # tests' files live in the upload folder
    inside.write_bytes(b"x")
    assert trusted_file(str(inside)) == inside.resolve()
    for bad in (secrets["image_link"], f"{upload_folder()}/../../etc/passwd", "/etc/passwd"):
        with pytest.raises(UntrustedPathError, match="not a file uploaded to this demo"):
            trusted_file(str(bad))
    with pytest.raises(UntrustedPathError):
        trusted_file("https://example.com/a.png")
    with pytest.raises(UntrustedPathError, match="nested too deeply"):
        nested: list = []
        for _ in range(200):
            nested = [nested]
        check_client_value(nested)
    with pytest.raises(UntrustedPathError, match="not components"):
        check_client_value([{"type": "component", "component": "markdown", "value": "x"}])


# --- the /chat API: clear messages, both history forms, grounding data ------------------------


def test_chat_accepts_the_plain_history_form(client, app):
    history = [
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "Hi!"},
    ]
    answer = client.predict({"text": "And now?", "files": []}, history, max_new_tokens=2,
                            api_name="/chat")  # fmt: skip
    assert answer
    messages = app[1].requests[-1].messages
    assert messages[0]["content"] == [{"type": "text", "text": "Hello there"}]
    assert messages[1] == {"role": "assistant", "content": "Hi!"}


@pytest.mark.parametrize(
    ("history", "words"),
    [
        ("just text", "history must be a list"),
        ({"role": "user"}, "history must be a list"),
        ([{"role": "user", "content": {"path": "/etc/passwd"}}], "'passwd' is not a file"),
    ],
)
def test_a_bad_history_gets_a_message_showing_the_expected_form(client, history, words):
    with pytest.raises(AppError, match=words):
        client.predict({"text": "Hi", "files": []}, history, api_name="/chat")


def raw_chat(url: str, **settings: object) -> tuple[bool, str]:
    """/chat with settings sent as raw JSON (NaN included), as any HTTP client may."""
    dependency = next(d for d in config(url)["dependencies"] if d.get("api_name") == "chat")
    api = Client(url, verbose=False).view_api(return_format="dict", print_info=False)
    names = [p["parameter_name"] for p in api["named_endpoints"]["/chat"]["parameters"]]
    data = [{"text": "Hi", "files": []}, [], *[settings.get(name) for name in names[2:]]]
    return call_event(url, dependency, data)


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"temperature": math.nan}, "Temperature"),
        ({"top_k": "many"}, "Top-k"),
        ({"max_new_tokens": [3]}, "Max new tokens"),
        ({"add_vision_id": "perhaps"}, "true or false"),
        ({"system_prompt": 42}, "System prompt"),
    ],
)
def test_wrong_types_in_settings_get_a_message_naming_the_setting(app, settings, words):
    succeeded, answer = raw_chat(app[0], **settings)
    assert not succeeded and words in answer


def test_out_of_range_settings_are_clamped(app):
    succeeded, _ = raw_chat(app[0], max_pixels=-5, min_pixels=10**12, max_new_tokens=2, seed=-7)
    assert succeeded
    options = app[1].requests[-1].options
    assert options.max_new_tokens == 2 and options.seed is None


# --- jobs nobody reads, one answer per session, per-client bounds -----------------------------


def test_a_job_whose_stream_is_never_read_never_reaches_the_engine(app, caplog):
    url, recording = app
    caplog.set_level(logging.INFO, logger="app.requests")
    dependency = next(d for d in config(url)["dependencies"] if d.get("api_name") == "chat")
    before = len(recording.requests)
    for _ in range(3):
        body = {
            "data": [{"text": "ghost", "files": []}, [], *[None] * (len(dependency["inputs"]) - 2)],
            "fn_index": dependency["id"],
            "session_hash": uuid.uuid4().hex[:12],
        }
        assert httpx.post(url + "gradio_api/queue/join", json=body).status_code == 200
    deadline = time.monotonic() + 30
    while caplog.text.count('"abandoned"') < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert caplog.text.count('"abandoned"') == 3
    assert len(recording.requests) == before, "no generation for them"
    assert Client(url, verbose=False).predict({"text": "real", "files": []}, max_new_tokens=2,
                                              api_name="/chat")  # fmt: skip


def test_one_answer_at_a_time_per_session_and_a_bound_per_client():
    admission = Admission(per_client=2, session_wait=0.2, listen_seconds=0.2)
    first = Caller(client="address:10.0.0.1", session="s1")
    with admission.enter(first):
        with pytest.raises(UserFacingError, match="still being written in this conversation"):
            with admission.enter(first):
                pass
        with admission.enter(Caller(client="address:10.0.0.1", session="s2")):
            with pytest.raises(UserFacingError, match="Too many answers at once"):
                with admission.enter(Caller(client="address:10.0.0.1", session="s3")):
                    pass
            with admission.enter(Caller(client="address:10.0.0.2", session="s4")):
                assert admission.running("address:10.0.0.2") == 1
    assert admission.running("address:10.0.0.1") == 0
    with pytest.raises(Abandoned):
        with admission.enter(Caller(client="c", session="s5", listening=lambda: False)):
            pass
    assert admission.running("c") == 0, "an abandoned answer gives its place back"


def test_a_session_waits_briefly_for_its_previous_answer():
    admission = Admission(per_client=4, session_wait=5.0)
    caller = Caller(client="c", session="s")
    released = threading.Event()

    def hold() -> None:
        with admission.enter(caller):
            released.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(0.1)
    threading.Timer(0.3, released.set).start()
    with admission.enter(caller):  # waits for the first one to end, then runs
        assert admission.running("c") == 1
    holder.join()


class Gate(Recording):
    """The real engine behind a gate: answers wait (with heartbeats) until it opens."""

    def __init__(self, engine) -> None:
        super().__init__(engine)
        self.open = threading.Event()

    def stream(self, request):
        self.requests.append(request)
        while not self.open.wait(0.05):
            yield Delta()
        yield from self.engine.stream(request)


@pytest.fixture(scope="module")
def bounded_app(app):
    """A second page on the same engine: at most 2 answers per client, behind a password."""
    settings = Settings(server_port=free_port(), max_chats_per_client=2, auth="ann:s3cret")
    engine = Gate(app[1].engine)
    engine.open.set()
    demo = launch_demo(engine, settings)
    yield f"http://127.0.0.1:{settings.server_port}/", engine
    demo.close()


def test_a_client_over_its_bound_is_told_to_wait(bounded_app):
    url, engine = bounded_app
    clients = [Client(url, auth=("ann", "s3cret"), verbose=False) for _ in range(3)]
    engine.open.clear()
    held = [c.submit({"text": "held", "files": []}, max_new_tokens=2, api_name="/chat")
            for c in clients[:2]]  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while len(engine.requests) < 2:  # both admitted, waiting at the gate
            assert time.monotonic() < deadline
            time.sleep(0.05)
        third = clients[2].submit({"text": "third", "files": []}, api_name="/chat")
        with pytest.raises(AppError, match="Too many answers at once"):
            third.result(timeout=30)
    finally:
        engine.open.set()
    assert all(job.result(timeout=60) for job in held), "the two admitted answers complete"
    assert clients[2].predict({"text": "third", "files": []}, max_new_tokens=2, api_name="/chat")


def test_failed_logins_are_slowed_down_per_client(bounded_app):
    url, _ = bounded_app
    wrong = {"username": "ann", "password": "guess"}
    codes = [httpx.post(url + "login", data=wrong).status_code for _ in range(FREE_LOGIN_FAILURES)]
    assert codes == [400] * FREE_LOGIN_FAILURES  # then the next try has to wait
    refused = httpx.post(url + "login", data={"username": "ann", "password": "s3cret"})
    assert refused.status_code == 429 and "Try again in" in refused.json()["detail"]
    assert int(refused.headers["retry-after"]) >= 1


def test_the_login_delay_doubles_and_a_success_clears_it():
    now = [0.0]
    throttle = LoginThrottle(clock=lambda: now[0])
    delays = [throttle.delay(n) for n in range(1, 12)]
    assert delays[: FREE_LOGIN_FAILURES - 1] == [0.0] * (FREE_LOGIN_FAILURES - 1)
    assert delays[FREE_LOGIN_FAILURES : FREE_LOGIN_FAILURES + 3] == [2.0, 4.0, 8.0]
    assert max(delays) == 60.0
    for _ in range(5):
        throttle._record("1.2.3.4", ok=False)
    assert throttle._next_try["1.2.3.4"] > now[0]
    throttle._record("1.2.3.4", ok=True)
    assert "1.2.3.4" not in throttle._next_try


def test_the_page_sends_a_policy_that_allows_only_its_own_scripts(app):
    page = httpx.get(app[0])
    policy = page.headers["content-security-policy"]
    assert "'unsafe-inline'" not in policy.split("script-src")[1].split(";")[0]
    assert "img-src 'self' data: blob:" in policy and "form-action 'self'" in policy
    assert policy.count("'sha256-") >= 1, "the page's own inline scripts, by hash"
    assert content_security_policy(b"<script>x</script>").count("'sha256-") == 2  # + the app's
    assert page.headers["x-content-type-options"] == "nosniff"


def test_health_and_status_name_the_model_without_a_server_path(app):
    body = httpx.get(app[0] + "health").json()
    assert body["model"] == "tiny-qwen2-vl" and "/" not in body["message"].split(" is ")[0]
    assert str(app[1].settings.checkpoint_path) not in json.dumps(body)
    assert os.sep + "build" + os.sep not in json.dumps(config(app[0]))
