"""Qwen2-VL web demo: `python web_demo_mm.py [-c CHECKPOINT] [--cpu-only] [--flash-attn2] ...`."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from app.config import Settings, parse_args


def launch(settings: Settings, block: bool = True):
    """Starts the engine (loading in the background) and the page; returns the running demo."""
    from app.engine.local import LocalEngine
    from app.ui import ASSETS, build_demo

    engine = LocalEngine(settings).start()
    demo = build_demo(engine, settings)
    demo.queue(default_concurrency_limit=64).launch(
        server_name=settings.server_name,
        server_port=settings.server_port,
        share=settings.share,
        inbrowser=settings.inbrowser,
        max_file_size=f"{settings.max_upload_mb}mb",
        allowed_paths=[str(ASSETS)],
        prevent_thread_lock=not block,
    )
    return demo, engine


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    launch(parse_args(argv))


if __name__ == "__main__":
    main()
