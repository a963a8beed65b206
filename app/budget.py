"""The prompt's token budget: what each message costs, and which oldest turns to leave out.

Pure functions, run before anything is decoded. A prompt is counted the way Qwen2-VL's chat
template writes it: each message is rendered as the template renders it, minus the image/video
pad tokens, and counted with the engine's `count_tokens` (exact for the local engine: every
message starts with <|im_start|>, a special token, so messages tokenize independently and their
counts add up). The pads are then added from each media object's plan (`Media.tokens`, from its
header: an image of h x w pixels is (h/28)*(w/28) tokens, a video of n frames
(n/2)*(h/28)*(w/28)). The vision start/end markers stay in the rendered text and are counted.

The rule: prompt tokens + the answer's max_new_tokens must fit in max_context, so the answer
always has room, and the prompt holds at most `max_media` images and videos. Beyond either the
oldest whole turns are left out; the system prompt and the current turn never are. They are left
out in steps (`STEPS`): enough turns to free a quarter of the budget (or of `max_media`) at
once, not one turn per new turn, so the prompt's beginning, and the conversation's kept KV cache
of it, stay the same for several turns before the next step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.engine import QWEN2_FORMAT, PromptFormat
from app.errors import UserFacingError
from app.messages import page_label

CountTokens = Callable[[str], int]
STEPS = 4  # turns are left out to free 1/STEPS of the budget at a time
VISION_MARKERS = "<|vision_start|><|vision_end|>"  # the pad tokens go between them
LABELS = {"image": "Picture", "video": "Video"}  # add_vision_id: "Picture 1: ", "Video 1: "


@dataclass(frozen=True)
class Cost:
    """Tokens of one message (or several): text (with markers), image pads, video pads."""

    text: int = 0
    images: int = 0
    videos: int = 0

    @property
    def total(self) -> int:
        return self.text + self.images + self.videos

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.text + other.text, self.images + other.images, self.videos + other.videos)


@dataclass(frozen=True)
class Fit:
    """The part of a conversation that fits (its media inside), and what was left out."""

    messages: list[dict[str, Any]]
    tokens: int
    turns_left_out: int


def render_messages(
    messages: Sequence[Mapping[str, Any]], add_vision_id: bool, video_times: bool = False
) -> list[str]:
    """Each message as the chat template writes it, with its image/video pads left out. With
    `video_times` (Qwen3-VL), a video is written as its frame pairs, each with its time."""
    seen = dict.fromkeys(LABELS, 0)  # the template numbers images and videos apart
    rendered = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            body = content
        else:
            pieces = []
            for item in content:
                kind = item.get("type")
                if kind in LABELS:
                    seen[kind] += 1
                    label = f"{LABELS[kind]} {seen[kind]}: " if add_vision_id else ""
                    timed = video_times and kind == "video"
                    pieces.append(label + (_frame_groups(item[kind]) if timed else VISION_MARKERS))
                else:
                    pieces.append(item.get("text", ""))
            body = "".join(pieces)
        rendered.append(f"<|im_start|>{message['role']}\n{body}<|im_end|>\n")
    return rendered


def _frame_groups(video: Any) -> str:
    """Qwen3-VL's text around a video's frame pairs: the pair's middle time, then markers."""
    times = list(video.plan.times)
    times += times[-1:] * (len(times) % 2)
    pairs = [(a + b) / 2 for a, b in zip(times[::2], times[1::2], strict=True)]
    return "".join(f"<{t:.1f} seconds>{VISION_MARKERS}" for t in pairs)


def message_costs(
    messages: Sequence[Mapping[str, Any]],
    count_tokens: CountTokens,
    add_vision_id: bool,
    prompt_format: PromptFormat = QWEN2_FORMAT,
) -> list[Cost]:
    """The cost of each message; its media parts hold objects with a `tokens` count."""
    costs = []
    rendered = render_messages(messages, add_vision_id, prompt_format.video_times)
    for message, text in zip(messages, rendered, strict=True):
        pads = dict.fromkeys(LABELS, 0)
        for part in _visual_parts(message):
            pads[part["type"]] += part[part["type"]].tokens
        costs.append(Cost(count_tokens(text), pads["image"], pads["video"]))
    return costs


def turn_starts(roles: Sequence[str]) -> list[int]:
    """Where each turn begins: at every user message (and at the first message after the system
    prompt, should the conversation open with an assistant message)."""
    first = 1 if roles and roles[0] == "system" else 0
    starts = [i for i, role in enumerate(roles) if role == "user" and i > first]
    return [first, *starts] if first < len(roles) else []


def fixed_cost(
    roles: Sequence[str], count_tokens: CountTokens, prompt_format: PromptFormat = QWEN2_FORMAT
) -> int:
    """Tokens the template adds around the messages."""
    has_system = bool(roles) and roles[0] == "system"
    default_system = "" if has_system else prompt_format.default_system
    return count_tokens(default_system + prompt_format.generation_prompt)


def turns_to_leave_out(
    costs: Sequence[int],
    starts: Sequence[int],
    fixed: int,
    limit: int,
    media: Sequence[int] | None = None,
    max_media: int | None = None,
    steps: int = 0,
) -> int | None:
    """How many of the oldest turns to leave out so that the rest fits in `limit` tokens (and
    holds at most `max_media` of the per-message `media` counts).

    `costs` are per message, `starts` the turns' first messages (at least one; what precedes
    the first is the system prompt, always kept). None when even the last turn does not fit.
    With `steps`, what is left out is rounded up to a multiple of limit / steps tokens (and of
    max_media / steps media): the same turns stay out while the conversation grows by a step.
    """
    media = media or [0] * len(costs)
    head = fixed + sum(costs[: starts[0]])
    over = head + sum(costs[starts[0] :]) - limit
    over_media = sum(media[starts[0] :]) - max_media if max_media is not None else 0
    need = _step_up(over, limit, steps)
    need_media = _step_up(over_media, max_media or 0, steps)
    freed = freed_media = 0
    for dropped, start in enumerate(starts):
        fits = head + sum(costs[start:]) <= limit
        fits_media = max_media is None or sum(media[start:]) <= max_media
        if fits and fits_media and freed >= need and freed_media >= need_media:
            return dropped
        if dropped < len(starts) - 1:
            end = starts[dropped + 1]
            freed += sum(costs[start:end])
            freed_media += sum(media[start:end])
    last = starts[-1]  # the steps asked for more than the old turns hold: all of them go
    fits_media = max_media is None or sum(media[last:]) <= max_media
    return len(starts) - 1 if head + sum(costs[last:]) <= limit and fits_media else None


def _step_up(over: int, budget: int, steps: int) -> int:
    """What to free: `over`, rounded up to a multiple of budget / steps (0 when nothing is)."""
    if over <= 0:
        return 0
    if not steps:
        return over
    step = max(1, budget // steps)
    return -(-over // step) * step


def fit(
    messages: Sequence[Mapping[str, Any]],
    count_tokens: CountTokens,
    max_context: int,
    max_new_tokens: int,
    add_vision_id: bool = False,
    max_media: int | None = None,
    prompt_format: PromptFormat = QWEN2_FORMAT,
) -> Fit:
    """The conversation without its oldest turns, as needed; UserFacingError when even the
    current turn, with the system prompt, leaves no room for a max_new_tokens answer."""
    roles = [m["role"] for m in messages]
    costs = message_costs(messages, count_tokens, add_vision_id, prompt_format)
    starts = turn_starts(roles) or [len(messages)]
    fixed = fixed_cost(roles, count_tokens, prompt_format)
    dropped = turns_to_leave_out(
        [c.total for c in costs],
        starts,
        fixed,
        max_context - max_new_tokens,
        [len(_visual_parts(m)) for m in messages],
        max_media,
        STEPS,
    )
    if dropped is None:
        system = fixed + sum(c.total for c in costs[: starts[0]])
        current = sum(costs[starts[-1] :], Cost())
        if max_media is not None and _items(messages[starts[-1] :]) > max_media:
            raise UserFacingError(
                f"This message holds more than {max_media} images and videos, the most one "
                "answer may look at. Send them over several turns."
            )
        raise UserFacingError(too_large_message(current, system, max_context, max_new_tokens))
    head, keep_from = starts[0], starts[dropped]
    kept = [*messages[:head], *messages[keep_from:]]
    return Fit(
        messages=[dict(m) for m in kept],
        tokens=fixed + sum(c.total for c in costs[:head] + costs[keep_from:]),
        turns_left_out=dropped,
    )


@dataclass(frozen=True)
class Trimmed:
    """The messages with the documents' pages that fit; the current turn's pages left out."""

    messages: list[dict[str, Any]]
    pages_left_out: tuple[Any, ...]  # media objects of the left-out pages, in order


def trim_pages(
    messages: Sequence[Mapping[str, Any]],
    count_tokens: CountTokens,
    limit: int,
    add_vision_id: bool = False,
    max_media: int | None = None,
    prompt_format: PromptFormat = QWEN2_FORMAT,
) -> Trimmed:
    """Each user turn whose document pages do not fit in `limit` tokens (or `max_media`) on its
    own, with the system prompt, loses its last pages (each with its label) until it does, or
    until one page is left (then `fit` refuses the turn, saying which setting to lower).

    A turn is judged alone, so the pages it keeps are the same in every later request (and
    the conversation's kept cache stays valid); `fit` then leaves out whole old turns.
    """
    roles = [m["role"] for m in messages]
    head = 1 if roles and roles[0] == "system" else 0
    fixed = fixed_cost(roles, count_tokens, prompt_format)
    system = sum(c.total for c in message_costs(messages[:head], count_tokens, False))
    room = limit - fixed - system
    trimmed: list[dict[str, Any]] = []
    left_out: tuple[Any, ...] = ()
    for message in messages:
        kept, dropped = message, list[Any]()
        if message["role"] == "user" and _pages(message):
            kept, dropped = _trim_message(message, count_tokens, room, add_vision_id,
                                          max_media, prompt_format)  # fmt: skip
        trimmed.append(dict(kept))
        left_out = tuple(dropped)  # the last user turn's are the current turn's
    return Trimmed(trimmed, left_out)


def _trim_message(
    message: Mapping[str, Any],
    count_tokens: CountTokens,
    room: int,
    add_vision_id: bool,
    max_media: int | None,
    prompt_format: PromptFormat,
) -> tuple[Mapping[str, Any], list[Any]]:
    """The message without its last pages, as few as it takes to fit, and those pages.

    How many pages to keep is found by bisection (fewer pages never cost more), so a message of
    many pages is rendered and counted a few times, not once per page left out."""
    content = list(message["content"])
    pages = [i for i, part in enumerate(content) if _is_page(part)]

    def keeping(count: int) -> list[dict[str, Any]]:
        """The content with its first `count` pages (each with its label) and the rest."""
        gone: set[int] = set()
        for index in pages[count:]:
            gone.add(index)
            label = {"type": "text", "text": page_label(content[index]["image"])}
            if index > 0 and content[index - 1] == label:
                gone.add(index - 1)
        return [part for i, part in enumerate(content) if i not in gone]

    def fits(count: int) -> bool:
        kept = keeping(count)
        [cost] = message_costs([{**message, "content": kept}], count_tokens, add_vision_id,
                               prompt_format)  # fmt: skip
        items = len([p for p in kept if p.get("type") in LABELS])
        return cost.total <= room and (max_media is None or items <= max_media)

    if fits(len(pages)):
        return message, []
    low, high = 1, len(pages) - 1  # keep at least one page: else `fit` says why, and what to lower
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    dropped = [content[index]["image"] for index in pages[low:]]
    return {**message, "content": keeping(low)}, dropped


def _is_page(part: Mapping[str, Any]) -> bool:
    return part.get("type") == "image" and getattr(part["image"], "page", None) is not None


def _pages(message: Mapping[str, Any]) -> bool:
    content = message["content"]
    return not isinstance(content, str) and any(_is_page(part) for part in content)


def too_large_message(current: Cost, system: int, max_context: int, max_new_tokens: int) -> str:
    """Why the current turn cannot be answered, and what to change."""
    parts = [
        f"{tokens} for {what}"
        for tokens, what in (
            (current.images, "images"),
            (current.videos, "videos"),
            (current.text, "text"),
            (system, "the system prompt and chat format"),
        )
        if tokens
    ]
    advice = []
    if current.images:
        advice.append("fewer or smaller images (or a lower 'Image max pixels')")
    if current.videos:
        advice.append("a shorter video (or lower 'Video max frames' / 'Video frames per second')")
    if current.text > max(current.images, current.videos):
        advice.append("a shorter text")
    advice.append("a lower 'Max new tokens'")
    choices = ", ".join([*advice[:-1], f"or {advice[-1]}"])
    return (
        f"This message is too large for the model's context: it needs about "
        f"{current.total + system} tokens ({', '.join(parts)}), but with {max_new_tokens} "
        f"tokens kept for the answer only {max(max_context - max_new_tokens, 0)} fit "
        f"(--max-context {max_context}). Try {choices}."
    )


def _visual_parts(message: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    content = message["content"]
    return [] if isinstance(content, str) else [c for c in content if c.get("type") in LABELS]


def _items(messages: Sequence[Mapping[str, Any]]) -> int:
    """How many images and videos the messages hold."""
    return sum(len(_visual_parts(m)) for m in messages)
