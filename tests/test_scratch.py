"""Scratch files: one new folder per file set; sets older than a day are removed."""

from __future__ import annotations

import os
import time

from app import scratch


def test_new_folders_are_empty_and_old_ones_go(tmp_path, monkeypatch):
    monkeypatch.setattr(scratch, "ROOT", tmp_path)
    old = scratch.new_folder("boxes")
    (old / "boxes.png").write_bytes(b"png")
    day_ago = time.time() - scratch.MAX_AGE_SECONDS - 60
    os.utime(old, (day_ago, day_ago))
    recent = scratch.new_folder("boxes")
    newest = scratch.new_folder("boxes")
    assert not old.exists()
    assert recent.exists() and newest.exists() and recent != newest
    assert list(newest.iterdir()) == []
    assert scratch.new_folder("conversations").parent == tmp_path / "conversations"
