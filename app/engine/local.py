"""The transformers engine: one worker thread owns the model and serves queued requests in order.

The page opens while the weights load in the background; `status()` says how far it got.
Preprocessing (chat template, image/video tensors) runs in the caller's thread, so the model
worker only ever runs `generate`, and a slow upload never blocks other users' answers.
"""

from __future__ import annotations

import importlib.util
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

from app.config import Settings
from app.engine import ChatRequest, Delta, EngineStatus, Family, GenerationOptions
from app.engine.batching import BatchStreamer, StopRows, collate
from app.errors import UserFacingError
from app.grounding import family_of
from app.media import ImageInput, VideoInput

log = logging.getLogger(__name__)

# How often a waiting consumer gets control back (a heartbeat delta), in seconds. Not a
# timeout: a long prefill simply produces more heartbeats.
HEARTBEAT_SECONDS = 0.1
END_MARKERS = ("<|im_end|>", "<|endoftext|>")


def choose_attention(want_flash: bool, cuda: bool, flash_installed: bool) -> tuple[str, str]:
    """The attention implementation to load with, and why (logged once at start-up)."""
    if not want_flash:
        return "sdpa", "using SDPA attention"
    if not cuda:
        return "sdpa", "--flash-attn2 ignored: no CUDA device, using SDPA attention"
    if not flash_installed:
        return "sdpa", "--flash-attn2 ignored: flash_attn is not installed, using SDPA attention"
    return "flash_attention_2", "using FlashAttention-2"


def check_checkpoint(path: str) -> Any:
    """The checkpoint's config, or exit with a message that names the fix (no traceback)."""
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise SystemExit(
            f"error: cannot load the checkpoint {path!r} ({exc.__class__.__name__}).\n"
            "Pass a local folder with -c/--checkpoint-path, check the network connection to "
            "huggingface.co, or, offline, set HF_HUB_OFFLINE=1 with the model already in the "
            "Hugging Face cache."
        ) from None


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
        text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
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
        if options.top_k > 0:
            kwargs["top_k"] = options.top_k
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
    """The one thread that runs `generate`, first come first served, batching what waits.

    The oldest waiting job always runs next; jobs behind it with the same sampling settings
    join its batch, up to `max_batch_size`.
    """

    def __init__(self, model: Any, pad_token_id: int, max_batch_size: int = 4) -> None:
        self.model = model
        self.pad_token_id = pad_token_id
        self.max_batch_size = max(1, max_batch_size)
        self.eos_token_ids = eos_token_ids(model)
        self._pending: list[Job] = []
        self._ready = threading.Condition()
        self.batch_sizes: Counter[int] = Counter()  # how often each batch size ran
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
            wait = worker.wait_estimate(place) if place else None
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


class LocalEngine:
    """Qwen2-VL / Qwen2.5-VL through transformers, loaded in the background."""

    zero_gpu = False  # load for Spaces ZeroGPU (see app.engine.zerogpu)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.config = check_checkpoint(settings.checkpoint_path)
        self.family: Family = family_of(self.config.model_type)
        self._status = EngineStatus("loading", f"Loading {settings.checkpoint_path}…")
        self.processor: Any = None
        self.model: Any = None
        self._worker: ModelWorker | None = None

    def start(self, background: bool = True) -> LocalEngine:
        if background:
            threading.Thread(target=self._load, name="model-loader", daemon=True).start()
        else:
            self._load()
        return self

    def status(self) -> EngineStatus:
        return self._status

    def _load(self) -> None:
        try:
            self.model, self.processor = load_model(self.settings, self.zero_gpu)
            self._serve()
            self._status = EngineStatus("ready", f"{self.settings.checkpoint_path} is ready.")
        except Exception as exc:
            log.exception("loading the model failed")
            self._status = EngineStatus("failed", f"The model failed to load: {exc}")

    def _serve(self) -> None:
        """Starts what runs `generate` for the loaded model: here, the model worker."""
        pad = self.processor.tokenizer.pad_token_id
        self._worker = ModelWorker(self.model, pad, self.settings.max_batch_size)

    def encode(self, request: ChatRequest) -> dict[str, Any]:
        """Model inputs for a request: chat template, image and video tensors."""
        prompt = self.processor.apply_chat_template(
            request.messages,
            tokenize=False,
            add_generation_prompt=True,
            add_vision_id=request.add_vision_id,
        )
        return processor_inputs(self.processor, prompt, request.media)

    def count_tokens(self, text: str) -> int:
        if self.processor is None:
            raise UserFacingError(self._status.message or "The model is still loading.")
        return len(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _require_ready(self) -> None:
        if self._status.state != "ready":
            raise UserFacingError(self._status.message or "The model is still loading.")

    def stream(self, request: ChatRequest) -> Iterator[Delta]:
        self._require_ready()
        job = Job(self.encode(request), request.options, CountingStreamer(self.processor.tokenizer))
        self._worker.submit(job)
        try:
            yield from read_job(job, self._worker)
        finally:
            job.stop.set()


def processor_inputs(
    processor: Any, prompt: str, media: tuple[ImageInput | VideoInput, ...] | list
) -> dict[str, Any]:
    """Tensors for one prompt. Media arrive already resized, so the processor does not resize."""
    images = [item.image for item in media if isinstance(item, ImageInput)]
    videos = [item for item in media if isinstance(item, VideoInput)]
    kwargs: dict[str, Any] = {"text": [prompt], "return_tensors": "pt"}
    if images:
        kwargs["images"] = images
        kwargs["images_kwargs"] = {"do_resize": False}
    if videos:
        # Pre-sampled frames: the rate goes in video_metadata (a plain fps= is ignored for frame
        # lists, and Qwen2.5-VL's temporal positions would assume 24 fps).
        kwargs["videos"] = [video.frames for video in videos]
        kwargs["video_metadata"] = [
            {"total_num_frames": len(video.frames), "fps": video.fps} for video in videos
        ]
        kwargs["videos_kwargs"] = {"do_resize": False, "do_sample_frames": False}
    return dict(processor(**kwargs))


def load_model(settings: Settings, zero_gpu: bool = False) -> tuple[Any, Any]:
    """Model and processor: bf16 on the GPU (`dtype="auto"`), float32 on the CPU.

    On ZeroGPU the weights are moved with `.to("cuda")` at load time, as ZeroGPU expects.
    """
    cuda = zero_gpu or torch.cuda.is_available() and not settings.cpu_only
    if not cuda and not settings.cpu_only:
        log.warning("no CUDA device found: running on the CPU in float32 (slow)")
    flash_installed = importlib.util.find_spec("flash_attn") is not None
    attention, reason = choose_attention(settings.flash_attn2, cuda, flash_installed)
    log.info(reason)
    placement = {"dtype": "auto", "device_map": "auto"}
    if zero_gpu:
        placement = {"dtype": "auto"}
    elif not cuda:
        placement = {"dtype": torch.float32, "device_map": "cpu"}
    model = AutoModelForImageTextToText.from_pretrained(
        settings.checkpoint_path, attn_implementation=attention, **placement
    ).eval()
    if zero_gpu:
        model.to("cuda")
    processor = AutoProcessor.from_pretrained(settings.checkpoint_path)
    return model, processor
