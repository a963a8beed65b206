"""The model worker: the one thread that runs `generate`, first come first served.

Requests are encoded in their callers' threads and reach the worker as `Job`s. The oldest
waiting job always runs next; jobs behind it with the same sampling settings join its batch
(`app.engine.batching`), up to `max_batch_size`. Each job has its own streamer (`read_job`
turns it into Deltas, with heartbeats and the queue place while nothing comes) and its own stop
flag, which a stopping criterion reads: Stop or a closed tab ends that row at the next token.
Both the local and the ZeroGPU engine use these pieces.

With a prefix cache (`app.engine.prefix_cache`), a batch runs in two steps: each row's prompt
is prefilled alone, from its client's longest kept prefix (only the rest of its tokens, and
only its new images and videos, are computed), up to its last token; then the rows' caches are
left-padded and stacked, and one `generate` decodes them together, starting from each row's
last prompt token. Afterwards each row's cache (prompt and answer) is kept for the next turn.
Prefill is the part a batch cannot share on a CPU anyway; decoding is what batching speeds up.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache, StoppingCriteriaList, TextIteratorStreamer

from app.engine import END_MARKERS, HEARTBEAT_SECONDS, Delta, GenerationOptions
from app.engine.batching import BatchStreamer, StopRows, collate, left_pad
from app.engine.prefix_cache import (
    Kept,
    PrefixCache,
    from_tensors,
    media_slices,
    mrope_positions,
    tensors,
    vision_blocks,
)
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


# Prompts longer than this are prefilled in chunks of it (bounded activation memory).
PREFILL_CHUNK_TOKENS = 2048
# How long a batch waits for requests already on their way (being encoded in their callers'
# threads) before it starts without them: users of one demo tend to ask at the same moments.
ARRIVAL_WAIT_SECONDS = 0.05


@dataclass(eq=False)
class Job:
    inputs: dict[str, Any]
    options: GenerationOptions
    streamer: CountingStreamer
    scope: str = ""  # whose kept caches it may use (a keyed hash of the client)
    media_keys: list[Any] = field(default_factory=list)  # content keys of its images and videos
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    solo: bool = False  # run alone (after its batch failed before its first token)
    cached_tokens: int | None = None  # prompt tokens taken from a kept cache, once prefilled

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

    def __init__(
        self,
        model: Any,
        pad_token_id: int,
        max_batch_size: int = 4,
        prefix_cache: PrefixCache | None = None,
    ) -> None:
        self.model = model
        self.pad_token_id = pad_token_id
        self.prefix_cache = prefix_cache
        self.max_batch_size = max(1, max_batch_size)
        self.eos_token_ids = eos_token_ids(model)
        self._pending: list[Job] = []
        self._arriving = 0  # requests being encoded, about to be submitted
        self._ready = threading.Condition()
        self.batch_sizes: Counter[int] = Counter()  # how often each batch size ran
        self.steps = 0  # decoding steps of every batch that ended (one token per row each)
        self._batch_seconds: float | None = None  # moving average of a batch's duration
        threading.Thread(target=self._run, name="model-worker", daemon=True).start()

    def arriving(self) -> contextlib.AbstractContextManager[None]:
        """Around a request's encoding: the next batch may wait a moment for it."""
        return _Arriving(self)

    def submit(self, job: Job) -> None:
        with self._ready:
            self._pending.append(job)
            self._ready.notify_all()

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
            if self._arriving and len(self._pending) < self.max_batch_size:
                deadline = time.monotonic() + ARRIVAL_WAIT_SECONDS
                while self._arriving and len(self._pending) < self.max_batch_size:
                    if not self._ready.wait(max(0.0, deadline - time.monotonic())):
                        break
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
            if self.prefix_cache is None:
                generate_batch(self.model, batch, streamer, self.pad_token_id)
            else:
                generate_from_caches(self.model, batch, streamer, self.pad_token_id,
                                     self.prefix_cache)  # fmt: skip
            self.steps += streamer.generated
            seconds = time.monotonic() - started
            previous = self._batch_seconds
            self._batch_seconds = seconds if previous is None else 0.8 * previous + 0.2 * seconds
        except Exception as exc:  # reaches the users through their jobs; the worker lives on
            log.exception("generation failed for a batch of %d", len(batch))
            if isinstance(exc, torch.OutOfMemoryError) and self.prefix_cache is not None:
                self.prefix_cache.clear()  # kept caches never cost an answer its memory
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            retry = len(batch) > 1 or isinstance(exc, torch.OutOfMemoryError) and not batch[0].solo
            if retry and streamer.generated == 0:  # nothing sent yet: retry one by one
                with self._ready:
                    for job in batch:
                        job.solo = True
                    self._pending[:0] = batch
                return
            for job in batch:
                job.error = exc
            streamer.end()


class _Arriving:
    """Counts a request as arriving while it is encoded (ModelWorker.arriving)."""

    def __init__(self, worker: ModelWorker) -> None:
        self.worker = worker

    def __enter__(self) -> None:
        with self.worker._ready:
            self.worker._arriving += 1

    def __exit__(self, *exc: object) -> None:
        with self.worker._ready:
            self.worker._arriving -= 1
            self.worker._ready.notify_all()


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


@torch.inference_mode()
def generate_from_caches(
    model: Any, batch: list[Job], streamer: BatchStreamer, pad_token_id: int, kept: PrefixCache
) -> None:
    """Each row prefilled from its client's kept cache, then decoded together (module doc)."""
    rows = [_prefill(model, job, kept) for job in batch]
    inputs = _stack(rows, pad_token_id)
    if batch[0].options.seed is not None:
        torch.manual_seed(batch[0].options.seed)
    kwargs = generate_kwargs(batch[0].options)
    kwargs["max_new_tokens"] = max(job.max_new_tokens for job in batch)
    width = inputs["input_ids"].shape[1]
    output = model.generate(
        **inputs,
        **kwargs,
        streamer=streamer,
        stopping_criteria=StoppingCriteriaList([StopRows(batch, width)]),
        return_dict_in_generate=True,
    )
    for index, (job, row) in enumerate(zip(batch, rows, strict=True)):
        generated = job.streamer.tokens
        length = len(row.ids) + generated - 1  # the last token of an answer is never fed back
        pad = width - len(row.ids)
        layers = [
            (
                k[index : index + 1, :, pad : pad + length],
                v[index : index + 1, :, pad : pad + length],
            )
            for k, v in tensors(inputs["cache"])
        ]
        answer = output.sequences[index, width : width + generated].tolist()
        ids = (row.ids + answer)[:length]
        kept.keep(Kept(job.scope, ids, job.media_keys, from_tensors(layers)))


@dataclass
class _Row:
    """One request after its prefill: its prompt ids, M-RoPE positions, and a cache holding
    every prompt token but the last."""

    ids: list[int]
    positions: torch.Tensor
    types: torch.Tensor
    cache: DynamicCache


def _prefill(model: Any, job: Job, kept: PrefixCache) -> _Row:
    inputs = {k: v.to(model.device) if hasattr(v, "to") else v for k, v in job.inputs.items()}
    ids = inputs["input_ids"][0].tolist()
    blocks = vision_blocks(inputs["mm_token_type_ids"])
    positions = mrope_positions(model, inputs)
    cache, start = kept.lookup(job.scope, ids, blocks, job.media_keys)
    job.cached_tokens = start
    cache = cache if cache is not None else DynamicCache(config=model.config)
    end = len(ids) - 1
    if end > start:  # the prompt but its last token, after the kept prefix
        chunk = PREFILL_CHUNK_TOKENS if end - start > PREFILL_CHUNK_TOKENS else None
        model.generate(
            input_ids=inputs["input_ids"][:, :end],
            mm_token_type_ids=inputs["mm_token_type_ids"][:, :end],
            position_ids=positions[..., :end],
            cache=cache,
            max_new_tokens=1,
            prefill_chunk_size=chunk,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            **media_slices(inputs, blocks, start),
        )
        # generate never feeds back the token it produced: the cache holds the `end` tokens
    assert cache.get_seq_length() == end, (cache.get_seq_length(), end)
    return _Row(ids, positions, inputs["mm_token_type_ids"], cache)


def _stack(rows: list[_Row], pad_token_id: int) -> dict[str, Any]:
    """`generate` inputs for rows whose caches hold all but their last prompt token: ids, mask,
    positions and caches left-padded to the longest row (pads are masked out)."""
    width = max(len(row.ids) for row in rows)
    device = rows[0].positions.device

    def padded(values: torch.Tensor, fill: int) -> torch.Tensor:
        return left_pad(values, width, fill)

    ids = torch.cat([padded(torch.tensor([row.ids], device=device), pad_token_id) for row in rows])
    mask = torch.cat([padded(torch.ones(1, len(row.ids), dtype=torch.long, device=device), 0)
                      for row in rows])  # fmt: skip
    types = torch.cat([padded(row.types, 0) for row in rows])
    positions = torch.cat(
        [torch.stack([padded(p, 0) for p in row.positions]) for row in rows], dim=1
    )
    layers = []
    for per_row in zip(*(tensors(row.cache) for row in rows), strict=True):
        keys, values = [], []
        for k, v in per_row:
            pad = (width - 1) - k.shape[-2]
            keys.append(torch.nn.functional.pad(k, (0, 0, pad, 0)))
            values.append(torch.nn.functional.pad(v, (0, 0, pad, 0)))
        layers.append((torch.cat(keys), torch.cat(values)))
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "mm_token_type_ids": types,
        "position_ids": positions,
        "cache": from_tensors(layers),
    }


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
        yield Delta(text=text, tokens=tokens, cached_tokens=job.cached_tokens)
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
