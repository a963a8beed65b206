"""Shared fixtures: tiny random checkpoints built offline, once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from app.tiny_checkpoint import build_tiny_checkpoint  # noqa: E402  (after the offline switch)

CACHE = Path(os.environ.get("QWEN_DEMO_TEST_CACHE", Path(__file__).parent.parent / "build" / "tests"))


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Path:
    """A tiny random Qwen2-VL checkpoint, loaded by the tests through the real from_pretrained."""
    return build_tiny_checkpoint(CACHE / "tiny-qwen2-vl", family="qwen2_vl")


@pytest.fixture(scope="session")
def tiny_checkpoint_25() -> Path:
    return build_tiny_checkpoint(CACHE / "tiny-qwen2_5-vl", family="qwen2_5_vl")
