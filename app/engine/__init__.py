"""What every engine takes and yields; the engines themselves know nothing about Gradio."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from app.config import Settings
from app.grounding import Family
from app.media import ImageInput, VideoInput

__all__ = [
    "ChatRequest",
    "Delta",
    "Engine",
    "EngineStatus",
    "Family",
    "GenerationOptions",
    "create_engine",
]


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

    `messages` is a Qwen2-VL message list whose image/video entries hold the upload's path;
    `media` holds the same items decoded and resized, in prompt order.
    """

    messages: list[dict[str, Any]]
    media: Sequence[ImageInput | VideoInput] = ()
    options: GenerationOptions = field(default_factory=GenerationOptions)
    add_vision_id: bool = False
    session_id: str = ""


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


@dataclass(frozen=True)
class EngineStatus:
    state: Literal["loading", "ready", "failed"]
    message: str = ""


class Engine(Protocol):
    """Streams answers. Closing the iterator (stop, disconnect) ends the generation."""

    family: Family

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
            settings.api_video_format,
        )
    from app.engine.zerogpu import ZeroGPUEngine, on_zero_gpu

    if on_zero_gpu():
        return ZeroGPUEngine(settings).start()
    from app.engine.local import LocalEngine

    return LocalEngine(settings).start()
