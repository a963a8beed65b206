"""PDF documents: header facts (page count, page sizes) and pages rendered as images for the model.

pdfium (through pypdfium2) runs only in a short-lived child process, never in the server:
pdfium is not thread-safe, a crafted page can keep it parsing for minutes (nested form
XObjects: a 2 KB file took 89 s to load one page), and a malformed one can crash it. A child
can be timed out (per page), capped in memory (pdfium then leaves out an image it cannot
allocate) and crash alone. Starting one costs about 0.3 s, so a document's pages are rendered
by one child (`render_pages`). The checks on what the header says are made here, in Python.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from app.errors import UserFacingError
from app.media.images import rgb_at
from app.media.sizing import MAX_RATIO, QWEN2_VL, Geometry, MediaLimits, image_size
from app.media.sniff import check_file

log = logging.getLogger(__name__)

MAX_PDF_PAGES = 200  # longer documents are refused (a page counts as one image in the media cap)
MAX_PAGE_INCHES = 200  # a page side (Acrobat's own limit: 14,400 points)
# Pages are first sized as if printed at this resolution, then by the image rule (smart_resize
# within min_pixels..max_pixels): 10-point text is then about 28 pixels high, one merged patch,
# so a small page (a receipt, a slide) is not blown up past legibility into more tokens, and a
# big page (A4, 1654x2339 at 200 dpi) is scaled down to max_pixels like a photo.
RENDER_DPI = 200
OPEN_SECONDS = 30.0  # starting the child and reading the header (or opening to render)
PAGE_SECONDS = 20  # rendering one page; the child is ended past it (SIGALRM)
DOCUMENT_SECONDS = 60  # rendering all the pages one message needs from one document
SLOT_SECONDS = 20  # the longest wait for a free child before the message is refused
CHILD_MEMORY_BYTES = 1536 * 2**20  # the child's heap, the interpreter's ~100 MB included
CHILD_SLOTS = 2  # pdfium children at once (about 60 MB each before they render)

_POINTS_PER_INCH = 72
_SIGNATURE = b"%PDF-"
_SIGNATURE_WINDOW = 1024  # pdfium (like Acrobat) finds the header within the first 1 KB
_ROOT = Path(__file__).resolve().parents[2]  # the child imports this module from here
_PASSWORD, _BROKEN, _UNAVAILABLE = 3, 4, 5  # the child's exit codes
_EXAMPLE = "write pages like 1-3, 7, 10- (the first page is 1; empty means all pages)"
_ITEM = re.compile(r"(\d+)\s*(?:([-–])\s*(\d*))?|[-–]\s*(\d+)")

_child_slots = threading.BoundedSemaphore(CHILD_SLOTS)


@dataclass(frozen=True)
class PdfHeader:
    """A PDF as its page tree describes it: each page's (width, height) in points, as displayed
    (its /Rotate applied)."""

    sizes: tuple[tuple[float, float], ...]

    @property
    def pages(self) -> int:
        return len(self.sizes)


def is_pdf(path: str | os.PathLike[str]) -> bool:
    """Whether the content is a PDF (its %PDF- signature), whatever the file's name."""
    try:
        with open(path, "rb") as f:
            return _SIGNATURE in f.read(_SIGNATURE_WINDOW)
    except OSError:
        return False


def pdf_header(path: str | os.PathLike[str], name: str, limits: MediaLimits) -> PdfHeader:
    """Page count and page sizes, read without rendering; a document that cannot be shown
    (password, damage, no pages, too many pages, an absurd page) is refused, naming the file."""
    check_file(Path(path), limits.max_upload_bytes, name)
    request = {"op": "header", "path": str(Path(path).resolve()), "max_pages": MAX_PDF_PAGES}
    code, out = _run(request, OPEN_SECONDS)
    if code != 0:
        raise _failure(code, name, "opened", None)
    facts = json.loads(out)
    if facts["count"] == 0:
        raise UserFacingError(f"'{name}' has no pages.")
    if facts["count"] > MAX_PDF_PAGES:
        raise UserFacingError(
            f"'{name}' has {facts['count']} pages; documents may have at most {MAX_PDF_PAGES}."
        )
    sizes = tuple((float(w), float(h)) for w, h in facts["sizes"])
    for number, size in enumerate(sizes, 1):
        _check_page(size, number, name)
    return PdfHeader(sizes)


def _check_page(size: tuple[float, float], number: int, name: str) -> None:
    width, height = size
    inches = f"{width / _POINTS_PER_INCH:.1f} x {height / _POINTS_PER_INCH:.1f} inches"
    if min(width, height) < 1:
        raise UserFacingError(f"Page {number} of '{name}' has no area ({inches}).")
    if max(width, height) > MAX_PAGE_INCHES * _POINTS_PER_INCH:
        raise UserFacingError(
            f"Page {number} of '{name}' is too large ({inches}): "
            f"a page side may be at most {MAX_PAGE_INCHES} inches."
        )
    if max(width, height) / min(width, height) > MAX_RATIO:
        raise UserFacingError(
            f"Page {number} of '{name}' is too narrow or too wide ({inches}): its long side "
            f"may be at most {MAX_RATIO} times its short side."
        )


def page_size(
    page_points: tuple[float, float],
    limits: MediaLimits,
    geometry: Geometry = QWEN2_VL,
    name: str = "the PDF",
) -> tuple[int, int]:
    """(width, height) a page is fed at: its size at RENDER_DPI, then the images' rule."""
    width, height = (max(1, round(side * RENDER_DPI / _POINTS_PER_INCH)) for side in page_points)
    return image_size(width, height, limits, name, geometry)


def render_page(
    path: str | os.PathLike[str], index: int, size: tuple[int, int], name: str
) -> Image.Image:
    """One page (0-based) as RGB at exactly `size`; see `render_pages` for several."""
    return render_pages(path, [(index, size)], name)[0]


def render_pages(
    path: str | os.PathLike[str], pages: Sequence[tuple[int, tuple[int, int]]], name: str
) -> list[Image.Image]:
    """Pages given as (0-based index, (width, height)), each RGB at exactly its size, on white,
    as displayed (rotation applied); rendered by one child, each page within PAGE_SECONDS."""
    if not pages:
        return []
    request = {
        "op": "render",
        "path": str(Path(path).resolve()),
        "pages": [[index, width, height] for index, (width, height) in pages],
        "page_seconds": PAGE_SECONDS,
    }
    code, out = _run(request, OPEN_SECONDS + min(PAGE_SECONDS * len(pages), DOCUMENT_SECONDS))
    images: list[Image.Image] = []
    offset = 0
    for index, size in pages:
        end = offset + size[0] * size[1] * 3
        if end > len(out):
            raise _failure(code, name, "rendered", index)
        images.append(Image.frombytes("RGB", size, out[offset:end]))
        offset = end
    return images


def parse_page_range(text: str, pages: int) -> list[int]:
    """Sorted 0-based indices of a range like "1-3, 7, 10-" (1-based, inclusive, open ends;
    empty: every page); pages past the document's end are left out."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        return list(range(pages))
    chosen: set[int] = set()
    for item in items:
        first, last = _range_item(item, pages)
        chosen.update(range(max(first, 1) - 1, min(last, pages)))
    if not chosen:
        plural = "page" if pages == 1 else "pages"
        raise UserFacingError(
            f"The page range '{_shown(text)}' selects no page: the document has {pages} {plural}."
        )
    return sorted(chosen)


def check_page_range(text: str) -> None:
    """UserFacingError for a range that is not understood; which pages it selects is known only
    for a document (a range past a short document's end is said when that document is read)."""
    for item in text.split(","):
        if item.strip():
            _range_item(item.strip(), MAX_PDF_PAGES)


def _range_item(item: str, pages: int) -> tuple[int, int]:
    """(first, last) page numbers of one item: "7", "1-3", "10-" or "-3"."""
    match = _ITEM.fullmatch(item)
    if match is None:
        raise UserFacingError(f"The page range '{_shown(item)}' is not understood: {_EXAMPLE}.")
    first, dash, last, only_last = match.groups()
    if only_last is not None:
        return 1, int(only_last)
    if dash is None:
        return int(first), int(first)
    if not last:
        return int(first), pages
    if int(last) < int(first):
        raise UserFacingError(f"The page range '{_shown(item)}' goes backwards: {_EXAMPLE}.")
    return int(first), int(last)


def _shown(text: str) -> str:
    text = text.strip()
    return text if len(text) <= 40 else text[:39] + "…"


# --- the child process -----------------------------------------------------------------------


def _run(request: dict[str, Any], timeout: float) -> tuple[int | None, bytes]:
    """(exit code, stdout) of a child serving `request`; the code is None when it ran out of
    time (the stdout it wrote by then is kept: it tells which pages were done)."""
    command = [sys.executable, "-c", f"from {__name__} import _child_main; _child_main()"]
    command.append(json.dumps(request))
    if not _child_slots.acquire(timeout=SLOT_SECONDS):
        raise UserFacingError(
            "Other documents are being read right now: send your message again in a moment."
        )
    try:
        done = subprocess.run(command, cwd=_ROOT, capture_output=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        return None, exc.stdout or b""
    finally:
        _child_slots.release()
    if done.returncode != 0:
        log.info("pdf child %s ended with %s: %s", request["op"], done.returncode,
                 done.stderr.decode(errors="replace")[-2000:])  # fmt: skip
    if hasattr(signal, "SIGALRM") and done.returncode == -signal.SIGALRM:
        return None, done.stdout  # a page ran past its time
    return done.returncode, done.stdout


def _failure(code: int | None, name: str, what: str, index: int | None) -> UserFacingError:
    """The message for a child that did not finish: `what` is "opened" or "rendered"."""
    subject = f"'{name}'" if index is None else f"Page {index + 1} of '{name}'"
    if code == _PASSWORD:
        return UserFacingError(
            f"'{name}' is protected by a password (or encrypted) and cannot be opened: "
            "save a copy without the protection and upload that."
        )
    if code == _UNAVAILABLE:
        return UserFacingError(f"'{name}' cannot be read: PDF support is not installed here.")
    if code is None and index is None:
        return UserFacingError(f"{subject} took too long to be {what} (over {OPEN_SECONDS:.0f} s).")
    if code is None:
        return UserFacingError(
            f"{subject} was not rendered in time: a page may take {PAGE_SECONDS} s, a "
            f"document's pages {DOCUMENT_SECONDS} s. Choose fewer pages with 'PDF pages'."
        )
    if index is None:
        return UserFacingError(
            f"'{name}' could not be read as a PDF: the file looks corrupt or truncated."
        )
    return UserFacingError(
        f"{subject} could not be rendered: it looks damaged or needs too much memory."
    )


def _child_main() -> None:
    """The pdfium side: a request (JSON) as the last argument, answers on stdout: the header
    as JSON, or each page's RGB bytes in turn. Run by `_run`, never in the server."""
    request = json.loads(sys.argv[-1])
    _cap_memory(CHILD_MEMORY_BYTES)
    try:
        import pypdfium2 as pdfium
        import pypdfium2.raw as pdfium_c
    except ImportError:
        sys.exit(_UNAVAILABLE)
    # Opened by the raw call, as its error code is reliable only there (pypdfium2 reports a
    # stale one for a document with no pages, and leaves that document and its file open).
    raw = pdfium_c.FPDF_LoadDocument(os.fsencode(request["path"]), None)
    if not raw:
        error = pdfium_c.FPDF_GetLastError()
        locked = error in (pdfium_c.FPDF_ERR_PASSWORD, pdfium_c.FPDF_ERR_SECURITY)
        sys.exit(_PASSWORD if locked else _BROKEN)
    with pdfium.PdfDocument(raw) as pdf:
        try:
            if request["op"] == "header":
                _write_header(pdf, request["max_pages"])
            else:
                _write_pages(pdf, request["pages"], request["page_seconds"])
        except (pdfium.PdfiumError, IndexError, ValueError, MemoryError) as exc:
            print(repr(exc), file=sys.stderr)
            sys.exit(_BROKEN)


def _write_header(pdf: Any, max_pages: int) -> None:
    """The page count, and the sizes of the pages unless there are too many to accept."""
    count = len(pdf)
    sizes = [pdf.get_page_size(i) for i in range(count)] if count <= max_pages else []
    sys.stdout.buffer.write(json.dumps({"count": count, "sizes": sizes}).encode())


def _write_pages(pdf: Any, pages: list[list[int]], seconds: int) -> None:
    """Each page's RGB bytes in turn, each page within `seconds` (past it, SIGALRM's default
    action ends the child: pdfium cannot be interrupted otherwise)."""
    for index, width, height in pages:
        if hasattr(signal, "alarm"):  # POSIX; elsewhere the parent's timeout still holds
            signal.alarm(seconds)
        sys.stdout.buffer.write(_render(pdf, index, (width, height)).tobytes())
        sys.stdout.buffer.flush()  # the parent counts finished pages from what it received


def _render(pdf: Any, index: int, size: tuple[int, int]) -> Image.Image:
    """Render at the scale that covers `size` on both sides, then resize to it exactly."""
    if not 0 <= index < len(pdf):
        raise IndexError(f"no page {index}")
    page = pdf[index]
    try:
        width, height = page.get_size()  # as displayed: pdfium applies /Rotate when rendering
        bitmap = page.render(scale=max(size[0] / width, size[1] / height), rev_byteorder=True)
        try:
            image = bitmap.to_pil()  # RGB on white (the default fill), sharing the bitmap
            return rgb_at(image, size, source=image)
        finally:
            bitmap.close()
    finally:
        page.close()


def _cap_memory(limit: int) -> None:
    """Cap the heap (RLIMIT_DATA): pdfium then leaves out, or fails on, what it can't allocate."""
    try:
        import resource
    except ImportError:  # not POSIX: the time limits still hold
        return
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    soft = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
