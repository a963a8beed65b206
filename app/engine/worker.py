"""The model worker: the one thread that runs `generate`, first come first served.

Requests are encoded in their callers' threads and reach the worker as `Job`s. The oldest
waiting job always runs next; jobs behind it with the same sampling settings join its batch
(`app.engine.batching`), up to `max_batch_size`. Each job has its own streamer (`read_job`
turns it into Deltas, with heartbeats and the queue place while nothing comes) and its own stop
flag, which a stopping criterion reads: Stop or a closed tab ends that row at the next token.
Both the local and the ZeroGPU engine use these pieces.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteriaList, TextIteratorStreamer

from app.engine import END_MARKERS, HEARTBEAT_SECONDS, Delta, GenerationOptions
from app.engine.batching import BatchStreamer, StopRows, collate
from app.errors import UserFacingError

log = logging.getLogger(__name__)


class CountingStreamer(TextIteratorStreamer):
    """A TextIteratorStreamer that sends every token at once and counts them.

    The base class holds text back until a word ends (a space), which delays the first visible
    token by a word; here text is only held while it ends in half a multi-byte character.
    """

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(
            tokenizer, skip_prompt=True, timeout=HEARTBEAT_SECONDS, skip_special_tokens=False
        )
        self.tokens = 0

    def put(self, value: torch.Tensor) -> None:
        if self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        self.tokens += value.numel()
        self.token_cache.extend(value.flatten().tolist())
        text = str(self.tokenizer.decode(self.token_cache, **self.decode_kwargs))
        if text.endswith("\ufffd"):  # half a UTF-8 character: wait for its other bytes
            return
        printable, self.print_len = text[self.print_len :], len(text)
        if text.endswith("\n"):  # decode only the current line next time
            self.token_cache, self.print_len = [], 0
        self.on_finalized_text(printable)


@dataclass(eq=False)
class Job:
    inputs: dict[str, Any]
    options: GenerationOptions
    streamer: CountingStreamer
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    solo: bool = False  # run alone (after its batch failed before its first token)

    @property
    def max_new_tokens(self) -> int:
        return self.options.max_new_tokens


def generate_kwargs(options: GenerationOptions) -> dict[str, Any]:
    """`generate` arguments for the request's sampling settings (temperature 0 = greedy)."""
    kwargs: dict[str, Any] = {
        "max_new_tokens": options.max_new_tokens,
        "repetition_penalty": options.repetition_penalty,
    }
    if options.temperature > 0:
        kwargs |= {"do_sample": True, "temperature": options.temperature, "top_p": options.top_p}
        kwargs["top_k"] = options.top_k  # 0 turns top-k off (not the checkpoint's default)
    else:
        kwargs |= {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    return kwargs


def eos_token_ids(model: Any) -> set[int]:
    eos = model.generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [eos])


def batch_key(job: Job) -> tuple | None:
    """Jobs with equal keys can share a batch; None = runs alone (seeded, so reproducible)."""
    if job.options.seed is not None or job.solo:
        return None
    kwargs = generate_kwargs(job.options)
    del kwargs["max_new_tokens"]  # each row stops at its own limit
    return tuple(sorted(kwargs.items()))


class ModelWorker:
    """The one thread that runs `generate`, first come first served, batching what waits."""

    def __init__(self, model: Any, pad_token_id: int, max_batch_size: int = 4) -> None:
        self.model = model
        self.pad_token_id = pad_token_id
        self.max_batch_size = max(1, max_batch_size)
        self.eos_token_ids = eos_token_ids(model)
        self._pending: list[Job] = []
        self._ready = threading.Condition()
        self.batch_sizes: Counter[int] = Counter()  # how often each batch size ran
        self.steps = 0  # decoding steps of every batch that ended (one token per row each)
        self._batch_seconds: float | None = None  # moving average of a batch's duration
        threading.Thread(target=self._run, name="model-worker", daemon=True).start()

    def submit(self, job: Job) -> None:
        with self._ready:
            self._pending.append(job)
            self._ready.notify()

    def position(self, job: Job) -> int | None:
        """1-based place in the queue, or None once the job runs."""
        with self._ready:
            return self._pending.index(job) + 1 if job in self._pending else None

    def wait_estimate(self, position: int) -> float | None:
        """Seconds until a job at this place starts: batches ahead, the running one half done."""
        if self._batch_seconds is None:
            return None
        batches_ahead = (position - 1) // self.max_batch_size + 0.5
        return batches_ahead * self._batch_seconds

    def _next_batch(self) -> list[Job]:
        with self._ready:
            self._ready.wait_for(lambda: self._pending)
            first = self._pending.pop(0)
            batch, key = [first], batch_key(first)
            for job in list(self._pending) if key is not None else []:
                if len(batch) == self.max_batch_size:
                    break
                if batch_key(job) == key:
                    self._pending.remove(job)
                    batch.append(job)
            return batch

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            for job in [job for job in batch if job.stop.is_set()]:  # gone while waiting
                job.streamer.end()
                batch.remove(job)
            if batch:
                self._run_batch(batch)

    def _run_batch(self, batch: list[Job]) -> None:
        self.batch_sizes[len(batch)] += 1
        streamer = BatchStreamer(batch, self.eos_token_ids)
        started = time.monotonic()
        try:
            generate_batch(self.model, batch, streamer, self.pad_token_id)
            self.steps += streamer.generated
            seconds = time.monotonic() - started
            previous = self._batch_seconds
            self._batch_seconds = seconds if previous is None else 0.8 * previous + 0.2 * seconds
        except Exception as exc:  # reaches the users through their jobs; the worker lives on
            log.exception("generation failed for a batch of %d", len(batch))
            if len(batch) > 1 and streamer.generated == 0:  # nothing sent yet: retry one by one
                with self._ready:
                    for job in batch:
                        job.solo = True
                    self._pending[:0] = batch
                return
            for job in batch:
                job.error = exc
            streamer.end()


@torch.inference_mode()
def generate_batch(
    model: Any, batch: list[Job], streamer: BatchStreamer, pad_token_id: int
) -> None:
    """One `generate` call for jobs that share sampling settings, each row stopping alone."""
    if batch[0].options.seed is not None:
        torch.manual_seed(batch[0].options.seed)
    inputs = collate([job.inputs for job in batch], pad_token_id)
    inputs = {k: v.to(model.device) if hasattr(v, "to") else v for k, v in inputs.items()}
    kwargs = generate_kwargs(batch[0].options)
    kwargs["max_new_tokens"] = max(job.max_new_tokens for job in batch)
    prompt_length = inputs["input_ids"].shape[1]
    model.generate(
        **inputs,
        **kwargs,
        streamer=streamer,
        stopping_criteria=StoppingCriteriaList([StopRows(batch, prompt_length)]),
    )


def read_job(job: Job, worker: ModelWorker | None = None) -> Iterator[Delta]:
    """A job's answer as deltas, with a heartbeat (and its queue place) while nothing comes."""
    counted = 0
    while True:
        try:
            text = next(job.streamer)
        except queue.Empty:
            place = worker.position(job) if worker else None
            wait = worker.wait_estimate(place) if worker and place else None
            yield Delta(queue_position=place, wait_seconds=wait)
            continue
        except StopIteration:
            break
        for marker in END_MARKERS:
            text = text.replace(marker, "")
        tokens, counted = job.streamer.tokens - counted, job.streamer.tokens
        yield Delta(text=text, tokens=tokens)
    if job.error is not None:
        raise UserFacingError(describe_failure(job.error))
    if job.streamer.tokens > counted:
        yield Delta(tokens=job.streamer.tokens - counted)


def describe_failure(exc: BaseException) -> str:
    if isinstance(exc, torch.OutOfMemoryError):
        return (
            "The model ran out of memory. Try fewer or smaller images, a shorter video, "
            "or a lower --max-pixels / --max-frames."
        )
    return f"Generation failed ({exc.__class__.__name__}: {exc}). Please try again."
