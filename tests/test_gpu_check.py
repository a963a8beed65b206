"""bench/gpu_check.py stays runnable: its CPU fallback, on the tiny shape, prints both rates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_on_the_cpu_with_the_tiny_shape():
    result = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--shape", "tiny", "--tokens", "6"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert "engine       : 6 tokens" in result.stdout
    assert "raw generate : 6 tokens" in result.stdout
