"""Batched generation: rows match their solo answers, and stop or finish alone."""

from __future__ import annotations

import threading

import pytest
import torch
from PIL import Image

from app.config import Settings
from app.engine import ChatRequest, GenerationOptions
from app.engine.batching import collate
from app.engine.local import LocalEngine
from tests.uploads import part, picture


def request(colour: tuple[int, int, int], size: tuple[int, int], tokens: int, **options):
    return ChatRequest(
        messages=[
            {
                "role": "user",
                "content": [
                    part(picture(Image.new("RGB", size, colour))),
                    {"type": "text", "text": f"Colour {colour}?"},
                ],
            }
        ],
        options=GenerationOptions(max_new_tokens=tokens, **options),
    )


@pytest.fixture(scope="module")
def engine(tiny_checkpoint) -> LocalEngine:
    settings = Settings(checkpoint_path=str(tiny_checkpoint), cpu_only=True, max_batch_size=4)
    return LocalEngine(settings).start(background=False)


def run(engine, req, out: dict, key: str, stop_after: int | None = None, started=None) -> None:
    text, tokens = "", 0
    stream = engine.stream(req)
    for delta in stream:
        text += delta.text
        tokens += delta.tokens
        if started is not None and tokens:
            started.set()
        if stop_after is not None and tokens >= stop_after:
            stream.close()
            break
    out[key] = (text, tokens)


def in_parallel(engine: LocalEngine, jobs: dict[str, tuple[ChatRequest, int | None]]) -> dict:
    """Runs the requests while a long one holds the worker, so that they queue up together."""
    out: dict = {}
    busy = threading.Event()
    blocker = request((0, 0, 0), (56, 56), 200)
    threads = [threading.Thread(target=run, args=(engine, blocker, out, "blocker", None, busy))]
    threads[0].start()
    assert busy.wait(60)
    threads += [
        threading.Thread(target=run, args=(engine, req, out, key, stop))
        for key, (req, stop) in jobs.items()
    ]
    for thread in threads[1:]:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return out


def test_batched_rows_match_their_solo_answers(engine):
    a = request((250, 10, 10), (56, 84), 20)
    b = request((10, 250, 10), (112, 56), 12)
    solo = {}
    run(engine, a, solo, "a")
    run(engine, b, solo, "b")
    before = engine._worker.batch_sizes[2] + engine._worker.batch_sizes[3]
    out = in_parallel(engine, {"a": (a, None), "b": (b, None)})
    assert engine._worker.batch_sizes[2] + engine._worker.batch_sizes[3] > before, "batched"
    assert out["a"] == solo["a"]
    assert out["b"] == solo["b"]  # its own, shorter limit; it left the batch on its own


def test_a_stopped_row_leaves_and_the_others_finish(engine):
    long = request((10, 10, 250), (56, 56), 40)
    stopped = request((250, 250, 10), (56, 56), 100_000)
    out = in_parallel(engine, {"long": (long, None), "stopped": (stopped, 3)})
    assert out["long"][1] == 40
    assert 3 <= out["stopped"][1] < 100


def test_seeded_requests_run_alone(engine):
    from app.engine.worker import Job, batch_key

    seeded = Job({}, GenerationOptions(seed=1), streamer=None)
    greedy = Job({}, GenerationOptions(), streamer=None)
    sampled = Job({}, GenerationOptions(temperature=0.7), streamer=None)
    assert batch_key(seeded) is None
    assert batch_key(greedy) == batch_key(Job({}, GenerationOptions(max_new_tokens=3), None))
    assert batch_key(greedy) != batch_key(sampled)


def test_collate_left_pads_and_concatenates_media():
    one = {
        "input_ids": torch.tensor([[5, 6, 7]]),
        "attention_mask": torch.ones(1, 3, dtype=torch.long),
        "pixel_values": torch.ones(4, 2),
        "image_grid_thw": torch.tensor([[1, 2, 2]]),
    }
    two = {"input_ids": torch.tensor([[8]]), "attention_mask": torch.ones(1, 1, dtype=torch.long)}
    batch = collate([one, two], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["pixel_values"].shape == (4, 2)
    assert batch["image_grid_thw"].tolist() == [[1, 2, 2]]


def test_waiting_requests_get_their_place_and_an_estimate(engine):
    worker = engine._worker
    request_a = request((9, 9, 9), (56, 56), 30)
    run(engine, request_a, {}, "warm")  # at least one batch ran: the estimate has a basis
    busy = threading.Event()
    out: dict = {}
    blocker = threading.Thread(
        target=run, args=(engine, request((0, 0, 0), (56, 56), 300), out, "blocker", None, busy)
    )
    blocker.start()
    assert busy.wait(60)
    places = []
    for delta in engine.stream(request((5, 5, 5), (56, 56), 3)):
        if delta.queue_position is not None:
            places.append((delta.queue_position, delta.wait_seconds))
    blocker.join(60)
    assert places and places[0][0] == 1
    assert places[0][1] is not None and places[0][1] > 0
    assert worker.wait_estimate(5) > worker.wait_estimate(1)
