"""Conversation files: export -> import round trip, and every way a bad file is refused."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from app.media import MediaLimits, prepare
from app.messages import attach_media, conversation_messages, user_turn_messages
from app.transcript import (
    FORMAT,
    TRANSCRIPT_NAME,
    TranscriptError,
    export_transcript,
    import_transcript,
)


@pytest.fixture
def picture(tmp_path) -> Path:
    path = tmp_path / "cache" / "holiday photo.png"
    path.parent.mkdir()
    Image.new("RGB", (32, 24), (10, 200, 30)).save(path)
    return path


@pytest.fixture
def chat(picture, tmp_path) -> list[dict]:
    """A chat as gr.Chatbot preprocesses it: a file and a question, answer, drawing, statistics."""
    drawing = tmp_path / "boxes.png"
    Image.new("RGB", (32, 24), (200, 0, 0)).save(drawing)
    return [
        {
            "role": "user",
            "metadata": None,
            "content": [{"type": "file", "file": {"path": str(picture), "mime_type": "image/png"}}],
            "options": None,
        },
        {
            "role": "user",
            "metadata": None,
            "content": [{"type": "text", "text": "Où est le chat?"}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "The **cat** is here."}]},
        {"role": "assistant", "content": [{"type": "file", "file": {"path": str(drawing)}}]},
        {
            "role": "assistant",
            "content": [{"type": "text", "text": ""}],
            "metadata": {"title": "12 tokens · first token 0.10 s", "status": "done", "log": None},
        },
        {"role": "user", "content": [{"type": "file", "file": {"path": str(picture)}}]},
        {"role": "user", "content": "Same picture again?"},
    ]


def shown(messages: list[dict]) -> list[tuple]:
    """What the chat shows of messages: role, texts, file contents, notice title."""
    out = []
    for message in messages:
        parts = message["content"] if isinstance(message["content"], list) else [message["content"]]
        seen = []
        for part in parts:
            if isinstance(part, str):
                seen.append(part)
            elif part["type"] == "text":
                seen.append(part["text"])
            else:
                seen.append(Path(part["file"]["path"]).read_bytes())
        title = (message.get("metadata") or {}).get("title")
        out.append((message["role"], seen, title))
    return out


def test_export_then_import_gives_back_the_same_chat(chat, tmp_path):
    path = export_transcript(chat, tmp_path / "chat.zip")
    restored = import_transcript(path, tmp_path / "restored")
    assert shown(restored) == shown(chat)
    assert all(Path(p["file"]["path"]).is_relative_to(tmp_path / "restored")
               for m in restored for p in m["content"] if p["type"] == "file")  # fmt: skip
    assert restored[0]["content"][0]["file"]["mime_type"] == "image/png"
    assert restored[4]["metadata"] == {"title": "12 tokens · first token 0.10 s", "status": "done"}


def test_the_zip_holds_a_readable_transcript_and_each_file_once(chat, tmp_path):
    with zipfile.ZipFile(export_transcript(chat, tmp_path / "chat.zip")) as archive:
        document = json.loads(archive.read(TRANSCRIPT_NAME))
        names = sorted(archive.namelist())
    assert document["format"] == FORMAT and document["version"] == 1
    assert names == ["media/001-holiday_photo.png", "media/002-boxes.png", TRANSCRIPT_NAME]
    assert document["messages"][1] == {
        "role": "user",
        "content": [{"type": "text", "text": "Où est le chat?"}],
    }
    assert document["messages"][5]["content"][0]["file"]["path"] == "media/001-holiday_photo.png"


def test_an_imported_chat_reaches_the_model_like_the_original(chat, tmp_path):
    restored = import_transcript(export_transcript(chat, tmp_path / "c.zip"), tmp_path / "out")
    opened = conversation_messages(restored, "And now?")
    messages = attach_media(opened, lambda path, *_: prepare(path, MediaLimits()))
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert [item["type"] for item in messages[0]["content"]] == ["image", "text"]
    assert messages[1]["content"] == "The **cat** is here."  # drawing and statistics: not sent


def test_a_file_gone_from_the_cache_is_named_in_the_export(chat, picture, tmp_path):
    picture.unlink()
    restored = import_transcript(export_transcript(chat, tmp_path / "c.zip"), tmp_path / "out")
    assert restored[0]["content"] == [
        {"type": "text", "text": "(holiday photo.png: file not available)"}
    ]


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "orange").save(buffer, format="PNG")
    return buffer.getvalue()


def write_zip(path: Path, files: dict[str, str | bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def transcript(*messages: dict, **fields) -> str:
    return json.dumps({"format": FORMAT, "version": 1, "messages": list(messages)} | fields)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"notes.txt": "hello"}, "has no transcript.json"),
        ({TRANSCRIPT_NAME: "{not json"}, "not valid JSON"),
        ({TRANSCRIPT_NAME: b"\xff\xfe"}, "not valid JSON"),
        ({TRANSCRIPT_NAME: '{"messages": 3}'}, "no list of messages"),
        ({TRANSCRIPT_NAME: transcript(format="other/app")}, "Unknown transcript format"),
        ({TRANSCRIPT_NAME: transcript(version=2)}, "newer than this demo reads"),
        ({TRANSCRIPT_NAME: transcript({"role": "system", "content": "x"})}, "Message 1 needs"),
        ({TRANSCRIPT_NAME: transcript({"role": "user", "content": 5})}, "Message 1 has no"),
        (
            {
                TRANSCRIPT_NAME: transcript(
                    {"role": "user", "content": {"path": "../../etc/passwd"}}
                )
            },
            "outside the archive",
        ),
        (
            {TRANSCRIPT_NAME: transcript({"role": "user", "content": {"path": "/etc/passwd"}})},
            "outside the archive",
        ),
        (
            {TRANSCRIPT_NAME: transcript({"role": "user", "content": {"path": "C:/x.png"}})},
            "outside the archive",
        ),
        (
            {TRANSCRIPT_NAME: transcript({"role": "user", "content": {"path": "media/a.png"}})},
            "media/a.png, which is not in the file",
        ),
        (  # a page holding the PDF signature in its first kilobyte is not a document
            {
                TRANSCRIPT_NAME: transcript({"role": "user", "content": {"path": "media/x.html"}}),
                "media/x.html": "<html><!-- %PDF-1.7 --><script>alert(1)</script></html>",
            },
            "x.html, which is refused",
        ),
    ],
)
def test_a_bad_conversation_file_is_refused_with_a_reason(tmp_path, files, message):
    path = write_zip(tmp_path / "chat.zip", files)
    with pytest.raises(TranscriptError, match=message):
        import_transcript(path, tmp_path / "out")
    assert not (tmp_path / "out").exists(), "nothing is left behind"


def test_a_file_that_is_not_a_zip_is_named(tmp_path):
    path = tmp_path / "holiday.zip"
    path.write_text("this is not a zip")
    with pytest.raises(TranscriptError, match="holiday.zip is not a conversation file"):
        import_transcript(path, tmp_path / "out")


def test_a_zip_bomb_stops_at_the_size_limit(tmp_path):
    message = {"role": "user", "content": [{"type": "file", "file": {"path": "media/big.bin"}}]}
    files = {TRANSCRIPT_NAME: transcript(message), "media/big.bin": b"\0" * 3_000_000}
    path = write_zip(tmp_path / "bomb.zip", files)
    with pytest.raises(TranscriptError, match="may be at most 1 MB|expands more than"):
        import_transcript(path, tmp_path / "out", max_bytes=1_000_000)
    assert not (tmp_path / "out").exists()


def test_a_hand_written_list_of_messages_is_accepted(tmp_path):
    files = {
        TRANSCRIPT_NAME: json.dumps(
            [
                {"role": "user", "content": [{"path": "pics\\cat.png"}, "What is it?"]},
                {"role": "assistant", "content": "A cat.", "metadata": {"title": 3, "x": [1]}},
            ]
        ),
        "pics/cat.png": png_bytes(),
    }
    restored = import_transcript(write_zip(tmp_path / "c.zip", files), tmp_path / "out")
    assert [p["type"] for p in restored[0]["content"]] == ["file", "text"]
    assert Path(restored[0]["content"][0]["file"]["path"]).read_bytes() == png_bytes()
    assert restored[1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "A cat."}],
        "metadata": {"title": 3},
    }


def test_a_user_turn_becomes_one_message_per_file_then_the_text():
    message = {"text": "Compare them.", "files": ["/tmp/a.png", {"path": "/tmp/b.mp4"}]}
    assert user_turn_messages(message) == [
        {"role": "user", "content": {"path": "/tmp/a.png"}},
        {"role": "user", "content": {"path": "/tmp/b.mp4"}},
        {"role": "user", "content": "Compare them."},
    ]
    assert user_turn_messages({"text": "", "files": ["/tmp/a.png"]}) == [
        {"role": "user", "content": {"path": "/tmp/a.png"}}
    ]


def file_message(member: str) -> dict:
    return {"role": "user", "content": [{"type": "file", "file": {"path": member}}]}


def test_a_compression_bomb_is_refused_before_anything_is_written(tmp_path):
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_BZIP2) as archive:
        archive.writestr(TRANSCRIPT_NAME, transcript(file_message("media/a.png")))
        archive.writestr("media/a.png", b"\0" * 50_000_000)
    assert path.stat().st_size < 10_000
    with pytest.raises(
        TranscriptError,
        match="a.png in the conversation file is 47.7 MB; each file may be at most 1 MB",
    ):
        import_transcript(path, tmp_path / "out", max_bytes=1_000_000)
    with pytest.raises(TranscriptError, match="expands more than 100 times"):
        import_transcript(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_encrypted_long_named_nested_and_non_media_members_get_a_reason(tmp_path):
    encrypted = write_zip(tmp_path / "e.zip", {TRANSCRIPT_NAME: transcript()})
    data = bytearray(encrypted.read_bytes())
    for header in (b"PK\x03\x04", b"PK\x01\x02"):  # set the "encrypted" flag bit
        at = data.find(header)
        flags = at + (6 if header == b"PK\x03\x04" else 8)
        data[flags] |= 1
    encrypted.write_bytes(bytes(data))
    with pytest.raises(TranscriptError, match="encrypted"):
        import_transcript(encrypted, tmp_path / "o1")
    long_name = "media/" + "x" * 300 + ".png"
    files = {TRANSCRIPT_NAME: transcript(file_message(long_name)), long_name: png_bytes()}
    restored = import_transcript(write_zip(tmp_path / "l.zip", files), tmp_path / "o2")
    assert len(Path(restored[0]["content"][0]["file"]["path"]).name) <= 80
    nested = write_zip(tmp_path / "n.zip", {TRANSCRIPT_NAME: "[" * 100_000 + "]" * 100_000})
    with pytest.raises(TranscriptError, match="nested too deeply"):
        import_transcript(nested, tmp_path / "o3")
    script = {TRANSCRIPT_NAME: transcript(file_message("media/a.png")), "media/a.png": "<svg/>"}
    with pytest.raises(TranscriptError, match="a.png, which is refused"):
        import_transcript(write_zip(tmp_path / "s.zip", script), tmp_path / "o4")


def test_export_writes_only_trusted_files(chat, tmp_path):
    outside = [{"role": "user", "content": [{"type": "file", "file": {"path": "/etc/passwd"}}]}]
    path = export_transcript(chat + outside, tmp_path / "c.zip")
    with zipfile.ZipFile(path) as archive:
        assert not any("passwd" in name for name in archive.namelist())
        document = json.loads(archive.read(TRANSCRIPT_NAME))
    assert document["messages"][-1]["content"] == [
        {"type": "text", "text": "(passwd: file not available)"}
    ]
