"""Shared fixtures: tiny random checkpoints built offline, once per test session."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from app.config import Settings  # noqa: E402  (imports after the offline switch)
from app.engine import ChatRequest  # noqa: E402
from app.tiny_checkpoint import build_tiny_checkpoint  # noqa: E402
from app.trust import upload_folder  # noqa: E402

CACHE = Path(
    os.environ.get("QWEN_DEMO_TEST_CACHE", Path(__file__).parent.parent / "build" / "tests")
)


# Fixtures that load a model, start a server or a subprocess: a test using one (directly or
# through another fixture) is marked for it, and `make test-fast` leaves it out.
HEAVY_FIXTURES = {
    "tiny_checkpoint": "model",
    "tiny_checkpoint_25": "model",
    "tiny_checkpoint_3": "model",
    "tiny_checkpoint_35": "model",
    "tiny_checkpoint_3_moe": "model",
    "tiny_checkpoint_35_moe": "model",
    "tiny_checkpoint_thinking": "model",
    "family_engine": "model",  # tests/test_families.py: each family's engine (getfixturevalue)
    "loaded": "model",  # tests/test_tiny_checkpoint.py: each family's model, loaded
    "app": "server",
    "served": "server",
    "run_python": "subprocess",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture in set(getattr(item, "fixturenames", ())) & HEAVY_FIXTURES.keys():
            item.add_marker(HEAVY_FIXTURES[fixture])


@pytest.fixture
def run_python():
    """Runs `python args...` from the project's root; the completed process (checked)."""
    root = Path(__file__).resolve().parent.parent

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        command = [sys.executable, *args]
        return subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=timeout,
                              check=True)  # fmt: skip

    return run


def pytest_configure(config: pytest.Config) -> None:
    """Test files (tmp_path) live in Gradio's upload folder, as uploads do: the app's trust rule
    (app.trust) opens nothing else. Tests of the rule itself use paths outside it."""
    if not config.option.basetemp:
        checkout = hashlib.blake2b(str(config.rootpath).encode(), digest_size=6).hexdigest()
        parent = Path(upload_folder()) / "pytest"
        parent.mkdir(parents=True, exist_ok=True)
        config.option.basetemp = str(parent / checkout)  # pytest empties it at each run


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Path:
    """A tiny random Qwen2-VL checkpoint, loaded by the tests through the real from_pretrained."""
    return build_tiny_checkpoint(CACHE / "tiny-qwen2-vl", family="qwen2_vl")


@pytest.fixture(scope="session")
def tiny_checkpoint_25() -> Path:
    return build_tiny_checkpoint(CACHE / "tiny-qwen2_5-vl", family="qwen2_5_vl")


@pytest.fixture(scope="session")
def tiny_checkpoint_3() -> Path:
    """Qwen3-VL (Instruct template; patch 16, so images are resized to multiples of 32)."""
    return build_tiny_checkpoint(CACHE / "tiny-qwen3-vl", family="qwen3_vl")


@pytest.fixture(scope="session")
def tiny_checkpoint_35() -> Path:
    """Qwen3.5 (linear-attention layers; thinking template with the enable_thinking switch)."""
    return build_tiny_checkpoint(CACHE / "tiny-qwen3_5", family="qwen3_5")


@pytest.fixture(scope="session")
def tiny_checkpoint_3_moe() -> Path:
    """Qwen3-VL MoE (routed experts in every layer)."""
    return build_tiny_checkpoint(CACHE / "tiny-qwen3-vl-moe", family="qwen3_vl_moe")


@pytest.fixture(scope="session")
def tiny_checkpoint_35_moe() -> Path:
    """Qwen3.5 MoE (linear-attention layers, routed and shared experts)."""
    return build_tiny_checkpoint(CACHE / "tiny-qwen3_5-moe", family="qwen3_5_moe")


@pytest.fixture(scope="session")
def tiny_checkpoint_thinking() -> Path:
    """Qwen3-VL with the Thinking template: prompts end in "<think>\\n" (greedy decoding)."""
    return build_tiny_checkpoint(CACHE / "tiny-qwen3-vl-thinking", family="qwen3_vl_thinking")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Recording:
    """Wraps the real engine and keeps every request it receives (what the model was asked)."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.requests: list[ChatRequest] = []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def stream(self, request: ChatRequest):
        self.requests.append(request)
        yield from self.engine.stream(request)


@pytest.fixture(scope="session")
def app(tiny_checkpoint):
    """The demo on a free port with the tiny checkpoint: (url, the recording engine)."""
    settings = Settings(
        checkpoint_path=str(tiny_checkpoint),
        cpu_only=True,
        server_port=free_port(),
        max_new_tokens=200,  # long enough for a browser to see the answer grow
    )
    from app.engine.local import LocalEngine
    from app.ui import build_demo
    from web_demo_mm import serve

    engine = LocalEngine(settings).start()
    recording = Recording(engine)
    demo = serve(build_demo(recording, settings), engine, settings, block=False)
    deadline = time.monotonic() + 120
    while engine.status().state == "loading" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert engine.status().state == "ready", engine.status()
    yield f"http://127.0.0.1:{settings.server_port}/", recording
    demo.close()


@pytest.fixture(scope="module")
def client(app):
    """A gradio_client Client of the `app` demo (module-scoped: each module's own sessions)."""
    from gradio_client import Client

    return Client(app[0], verbose=False)
