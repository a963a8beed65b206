"""Files the app writes for users (drawn boxes, exported and imported conversations).

They live under the system's temporary folder, one folder per kind and one set per request.
Whenever a new set is made, sets older than a day are removed, and then the oldest sets until
all of them together fit in QUOTA_BYTES, so a long-running demo does not fill the disk. A set
is named by a random id: other clients cannot guess it (the trust rule relies on that).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(tempfile.gettempdir()) / "qwen2-vl-demo"
MAX_AGE_SECONDS = 24 * 3600
QUOTA_BYTES = 2 * 1024**3  # all sets together; one import writes at most the upload limit
_lock = threading.Lock()


def new_folder(kind: str, now: float | None = None) -> Path:
    """A new, empty folder for one file set of `kind`; old sets are removed (see above)."""
    parent = ROOT / kind
    parent.mkdir(parents=True, exist_ok=True)
    cutoff = (time.time() if now is None else now) - MAX_AGE_SECONDS
    with _lock:
        sets = sorted(_sets(), key=lambda entry: entry[1])  # oldest first
        total = sum(size for _, _, size in sets)
        for path, mtime, size in sets:
            if mtime >= cutoff and total <= QUOTA_BYTES:
                continue
            _remove(path)
            total -= size
        folder = parent / uuid.uuid4().hex
        folder.mkdir()
    return folder


def _sets() -> list[tuple[Path, float, int]]:
    """(path, modification time, bytes) of every set of every kind."""
    found = []
    for kind in (p for p in ROOT.iterdir() if p.is_dir()):
        for entry in kind.iterdir():
            try:
                mtime = entry.stat().st_mtime
                files = [entry] if entry.is_file() else [p for p in entry.rglob("*") if p.is_file()]
                size = sum(p.stat().st_size for p in files)
            except OSError:  # removed meanwhile
                continue
            found.append((entry, mtime, size))
    return found


def _remove(path: Path) -> None:
    try:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    except OSError:  # removed meanwhile by another request
        pass
