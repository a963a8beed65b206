"""bench/gpu_check.py stays runnable: its CPU fallback, on the tiny shape, prints both rates."""

from __future__ import annotations


def test_gpu_check_runs_on_the_cpu_with_the_tiny_shape(run_python):
    result = run_python("bench/gpu_check.py", "--shape", "tiny", "--tokens", "6")
    assert "engine       : 6 tokens" in result.stdout
    assert "raw generate : 6 tokens" in result.stdout
