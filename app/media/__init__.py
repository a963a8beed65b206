"""Uploads as media objects: made once per request from the file's header, decoded on demand.

`prepare(path, limits)` turns one upload into one `Media`: its name, content hash, kind, the
facts its header gives (size, frame count, every frame's time) and the plan for this request's
limits (the size it is fed at, which frames, how many visual tokens), all without decoding.
A PDF becomes a `Document`: its chosen pages (the `pdf_pages` limit), each an image `Media`
rendered on demand (`pdf`: pdfium in a child process), a document's pages by one child
(`decode_all`).
`Media.decode()` decodes when an engine needs the pixels, through one cache keyed by content
(within one client) and plan and bounded in bytes, with at most DECODE_SLOTS decodes at once.
So the token budget is settled before anything is decoded, and turns it leaves out never are.

Modules: `sizing` (smart_resize, frame counts, token counts), `sniff` (what a file is, and the
messages for bad ones), `images`, `video` and `pdf` (headers and decoding).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from app.errors import UserFacingError
from app.lru import Lru
from app.media.images import (
    ImageHeader,
    ImageInput,
    ImagePlan,
    decode_still,
    image_header,
    rgb_on_white,
)
from app.media.pdf import (
    PdfHeader,
    is_pdf,
    page_size,
    parse_page_range,
    pdf_header,
    render_pages,
)
from app.media.sizing import (
    QWEN2_VL,
    Geometry,
    MediaLimits,
    image_size,
    smart_resize,
)
from app.media.sniff import (
    KINDS,
    Kind,
    check_file,
    is_animation,
    magic_kind,
    open_image,
    reading,
    sniff_kind,
    wrong_kind,
)
from app.media.video import (
    VideoHeader,
    VideoInput,
    VideoPlan,
    animation_header,
    container_header,
    decode_animation,
    decode_container,
    plan_video,
)
from app.trust import display_name, trusted_file

__all__ = [
    "KINDS",
    "QWEN2_VL",
    "Geometry",
    "Document",
    "ImageInput",
    "Kind",
    "Media",
    "MediaLimits",
    "VideoInput",
    "by_document",
    "decode_all",
    "load_media",
    "prepare",
    "rgb_on_white",
    "smart_resize",
    "sniff_kind",
]

DECODED_CACHE_BYTES = 256 * 1024 * 1024  # decoded pixels kept for the next turns, all clients
HEADER_CACHE_ENTRIES = 512  # files whose header facts are kept (a few KB each)
DECODE_SLOTS = 2  # decodes at once: more would only share the CPU and add up their memory
_HASH_CHUNK = 1024 * 1024

Header = ImageHeader | VideoHeader | PdfHeader
Plan = ImagePlan | VideoPlan
Decoded = ImageInput | VideoInput


@dataclass(frozen=True)
class Media:
    """One upload prepared for one request; `decode()` gives its pixels (cached).

    Equal when made of the same file with the same plan (by value, never hashed).
    """

    path: Path
    name: str
    digest: str  # hash of the file's bytes: the same content is the same media
    kind: Kind
    header: Header
    plan: Plan
    tokens: int  # visual tokens the plan costs
    limits: MediaLimits
    scope: str = ""  # whose cache entry this is (the client): decoded pixels are not shared

    __hash__ = None  # type: ignore[assignment]  # its header holds lists

    @property
    def fed_size(self) -> tuple[int, int]:
        """(width, height) of the image, or of each frame, as the model sees it."""
        return self.plan.size

    @property
    def page(self) -> int | None:
        """The page number (from 1) of a document's page; None for other media."""
        page = getattr(self.plan, "page", None)
        return None if page is None else page + 1

    @property
    def frames(self) -> int:
        return len(self.plan.indices) if isinstance(self.plan, VideoPlan) else 1

    def decode(self) -> Decoded:
        """The pixels, decoded now or taken from the cache."""
        key = _cache_key(self)
        cached = _decoded.get(key)
        if cached is not None:
            return cached
        with _decode_slots:
            decoded = _decode(self)
        _decoded.put(key, decoded, _decoded_bytes(decoded))
        return decoded


def prepare(
    path: str | os.PathLike[str],
    limits: MediaLimits,
    geometry: Geometry = QWEN2_VL,
    *,
    name: str | None = None,
    scope: str = "",
) -> Media | Document:
    """The media object of a client's upload (a `Document` for a PDF): trust rule, header,
    plan; nothing decoded or rendered.

    Raises UserFacingError (naming the file) for a file outside the trust rule, a bad file or
    one over the limits.
    """
    resolved = trusted_file(path)
    name = name or display_name(str(path))
    digest, kind, header = _header(resolved, name, limits)
    if isinstance(header, PdfHeader):
        return _document(resolved, name, digest, header, limits, geometry, scope)
    if kind == "image":
        assert isinstance(header, ImageHeader)
        plan: Plan = ImagePlan(image_size(header.width, header.height, limits, name, geometry))
        tokens = geometry.image_tokens(*plan.size)
    else:
        assert isinstance(header, VideoHeader)
        plan = plan_video(header, limits, name, geometry)
        tokens = geometry.video_tokens(len(plan.indices), *plan.size)
    return Media(resolved, name, digest, kind, header, plan, tokens, limits, scope)


@dataclass(frozen=True)
class Document:
    """A PDF upload: the pages the `pdf_pages` limit chose, each an image `Media`."""

    name: str
    pages: tuple[Media, ...]
    page_count: int  # pages in the document


def _document(
    path: Path,
    name: str,
    digest: str,
    header: PdfHeader,
    limits: MediaLimits,
    geometry: Geometry,
    scope: str,
) -> Document:
    pages = []
    for index in parse_page_range(limits.pdf_pages, header.pages):
        size = page_size(header.sizes[index], limits, geometry, name)
        # The header's size is the page at the render resolution: what the page "is".
        width, height = size
        image = ImageHeader(width, height, "PDF")
        plan = ImagePlan(size, page=index)
        tokens = geometry.image_tokens(*size)
        pages.append(Media(path, name, digest, "image", image, plan, tokens, limits, scope))
    return Document(name, tuple(pages), header.pages)


def by_document(media: Sequence[Media]) -> list[list[Media]]:
    """The media in order, each document's consecutive pages together and every other item
    alone. A document ends where the file or the page order changes (the same PDF attached
    twice is two documents)."""
    groups: list[list[Media]] = []
    for item in media:
        last = groups[-1][-1] if groups else None
        same = (
            last is not None
            and item.page is not None
            and last.page is not None
            and last.path == item.path
            and last.page < item.page
        )
        if same:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def decode_all(media: Sequence[Media]) -> list[Decoded]:
    """The pixels of each media object, as `Media.decode()`; the uncached pages of one document
    are rendered together (one child process, not one per page)."""
    documents: dict[tuple[Path, str], list[Media]] = {}
    for item in media:
        if item.page is not None and _decoded.get(_cache_key(item)) is None:
            documents.setdefault((item.path, item.scope), []).append(item)
    for pages in documents.values():
        wanted = [(p.page - 1, p.plan.size) for p in pages if p.page is not None]
        with _decode_slots:
            rendered = render_pages(pages[0].path, wanted, pages[0].name)
        for page, image in zip(pages, rendered, strict=True):
            decoded = ImageInput(image)
            _decoded.put(_cache_key(page), decoded, _decoded_bytes(decoded))
    return [item.decode() for item in media]


def load_media(path: str | os.PathLike[str], limits: MediaLimits) -> Decoded:
    """Decode a server-side file of any accepted kind (tests, benchmarks); no trust rule, no
    cache. Animated GIF/WebP/PNG come back as videos."""
    path = Path(path)
    _, kind, header = _read_header(path, path.name, limits)
    media = Media(path, path.name, "", kind, header, _plan(kind, header, limits, path.name),
                  0, limits)  # fmt: skip
    return _decode(media)


def _plan(kind: Kind, header: Header, limits: MediaLimits, name: str) -> Plan:
    if isinstance(header, PdfHeader):
        raise UserFacingError(f"'{name}' is a PDF document, not an image or a video.")
    if kind == "image":
        assert isinstance(header, ImageHeader)
        return ImagePlan(image_size(header.width, header.height, limits, name))
    assert isinstance(header, VideoHeader)
    return plan_video(header, limits, name)


# --- headers ----------------------------------------------------------------------------------


def _header_limits(limits: MediaLimits) -> tuple[Any, ...]:
    """The limits that decide whether a header is accepted (not the per-session sizes)."""
    sizing = {"min_pixels", "max_pixels", "video_fps", "min_frames", "max_frames", "pdf_pages"}
    sizing |= {"video_min_pixels", "video_max_pixels", "video_total_pixels"}
    return tuple(getattr(limits, f.name) for f in fields(limits) if f.name not in sizing)


def _header(path: Path, name: str, limits: MediaLimits) -> tuple[str, Kind, Header]:
    """(content hash, kind, header) of a file, cached by its identity on disk."""
    try:
        info = os.stat(path)
    except OSError:
        raise UserFacingError(f"The file {name} is no longer available.") from None
    key = (str(path), info.st_mtime_ns, info.st_size, info.st_ino, _header_limits(limits))
    cached = _headers.get(key)
    if cached is None:
        cached = _read_header(path, name, limits)
        _headers.put(key, cached)
    return cached


def _read_header(path: Path, name: str, limits: MediaLimits) -> tuple[str, Kind, Header]:
    check_file(path, limits.max_upload_bytes, name)
    if _is_document(path, name):
        return _digest(path), "image", pdf_header(path, name, limits)
    kind = sniff_kind(path, name)
    im = open_image(path, name)
    if im is None:
        header: Header = container_header(path, name, limits)
    else:
        with im, reading(name, "an image" if kind == "image" else "an animated image"):
            if kind == "image":
                header = image_header(im, name, limits.max_image_pixels)
            else:
                header = animation_header(im, name, limits)
    return _digest(path), kind, header


def _is_document(path: Path, name: str) -> bool:
    """A PDF by its signature, unless the file starts as an image or video does or Pillow reads
    it as an image (their metadata, a title say, may hold the signature too)."""
    if not is_pdf(path):
        return False
    with path.open("rb") as file:
        if magic_kind(file.read(16)) is not None:
            return False
    try:
        im = open_image(path, name)
    except UserFacingError:
        return False  # an image too large to open is still an image: loading explains
    if im is not None:
        im.close()
    return im is None


def _digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# --- decoding ---------------------------------------------------------------------------------


def _cache_key(media: Media) -> tuple[str, str, Plan]:
    return (media.scope, media.digest, media.plan)


def _decode(media: Media) -> Decoded:
    if isinstance(media.plan, ImagePlan) and media.plan.page is not None:
        [page] = render_pages(media.path, [(media.plan.page, media.plan.size)], media.name)
        return ImageInput(page)
    if isinstance(media.plan, ImagePlan):
        assert isinstance(media.header, ImageHeader)
        im = open_image(media.path, media.name)
        if im is None:
            raise wrong_kind(media.path, media.name, "an image")
        with im, reading(media.name, "an image"):
            return ImageInput(decode_still(im, media.header, media.plan.size))
    assert isinstance(media.header, VideoHeader)
    if not media.header.animated:
        return decode_container(media.path, media.plan, media.header, media.name, media.limits)
    im = open_image(media.path, media.name)
    if im is None:
        raise wrong_kind(media.path, media.name, "an animated image")
    with im:
        return decode_animation(im, media.plan, media.header, media.name)


def _decoded_bytes(decoded: Decoded) -> int:
    images = [decoded.image] if isinstance(decoded, ImageInput) else decoded.frames
    unique = {id(image): image for image in images}.values()  # repeated frames are shared
    return sum(image.width * image.height * len(image.getbands()) for image in unique)


_headers = Lru(HEADER_CACHE_ENTRIES)
_decoded = Lru(DECODED_CACHE_BYTES)
_decode_slots = threading.BoundedSemaphore(DECODE_SLOTS)


def decoded_cache_bytes() -> int:
    """Bytes of decoded pixels kept now (for tests and benchmarks)."""
    return _decoded.size


def load_image(path: str | os.PathLike[str], limits: MediaLimits) -> ImageInput:
    """Decode one still image (tests, benchmarks); a video or animation is refused."""
    path = Path(path)
    if sniff_kind(path) != "image":
        raise wrong_kind(path, path.name, "an image")
    decoded = load_media(path, limits)
    assert isinstance(decoded, ImageInput)
    return decoded


def load_video(path: str | os.PathLike[str], limits: MediaLimits) -> VideoInput:
    """Sample frames from a video file or an animated image (tests, benchmarks)."""
    path = Path(path)
    im = open_image(path, path.name)
    if im is not None:
        with im:
            if not is_animation(im):
                raise UserFacingError(f"'{path.name}' is a still image, not a video.")
    decoded = load_media(path, limits)
    assert isinstance(decoded, VideoInput)
    return decoded
