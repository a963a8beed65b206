"""The engine contract: what every engine takes and yields. Engines know nothing about Gradio.

An engine streams the answer to a `ChatRequest` as `Delta`s (`stream`), says whether it is
ready (`status`), counts tokens for the budget (`count_tokens`) and names the facts the app
needs of its model: the output `family` (grounding conventions), the vision `geometry` (how
pictures are cut into tokens) and the `template_tokens` no message text may contain.

Implementations: `local` (transformers in this process; a model worker thread, `worker`,
batches waiting requests), `zerogpu` (Spaces ZeroGPU) and `openai` (any OpenAI-compatible
server). Errors a user should read are `UserFacingError`s; the request's media travel inside
its messages and are decoded by the engine (`Media.decode()`), never before.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from app.config import Settings
from app.grounding import Family
from app.media import Geometry

__all__ = [
    "END_MARKERS",
    "HEARTBEAT_SECONDS",
    "ChatRequest",
    "CheckpointNotFound",
    "Delta",
    "Engine",
    "EngineStatus",
    "Family",
    "GenerationOptions",
    "PromptFormat",
    "create_engine",
]

# How often a waiting consumer gets control back (an empty Delta), in seconds. Not a timeout:
# a long prefill simply produces more heartbeats, and a stopped chat is closed promptly.
HEARTBEAT_SECONDS = 0.1
# Tokens that end an answer; servers that keep special tokens send them, the chat never shows them.
END_MARKERS = ("<|im_end|>", "<|endoftext|>")


class CheckpointNotFound(Exception):
    """The checkpoint cannot be found or read; `web_demo_mm.main` turns it into the exit message."""


@dataclass(frozen=True)
class GenerationOptions:
    """Sampling settings of one request; temperature 0 means greedy decoding."""

    max_new_tokens: int = 1024
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None


@dataclass(frozen=True)
class ChatRequest:
    """One answer to generate.

    `messages` is a Qwen message list whose image/video parts hold `app.media.Media` objects
    (`{"type": "image", "image": media}`), in prompt order; `client` says whose request it is.
    """

    messages: Sequence[dict[str, Any]]
    options: GenerationOptions = field(default_factory=GenerationOptions)
    add_vision_id: bool = False
    client: str = ""
    enable_thinking: bool = True  # for templates with that switch (Qwen3.5)


@dataclass(frozen=True)
class Delta:
    """A piece of the answer: new raw text (special tokens kept) and how many tokens it covers.

    An empty delta is a heartbeat: nothing new yet, but the consumer gets control back, so a
    stopped or disconnected request is closed promptly even during a long prefill.
    `queue_position` is set while the request waits for the model (1 = next), with
    `wait_seconds`, an estimate of the wait from the recent batches (None until one ran).
    """

    text: str = ""
    tokens: int = 0
    queue_position: int | None = None
    wait_seconds: float | None = None
    cached_tokens: int | None = None  # prompt tokens that came from a kept cache, once known


@dataclass(frozen=True)
class PromptFormat:
    """What the loaded model's chat template writes around the messages (for the token budget
    and the thinking display): the default system turn (Qwen2-VL's "You are a helpful
    assistant.", none for Qwen3), the generation prompt (it opens a `<think>` block for thinking
    models), whether videos get per-frame-pair times (Qwen3-VL), and whether the template has
    an `enable_thinking` switch."""

    default_system: str = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    generation_prompt: str = "<|im_start|>assistant\n"
    video_times: bool = False
    thinking_switch: bool = False

    @property
    def thinks(self) -> bool:
        """Whether answers start inside a `<think>` block (the template opened it)."""
        return self.generation_prompt.rstrip().endswith("<think>")


QWEN2_FORMAT = PromptFormat()
QWEN3_FORMAT = PromptFormat(default_system="", video_times=True)


@dataclass(frozen=True)
class EngineStatus:
    state: Literal["loading", "ready", "failed"]
    message: str = ""


class Engine(Protocol):
    """Streams answers. Closing the iterator (stop, disconnect) ends the generation."""

    family: Family
    geometry: Geometry
    template_tokens: Sequence[str]
    generation_defaults: Mapping[str, float]  # the checkpoint's sampling settings, if known

    @property
    def prompt_format(self) -> PromptFormat: ...

    def status(self) -> EngineStatus: ...

    def stream(self, request: ChatRequest) -> Iterator[Delta]: ...

    def count_tokens(self, text: str) -> int:
        """Tokens of a text (exact where the engine has the tokenizer, else an estimate)."""
        ...


def create_engine(settings: Settings) -> Engine:
    """The engine the settings ask for; the local one starts loading in the background."""
    if settings.backend == "openai":
        from app.engine.openai import OpenAIEngine

        return OpenAIEngine(
            settings.api_base,
            settings.api_key or None,
            settings.model or None,
            settings.api_timeout,
            settings.api_video_format,  # type: ignore[arg-type]  # the flag's choices
        )
    from app.engine.zerogpu import ZeroGPUEngine, on_zero_gpu

    if on_zero_gpu():
        return ZeroGPUEngine(settings).start()
    from app.engine.local import LocalEngine

    return LocalEngine(settings).start()
