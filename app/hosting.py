"""Where the demo runs: Spaces detection, the bind address, demo-day passwords, the health route."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from app.config import Settings
from app.engine import Engine

LOCALHOST = "127.0.0.1"


def on_spaces(environ: Mapping[str, str] = os.environ) -> bool:
    """Hugging Face Spaces sets SPACE_ID in every Space's environment."""
    return bool(environ.get("SPACE_ID"))


def server_name(settings: Settings, environ: Mapping[str, str] = os.environ) -> str:
    """The address to bind: 0.0.0.0 only when hosted and not set explicitly, else as given."""
    if settings.server_name == LOCALHOST and on_spaces(environ):
        return "0.0.0.0"
    return settings.server_name


def parse_auth(value: str) -> list[tuple[str, str]] | None:
    """`user:password`, or a file with one `user:password` per line (# comments allowed)."""
    if not value:
        return None
    path = Path(value)
    lines = path.read_text().splitlines() if path.is_file() else [value]
    users = []
    for line in (line.strip() for line in lines):
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            raise SystemExit(f"error: --auth expects user:password, got {line.split(':')[0]!r}…")
        users.append((user, password))
    if not users:
        raise SystemExit(f"error: --auth file {value} holds no user:password line")
    return users


def health_route(engine: Engine, settings: Settings) -> APIRoute:
    """GET /health: 200 once the model answers, 503 while it loads or after it failed.

    Open without a password, so that a load balancer or Spaces can probe it.
    """

    def health() -> JSONResponse:
        status = engine.status()
        body = {
            "status": status.state,
            "message": status.message,
            "backend": settings.backend,
            "model": settings.model or settings.checkpoint_path,
        }
        return JSONResponse(body, status_code=200 if status.state == "ready" else 503)

    return APIRoute("/health", health, methods=["GET"])
