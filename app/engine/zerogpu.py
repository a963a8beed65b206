"""Hugging Face Spaces ZeroGPU: each answer is generated inside a `@spaces.GPU` call.

On ZeroGPU the GPU exists only inside a function decorated with `@spaces.GPU`, which runs in
a forked process: its arguments and yields are pickled, changes made there to objects of the
app never come back, and closing the generator in the app does not by itself stop a
`generate` thread. So `gpu_stream` starts its own streamer and generate thread inside the
call, takes only picklable inputs, yields `Delta`s, and stops and joins the thread in
`finally`. The model is loaded onto `cuda` in the app process (module level), which ZeroGPU
makes available to every call. Outside ZeroGPU the same function runs undecorated, in process.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from app.engine import ChatRequest, Delta, GenerationOptions
from app.engine.batching import BatchStreamer
from app.engine.local import LocalEngine
from app.engine.worker import CountingStreamer, Job, eos_token_ids, generate_batch, read_job

# (model, tokenizer, pad token id, eos ids): module level, so that the GPU process sees it.
log = logging.getLogger(__name__)
_LOADED: tuple[Any, Any, int, set[int]] | None = None
GPU_SECONDS = 120  # what each call asks ZeroGPU for; longer answers are cut by ZeroGPU


def on_zero_gpu(environ: Mapping[str, str] = os.environ) -> bool:
    """A ZeroGPU Space (SPACES_ZERO_GPU=true) with the `spaces` package installed."""
    wanted = environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")
    return wanted and importlib.util.find_spec("spaces") is not None


def gpu_stream(inputs: dict[str, Any], options: GenerationOptions) -> Iterator[Delta]:
    """The answer to encoded inputs; runs where the GPU is (ZeroGPU's forked process)."""
    assert _LOADED is not None, "the model is loaded (ZeroGPUEngine._serve) before any call"
    model, tokenizer, pad_token_id, eos = _LOADED
    job = Job(inputs, options, CountingStreamer(tokenizer))
    thread = threading.Thread(
        target=_generate_or_fail, args=(model, job, BatchStreamer([job], eos), pad_token_id)
    )
    thread.start()
    try:
        yield from read_job(job)
    finally:
        job.stop.set()  # a closed generator must still stop generate
        thread.join()


def _generate_or_fail(model: Any, job: Job, streamer: BatchStreamer, pad_token_id: int) -> None:
    try:
        generate_batch(model, [job], streamer, pad_token_id)
    except Exception as exc:  # read_job turns it into the user's message
        job.error = exc
        streamer.end()


class ZeroGPUEngine(LocalEngine):
    """LocalEngine whose generation runs in ZeroGPU calls instead of a long-lived worker.

    ZeroGPU queues and shares the GPU itself, so there is no worker thread and no batching; GPU
    memory does not outlive a call, so there is no prefix cache either.
    """

    def zero_gpu(self) -> bool:  # off ZeroGPU (tests, a plain GPU box): LocalEngine's placement
        return on_zero_gpu()

    def _serve(self) -> None:
        global _LOADED
        tokenizer = self.processor.tokenizer
        _LOADED = (self.model, tokenizer, tokenizer.pad_token_id, eos_token_ids(self.model))
        self._gpu_stream = _decorate(gpu_stream)
        log.info("prefix cache off: on ZeroGPU the GPU's memory does not outlive a call")

    def stream(self, request: ChatRequest) -> Iterator[Delta]:
        self._require_ready()
        answer = self._gpu_stream(self.encode(request), request.options)
        try:
            yield from answer
        finally:
            answer.close()


def _decorate(function: Any) -> Any:
    if not on_zero_gpu():
        return function
    import spaces

    return spaces.GPU(duration=GPU_SECONDS)(function)
