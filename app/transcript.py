"""A conversation as data: export it to a .zip file and import it back; a user turn as messages.

The zip holds `transcript.json` and the conversation's files under `media/`:

    {"format": "qwen2-vl-web-demo/transcript", "version": 1, "messages": [
        {"role": "user", "content": [{"type": "file", "file": {"path": "media/001-cat.png"}},
                                     {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
        {"role": "assistant", "content": [{"type": "text", "text": ""}],
         "metadata": {"title": "12 tokens · ...", "status": "done"}}]}

Messages are the chatbot's messages format, with file paths relative to the zip. Import also
accepts a bare list of messages and string content. An imported file is never trusted: every
check failure is a TranscriptError (a UserFacingError) saying what is wrong, and only files
the transcript refers to are written, under names of our own. Costs are bounded before and
while extracting: each member and all of them together at most `max_bytes` (the upload limit),
a member that claims to expand more than MAX_RATIO times is refused, sizes are counted as they
are written (zip headers can lie), and each file must be an image, a video or a PDF by its
content.
Export writes only files that pass the trust rule (`app.trust`): a chat value names paths the
client chose.
"""

from __future__ import annotations

import json
import mimetypes
import re
import shutil
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from app.errors import UserFacingError
from app.media import sniff_kind
from app.media.pdf import is_pdf
from app.messages import content_parts
from app.trust import display_name, is_trusted

FORMAT = "qwen2-vl-web-demo/transcript"
VERSION = 1
TRANSCRIPT_NAME = "transcript.json"
MEDIA_DIR = "media"
MAX_MESSAGES = 2000
MAX_MEMBERS = 1000  # files in the zip
MAX_TRANSCRIPT_BYTES = 16 * 1024 * 1024
MAX_TOTAL_BYTES = 200 * 1024 * 1024  # everything extracted (the app passes the upload limit)
MAX_RATIO = 100  # uncompressed / compressed size of one member (media hardly compress)
ROLES = ("user", "assistant")
METADATA_KEYS = ("title", "status", "log", "duration", "id", "parent_id")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_COPY_CHUNK = 1024 * 1024
# A notice (statistics) has only a title: an empty text keeps it a message the chatbot shows.
_EMPTY_TEXT = {"type": "text", "text": ""}

Message = dict[str, Any]


class TranscriptError(UserFacingError):
    """A conversation file that cannot be imported; the message says why."""


def export_transcript(messages: Iterable[Mapping[str, Any]], path: Path) -> Path:
    """Write the conversation and its files to the zip at `path`; returns `path`."""
    media: dict[str, str] = {}  # source path -> name in the zip
    exported = [_export_message(message, media) for message in messages]
    document = {"format": FORMAT, "version": VERSION, "messages": exported}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(TRANSCRIPT_NAME, json.dumps(document, ensure_ascii=False, indent=1))
        for source, name in media.items():
            archive.write(source, name, compress_type=zipfile.ZIP_STORED)  # media: compressed
    return path


def _export_message(message: Mapping[str, Any], media: dict[str, str]) -> Message:
    content: list[dict[str, Any]] = []
    for kind, value in content_parts(message.get("content")):
        if kind == "text":
            content.append({"type": "text", "text": value})
        elif is_trusted(value) and Path(value).is_file():
            name = media.setdefault(value, _media_name(len(media) + 1, value))
            content.append({"type": "file", "file": {"path": name}})
        else:  # gone from the server's cache, or not an upload: say so, write nothing
            name = display_name(value)
            content.append({"type": "text", "text": f"({name}: file not available)"})
    exported: Message = {"role": message.get("role"), "content": content or [_EMPTY_TEXT]}
    metadata = _clean_metadata(message.get("metadata"))
    if metadata:
        exported["metadata"] = metadata
    return exported


def _media_name(number: int, source: str) -> str:
    stem = _UNSAFE.sub("_", Path(source).name).strip("._") or "file"
    return f"{MEDIA_DIR}/{number:03d}-{stem[-80:]}"


def _clean_metadata(metadata: Any) -> dict[str, str | int | float]:
    """The chatbot metadata worth keeping: known keys with plain values, None dropped."""
    if not isinstance(metadata, Mapping):
        return {}
    return {
        key: value
        for key in METADATA_KEYS
        if isinstance(value := metadata.get(key), str | int | float) and not isinstance(value, bool)
    }


def import_transcript(
    path: str | Path, out_dir: Path, max_bytes: int = MAX_TOTAL_BYTES
) -> list[Message]:
    """The chatbot messages of a conversation file; its files are extracted into `out_dir`.

    `out_dir` must not exist yet: it is created, and removed again if the import fails.
    """
    name = display_name(str(path))
    if not zipfile.is_zipfile(path):
        raise TranscriptError(f"{name} is not a conversation file: it is not a .zip archive.")
    out_dir.mkdir(parents=True)
    try:
        with zipfile.ZipFile(path) as archive:
            return _import_archive(archive, name, out_dir, max_bytes)
    except TranscriptError:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise
    # zipfile and zlib raise many types for a damaged or exotic archive (BadZipFile, EOFError,
    # NotImplementedError for an unknown compression, RuntimeError, zlib.error, ...).
    except Exception as exc:
        shutil.rmtree(out_dir, ignore_errors=True)
        why = f"{exc.__class__.__name__}: {str(exc)[:120]}"
        raise TranscriptError(f"{name} is damaged and cannot be read ({why}).") from None
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise


def _import_archive(
    archive: zipfile.ZipFile, name: str, out_dir: Path, max_bytes: int
) -> list[Message]:
    members = archive.infolist()
    if len(members) > MAX_MEMBERS:
        raise TranscriptError(f"{name} holds {len(members)} files; at most {MAX_MEMBERS}.")
    if TRANSCRIPT_NAME not in archive.namelist():
        raise TranscriptError(f"{name} has no {TRANSCRIPT_NAME}: it is not a conversation file.")
    raw = _read_limited(archive, TRANSCRIPT_NAME, MAX_TRANSCRIPT_BYTES)
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise TranscriptError(f"{TRANSCRIPT_NAME} in {name} is not valid JSON ({exc}).") from None
    except RecursionError:
        raise TranscriptError(f"{TRANSCRIPT_NAME} in {name} is nested too deeply.") from None
    messages = [_import_message(m, i) for i, m in enumerate(_message_list(document), 1)]
    _extract_media(archive, messages, out_dir, max_bytes)
    return messages


def _read_limited(archive: zipfile.ZipFile, member: str, limit: int) -> bytes:
    _check_member(archive.getinfo(member), limit)
    with archive.open(member) as source:
        data = source.read(limit + 1)
    if len(data) > limit:
        raise TranscriptError(f"{member} is larger than {limit // (1024 * 1024)} MB.")
    return data


def _message_list(document: Any) -> list[Any]:
    if isinstance(document, Mapping):
        if document.get("format", FORMAT) != FORMAT:
            raise TranscriptError(f"Unknown transcript format {document.get('format')!r}.")
        version = document.get("version", VERSION)
        if not isinstance(version, int) or version > VERSION:
            raise TranscriptError(
                f"Transcript version {version!r} is newer than this demo reads ({VERSION})."
            )
        document = document.get("messages")
    if not isinstance(document, list):
        raise TranscriptError("The transcript has no list of messages.")
    if len(document) > MAX_MESSAGES:
        raise TranscriptError(
            f"The transcript has {len(document)} messages; at most {MAX_MESSAGES} are accepted."
        )
    return document


def _import_message(message: Any, number: int) -> Message:
    """One validated message; files keep their path inside the zip until extracted."""
    if (
        not isinstance(message, Mapping)
        or not isinstance(message.get("role"), str)
        or (message["role"] not in ROLES)
    ):
        raise TranscriptError(f"Message {number} needs a role of 'user' or 'assistant'.")
    content = message.get("content")
    if not isinstance(content, str | list | Mapping):
        raise TranscriptError(f"Message {number} has no content.")
    parts: list[dict[str, Any]] = []
    for kind, value in content_parts(content):
        if kind == "text":
            parts.append({"type": "text", "text": value})
        else:
            parts.append({"type": "file", "file": {"path": _member_path(value, number)}})
    imported: Message = {"role": message["role"], "content": parts or [dict(_EMPTY_TEXT)]}
    metadata = _clean_metadata(message.get("metadata"))
    if metadata:
        imported["metadata"] = metadata
    return imported


def _member_path(value: str, number: int) -> str:
    """A file reference as a safe relative path inside the zip."""
    path = PurePosixPath(value.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or not path.parts or ":" in path.parts[0]:
        raise TranscriptError(f"Message {number} refers to a file outside the archive: {value}")
    return str(path)


def _extract_media(
    archive: zipfile.ZipFile, messages: list[Message], out_dir: Path, max_bytes: int
) -> None:
    """Extract each referenced file once and point the messages at the extracted copies."""
    names = set(archive.namelist())
    extracted: dict[str, str] = {}
    budget = max_bytes
    for part in (p for m in messages for p in m["content"] if p["type"] == "file"):
        member = part["file"]["path"]
        shown = member if len(member) <= 80 else display_name(member)
        if member not in names:
            raise TranscriptError(f"The transcript refers to {shown}, which is not in the file.")
        if member not in extracted:
            target = out_dir / f"{len(extracted) + 1:03d}" / _safe_name(member)
            budget -= _copy_limited(archive, member, target, budget, max_bytes)
            _check_media(target, shown)
            extracted[member] = str(target)
        name = Path(extracted[member]).name
        mime_type = mimetypes.guess_type(name)[0]  # the chat shows images and videos by it
        part["file"] = {"path": extracted[member], "orig_name": name, "mime_type": mime_type}


def _safe_name(member: str) -> str:
    """A short file name of our own for a member (its name may be anything, of any length)."""
    stem = _UNSAFE.sub("_", PurePosixPath(member).name).strip("._") or "file"
    return stem[-80:]


def _check_member(info: zipfile.ZipInfo, limit: int) -> None:
    """Refuse, from its header, a member that is encrypted, too large or a compression bomb."""
    shown = display_name(info.filename)
    if info.flag_bits & 0x1:
        raise TranscriptError(f"{shown} in the conversation file is encrypted.")
    if info.file_size > limit:
        raise TranscriptError(
            f"{shown} in the conversation file is {info.file_size / 2**20:.1f} MB; each file "
            f"may be at most {limit / 2**20:.0f} MB (--max-upload-mb)."
        )
    if info.file_size > _COPY_CHUNK and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        raise TranscriptError(
            f"{shown} expands more than {MAX_RATIO} times: not a conversation file's media."
        )


def _copy_limited(
    archive: zipfile.ZipFile, member: str, target: Path, budget: int, limit: int
) -> int:
    """Extract one member, writing at most what its header claims, the per-member `limit` and
    the import's remaining `budget`; returns the bytes written."""
    info = archive.getinfo(member)
    _check_member(info, limit)
    allowed = min(budget, info.file_size)
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with archive.open(info) as source, target.open("wb") as sink:
        while chunk := source.read(min(_COPY_CHUNK, allowed - written + 1)):
            written += len(chunk)
            if written > allowed:
                raise TranscriptError("The conversation file's contents are too large to import.")
            sink.write(chunk)
    return written


def _check_media(path: Path, shown: str) -> None:
    """An imported file must be an image, a video or a PDF by its content (a PDF's pages are
    read, in a child process, when a turn sends it; it must be named .pdf too, so that no
    other kind of file passes for one by holding the signature)."""
    if is_pdf(path) and path.suffix.lower() == ".pdf":
        return
    try:
        sniff_kind(path, shown)
    except UserFacingError as exc:
        raise TranscriptError(
            f"The conversation file holds {shown}, which is refused: {exc}"
        ) from None
