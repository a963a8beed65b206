"""Tests for app.grounding: parsing Qwen grounding output, the chat text, and drawing the boxes."""

import random

import pytest
from PIL import Image

from app.grounding import (
    FAMILIES,
    PALETTE,
    Box,
    display_text,
    draw_boxes,
    family_of,
    parse_boxes,
)

REF, REF_END = "<|object_ref_start|>", "<|object_ref_end|>"
BOX, BOX_END = "<|box_start|>", "<|box_end|>"

QWEN2_ANSWER = (
    f"Sure! {REF}the dog{REF_END}{BOX}(120,340),(455,900){BOX_END} is next to "
    f"{REF}two cats{REF_END}{BOX}(500,310),(700,880){BOX_END}\n{BOX}(710,300),(990,870){BOX_END}"
    f", and there is also a ball at {BOX}(0,0),(100,100){BOX_END}."
)
QWEN2_BOXES = [
    Box("the dog", 0.12, 0.34, 0.455, 0.9),
    Box("two cats", 0.5, 0.31, 0.7, 0.88),
    Box("two cats", 0.71, 0.3, 0.99, 0.87),
    Box("", 0.0, 0.0, 0.1, 0.1),
]
JSON_ANSWER = (
    "```json\n[\n"
    '\t{"bbox_2d": [100, 50, 500, 400], "label": "dog"},\n'
    '\t{"bbox_2d": [600, 200, 1000, 800], "label": "cat \\"Tom\\" {x}"}\n'
    "]\n```"
)


def _box(label: str, *coords: float) -> Box:
    return Box(label, *coords)


def _close(boxes: list[Box], expected: list[Box]) -> bool:
    """Boxes equal up to float rounding."""
    return len(boxes) == len(expected) and all(
        a.label == b.label
        and all(abs(getattr(a, k) - getattr(b, k)) < 1e-9 for k in ("x1", "y1", "x2", "y2"))
        for a, b in zip(boxes, expected, strict=True)
    )


# --- family_of -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_type", "family"),
    [
        ("qwen2_vl", "qwen2_vl"),
        ("qwen2_5_vl", "qwen2_5_vl"),
        ("qwen3_vl", "qwen3_vl"),
        ("qwen3_vl_moe", "qwen3_vl"),
        ("Qwen/Qwen2-VL-7B-Instruct", "qwen2_vl"),
        ("Qwen/Qwen2.5-VL-3B-Instruct", "qwen2_5_vl"),
        ("Qwen/Qwen3-VL-8B-Instruct", "qwen3_vl"),
        ("", "qwen2_vl"),
        (None, "qwen2_vl"),
        ("llava", "qwen2_vl"),
    ],
)
def test_family_of(model_type: str | None, family: str) -> None:
    assert family_of(model_type) == family


def test_unknown_family_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown grounding family"):
        parse_boxes("", "qwen9")  # type: ignore[arg-type]


# --- Qwen2-VL markers ----------------------------------------------------------------------------


def test_qwen2_single_box_is_normalised() -> None:
    text = f"{REF}cat{REF_END}{BOX}(100,200),(500,800){BOX_END}"
    assert _close(parse_boxes(text, "qwen2_vl"), [_box("cat", 0.1, 0.2, 0.5, 0.8)])


def test_qwen2_several_boxes_for_one_ref() -> None:
    text = f"{REF}cats{REF_END}{BOX}(1,2),(3,4){BOX_END}{BOX}(5,6),(7,8){BOX_END}"
    assert [b.label for b in parse_boxes(text, "qwen2_vl")] == ["cats", "cats"]


def test_qwen2_several_refs_and_a_box_without_ref() -> None:
    assert _close(parse_boxes(QWEN2_ANSWER, "qwen2_vl"), QWEN2_BOXES)


def test_qwen2_box_without_any_ref_has_empty_label() -> None:
    text = f"It is here: {BOX}(0,0),(1000,1000){BOX_END}"
    assert parse_boxes(text, "qwen2_vl") == [Box("", 0.0, 0.0, 1.0, 1.0)]


def test_qwen2_prose_between_ref_and_box_unlinks_the_label() -> None:
    text = f"{REF}cat{REF_END} and something at {BOX}(0,0),(10,10){BOX_END}"
    assert parse_boxes(text, "qwen2_vl")[0].label == ""


def test_qwen2_swapped_corners_are_ordered() -> None:
    text = f"{BOX}(500,800),(100,200){BOX_END}"
    assert _close(parse_boxes(text, "qwen2_vl"), [_box("", 0.1, 0.2, 0.5, 0.8)])


def test_qwen2_out_of_range_is_clamped() -> None:
    text = f"{BOX}(-50,200),(1500,1000.5){BOX_END}"
    assert parse_boxes(text, "qwen2_vl") == [Box("", 0.0, 0.2, 1.0, 1.0)]


def test_qwen2_spaces_inside_coordinates() -> None:
    text = f"{BOX} ( 100 , 200 ) , ( 300 , 400 ) {BOX_END}"
    assert _close(parse_boxes(text, "qwen2_vl"), [_box("", 0.1, 0.2, 0.3, 0.4)])


@pytest.mark.parametrize(
    "content", ["(a,b),(c,d)", "(1,2),(3)", "(1,2),(3,4),(5,6)", "", "cat", "(1,2),(3,4,5)"]
)
def test_qwen2_bad_coordinates_are_skipped(content: str) -> None:
    assert parse_boxes(f"{REF}x{REF_END}{BOX}{content}{BOX_END}", "qwen2_vl") == []


def test_qwen2_ignores_json() -> None:
    assert parse_boxes(JSON_ANSWER, "qwen2_vl") == []


# --- Qwen2.5-VL / Qwen3-VL JSON ------------------------------------------------------------------


def test_qwen2_5_fenced_list_in_resized_pixels() -> None:
    boxes = parse_boxes(JSON_ANSWER, "qwen2_5_vl", (1000, 500))
    expected = [_box("dog", 0.1, 0.1, 0.5, 0.8), _box('cat "Tom" {x}', 0.6, 0.4, 1.0, 1.0)]
    assert _close(boxes, expected)


def test_qwen2_5_bare_object() -> None:
    text = '{"bbox_2d": [28, 56, 140, 280], "label": "cup"}'
    assert _close(parse_boxes(text, "qwen2_5_vl", (280, 560)), [_box("cup", 0.1, 0.1, 0.5, 0.5)])


def test_qwen2_5_several_objects_in_prose() -> None:
    text = (
        'The cup {"bbox_2d": [0, 0, 10, 10], "label": "cup"} and '
        '{"label": "plate", "bbox_2d": [10, 10, 20, 20]} and a {curly} remark.'
    )
    boxes = parse_boxes(text, "qwen2_5_vl", (20, 20))
    assert _close(boxes, [_box("cup", 0, 0, 0.5, 0.5), _box("plate", 0.5, 0.5, 1, 1)])


def test_qwen2_5_without_image_size_has_no_boxes() -> None:
    assert parse_boxes(JSON_ANSWER, "qwen2_5_vl") == []
    assert parse_boxes(JSON_ANSWER, "qwen2_5_vl", (0, 100)) == []


def test_qwen2_5_swapped_and_out_of_image_are_normalised() -> None:
    text = '[{"bbox_2d": [300, 90, -20, 10], "label": "x"}]'
    assert _close(parse_boxes(text, "qwen2_5_vl", (200, 100)), [_box("x", 0, 0.1, 1, 0.9)])


def test_qwen2_5_truncated_json_keeps_the_complete_objects() -> None:
    text = JSON_ANSWER[: JSON_ANSWER.index('"cat')]
    assert [b.label for b in parse_boxes(text, "qwen2_5_vl", (1000, 500))] == ["dog"]


def test_qwen2_5_loose_json_is_read() -> None:
    text = '[{"bbox_2d": [0, 0, 50, 50], "label": "a\\nb",}, {\'bbox_2d\': [1, 2, 3, 4]}]'
    assert _close(parse_boxes(text, "qwen2_5_vl", (100, 100)), [_box("a\nb", 0, 0, 0.5, 0.5)])


@pytest.mark.parametrize(
    "item",
    [
        '{"label": "no bbox"}',
        '{"bbox_2d": [1, 2, 3], "label": "three"}',
        '{"bbox_2d": [1, 2, 3, 4, 5], "label": "five"}',
        '{"bbox_2d": ["a", 2, 3, 4], "label": "letters"}',
        '{"bbox_2d": [true, 2, 3, 4], "label": "bool"}',
        '{"bbox_2d": [NaN, 2, 3, 4], "label": "nan"}',
        '{"bbox_2d": [1e999, 2, 3, 4], "label": "inf"}',
        '{"bbox_2d": "1, 2, 3, 4", "label": "string"}',
        '{"bbox_2d": {"x": 1}, "label": "dict"}',
        "[1, 2, 3, 4]",
    ],
)
def test_qwen2_5_bad_items_are_skipped(item: str) -> None:
    text = f'[{item}, {{"bbox_2d": [0, 0, 10, 10], "label": "ok"}}]'
    assert [b.label for b in parse_boxes(text, "qwen2_5_vl", (10, 10))] == ["ok"]


def test_qwen2_5_missing_or_odd_label() -> None:
    text = '[{"bbox_2d": [0, 0, 1, 1]}, {"bbox_2d": [0, 0, 1, 1], "label": 7}]'
    assert [b.label for b in parse_boxes(text, "qwen2_5_vl", (1, 1))] == ["", "7"]


def test_qwen2_5_nested_objects_are_not_counted_twice() -> None:
    text = '{"objects": [{"bbox_2d": [0, 0, 1, 1], "label": "a"},], "n": 1}'
    assert [b.label for b in parse_boxes(text, "qwen2_5_vl", (1, 1))] == ["a"]


def test_qwen3_json_is_on_the_1000_grid() -> None:
    boxes = parse_boxes(JSON_ANSWER, "qwen3_vl", (1, 1))  # image_size is not needed, and ignored
    expected = [_box("dog", 0.1, 0.05, 0.5, 0.4), _box('cat "Tom" {x}', 0.6, 0.2, 1.0, 0.8)]
    assert _close(boxes, expected)
    assert _close(parse_boxes(JSON_ANSWER, "qwen3_vl"), expected)


def test_json_families_ignore_markers() -> None:
    assert parse_boxes(QWEN2_ANSWER, "qwen2_5_vl", (100, 100)) == []
    assert parse_boxes(QWEN2_ANSWER, "qwen3_vl") == []


# --- display_text --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("", ""),
        ("plain text", "plain text"),
        (f"The {REF}cat{REF_END}{BOX}(1,2),(3,4){BOX_END} sits", "The **cat** sits"),
        (f"{REF} a cat {REF_END} {BOX}(1,2),(3,4){BOX_END} sits", "**a cat** sits"),
        (f"It is at {BOX}(1,2),(3,4){BOX_END}.", "It is at."),
        (f"{REF}{REF_END}{BOX}(1,2),(3,4){BOX_END}", ""),
        (f"{REF}2*3{REF_END}", r"**2\*3**"),
        ("Hi<|im_start|> there<|vision_start|><|image_pad|>", "Hi there"),
        ("Stray end<|box_end|> and<|object_ref_end|> ends", "Stray end and ends"),
        ("<|quad_start|>(1,2),(3,4),(5,6),(7,8)<|quad_end|>Text", "Text"),
        (JSON_ANSWER, JSON_ANSWER),
        ("x < y and a<b", "x < y and a<b"),
    ],
)
def test_display_text(text: str, shown: str) -> None:
    assert display_text(text) == shown


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("The <", "The "),
        ("The <|", "The "),
        ("The <|box_st", "The "),
        ("The <|box_start|", "The "),
        (f"The {REF}ca", "The ca"),
        (f"The {REF}cat{REF_END}{BOX}(12,3", "The **cat**"),
        (f"The {REF}cat{REF_END}{BOX}(12,34),(5", "The **cat**"),
        (f"The {REF}cat{REF_END}{BOX}(12,34),(56,78)<|box_", "The **cat**"),
        (f"Here {BOX}oops, not coordinates", "Here oops, not coordinates"),
    ],
)
def test_display_text_hides_half_streamed_markers(text: str, shown: str) -> None:
    assert display_text(text) == shown


def test_display_text_of_the_whole_qwen2_answer() -> None:
    assert display_text(QWEN2_ANSWER) == (
        "Sure! **the dog** is next to **two cats**, and there is also a ball at."
    )


# --- streaming: every prefix ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "family", "image_size", "count"),
    [
        (QWEN2_ANSWER, "qwen2_vl", None, 4),
        (JSON_ANSWER, "qwen2_5_vl", (1000, 500), 2),
        (JSON_ANSWER, "qwen3_vl", None, 2),
        (f"Sure.\n{JSON_ANSWER}\nDone{BOX}(1,2),(3,4){BOX_END}<|im_end|>", "qwen2_5_vl", (9, 9), 2),
    ],
)
def test_every_prefix_streams_cleanly(
    answer: str, family: str, image_size: tuple[int, int] | None, count: int
) -> None:
    final = parse_boxes(answer, family, image_size)  # type: ignore[arg-type]
    assert len(final) == count
    for end in range(len(answer) + 1):
        prefix = answer[:end]
        shown = display_text(prefix)
        assert "<|" not in shown, prefix
        boxes = parse_boxes(prefix, family, image_size)  # type: ignore[arg-type]
        assert boxes == final[: len(boxes)], prefix


def test_streamed_display_only_grows_outside_markers() -> None:
    """Text shown while streaming is never taken back, apart from a trailing ref turning bold."""
    for end in range(len(QWEN2_ANSWER) + 1):
        shown = display_text(QWEN2_ANSWER[:end]).replace("**", "")
        assert display_text(QWEN2_ANSWER).replace("**", "").startswith(shown.rstrip()), end


# --- malformed input: a seeded fuzz loop ---------------------------------------------------------

_FRAGMENTS = [
    REF, REF_END, BOX, BOX_END, "<|", "|>", "<|box", "_start|>", "<|im_end|>", "<|quad_start|>",
    "<", "|", "(", ")", ",", "-", ".", "12", "999", "1500", "-7", "1e999", "NaN", " ", "\n",
    "{", "}", "[", "]", '"', "\\", ":", '"bbox_2d"', '"label"', '"cat"', "```json", "cat",
    "(12,34),(560,78)", '{"bbox_2d": [1, 2, 300, 4], "label": "cat"}', '"bbox_2d": [', "1, 2, 3, 4",
]  # fmt: skip


def _garbage(rng: random.Random) -> str:
    """Marker fragments in random order, or random slices of the realistic answers spliced."""
    if rng.random() < 0.5:
        return "".join(rng.choice(_FRAGMENTS) for _ in range(rng.randint(0, 40)))
    slices = []
    for _ in range(rng.randint(1, 6)):
        answer = rng.choice([QWEN2_ANSWER, JSON_ANSWER])
        start = rng.randrange(len(answer))
        slices.append(answer[start : start + rng.randint(1, 80)])
    return "".join(slices)


def _valid(box: Box) -> bool:
    return isinstance(box.label, str) and 0 <= box.x1 <= box.x2 <= 1 and 0 <= box.y1 <= box.y2 <= 1


def test_garbage_never_raises_and_boxes_stay_valid() -> None:
    rng = random.Random(1234)
    for _ in range(3000):
        text = _garbage(rng)
        assert isinstance(display_text(text), str)
        for family in FAMILIES:
            assert all(_valid(b) for b in parse_boxes(text, family, (640, 480))), text


def test_garbage_prefixes_are_prefix_stable() -> None:
    rng = random.Random(99)
    for _ in range(400):
        text = _garbage(rng)
        for family in FAMILIES:
            final = parse_boxes(text, family, (640, 480))
            for end in range(len(text)):
                boxes = parse_boxes(text[:end], family, (640, 480))
                assert boxes == final[: len(boxes)], (family, text[:end])


# --- draw_boxes ----------------------------------------------------------------------------------

WHITE = (255, 255, 255)


def _edge_colour(image: Image.Image, box: Box) -> tuple[int, int, int]:
    """Colour in the middle of the box's left edge."""
    width, height = image.size
    return image.getpixel((round(box.x1 * width), round((box.y1 + box.y2) / 2 * height)))


def test_draw_boxes_returns_a_new_image_and_leaves_the_original() -> None:
    image = Image.new("RGB", (200, 100), WHITE)
    before = image.tobytes()
    drawn = draw_boxes(image, [Box("cat", 0.25, 0.4, 0.75, 0.9)])
    assert drawn is not image and drawn.size == image.size and drawn.mode == "RGB"
    assert image.tobytes() == before


def test_draw_boxes_colours_edges_keeps_far_pixels_and_draws_the_label() -> None:
    image = Image.new("RGB", (400, 300), WHITE)
    cat, other_cat, dog = (
        Box("cat", 0.25, 0.4, 0.5, 0.9),
        Box("cat", 0.6, 0.6, 0.7, 0.7),
        Box("dog", 0.8, 0.5, 0.95, 0.9),
    )
    drawn = draw_boxes(image, [cat, other_cat, dog])
    colours = [_edge_colour(drawn, box) for box in (cat, other_cat, dog)]
    assert all(colour in PALETTE for colour in colours)
    assert colours[0] == colours[1] != colours[2]
    for far in [(2, 2), (398, 2), (2, 298), (150, 200), (220, 250)]:
        assert drawn.getpixel(far) == WHITE, far
    top, left = round(cat.y1 * 300), round(cat.x1 * 400)
    label_area = drawn.crop((left, top - 8, left + 16, top))  # the label sits above the box
    assert len(label_area.getcolors()) >= 2  # its background and the text's ink


def test_draw_boxes_without_label_draws_only_the_outline() -> None:
    image = Image.new("RGB", (100, 100), WHITE)
    drawn = draw_boxes(image, [Box("", 0.5, 0.5, 0.9, 0.9)])
    assert drawn.crop((0, 0, 100, 49)).getcolors() == [(100 * 49, WHITE)]
    assert _edge_colour(drawn, Box("", 0.5, 0.5, 0.9, 0.9)) in PALETTE


def test_draw_boxes_label_at_the_top_edge_stays_inside() -> None:
    image = Image.new("RGB", (300, 200), WHITE)
    drawn = draw_boxes(image, [Box("a long label for a box", 0.9, 0.0, 1.0, 0.2)])
    assert drawn.size == (300, 200)
    assert drawn.getpixel((299, 5)) != WHITE  # pushed left and inside, not cut off at the top


@pytest.mark.parametrize("size", [(28, 28), (1, 1), (3, 200), (4000, 3000)])
def test_draw_boxes_any_image_size(size: tuple[int, int]) -> None:
    image = Image.new("RGB", size, WHITE)
    drawn = draw_boxes(image, [Box("cat", 0.1, 0.1, 0.9, 0.9), Box("", 0.0, 0.0, 1.0, 1.0)])
    assert drawn.size == size
    assert drawn.getpixel((0, 0)) != WHITE


def test_draw_boxes_converts_other_modes_to_rgb() -> None:
    transparent = Image.new("RGBA", (50, 50), (0, 0, 0, 0))
    drawn = draw_boxes(transparent, [Box("", 0.5, 0.5, 0.6, 0.6)])
    assert drawn.mode == "RGB" and drawn.getpixel((5, 5)) == WHITE
    assert draw_boxes(Image.new("L", (50, 50), 128), []).getpixel((5, 5)) == (128, 128, 128)


def test_draw_boxes_with_no_boxes_is_an_equal_copy() -> None:
    image = Image.new("RGB", (30, 20), (1, 2, 3))
    drawn = draw_boxes(image, [])
    assert drawn is not image and drawn.tobytes() == image.tobytes()


def test_deeply_nested_json_in_an_answer_never_raises():
    deep = "[" * 5000 + '{"bbox_2d": [100, 200, 300, 400]}' + "]" * 5000
    [box] = parse_boxes(deep, "qwen3_vl")  # json.loads of the whole would hit RecursionError
    assert (box.x1, box.y2) == (0.1, 0.4)
    nested = '{"a": ' * 3000 + "1" + "}" * 3000  # valid JSON, too deep for json.loads
    assert parse_boxes(nested, "qwen3_vl") == []
    assert display_text(nested) == nested


def test_qwen3_points_are_parsed_and_drawn_as_dots():
    from app.grounding import Grounding

    [point] = parse_boxes('[{"point_2d": [500, 250], "label": "cup"}]', "qwen3_vl")
    assert point.is_point and (point.x1, point.y1) == (0.5, 0.25)
    found = Grounding(1, "table.png", (200, 100), (point,))
    assert found.pixel_boxes() == [{"label": "cup", "point": [100, 25]}]
    drawn = draw_boxes(Image.new("RGB", (200, 100), "white"), [point])
    assert drawn.getpixel((100, 25)) != (255, 255, 255), "a dot at the point"


def test_the_box_goes_on_the_picture_the_answer_names():
    from types import SimpleNamespace

    from app.grounding import locate

    def picture(name: str) -> SimpleNamespace:
        return SimpleNamespace(name=name, header=SimpleNamespace(width=100, height=50),
                               fed_size=(112, 56))  # fmt: skip

    images = [picture("a.png"), picture("b.png"), picture("c.png")]
    raw = 'In Picture 2: {"bbox_2d": [0, 0, 500, 500], "label": "dog"}'
    assert locate(raw, "qwen3_vl", images).name == "b.png"
    assert locate(raw.replace("Picture 2", "the photo"), "qwen3_vl", images).name == "c.png"
    assert locate(raw.replace("Picture 2", "Picture 7"), "qwen3_vl", images).name == "c.png"
