"""Several users at once: separate histories, and one user's Stop leaves the others streaming."""

from __future__ import annotations

import threading
import time

from gradio_client import Client, handle_file
from PIL import Image

from app.messages import media_of

COLOURS = [(230, 30, 30), (30, 230, 30), (30, 30, 230)]


def converse(url: str, index: int, image_dir, answers: dict) -> None:
    """Two turns about this session's own image, the second carrying this session's history."""
    client = Client(url, verbose=False)
    image = image_dir / f"session{index}.png"
    Image.new("RGB", (56 + 28 * index, 56), COLOURS[index]).save(image)
    first_text = f"session {index}: what colour?"
    first = client.predict(
        {"text": first_text, "files": [handle_file(image)]}, max_new_tokens=16, api_name="/chat"
    )
    history = [
        {"role": "user", "content": [{"type": "file", "file": handle_file(image)}]},
        {"role": "user", "content": [{"type": "text", "text": first_text}]},
        {"role": "assistant", "content": [{"type": "text", "text": first}]},
    ]
    answers[index] = client.predict(
        {"text": f"session {index}: and now?", "files": []},
        history,
        max_new_tokens=16,
        api_name="/chat",
    )


def test_parallel_sessions_never_see_each_other(app, tmp_path):
    url, recording = app
    before = len(recording.requests)
    answers: dict = {}
    threads = [
        threading.Thread(target=converse, args=(url, i, tmp_path, answers)) for i in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(answers) == [0, 1, 2]
    requests = recording.requests[before:]
    assert len(requests) == 6
    for request in requests:
        texts = [
            part["text"]
            for m in request.messages
            if m["role"] == "user"
            for part in m["content"]
            if part["type"] == "text"
        ]
        owner = int(texts[0].split()[1].rstrip(":"))
        assert all(text.startswith(f"session {owner}:") for text in texts)
        [media] = media_of(request.messages)
        image = media.decode().image
        assert image.getpixel((0, 0)) == COLOURS[owner], "its own image, nobody else's"


def wait_for_text(job, deadline: float) -> None:
    while not any(job.outputs()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert any(job.outputs()), "the answer started"


def test_one_session_stopping_leaves_the_others_streaming(app):
    """Two answers share a batch (queued behind a third); one is stopped, the other finishes."""
    url, recording = app
    clients = [Client(url, verbose=False) for _ in range(3)]
    batches_before = recording.engine._worker.batch_sizes[2]
    blocker = clients[0].submit(
        {"text": "first", "files": []}, max_new_tokens=200, api_name="/chat"
    )
    deadline = time.monotonic() + 60
    wait_for_text(blocker, deadline)
    stopped = clients[1].submit(
        {"text": "long", "files": []}, max_new_tokens=8000, api_name="/chat"
    )
    other = clients[2].submit({"text": "other", "files": []}, max_new_tokens=400, api_name="/chat")
    wait_for_text(stopped, deadline)
    wait_for_text(other, deadline)
    stopped.cancel()
    other.result()
    outputs = [o for o in other.outputs() if o]
    assert recording.engine._worker.batch_sizes[2] > batches_before, "they shared a batch"
    assert len(outputs) > 2 and outputs[-1].startswith(outputs[0])
    assert other.status().success
