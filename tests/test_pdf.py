"""app.media.pdf: header facts, page sizes, rendering, refusals and page ranges, on PDFs made here.

The PDFs are written byte by byte (a few hundred bytes each), so the tests know exactly what
each page holds: its MediaBox, its /Rotate and one coloured rectangle.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from app.errors import UserFacingError
from app.media import pdf
from app.media.sizing import Geometry, MediaLimits

LIMITS = MediaLimits()
NAME = "Quarterly report.pdf"  # what the user called it: every refusal names it
_NO_PYPDF = "pypdf makes the encrypted PDFs: pip install -r requirements_dev.txt"
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)

# (width, height, /Rotate, content): landscape with red on its left half; portrait with green
# on its top half; landscape turned 90 degrees clockwise with blue on its (unturned) left half,
# so that it is displayed portrait with blue on its top half.
THREE_PAGES = [
    (400, 200, 0, "1 0 0 rg 0 0 200 200 re f"),
    (200, 400, 0, "0 1 0 rg 0 200 200 200 re f"),
    (300, 150, 90, "0 0 1 rg 0 0 150 150 re f"),
]


def pdf_bytes(
    pages: list[tuple[float, float, int, str]], resources: str = "", extra: tuple[str, ...] = ()
) -> bytes:
    """A minimal PDF: a catalog, a page tree, each page and its content stream, then `extra`
    objects (numbered from 3 + 2 * pages), which the pages' `resources` may name."""
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(len(pages)))
    objects = ["<< /Type /Catalog /Pages 2 0 R >>"]
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>")
    for i, (width, height, rotate, content) in enumerate(pages):
        box = f"/MediaBox [0 0 {width} {height}] /Rotate {rotate} {resources}"
        objects.append(f"<< /Type /Page /Parent 2 0 R {box} /Contents {4 + 2 * i} 0 R >>")
        objects.append(f"<< /Length {len(content)} >>\nstream\n{content}\nendstream")
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(objects + list(extra), 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(offsets) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\n" % (len(offsets) + 1)
    return bytes(out + b"startxref\n%d\n%%%%EOF\n" % xref)


def write(folder: Path, data: bytes, filename: str = "upload.bin") -> Path:
    path = folder / filename
    path.write_bytes(data)
    return path


def refusal(path: Path) -> str:
    """The message pdf_header gives for `path`, checked to name the file."""
    with pytest.raises(UserFacingError) as caught:
        pdf.pdf_header(path, NAME, LIMITS)
    message = str(caught.value)
    assert NAME in message
    return message


@pytest.fixture
def three(tmp_path: Path) -> Path:
    return write(tmp_path, pdf_bytes(THREE_PAGES))


# --- content and header ------------------------------------------------------------------------


def test_is_pdf_judges_the_content_not_the_name(tmp_path: Path, three: Path) -> None:
    png = write(tmp_path, b"\x89PNG\r\n\x1a\n" + bytes(64), "fake.pdf")
    assert pdf.is_pdf(three)
    assert not pdf.is_pdf(png)
    assert pdf.is_pdf(write(tmp_path, b"junk\r\n" + pdf_bytes(THREE_PAGES), "a.png"))
    assert not pdf.is_pdf(write(tmp_path, bytes(2000) + pdf_bytes(THREE_PAGES), "far.pdf"))
    assert not pdf.is_pdf(tmp_path / "missing.pdf")


def test_header_gives_each_page_size_as_displayed(three: Path) -> None:
    header = pdf.pdf_header(three, NAME, LIMITS)
    assert header.pages == 3
    assert header.sizes == ((400, 200), (200, 400), (150, 300))  # the turned page: portrait


# --- sizes and rendering -----------------------------------------------------------------------


def test_page_size_is_200_dpi_within_the_pixel_budget() -> None:
    small = pdf.page_size((144, 72), LIMITS)  # 2 x 1 inches: 400 x 200 pixels at 200 dpi
    assert small == (392, 196)
    a4 = pdf.page_size((595.28, 841.89), LIMITS)  # 1654 x 2339 at 200 dpi: over max_pixels
    assert a4[0] * a4[1] <= LIMITS.max_pixels
    assert a4[0] % 28 == 0 and a4[1] % 28 == 0
    assert abs(a4[1] / a4[0] - 841.89 / 595.28) < 0.05
    tiny = pdf.page_size((10, 10), LIMITS)  # a stamp is raised to the floor, like an image
    assert tiny[0] * tiny[1] >= LIMITS.min_pixels
    qwen3 = pdf.page_size((612, 792), LIMITS, Geometry(patch_size=16))
    assert qwen3[0] % 32 == 0 and qwen3[1] % 32 == 0


def test_pages_render_at_their_size_with_content_where_drawn(three: Path) -> None:
    header = pdf.pdf_header(three, NAME, LIMITS)
    sizes = [pdf.page_size(points, LIMITS) for points in header.sizes]
    images = pdf.render_pages(three, list(enumerate(sizes)), NAME)
    assert [image.size for image in images] == sizes
    assert {image.mode for image in images} == {"RGB"}
    landscape, portrait, turned = images
    w, h = landscape.size
    assert landscape.getpixel((w // 4, h // 2)) == RED
    assert landscape.getpixel((3 * w // 4, h // 2)) == WHITE  # the background is white
    w, h = portrait.size
    assert portrait.getpixel((w // 2, h // 4)) == GREEN
    assert portrait.getpixel((w // 2, 3 * h // 4)) == WHITE
    w, h = turned.size
    assert w < h  # displayed portrait
    assert turned.getpixel((w // 2, h // 4)) == BLUE  # the left edge turned clockwise: on top
    assert turned.getpixel((w // 2, 3 * h // 4)) == WHITE


def test_one_page_renders_at_any_requested_size(three: Path) -> None:
    image = pdf.render_page(three, 0, (112, 84), NAME)  # not the page's aspect ratio
    assert image.size == (112, 84)
    assert image.getpixel((20, 42)) == RED
    assert image.getpixel((90, 42)) == WHITE


def test_a_missing_page_is_refused_naming_the_file_and_page(three: Path) -> None:
    with pytest.raises(UserFacingError, match="Page 9 of") as caught:
        pdf.render_page(three, 8, (56, 56), NAME)
    assert NAME in str(caught.value)


def test_a_page_that_takes_too_long_is_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Forms drawing the next form 10 times, 8 levels deep: a 2 KB file that pdfium would parse
    # for minutes (10 ** 7 rectangles) before rendering anything.
    monkeypatch.setattr(pdf, "PAGE_SECONDS", 1)
    path = write(tmp_path, _nested_forms(depth=8, width=10))
    with pytest.raises(UserFacingError, match="was not rendered in time") as caught:
        pdf.render_page(path, 0, (280, 280), NAME)
    assert "Page 1 of" in str(caught.value) and NAME in str(caught.value)


def test_a_documents_pages_share_one_time_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pdf, "OPEN_SECONDS", 1)  # starting the child
    monkeypatch.setattr(pdf, "DOCUMENT_SECONDS", 1)  # each page alone would have 20 s
    path = write(tmp_path, _nested_forms(depth=8, width=10))
    started = time.monotonic()
    with pytest.raises(UserFacingError, match="a document's pages 1 s"):
        pdf.render_pages(path, [(0, (280, 280))] * 4, NAME)
    assert time.monotonic() - started < 5


def test_a_message_waits_for_a_free_child_only_so_long(
    three: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pdf, "SLOT_SECONDS", 0.2)
    taken = [pdf._child_slots.acquire(timeout=5) for _ in range(pdf.CHILD_SLOTS)]
    try:
        with pytest.raises(UserFacingError, match="Other documents are being read"):
            pdf.render_page(three, 0, (56, 56), NAME)
    finally:
        for _ in taken:
            pdf._child_slots.release()
    assert pdf.render_page(three, 0, (56, 56), NAME).size == (56, 56), "served once free"


def _nested_forms(depth: int, width: int) -> bytes:
    """A page drawing form 5, which draws form 6 `width` times, and so on `depth` levels."""
    forms = []
    for number in range(5, 5 + depth):
        content, resources = " ".join(["/F Do"] * width), f"/XObject << /F {number + 1} 0 R >>"
        if number == 4 + depth:
            content, resources = "1 0 0 rg 0 0 10 10 re f", ""
        forms.append(
            f"<< /Type /XObject /Subtype /Form /BBox [0 0 600 600] /Resources << {resources} >> "
            f"/Length {len(content)} >>\nstream\n{content}\nendstream"
        )
    page = [(600, 600, 0, "/F Do")]
    return pdf_bytes(page, "/Resources << /XObject << /F 5 0 R >> >>", tuple(forms))


# --- refusals ----------------------------------------------------------------------------------


def encrypted(user_password: str) -> bytes:
    """The three-page PDF encrypted (RC4) with `user_password` and an owner password."""
    pypdf = pytest.importorskip("pypdf", reason=_NO_PYPDF)
    writer = pypdf.PdfWriter(clone_from=io.BytesIO(pdf_bytes(THREE_PAGES)))
    writer.encrypt(user_password=user_password, owner_password="owner", algorithm="RC4-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def test_a_password_protected_pdf_is_refused(tmp_path: Path) -> None:
    assert "protected by a password" in refusal(write(tmp_path, encrypted("secret")))


def test_a_pdf_with_only_an_owner_password_opens(tmp_path: Path) -> None:
    assert pdf.pdf_header(write(tmp_path, encrypted("")), NAME, LIMITS).pages == 3


@pytest.mark.parametrize(
    "data",
    [
        b"%PDF-1.7\n" + bytes(range(256)) * 4,  # the signature, then garbage
        pdf_bytes(THREE_PAGES)[:200],  # truncated
    ],
    ids=["garbage", "truncated"],
)
def test_a_broken_pdf_is_refused(tmp_path: Path, data: bytes) -> None:
    assert "could not be read as a PDF" in refusal(write(tmp_path, data))


def test_a_pdf_without_pages_is_refused(tmp_path: Path) -> None:
    assert "has no pages" in refusal(write(tmp_path, pdf_bytes([])))


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    assert "is empty" in refusal(write(tmp_path, b""))


def test_too_many_pages_are_refused_saying_how_many(tmp_path: Path) -> None:
    pages = [(72, 72, 0, "")] * (pdf.MAX_PDF_PAGES + 1)
    message = refusal(write(tmp_path, pdf_bytes(pages)))
    assert f"{pdf.MAX_PDF_PAGES + 1} pages" in message
    assert f"at most {pdf.MAX_PDF_PAGES}" in message


@pytest.mark.parametrize(
    "size, expected",
    [
        ((201 * 72, 100), "Page 2 of .* is too large .*200 inches"),
        ((100 * 72, 30), "Page 2 of .* too narrow or too wide"),
        ((100, 0.5), "Page 2 of .* has no area"),
    ],
)
def test_an_absurd_page_is_refused(
    tmp_path: Path, size: tuple[float, float], expected: str
) -> None:
    path = write(tmp_path, pdf_bytes([THREE_PAGES[0], (*size, 0, "")]))
    with pytest.raises(UserFacingError, match=expected) as caught:
        pdf.pdf_header(path, NAME, LIMITS)
    assert NAME in str(caught.value)


# --- page ranges -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, pages, expected",
    [
        ("", 3, [0, 1, 2]),
        ("  ", 3, [0, 1, 2]),
        ("1-3, 7, 10-", 12, [0, 1, 2, 6, 9, 10, 11]),
        ("-2", 5, [0, 1]),
        ("3,1,3", 5, [0, 2]),
        (" 2 - 4 ,", 5, [1, 2, 3]),
        ("1–2", 5, [0, 1]),  # an en dash, as pasted from a document
        ("4-100", 6, [3, 4, 5]),
        ("0, 2, 9", 3, [1]),
        ("99999999999999999999-", 3, "none"),
    ],
)
def test_page_ranges(text: str, pages: int, expected: list[int] | str) -> None:
    if expected == "none":
        with pytest.raises(UserFacingError, match=f"the document has {pages} pages"):
            pdf.parse_page_range(text, pages)
    else:
        assert pdf.parse_page_range(text, pages) == expected


def test_a_range_past_the_end_says_how_many_pages_there_are() -> None:
    with pytest.raises(UserFacingError, match="the document has 3 pages"):
        pdf.parse_page_range("5-8", 3)
    with pytest.raises(UserFacingError, match="the document has 1 page\\."):
        pdf.parse_page_range("2", 1)


@pytest.mark.parametrize("text", ["a", "1-2-3", "3-1", "1 3", "-", "1.5", "1,x"])
def test_a_malformed_range_shows_the_expected_form(text: str) -> None:
    with pytest.raises(UserFacingError, match="1-3, 7, 10-"):
        pdf.parse_page_range(text, 10)
