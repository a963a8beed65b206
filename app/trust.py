"""The one trust rule for paths: which files the app may open or serve for a client.

A path a client sends (a new message, a history, a saved conversation, an import, an API call)
is opened only if, after resolving links and `..`, it lies inside one of three folders:
Gradio's upload folder (paths there carry a random or content-derived folder that a client
cannot guess), the app's own scratch folder (`app.scratch`), or the app's `assets/`. Every
reader goes through `trusted_file`; nothing else in the app decides it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from app.errors import UserFacingError
from app.scratch import ROOT as SCRATCH_ROOT

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def upload_folder() -> str:
    """Gradio's upload folder, by Gradio's own rule (`gradio.utils.get_upload_folder`; a test
    keeps the two equal): the engines and the GPU check import this module, never Gradio."""
    return os.environ.get("GRADIO_TEMP_DIR") or str(Path(tempfile.gettempdir()) / "gradio")


class UntrustedPathError(UserFacingError):
    """A client named a file outside the trusted folders; nothing was opened."""


def trusted_roots() -> tuple[Path, ...]:
    """The folders whose files a client may name (resolved; read at each call, as tests and
    Gradio may set GRADIO_TEMP_DIR after import)."""
    return tuple(Path(os.path.realpath(p)) for p in (upload_folder(), SCRATCH_ROOT, ASSETS))


def display_name(path: str) -> str:
    """The part of a client's path that may be shown back: its base name, shortened."""
    name = os.path.basename(str(path).replace("\\", "/").rstrip("/")) or "file"
    return name if len(name) <= 80 else name[:77] + "…"


def is_trusted(path: str | os.PathLike[str]) -> bool:
    """True if `path`, resolved, lies inside a trusted folder (whether or not it exists)."""
    text = os.fspath(path)
    if not isinstance(text, str) or not text or "\x00" in text or "://" in text:
        return False
    resolved = Path(os.path.realpath(text))
    return any(resolved.is_relative_to(root) for root in trusted_roots())


def trusted_file(path: object) -> Path:
    """The resolved path of a client-named file, or UntrustedPathError naming it.

    URLs, non-strings and anything outside the trusted folders are refused before any I/O;
    the file itself may still be missing (the media and transcript readers say so).
    """
    if not isinstance(path, str | os.PathLike) or not is_trusted(path):
        name = display_name(str(path)) if isinstance(path, str | os.PathLike) else "a file"
        raise UntrustedPathError(
            f"'{name}' is not a file uploaded to this demo, so it was not opened. "
            "Attach the file again."
        )
    return Path(os.path.realpath(os.fspath(path)))


MAX_VALUE_DEPTH = 64  # client values nested deeper are not chat data


def check_client_value(value: object, depth: int = 0) -> None:
    """Refuse a client value that names anything but a trusted file, before Gradio acts on it.

    Walks the raw JSON of any input: a `{"path": ...}` (a file reference, with or without
    Gradio's FileData marker) must be a trusted local path, never a URL or a stream; a file
    value with a `url` but no path (Gradio would fetch it, or decode a data: URL in the
    server, unbounded) is refused; a Chatbot
    `{"type": "component"}` part is refused (Gradio would build the component the client names
    and open its path). Raises UntrustedPathError naming the file; nothing was opened.
    """
    if depth > MAX_VALUE_DEPTH:
        raise UntrustedPathError("The request is nested too deeply to be a chat message.")
    if isinstance(value, dict):
        if value.get("type") == "component":
            raise UntrustedPathError(
                "Chat messages may hold text and uploaded files, not components."
            )
        path = value.get("path")
        if path is None and isinstance(value.get("url"), str):
            raise UntrustedPathError(  # Gradio would download it or decode a data: URL itself
                "Files reach this demo as uploads, not as links or data: URLs: attach the file."
            )
        if path is not None:
            if not isinstance(path, str) or value.get("is_stream") or "://" in path:
                shown = display_name(path) if isinstance(path, str) else "a file"
                raise UntrustedPathError(
                    f"'{shown}' is not a file uploaded to this demo (links and streams are not "
                    "fetched). Attach the file itself."
                )
            trusted_file(path)
        files = value.get("files")
        for item in files if isinstance(files, list) else []:  # a message's plain paths
            if isinstance(item, str):
                trusted_file(item)
        for item in value.values():
            check_client_value(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            check_client_value(item, depth + 1)
