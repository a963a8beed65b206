"""Qwen2-VL web demo: `python web_demo_mm.py [-c CHECKPOINT] [--cpu-only] [--flash-attn2] ...`."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import gradio as gr
from starlette.middleware import Middleware

from app.config import Settings, parse_args
from app.engine import CheckpointNotFound, Engine
from app.hosting import (
    LoginThrottle,
    body_limit,
    health_route,
    parse_auth,
    security_headers,
    server_name,
)
from app.trust import ASSETS


def refuse_bad_combinations(settings: Settings) -> None:
    """Flags that cannot go together stop the start, saying why. --mcp with --auth: Gradio's
    MCP routes check no login, so the tools (and the list of them) would be open to anyone the
    password keeps out of the page."""
    if bool(settings.ssl_certfile) != bool(settings.ssl_keyfile):
        raise SystemExit("error: --ssl-certfile and --ssl-keyfile go together.")
    if settings.mcp and settings.auth:
        raise SystemExit(
            "error: --mcp cannot be combined with --auth: Gradio's MCP server "
            "(/gradio_api/mcp) does not check the login, so anyone could call the tools. "
            "Serve the tools without a password on a private address, or leave out --mcp."
        )


MCP_PATH = "/gradio_api/mcp"


def mcp_body_bytes(settings: Settings) -> int:
    """The most one MCP call may send: one file at the upload limit, in base64, and its JSON,
    and never more than the mcp library's own limit (4 MB), which answers a bare "Request body
    too large" (Gradio does not let it be raised)."""
    from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE

    one_file = int(settings.max_upload_mb * 1024 * 1024 * 4 / 3) + 1024 * 1024
    return min(one_file, DEFAULT_MAX_REQUEST_BODY_SIZE)


MCP_TOO_LARGE = "Send larger files through the page or the /chat API (see the README)."


def serve(demo: gr.Blocks, engine: Engine, settings: Settings, block: bool = True) -> gr.Blocks:
    """Queues and launches the page with the settings' network options, /health, and the
    middlewares in front of Gradio (security headers, login throttle, stream tracking);
    with --mcp, the page's tools over MCP too."""
    refuse_bad_combinations(settings)
    middleware = [
        Middleware(security_headers),
        Middleware(LoginThrottle().middleware),
        Middleware(demo.streams.middleware),  # type: ignore[attr-defined]
        Middleware(body_limit(MCP_PATH, mcp_body_bytes(settings), MCP_TOO_LARGE)),
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
        mcp_server=settings.mcp,  # False also overrides GRADIO_MCP_SERVER in the environment
        ssl_certfile=settings.ssl_certfile or None,
        ssl_keyfile=settings.ssl_keyfile or None,
        ssl_verify=False,  # Gradio's start-up probe of itself: a demo day's cert is self-signed
    )
    return demo


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up probes
    settings = parse_args(argv)
    refuse_bad_combinations(settings)  # before the weights load
    from app.engine import create_engine
    from app.ui import build_demo

    try:
        engine = create_engine(settings)  # local weights load while the page is already up
    except CheckpointNotFound as exc:
        raise SystemExit(f"error: {exc}") from None
    serve(build_demo(engine, settings), engine, settings)


if __name__ == "__main__":
    main()
