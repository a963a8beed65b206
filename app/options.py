"""The per-session settings, declared once: the Settings form, the /chat API's parameters, their
defaults and the checking and clamping of what a client sends are all made from `FIELDS`.

A value from a client is untrusted: a wrong type, NaN or infinity is refused with a message
naming the setting; a number outside its range is clamped into it (as a slider would), and
the server's flags are upper bounds (`--max-pixels`, `--max-frames`). Sampling defaults come
from the checkpoint's `generation_config` where it has them (`generation_defaults`): later Qwen
generations recommend sampling, Qwen2-VL's is near-greedy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from app.config import Settings
from app.engine import GenerationOptions
from app.errors import UserFacingError
from app.i18n import EN
from app.media import MediaLimits
from app.media.pdf import check_page_range

MAX_SYSTEM_PROMPT_CHARS = 20_000  # longer would not fit the context anyway
MAX_PAGE_RANGE_CHARS = 200
MAX_NEW_TOKENS = 8192
THINKING_MAX_NEW_TOKENS = 4096  # a thinking model's reasoning alone often takes thousands
SAMPLING = ("temperature", "top_p", "top_k", "repetition_penalty")

Bound = float | str | None  # a number, or the name of the Settings flag that gives it


@dataclass(frozen=True)
class Field:
    """One setting: its name (also its label key and API parameter), type, range and step."""

    name: str
    kind: type
    minimum: Bound = None
    maximum: Bound = None
    step: float | None = None

    def bounds(self, settings: Settings) -> tuple[float | None, float | None]:
        return _resolve(self.minimum, settings), _resolve(self.maximum, settings)


def _resolve(bound: Bound, settings: Settings) -> float | None:
    return getattr(settings, bound) if isinstance(bound, str) else bound


FIELDS: tuple[Field, ...] = (
    Field("system_prompt", str, maximum=MAX_SYSTEM_PROMPT_CHARS),
    Field("add_vision_id", bool),
    Field("enable_thinking", bool),
    Field("max_new_tokens", int, 1, MAX_NEW_TOKENS, 1),
    Field("temperature", float, 0.0, 2.0, 0.05),
    Field("top_p", float, 0.05, 1.0, 0.05),
    Field("top_k", int, 0, 200, 1),
    Field("repetition_penalty", float, 1.0, 2.0, 0.01),
    Field("seed", int, -1, 2**31 - 1),
    Field("min_pixels", int, 1, "max_pixels"),
    Field("max_pixels", int, 28 * 28, "max_pixels"),
    Field("video_fps", float, 0.1, 8.0, 0.1),
    Field("max_frames", int, 2, "max_frames", 2),
    Field("pdf_pages", str, maximum=MAX_PAGE_RANGE_CHARS),
)
NAMES = tuple(f.name for f in FIELDS)


@dataclass(frozen=True)
class ChatOptions:
    """One session's settings, checked: what a turn is asked with."""

    system_prompt: str = ""
    add_vision_id: bool = True  # "Picture 1:" before every image (never only from the second)
    enable_thinking: bool = True  # for templates with that switch (Qwen3.5); others ignore it
    generation: GenerationOptions = field(default_factory=GenerationOptions)
    media: MediaLimits = field(default_factory=MediaLimits)


def generation_defaults(generation_config: Any) -> dict[str, float]:
    """Sampling defaults of a checkpoint's GenerationConfig (temperature 0 when it is greedy)."""
    if generation_config is None:
        return {}
    if not getattr(generation_config, "do_sample", False):
        found: dict[str, float] = {"temperature": 0.0}
    else:
        found = {
            name: value
            for name in SAMPLING
            if isinstance(value := getattr(generation_config, name, None), int | float)
        }
    penalty = getattr(generation_config, "repetition_penalty", None)
    if isinstance(penalty, int | float):
        found["repetition_penalty"] = penalty
    return found


def defaults(
    settings: Settings, generation: Mapping[str, float] | None = None, thinks: bool = False
) -> dict[str, Any]:
    """Every setting's default: the flags, then the checkpoint's sampling settings; a thinking
    model answers at least THINKING_MAX_NEW_TOKENS long."""
    base = GenerationOptions()
    length = max(settings.max_new_tokens, THINKING_MAX_NEW_TOKENS if thinks else 0)
    values: dict[str, Any] = {
        "system_prompt": "",
        "add_vision_id": True,
        "enable_thinking": True,
        "max_new_tokens": length,
        "temperature": base.temperature,
        "top_p": base.top_p,
        "top_k": base.top_k,
        "repetition_penalty": base.repetition_penalty,
        "seed": -1,
        "min_pixels": settings.min_pixels,
        "max_pixels": settings.max_pixels,
        "video_fps": settings.video_fps,
        "max_frames": settings.max_frames,
        "pdf_pages": "",
    }
    values |= {k: v for k, v in (generation or {}).items() if k in SAMPLING}
    return {f.name: check(f, values[f.name], settings) for f in FIELDS}


def check(spec: Field, value: Any, settings: Settings) -> Any:
    """The value as its setting's type, clamped into range; UserFacingError when unusable."""
    convert = _CONVERTERS[spec.kind]
    try:
        converted = convert(value)
    except (TypeError, ValueError, OverflowError):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:39] + "…"
        raise UserFacingError(
            f"The setting '{EN[spec.name]}' ({spec.name}) must be {_WORDS[spec.kind]}; got {shown}."
        ) from None
    low, high = spec.bounds(settings)
    if spec.kind is str:
        if high is not None and len(converted) > high:
            raise UserFacingError(
                f"The setting '{EN[spec.name]}' is {len(converted)} characters long; "
                f"at most {int(high)} are accepted."
            )
        return converted
    if spec.kind is bool:
        return converted
    if low is not None:
        converted = max(converted, spec.kind(low))
    if high is not None:
        converted = min(converted, spec.kind(high))
    if spec.step and spec.kind is int and low is not None:
        converted -= (converted - int(low)) % int(spec.step)
    return converted


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError
    number = float(value)
    if not math.isfinite(number):
        raise ValueError
    return number


def _integer(value: Any) -> int:
    return round(_number(value))


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise TypeError


def _text(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError
    return value


_CONVERTERS: dict[type, Callable[[Any], Any]] = {
    str: _text,
    bool: _boolean,
    int: _integer,
    float: _number,
}
_WORDS = {str: "text", bool: "true or false", int: "a whole number", float: "a number"}


def chat_options(
    values: Mapping[str, Any],
    settings: Settings,
    generation: Mapping[str, float] | None = None,
    thinks: bool = False,
) -> ChatOptions:
    """ChatOptions from a client's values (missing ones take their defaults), checked."""
    base = defaults(settings, generation, thinks)
    checked = {
        spec.name: check(spec, values[spec.name], settings) if values.get(spec.name) is not None
        else base[spec.name]
        for spec in FIELDS
    }  # fmt: skip
    max_pixels = checked["max_pixels"]
    check_page_range(checked["pdf_pages"])  # a malformed range is said now
    media = replace(
        limits_from_settings(settings),
        min_pixels=min(checked["min_pixels"], max_pixels),
        max_pixels=max_pixels,
        video_fps=checked["video_fps"],
        max_frames=checked["max_frames"],
        pdf_pages=checked["pdf_pages"],
    )
    generation_options = GenerationOptions(
        max_new_tokens=checked["max_new_tokens"],
        temperature=checked["temperature"],
        top_p=checked["top_p"],
        top_k=checked["top_k"],
        repetition_penalty=checked["repetition_penalty"],
        seed=None if checked["seed"] < 0 else checked["seed"],
    )
    return ChatOptions(
        checked["system_prompt"].strip(),
        checked["add_vision_id"],
        checked["enable_thinking"],
        generation_options,
        media,
    )


def limits_from_settings(settings: Settings) -> MediaLimits:
    """The server's media limits (the flags); a session may only lower the sizes."""
    return replace(
        MediaLimits(),
        min_pixels=min(settings.min_pixels, settings.max_pixels),
        max_pixels=settings.max_pixels,
        video_fps=settings.video_fps,
        max_frames=max(2, settings.max_frames),
        max_upload_bytes=int(settings.max_upload_mb * 1024 * 1024),
        max_video_seconds=settings.max_video_seconds,
    )
