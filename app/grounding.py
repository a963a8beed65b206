"""Grounding boxes in Qwen-VL answers: parse them, clean the chat text, draw them on the image.

Three output conventions (``Family``):
- ``qwen2_vl``: ``<|object_ref_start|>cat<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>``
  on a 0-1000 grid; a box takes the label of the ref right before it (only whitespace and other
  boxes in between), otherwise the label is "".
- ``qwen2_5_vl``: JSON objects ``{"bbox_2d": [x1, y1, x2, y2], "label": "cat"}`` in pixels of the
  image the model saw (after smart_resize); without that image size there are no boxes.
- ``qwen3_vl``: the same JSON, but on a 0-1000 grid (Qwen3-VL changed back to relative coordinates).

Every function is pure and never raises on model text: the text may be malformed or a prefix of a
streamed answer, and the boxes of a prefix are always a prefix of the boxes of the whole answer.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

from PIL import Image, ImageDraw, ImageFont

from app.media.images import rgb_on_white

Family = Literal["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]
FAMILIES: tuple[Family, ...] = get_args(Family)

GRID = 1000  # Qwen2-VL and Qwen3-VL coordinates are integers on a 0..1000 grid
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40),
    (128, 0, 0), (0, 0, 128),
)  # fmt: skip
DRAWING_MIN_SIDE = 640  # pixels: smaller images are enlarged before their boxes are drawn
LINE_WIDTH_DIVISOR = 160  # line width = shorter image side / this (at least 1 px)
FONT_SIZE_DIVISOR = 20  # font size = shorter image side / this (at least MIN_FONT_SIZE)
MIN_FONT_SIZE = 8

_SPECIAL = re.compile(r"(<\|[A-Za-z0-9_]+\|>)")
_TRAILING_PARTIAL_SPECIAL = re.compile(r"<(?:\|[A-Za-z0-9_]*\|?)?\Z")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_COORDINATES_SO_FAR = re.compile(r"[\s\d(),.\-]*")
_JSON_BBOX = re.compile(r'"(?:bbox|point)_2d"\s*:\s*\[([^\[\]]*)\]')
_PICTURE = re.compile(r"\bPicture (\d{1,3})\b")
_JSON_LABEL = re.compile(r'"label"\s*:\s*"((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Box:
    """A labelled box, normalised to 0..1 of the image's width and height, x1<=x2, y1<=y2; a
    point (Qwen3-VL's `point_2d`) is a box with no size."""

    label: str
    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def is_point(self) -> bool:
        return self.x1 == self.x2 and self.y1 == self.y2


class Picture(Protocol):
    """What grounding needs of an image in the conversation (an `app.media.Media`)."""

    @property
    def name(self) -> str: ...

    @property
    def header(self) -> Any: ...  # .width, .height: the original size, EXIF orientation applied

    @property
    def fed_size(self) -> tuple[int, int]: ...


@dataclass(frozen=True)
class Grounding:
    """An answer's boxes and the image they are on: its place among the conversation's images
    (1 = "Picture 1"), name and original size (EXIF orientation applied)."""

    image: int
    name: str
    size: tuple[int, int]
    boxes: tuple[Box, ...]

    def pixel_boxes(self) -> list[dict[str, Any]]:
        """The boxes in the original image's pixels, as the API and the tools return them."""
        width, height = self.size
        found: list[dict[str, Any]] = []
        for box in self.boxes:
            x1, y1 = round(box.x1 * width), round(box.y1 * height)
            if box.is_point:
                found.append({"label": box.label, "point": [x1, y1]})
            else:
                x2, y2 = round(box.x2 * width), round(box.y2 * height)
                found.append({"label": box.label, "bbox": [x1, y1, x2, y2]})
        return found


def locate(raw: str, family: Family, images: Sequence[Picture]) -> Grounding | None:
    """The boxes of a raw answer and the image they are on: the one the answer names
    ("Picture 2", as the images are labelled in the prompt), else the conversation's latest.

    Qwen2.5-VL's pixel coordinates are read against the size the model saw (`fed_size`).
    """
    if not images:
        return None
    named = [int(n) for n in _PICTURE.findall(raw) if 0 < int(n) <= len(images)]
    index = named[-1] - 1 if named else len(images) - 1
    image = images[index]
    boxes = parse_boxes(raw, family, image_size=image.fed_size)
    if not boxes:
        return None
    size = (int(image.header.width), int(image.header.height))
    return Grounding(index + 1, image.name, size, tuple(boxes))


def drawing(grounding: Grounding, seen: Image.Image) -> Image.Image:
    """The boxes drawn on the image the model saw, enlarged so that lines and labels stay
    legible (boxes are relative, so any size will do)."""
    scale = DRAWING_MIN_SIDE / min(seen.size)
    if scale > 1:
        seen = seen.resize((round(seen.width * scale), round(seen.height * scale)))
    return draw_boxes(seen, grounding.boxes)


def family_of(model_type: str | None) -> Family:
    """Output convention of a model, from config.model_type or a name like Qwen/Qwen2.5-VL-7B."""
    name = re.sub(r"[^a-z0-9]+", "_", (model_type or "").lower())
    if "qwen2_5" in name:
        return "qwen2_5_vl"
    if "qwen3" in name:
        return "qwen3_vl"  # Qwen3-VL and later Qwen models answer JSON on the 0-1000 grid
    return "qwen2_vl"  # this demo's own model, and the default for anything unknown (e.g. QVQ)


def parse_boxes(text: str, family: Family, image_size: tuple[int, int] | None = None) -> list[Box]:
    """Boxes in the model's raw answer; image_size=(width, height) is needed for qwen2_5_vl only."""
    if family == "qwen2_vl":
        return _parse_markers(text)
    if family == "qwen3_vl":
        return _parse_json(text, (GRID, GRID))
    if family == "qwen2_5_vl":
        if image_size is None or min(image_size) <= 0:
            return []  # pixel coordinates mean nothing without the size of the image the model saw
        return _parse_json(text, image_size)
    raise ValueError(f"unknown grounding family {family!r}; expected one of {FAMILIES}")


def _make_box(label: str, coords: Sequence[object], scale: tuple[float, float]) -> Box | None:
    """A normalised, clamped, ordered Box from four coordinates, or None if they are not numbers."""
    numbers = [n for n in map(_number, coords) if n is not None]
    if len(coords) != 4 or len(numbers) != 4:
        return None
    x1, y1, x2, y2 = (_clamp(n / s) for n, s in zip(numbers, scale * 2, strict=True))
    return Box(label, min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))


def _number(value: object) -> float | None:
    """A finite float from an int, float or numeric string; None for anything else (bool too)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _clamp(value: float) -> float:
    return min(1.0, max(0.0, value))


def _pieces(text: str) -> Iterator[tuple[str | None, str]]:
    """Split text into (special token name, "") and (None, plain text) pieces, in order."""
    for piece in _SPECIAL.split(text):
        if _SPECIAL.fullmatch(piece):
            yield piece[2:-2], ""
        elif piece:
            yield None, piece


def _parse_markers(text: str) -> list[Box]:
    """Qwen2-VL boxes: a box is kept only once its <|box_end|> has arrived."""
    boxes: list[Box] = []
    ref: list[str] | None = None  # text of an open ref
    box: list[str] | None = None  # text of an open box
    label: str | None = None  # label for the next box while it follows a ref directly
    for name, piece in _pieces(text):
        if name is None:
            if ref is not None:
                ref.append(piece)
            elif box is not None:
                box.append(piece)
            elif piece.strip():
                label = None  # prose between a ref and a box: the box is not that ref's
        elif name == "object_ref_start":
            ref, box, label = [], None, None
        elif name == "object_ref_end" and ref is not None:
            label = "".join(ref).strip()
            ref = None
        elif name == "box_start":
            ref, box = None, []
        elif name == "box_end" and box is not None:
            parsed = _make_box(label or "", _NUMBER.findall("".join(box)), (GRID, GRID))
            boxes.extend([parsed] if parsed else [])
            box = None
        elif name not in ("object_ref_end", "box_end"):
            ref, box, label = None, None, None  # any other token ends the ref/box run
    return boxes


def _json_objects(text: str) -> Iterator[tuple[str, bool]]:
    """Each complete {...} in text (nested ones first) and whether it has no nested object."""
    starts: list[list[int]] = []  # [start index, has child] of each open object
    in_string = escaped = False
    for i, char in enumerate(text):
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            in_string = bool(starts)  # quotes in prose outside any object do not matter
        elif char == "{":
            if starts:
                starts[-1][1] = True
            starts.append([i, False])
        elif char == "}" and starts:
            start, has_child = starts.pop()
            yield text[start : i + 1], not has_child


def _parse_json(text: str, scale: tuple[float, float]) -> list[Box]:
    """Qwen2.5/3-VL boxes and points: every complete JSON object with a four-number "bbox_2d"
    or a two-number "point_2d"."""
    boxes: list[Box] = []
    for chunk, is_leaf in _json_objects(text):
        try:
            item = json.loads(chunk)
        except ValueError:
            item = _loose_object(chunk) if is_leaf else None  # e.g. a trailing comma
        except RecursionError:  # nested deeper than the JSON reader goes: not a box
            item = None
        if not isinstance(item, dict):
            continue
        coords = item.get("bbox_2d", item.get("point_2d"))
        if not isinstance(coords, list):
            continue
        if len(coords) == 2:  # a point: a box with no size
            coords = [*coords, *coords]
        label = item.get("label", "")
        label = label.strip() if isinstance(label, str) else "" if label is None else str(label)
        box = _make_box(label, coords, scale)
        boxes.extend([box] if box else [])
    return boxes


def _loose_object(chunk: str) -> dict[str, object] | None:
    """The bbox_2d and label of an object that is not strict JSON, read with regular expressions."""
    bbox = _JSON_BBOX.search(chunk)
    if bbox is None:
        return None
    label = _JSON_LABEL.search(chunk)
    try:
        label_text = json.loads(f'"{label.group(1)}"') if label else ""
    except ValueError:
        label_text = label.group(1) if label else ""
    return {"bbox_2d": [part.strip() for part in bbox.group(1).split(",")], "label": label_text}


def display_text(text: str) -> str:
    """What the chat shows: refs in bold, boxes and special tokens removed, partial ones hidden.

    The same rules serve every family: JSON answers stay as they are (readable Markdown).
    """
    shown = ""
    ref: list[str] | None = None  # text of an open ref
    box: list[str] | None = None  # text of an open box (or quad)
    after_box: int | None = None  # len(shown) at the last box end
    for name, piece in _pieces(_TRAILING_PARTIAL_SPECIAL.sub("", text)):
        if name is None:
            if ref is not None:
                ref.append(piece)
            elif box is not None:
                box.append(piece)
            else:
                shown += piece
        elif name == "object_ref_start":
            shown, ref, box = shown + _unclosed(ref, box), [], None
        elif name == "object_ref_end" and ref is not None:
            shown, ref = shown + _bold("".join(ref)), None
        elif name in ("box_start", "quad_start"):
            if after_box is not None and not shown[after_box:].strip():
                shown = shown[:after_box]  # whitespace between two boxes goes with them
            shown, ref, box = shown + _unclosed(ref, box), None, []
        elif name in ("box_end", "quad_end") and box is not None:
            shown, box = shown.rstrip(" \t"), None  # "at <box>." reads "at." without the box
            after_box = len(shown)
    return shown + _unclosed(ref, box)


def _unclosed(ref: list[str] | None, box: list[str] | None) -> str:
    """What to show of a ref or box still open: the ref's text; a box's only if it is prose."""
    if ref is not None:
        return "".join(ref)  # plain while streaming, bold once it closes
    text = "".join(box or [])
    return "" if _COORDINATES_SO_FAR.fullmatch(text) else text


def _bold(label: str) -> str:
    label = label.strip().replace("*", r"\*")
    return f"**{label}**" if label else ""


def draw_boxes(image: Image.Image, boxes: Sequence[Box]) -> Image.Image:
    """An RGB copy of image with each box outlined and labelled; one colour per distinct label."""
    canvas = rgb_on_white(image).copy()
    width, height = canvas.size
    line_width = max(1, round(min(width, height) / LINE_WIDTH_DIVISOR))
    font = _font(max(MIN_FONT_SIZE, round(min(width, height) / FONT_SIZE_DIVISOR)))
    draw = ImageDraw.Draw(canvas)
    colours: dict[str, tuple[int, int, int]] = {}
    for box in boxes:
        colour = colours.setdefault(box.label, PALETTE[len(colours) % len(PALETTE)])
        left, top = _pixel(box.x1, width), _pixel(box.y1, height)
        right, bottom = _pixel(box.x2, width), _pixel(box.y2, height)
        if box.is_point:  # a dot with a white ring, visible on any background
            radius = 3 * line_width
            ring = (left - radius, top - radius, left + radius, top + radius)
            draw.ellipse(ring, fill=colour, outline=(255, 255, 255), width=max(1, line_width // 2))
        else:
            draw.rectangle((left, top, right, bottom), outline=colour, width=line_width)
    for box in boxes:  # labels last, so no outline is drawn over them
        if box.label:
            _draw_label(draw, canvas.size, box, colours[box.label], font)
    return canvas


def _pixel(fraction: float, size: int) -> int:
    return min(size - 1, round(fraction * size))


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _draw_label(
    draw: ImageDraw.ImageDraw,
    size: tuple[int, int],
    box: Box,
    colour: tuple[int, int, int],
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
) -> None:
    """The label on a filled background at the box's top-left: above it if it fits, else inside."""
    width, height = size
    box_left, box_top = _pixel(box.x1, width), _pixel(box.y1, height)
    left, top, right, bottom = draw.textbbox((0, 0), box.label, font=font)
    pad = max(1, (bottom - top) // 6)
    label_w, label_h = right - left + 2 * pad, bottom - top + 2 * pad
    x = max(0, min(box_left, width - label_w))
    y = box_top - label_h if box_top >= label_h else min(box_top, max(0, height - label_h))
    draw.rectangle((x, y, x + label_w - 1, y + label_h - 1), fill=colour)
    luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    ink = (0, 0, 0) if luminance > 140 else (255, 255, 255)
    draw.text((x + pad - left, y + pad - top), box.label, fill=ink, font=font)
