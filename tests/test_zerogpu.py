"""The ZeroGPU path, run in process (outside a Space `spaces.GPU` would be a pass-through)."""

from __future__ import annotations

import time

from PIL import Image

from app.config import Settings
from app.engine import ChatRequest, GenerationOptions
from app.engine.zerogpu import ZeroGPUEngine, on_zero_gpu
from tests.uploads import part, picture


def request(tokens: int) -> ChatRequest:
    return ChatRequest(
        messages=[
            {
                "role": "user",
                "content": [
                    part(picture(Image.new("RGB", (56, 56), "blue"))),
                    {"type": "text", "text": "What is it?"},
                ],
            }
        ],
        options=GenerationOptions(max_new_tokens=tokens),
    )


def test_detects_zero_gpu_spaces_only():
    assert not on_zero_gpu({})
    assert not on_zero_gpu({"SPACES_ZERO_GPU": "false"})


def test_streams_inside_the_gpu_call_and_a_closed_stream_stops_generate(tiny_checkpoint):
    engine = ZeroGPUEngine(Settings(checkpoint_path=str(tiny_checkpoint), cpu_only=True))
    engine.start(background=False)
    deltas = list(engine.stream(request(9)))
    assert sum(d.tokens for d in deltas) == 9 and "".join(d.text for d in deltas)
    stream = engine.stream(request(100_000))
    next(d for d in stream if d.text)
    started = time.monotonic()
    stream.close()  # joins the generate thread: it must have stopped
    assert time.monotonic() - started < 60
