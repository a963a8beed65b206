"""One structured log line per chat request (logger `app.requests`), without the user's content.

The line is a JSON object, e.g.
  {"session": "5f0c2a9d41b7", "outcome": "ok", "request": "3f9a0c1b22de", "prompt_tokens": 412,
   "generated_tokens": 64, "queue_wait_s": 0.104, "ttft_s": 0.351, "tokens_per_s": 21.3,
   "prepare_s": 0.012, "total_s": 3.34, "images": 1, "videos": 0, "turns_left_out": 0}
Outcomes: ok | stopped (the user stopped or left) | rejected (bad input or too large, refused
before the engine was asked) | abandoned (nobody read the answer's stream: never generated) |
error:engine (the engine said why) | error:<ExceptionType>.
"message" and "answer" are added only with --log-content. Times are seconds from the moment
the request reached `respond`; queue_wait_s runs from handing the request to the engine until
its first delta that is not a queue place (a heartbeat once running, or the first token); for
a request that never queued, that is the engine's encoding plus at most one heartbeat (0.1 s).
"request" is the id on the answer's messages; a rating of the answer names it (app.feedback).
Formatting only: `app.chat` measures.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import secrets
from dataclasses import asdict, dataclass

from app.admission import Abandoned
from app.errors import UserFacingError

LOGGER = "app.requests"
SESSION_ID_BYTES = 6  # 12 hex digits: enough to follow one session through a log


@dataclass(frozen=True)
class RequestLog:
    """What one request did. Seconds are None where the request never got that far."""

    session: str
    outcome: str
    request: str | None = None  # the id on the answer's messages, which its ratings name
    prompt_tokens: int | None = None
    generated_tokens: int = 0
    queue_wait_s: float | None = None
    ttft_s: float | None = None
    tokens_per_s: float | None = None
    prepare_s: float | None = None
    total_s: float | None = None
    images: int = 0
    videos: int = 0
    turns_left_out: int = 0
    cached_tokens: int | None = None  # prompt tokens from a kept KV cache (None: no cache)
    message: str | None = None  # only with --log-content
    answer: str | None = None  # only with --log-content


@functools.cache
def _process_key() -> bytes:
    """A key drawn once per process: ids cannot be matched to session hashes or across restarts."""
    return secrets.token_bytes(16)


def new_request_id() -> str:
    """A request's id: random, 12 hex digits (it names the request in ratings and the log)."""
    return secrets.token_hex(SESSION_ID_BYTES)


def anonymous_id(session_hash: str, key: bytes | None = None) -> str:
    """A short keyed hash of Gradio's session hash (never the hash itself); "-" when none."""
    if not session_hash:
        return "-"
    digest = hashlib.blake2b(
        session_hash.encode(), key=key or _process_key(), digest_size=SESSION_ID_BYTES
    )
    return digest.hexdigest()


def client_scope(client: str) -> str:
    """What a client's kept state (caches, answers, ratings) is filed under: its keyed hash,
    or "" for a caller without a client (direct Python calls)."""
    return anonymous_id(client) if client else ""


def outcome_of(exc: BaseException | None, engine_asked: bool) -> str:
    """ok, stopped, rejected or error:<kind> for how a request ended."""
    if exc is None:
        return "ok"
    if isinstance(exc, GeneratorExit):
        return "stopped"
    if isinstance(exc, Abandoned):
        return "abandoned"
    if isinstance(exc, UserFacingError):
        return "error:engine" if engine_asked else "rejected"
    return f"error:{type(exc).__name__}"


def tokens_per_second(tokens: int, first_token: float | None, end: float) -> float | None:
    """Decoding speed after the first token (whose wait is the TTFT)."""
    if first_token is None or tokens < 2 or end <= first_token:
        return None
    return (tokens - 1) / (end - first_token)


def format_line(entry: RequestLog) -> str:
    """The entry as one line of JSON; content fields only when set, numbers rounded."""
    fields = asdict(entry)
    for name in ("message", "answer"):
        if fields[name] is None:
            del fields[name]
    for name, value in fields.items():
        if isinstance(value, float):
            fields[name] = round(value, 1 if name == "tokens_per_s" else 3)
    return json.dumps(fields, ensure_ascii=False)


def log_refusal(event: str) -> None:
    """The log line of a request refused before any chat code ran (the trust rule)."""
    entry = asdict(RequestLog(session="-", outcome="rejected")) | {"event": event}
    logging.getLogger(LOGGER).info(json.dumps({k: v for k, v in entry.items() if v is not None}))
