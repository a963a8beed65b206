"""Qwen2-VL web demo: `python web_demo_mm.py [-c CHECKPOINT] [--cpu-only] [--flash-attn2] ...`."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import gradio as gr
from starlette.middleware import Middleware

from app.config import Settings, parse_args
from app.engine import CheckpointNotFound, Engine
from app.hosting import LoginThrottle, health_route, parse_auth, security_headers, server_name
from app.trust import ASSETS


def serve(demo: gr.Blocks, engine: Engine, settings: Settings, block: bool = True) -> gr.Blocks:
    """Queues and launches the page with the settings' network options, /health, and the
    middlewares in front of Gradio (security headers, login throttle, stream tracking)."""
    middleware = [
        Middleware(security_headers),
        Middleware(LoginThrottle().middleware),
        Middleware(demo.streams.middleware),  # type: ignore[attr-defined]
    ]
    # api_open=False: queued events cannot be called around the queue (and its limits).
    demo.queue(default_concurrency_limit=64, max_size=settings.max_queue_size, api_open=False)
    demo.launch(
        server_name=server_name(settings),
        server_port=settings.server_port,
        share=settings.share,
        inbrowser=settings.inbrowser,
        auth=parse_auth(settings.auth),
        max_file_size=int(settings.max_upload_mb * 1024 * 1024),
        allowed_paths=[str(ASSETS)],  # besides uploads, only the app's own assets are served
        app_kwargs={"routes": [health_route(engine, settings)], "middleware": middleware},
        prevent_thread_lock=not block,
    )
    return demo


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up probes
    settings = parse_args(argv)
    from app.engine import create_engine
    from app.ui import build_demo

    try:
        engine = create_engine(settings)  # local weights load while the page is already up
    except CheckpointNotFound as exc:
        raise SystemExit(f"error: {exc}") from None
    serve(build_demo(engine, settings), engine, settings)


if __name__ == "__main__":
    main()
