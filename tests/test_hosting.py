"""Hosting: bind address, demo-day passwords, /health states, auth refusing a wrong password."""

from __future__ import annotations

import shutil
import subprocess

import httpx
import pytest
from gradio_client import Client

from app.config import Settings
from app.engine.local import LocalEngine
from app.hosting import parse_auth, server_name
from app.ui import build_demo
from tests.browser import launch_demo
from tests.conftest import free_port
from web_demo_mm import main, serve


def test_binds_all_interfaces_only_when_hosted():
    assert server_name(Settings(), {}) == "127.0.0.1"
    assert server_name(Settings(), {"SPACE_ID": "me/demo"}) == "0.0.0.0"
    assert server_name(Settings(server_name="10.0.0.5"), {"SPACE_ID": "me/demo"}) == "10.0.0.5"


def test_parse_auth_inline_and_file(tmp_path):
    assert parse_auth("") is None
    assert parse_auth("ann:s3cret:x") == [("ann", "s3cret:x")]
    users = tmp_path / "users.txt"
    users.write_text("# demo day\nann:one\n\nbob:two\n")
    assert parse_auth(str(users)) == [("ann", "one"), ("bob", "two")]
    with pytest.raises(SystemExit, match="user:password"):
        parse_auth("justaname")


@pytest.fixture
def unstarted_app(tiny_checkpoint):
    """A demo whose engine has not loaded yet, behind a password."""
    settings = Settings(
        checkpoint_path=str(tiny_checkpoint),
        cpu_only=True,
        server_port=free_port(),
        auth="ann:s3cret",
    )
    engine = LocalEngine(settings)
    demo = serve(build_demo(engine, settings), engine, settings, block=False)
    yield f"http://127.0.0.1:{settings.server_port}/", engine
    demo.close()


def test_health_says_loading_then_ready_and_needs_no_password(unstarted_app):
    url, engine = unstarted_app
    loading = httpx.get(url + "health")
    assert loading.status_code == 503
    assert loading.json()["status"] == "loading"
    engine.start(background=False)
    ready = httpx.get(url + "health")
    assert ready.status_code == 200
    assert ready.json() | {"message": ""} == {
        "status": "ready",
        "message": "",
        "backend": "local",
        "model": "tiny-qwen2-vl",  # the folder's name, never the server's path
    }
    assert engine.settings.checkpoint_path not in ready.text


def test_auth_refuses_a_wrong_password_and_accepts_the_right_one(unstarted_app):
    url, engine = unstarted_app
    with pytest.raises(Exception, match="(?i)login|auth|credentials|401"):
        Client(url, auth=("ann", "wrong"), verbose=False)
    assert httpx.get(url + "config").status_code == 401
    engine.start(background=False)
    client = Client(url, auth=("ann", "s3cret"), verbose=False)
    assert client.predict({"text": "hi", "files": []}, max_new_tokens=2, api_name="/chat")


def test_failed_model_load_reports_503_with_the_reason(tmp_path, tiny_checkpoint):
    settings = Settings(
        checkpoint_path=str(tiny_checkpoint), cpu_only=True, server_port=free_port()
    )
    engine = LocalEngine(settings)
    engine.settings = Settings(checkpoint_path=str(tmp_path), cpu_only=True)  # weights missing
    engine.start(background=False)
    demo = serve(build_demo(engine, settings), engine, settings, block=False)
    try:
        response = httpx.get(f"http://127.0.0.1:{settings.server_port}/health")
        assert response.status_code == 503
        assert response.json()["status"] == "failed"
        assert "failed to load" in response.json()["message"]
    finally:
        demo.close()


# --- HTTPS for the camera on a local network ---------------------------------------------------


def test_https_with_a_certificate_and_its_key(tiny_checkpoint, tmp_path):
    """Browsers open the camera only on HTTPS (or localhost): --ssl-certfile/--ssl-keyfile."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl makes the test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    settings = Settings(
        checkpoint_path=str(tiny_checkpoint),
        cpu_only=True,
        server_port=free_port(),
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
    )
    demo = launch_demo(LocalEngine(settings).start(background=False), settings)
    try:
        health = httpx.get(f"https://127.0.0.1:{settings.server_port}/health", verify=False)
        assert health.status_code == 200 and health.json()["status"] == "ready"
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{settings.server_port}/health")
    finally:
        demo.close()


def test_a_certificate_without_its_key_stops_the_start():
    with pytest.raises(SystemExit, match="go together"):
        main(["--ssl-certfile", "cert.pem", "--cpu-only"])
