"""Files the app writes for users (drawn boxes, exported and imported conversations).

They live under the system's temporary folder, one folder per kind, and anything older than a
day is removed whenever a new one is made, so a long-running demo does not fill the disk.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(tempfile.gettempdir()) / "qwen2-vl-demo"
MAX_AGE_SECONDS = 24 * 3600


def new_folder(kind: str, now: float | None = None) -> Path:
    """A new, empty folder for one file set of `kind`; older sets of that kind are removed."""
    parent = ROOT / kind
    parent.mkdir(parents=True, exist_ok=True)
    cutoff = (time.time() if now is None else now) - MAX_AGE_SECONDS
    for entry in parent.iterdir():
        try:
            if entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        except OSError:  # removed meanwhile by another request
            pass
    folder = parent / uuid.uuid4().hex
    folder.mkdir()
    return folder
