"""The transformers engine: the model loads in the background, a worker thread generates.

The page opens while the weights load; `status()` says how far it got. Encoding (chat template,
decoding the request's media, image/video tensors) runs in the caller's thread, so the model
worker (`app.engine.worker`) only ever runs `generate`, and a slow upload never blocks other
users' answers.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    DynamicCache,
    GenerationConfig,
)

from app.config import Settings
from app.engine import (
    ChatRequest,
    CheckpointNotFound,
    Delta,
    EngineStatus,
    Family,
    PromptFormat,
)
from app.engine.prefix_cache import PrefixCache, supports_prefix_cache
from app.engine.worker import CountingStreamer, Job, ModelWorker, read_job
from app.errors import UserFacingError
from app.grounding import family_of
from app.media import Geometry, ImageInput, VideoInput, decode_all
from app.messages import TEMPLATE_TOKENS, media_of
from app.options import generation_defaults

log = logging.getLogger(__name__)

MILLISECONDS = 1000
# The chat template writes a video like an image. Qwen3-VL's processor (transformers 5.24) only
# replaces the pad, which would leave these markers around its own per-group markers and times,
# a layout the model was not trained on: it gets the bare pad instead.
VIDEO_PLACEHOLDER = "<|vision_start|><|video_pad|><|vision_end|>"


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
    """The checkpoint's config; CheckpointNotFound names the fix when it cannot be read."""
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise CheckpointNotFound(
            f"cannot load the checkpoint {path!r} ({exc.__class__.__name__}).\n"
            "Pass a local folder with -c/--checkpoint-path, check the network connection to "
            "huggingface.co, or, offline, set HF_HUB_OFFLINE=1 with the model already in the "
            "Hugging Face cache."
        ) from None


def checkpoint_generation_config(settings: Settings) -> Any:
    """The checkpoint's generation_config.json (None if it has none): its sampling defaults."""
    try:
        return GenerationConfig.from_pretrained(settings.checkpoint_path)
    except (OSError, ValueError):
        return None


def processor_geometry(processor: Any) -> Geometry:
    """How the loaded processor cuts pictures into tokens (patch, merge, temporal sizes)."""
    images = processor.image_processor
    return Geometry(
        patch_size=int(images.patch_size),
        merge_size=int(images.merge_size),
        temporal_patch_size=int(images.temporal_patch_size),
    )


def template_format(processor: Any) -> PromptFormat:
    """What the loaded chat template writes around the messages, read from a rendered probe."""
    probe = [{"role": "user", "content": [{"type": "text", "text": "X"}]}]
    bare = processor.apply_chat_template(probe, tokenize=False)
    prompt = processor.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
    user_turn = "<|im_start|>user\nX<|im_end|>\n"
    return PromptFormat(
        default_system=bare[: bare.index(user_turn)] if user_turn in bare else "",
        generation_prompt=prompt[len(bare) :],
        video_times=writes_timestamps(processor),
        thinking_switch="enable_thinking" in str(processor.chat_template or ""),
    )


def special_tokens(tokenizer: Any) -> tuple[str, ...]:
    """Every special token of the loaded tokenizer (those the chat template may write)."""
    added = [t.content for t in tokenizer.added_tokens_decoder.values() if t.special]
    return tuple(dict.fromkeys([*TEMPLATE_TOKENS, *added, *tokenizer.all_special_tokens]))


class LocalEngine:
    """Qwen-VL models through transformers, loaded in the background."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.config = check_checkpoint(settings.checkpoint_path)
        self.family: Family = family_of(self.config.model_type)
        # The processor (small) loads now: the page's settings depend on its template.
        self.processor: Any = load_processor(settings.checkpoint_path)
        self.geometry: Geometry = processor_geometry(self.processor)
        self.template_tokens: Sequence[str] = special_tokens(self.processor.tokenizer)
        self.prompt_format: PromptFormat = template_format(self.processor)
        self.generation_defaults: Mapping[str, float] = generation_defaults(
            checkpoint_generation_config(settings)
        )
        self._status = EngineStatus("loading", f"Loading {settings.model_name}…")
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

    def zero_gpu(self) -> bool:
        """Whether to load for Spaces ZeroGPU (app.engine.zerogpu): never here."""
        return False

    def _load(self) -> None:
        try:
            self.model = load_model(self.settings, self.zero_gpu())
            self._serve()
            self._status = EngineStatus("ready", f"{self.settings.model_name} is ready.")
        except Exception as exc:
            log.exception("loading the model failed")
            self._status = EngineStatus(
                "failed", f"The model failed to load ({exc.__class__.__name__}); see the log."
            )

    def _serve(self) -> None:
        """Starts what runs `generate` for the loaded model: here, the model worker."""
        pad = self.processor.tokenizer.pad_token_id
        cache = prefix_cache(self.model, self.settings.prefix_cache_mb)
        self._worker = ModelWorker(self.model, pad, self.settings.max_batch_size, cache)

    def encode(self, request: ChatRequest) -> dict[str, Any]:
        """Model inputs for a request: chat template, the media decoded, image/video tensors."""
        switch = {"enable_thinking": request.enable_thinking}
        prompt = self.processor.apply_chat_template(
            list(request.messages),
            tokenize=False,
            add_generation_prompt=True,
            add_vision_id=request.add_vision_id,
            **(switch if self.prompt_format.thinking_switch else {}),
        )
        decoded = decode_all(media_of(request.messages))
        return processor_inputs(self.processor, prompt, decoded)

    def count_tokens(self, text: str) -> int:
        if self.processor is None:
            raise UserFacingError(self._status.message or "The model is still loading.")
        return len(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _require_ready(self) -> None:
        if self._status.state != "ready":
            raise UserFacingError(self._status.message or "The model is still loading.")

    def stream(self, request: ChatRequest) -> Iterator[Delta]:
        self._require_ready()
        assert self._worker is not None
        with self._worker.arriving():
            job = Job(
                self.encode(request),
                request.options,
                CountingStreamer(self.processor.tokenizer),
                scope=request.client,
                media_keys=[(media.digest, media.plan) for media in media_of(request.messages)],
            )
            self._worker.submit(job)
        try:
            yield from read_job(job, self._worker)
        finally:
            job.stop.set()


def prefix_cache(model: Any, megabytes: float) -> PrefixCache | None:
    """The kept-cache store for this model (None: off, or a model whose cache cannot be cut)."""
    if not supports_prefix_cache(DynamicCache(config=model.config)):
        log.info("prefix cache off: this model's cache has layers that cannot be cut to a prefix")
        return None
    if megabytes < 0:  # auto: what fits the device
        on_gpu = model.device.type == "cuda"
        total = torch.cuda.get_device_properties(model.device).total_memory if on_gpu else 0
        capacity = int(0.15 * total) if on_gpu else 1024 * 2**20
    else:
        capacity = int(megabytes * 2**20)
    if capacity <= 0:
        log.info("prefix cache off (--prefix-cache-mb 0)")
        return None
    log.info("prefix cache: up to %d MB of kept KV caches", capacity // 2**20)
    return PrefixCache(capacity)


def processor_inputs(
    processor: Any, prompt: str, media: Sequence[ImageInput | VideoInput]
) -> dict[str, Any]:
    """Tensors for one prompt. Media arrive already resized, so the processor does not resize."""
    images = [item.image for item in media if isinstance(item, ImageInput)]
    videos = [item for item in media if isinstance(item, VideoInput)]
    kwargs: dict[str, Any] = {"text": [prompt], "return_tensors": "pt"}
    if images:
        kwargs["images"] = images
        kwargs["images_kwargs"] = {"do_resize": False}
    if videos:
        kwargs["videos"] = [video.frames for video in videos]
        kwargs["video_metadata"] = [video_metadata(video) for video in videos]
        kwargs["videos_kwargs"] = {"do_resize": False, "do_sample_frames": False}
    if writes_timestamps(processor):
        prompt = prompt.replace(VIDEO_PLACEHOLDER, "<|video_pad|>")
        kwargs["text"] = [prompt]
    return dict(processor(**kwargs))


def video_metadata(video: VideoInput) -> dict[str, Any]:
    """What the processor is told of pre-sampled frames, in milliseconds.

    Frame i was decoded at `frames_indices[i] / fps` seconds (Qwen3-VL writes these times into
    the prompt, `<1.2 seconds>`), and the sampled rate, `len(frames_indices) / total_num_frames
    * fps`, is the real one (Qwen2.5-VL's temporal positions come from it). A plain `fps=` is
    ignored for frame lists, and without these Qwen2.5-VL would assume 24 fps.
    """
    return {
        "fps": MILLISECONDS,
        "frames_indices": [round(t * MILLISECONDS) for t in video.timestamps],
        "total_num_frames": max(1, round(video.duration * MILLISECONDS)),
        "duration": video.duration,
    }


def writes_timestamps(processor: Any) -> bool:
    """Qwen3-VL's processor: each pair of frames gets its own `<t seconds>` and markers."""
    return hasattr(processor, "_calculate_timestamps")


def load_processor(path: str) -> Any:
    """The checkpoint's processor (tokenizer, image and video processors, chat template)."""
    try:
        return AutoProcessor.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise CheckpointNotFound(
            f"cannot load the processor of {path!r} ({exc.__class__.__name__}: {exc})."
        ) from None


def load_model(settings: Settings, zero_gpu: bool = False) -> Any:
    """The model: bf16 on the GPU (`dtype="auto"`), float32 on the CPU.

    On ZeroGPU the weights are moved with `.to("cuda")` at load time, as ZeroGPU expects.
    """
    cuda = zero_gpu or torch.cuda.is_available() and not settings.cpu_only
    if not cuda and not settings.cpu_only:
        log.warning("no CUDA device found: running on the CPU in float32 (slow)")
    flash_installed = importlib.util.find_spec("flash_attn") is not None
    attention, reason = choose_attention(settings.flash_attn2, cuda, flash_installed)
    log.info(reason)
    placement: dict[str, Any] = {"dtype": "auto", "device_map": "auto"}
    if zero_gpu:
        placement = {"dtype": "auto"}
    elif not cuda:
        placement = {"dtype": torch.float32, "device_map": "cpu"}
    model = AutoModelForImageTextToText.from_pretrained(
        settings.checkpoint_path, attn_implementation=attention, **placement
    ).eval()
    if zero_gpu:
        model.to("cuda")
    return model
