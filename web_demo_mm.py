"""Qwen2-VL web demo: `python web_demo_mm.py [-c CHECKPOINT] [--cpu-only] [--flash-attn2] ...`."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import gradio as gr

from app.config import Settings, parse_args


def serve(demo: gr.Blocks, settings: Settings, block: bool = True) -> gr.Blocks:
    """Queues and launches the page with the settings' network options."""
    from app.ui import ASSETS

    demo.queue(default_concurrency_limit=64).launch(
        server_name=settings.server_name,
        server_port=settings.server_port,
        share=settings.share,
        inbrowser=settings.inbrowser,
        max_file_size=int(settings.max_upload_mb * 1024 * 1024),
        allowed_paths=[str(ASSETS)],
        prevent_thread_lock=not block,
    )
    return demo


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = parse_args(argv)
    from app.engine import create_engine
    from app.ui import build_demo

    engine = create_engine(settings)  # local weights load while the page is already up
    serve(build_demo(engine, settings), settings)


if __name__ == "__main__":
    main()
