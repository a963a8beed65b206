"""Where the demo runs and who reaches it: Spaces, the bind address, passwords and failed logins,
who a client is, whose answer streams are read, the page's security headers, /health.

The pieces that sit in front of Gradio are small pure ASGI middlewares (not Starlette's
BaseHTTPMiddleware, which buffers the event streams Gradio's queue answers with).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import gradio as gr
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from app.admission import Caller
from app.config import Settings
from app.engine import Engine
from app.errors import UserFacingError
from app.markup import EDIT_BOX_SCRIPT

LOCALHOST = "127.0.0.1"
QUEUE_STREAM_PATH = "/gradio_api/queue/data"
LOGIN_PATHS = ("/login", "/login/")
FREE_LOGIN_FAILURES = 3  # failures before a client has to wait
MAX_LOGIN_DELAY_SECONDS = 60.0
# What the page may load and do. Model and user text is rendered as HTML by the chat: this
# keeps any of it from loading outside images, running a script (inline handlers and
# javascript: links need 'unsafe-inline', which only the page's own scripts get, by hash) or
# posting a form elsewhere. Gradio's page needs inline styles, blob: workers, data: images.
POLICY = (
    "default-src 'self'",
    "script-src 'self' 'unsafe-eval' blob: {script_hashes}",
    "style-src 'self' 'unsafe-inline'",
    "font-src 'self' data:",
    "img-src 'self' data: blob:",
    "media-src 'self' data: blob:",
    "connect-src 'self'",
    "worker-src 'self' blob:",
    "frame-src 'none'",
    "object-src 'none'",
    "form-action 'self'",
    "base-uri 'self'",
)
_INLINE_SCRIPT = re.compile(rb"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.DOTALL)


def content_security_policy(page: bytes = b"") -> str:
    """The policy for a response: an HTML page's own inline scripts, and the app's head script
    (which Gradio inserts while the page runs), are allowed by hash."""
    scripts = [m.group(1) for m in _INLINE_SCRIPT.finditer(page + EDIT_BOX_SCRIPT.encode())]
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script).digest()).decode() + "'"
        for script in dict.fromkeys(scripts)
    )
    return "; ".join(POLICY).replace("{script_hashes}", hashes).replace(" ;", ";")


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def on_spaces(environ: Mapping[str, str] = os.environ) -> bool:
    """Hugging Face Spaces sets SPACE_ID in every Space's environment."""
    return bool(environ.get("SPACE_ID"))


def server_name(settings: Settings, environ: Mapping[str, str] = os.environ) -> str:
    """The address to bind: 0.0.0.0 only when hosted and not set explicitly, else as given."""
    if settings.server_name == LOCALHOST and on_spaces(environ):
        return "0.0.0.0"
    return settings.server_name


def parse_auth(value: str) -> list[tuple[str, str]] | None:
    """`user:password`, or a file with one `user:password` per line (# comments allowed)."""
    if not value:
        return None
    path = Path(value)
    lines = path.read_text().splitlines() if path.is_file() else [value]
    users = []
    for line in (line.strip() for line in lines):
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            raise SystemExit(f"error: --auth expects user:password, got {line.split(':')[0]!r}…")
        users.append((user, password))
    if not users:
        raise SystemExit(f"error: --auth file {value} holds no user:password line")
    return users


# --- who a client is --------------------------------------------------------------------------


def peer_address(
    client_host: str | None, headers: Mapping[str, str], environ: Mapping[str, str] = os.environ
) -> str:
    """The client's address: the peer's, or on Spaces the one its proxy added last to
    X-Forwarded-For (earlier entries are whatever the client wrote)."""
    forwarded = headers.get("x-forwarded-for", "")
    if on_spaces(environ) and forwarded:
        return forwarded.split(",")[-1].strip() or "unknown"
    return client_host or "unknown"


def client_of(username: str | None, client_host: str | None, headers: Mapping[str, str]) -> str:
    """Who a request comes from, for every per-client bound: the login user, else the address.

    (Gradio's session hash is chosen by the caller, so it identifies nobody.)
    """
    if username:
        return f"user:{username}"
    return f"address:{peer_address(client_host, headers)}"


def caller_of(request: gr.Request | None, streams: StreamTracker) -> Caller:
    """Who sends this event (client_of), and whether its answer is being read."""
    if request is None:
        return Caller()
    session = request.session_hash or ""
    host = request.client.host if request.client else None
    return Caller(
        client=client_of(request.username, host, request.headers),
        session=session,
        listening=lambda: streams.is_open(session),
    )


def refusal(exc: UserFacingError) -> gr.Error:
    """The client's error for a refused request: its message, no traceback in the server log
    (refusals are expected, and cheap to send: they must not fill the log)."""
    return gr.Error(str(exc), print_exception=False)


def _scope_headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _scope_address(scope: Scope) -> str:
    host = (scope.get("client") or (None, None))[0]
    return peer_address(host, _scope_headers(scope))


# --- middlewares ------------------------------------------------------------------------------


class StreamTracker:
    """Counts the open answer streams (`/gradio_api/queue/data`) of each Gradio session.

    Gradio runs a queued event whether or not anyone reads its results; the chat asks
    `is_open(session)` before handing a request to the engine (`app.admission`), so a queue
    join whose results are never fetched costs no generation. Gradio has no hook for this.
    """

    def __init__(self) -> None:
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    def middleware(self, app: ASGIApp) -> ASGIApp:
        async def track(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or not scope["path"].endswith(QUEUE_STREAM_PATH):
                return await app(scope, receive, send)
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            session = query.get("session_hash", [""])[0]
            with self._lock:
                self._open[session] += 1
            try:
                await app(scope, receive, send)
            finally:
                with self._lock:
                    self._open[session] -= 1
                    if self._open[session] <= 0:
                        del self._open[session]

        return track

    def is_open(self, session: str) -> bool:
        with self._lock:
            return self._open[session] > 0


class LoginThrottle:
    """Slows down failed logins per client address: after FREE_LOGIN_FAILURES failures, the next
    attempt is refused (HTTP 429) until a delay that doubles with each failure has passed."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._failures: Counter[str] = Counter()
        self._next_try: dict[str, float] = {}

    def delay(self, failures: int) -> float:
        if failures < FREE_LOGIN_FAILURES:
            return 0.0
        return min(MAX_LOGIN_DELAY_SECONDS, 2.0 ** (failures - FREE_LOGIN_FAILURES))

    def middleware(self, app: ASGIApp) -> ASGIApp:
        async def throttle(scope: Scope, receive: Receive, send: Send) -> None:
            is_login = scope["type"] == "http" and scope.get("method") == "POST"
            if not is_login or scope["path"] not in LOGIN_PATHS:
                return await app(scope, receive, send)
            address = _scope_address(scope)
            wait = self._next_try.get(address, 0.0) - self.clock()
            if wait > 0:
                response = JSONResponse(
                    {"detail": f"Too many failed logins. Try again in {wait:.0f} s."},
                    status_code=429,
                    headers={"Retry-After": str(max(1, round(wait)))},
                )
                return await response(scope, receive, send)
            status: list[int] = []

            async def watch(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status.append(message["status"])
                await send(message)

            await app(scope, receive, watch)
            self._record(address, ok=bool(status) and status[0] < 400)

        return throttle

    def _record(self, address: str, ok: bool) -> None:
        if ok:
            self._failures.pop(address, None)
            self._next_try.pop(address, None)
            return
        self._failures[address] += 1
        self._next_try[address] = self.clock() + self.delay(self._failures[address])


def body_limit(prefix: str, max_bytes: int, advice: str = "") -> Callable[[ASGIApp], ASGIApp]:
    """A middleware refusing request bodies over `max_bytes` on paths under `prefix` (413, its
    message followed by `advice`), and bodies that do not declare their length (411; the
    server holds a body to its declared one).

    Gradio's MCP server decodes the files in a tool call's JSON (base64) onto disk before any
    size check of its own: this bounds what one call may write.
    """

    def middleware(app: ASGIApp) -> ASGIApp:
        async def limited(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or not scope["path"].startswith(prefix):
                return await app(scope, receive, send)
            headers = _scope_headers(scope)
            if "chunked" in headers.get("transfer-encoding", ""):
                return await _refuse(send, 411, "The request must declare its length.")
            declared = headers.get("content-length", "0")
            if not declared.isdigit() or int(declared) > max_bytes:
                limit = f"The request is larger than {max_bytes / 2**20:.1f} MB. {advice}"
                return await _refuse(send, 413, limit.strip())
            await app(scope, receive, send)

        return limited

    return middleware


async def _refuse(send: Send, status: int, text: str) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": text.encode()})


def security_headers(app: ASGIApp) -> ASGIApp:
    """Adds the Content-Security-Policy and no-sniffing headers to every response; an HTML page
    is held until complete (it is small) so that its inline scripts can be hashed. Refuses
    Gradio's `/file=<URL>` fetching proxy: the page never needs it."""

    async def add_headers(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        if "/file=" in scope["path"] and "://" in scope["path"]:
            refusal = JSONResponse({"detail": "Only this demo's own files are served."}, 403)
            return await refusal(scope, receive, send)
        held: Message | None = None  # the start of an HTML page, sent with its body
        body: list[bytes] = []

        async def with_headers(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                if _is_html(message):
                    held = message
                    return
                return await send(_with_policy(message, content_security_policy()))
            if held is None:
                return await send(message)
            body.append(message.get("body", b""))
            if message.get("more_body"):
                return
            page = b"".join(body)
            start = _with_policy(held, content_security_policy(page))
            start["headers"] = [(k, v) for k, v in start["headers"] if k != b"content-length"]
            start["headers"].append((b"content-length", str(len(page)).encode()))
            await send(start)
            await send({"type": "http.response.body", "body": page})

        await app(scope, receive, with_headers)

    return add_headers


def _is_html(start: Message) -> bool:
    return any(
        k.lower() == b"content-type" and v.startswith(b"text/html")
        for k, v in start.get("headers", [])
    )


def _with_policy(start: Message, policy: str) -> Message:
    headers = [(k.lower(), v) for k, v in start.get("headers", [])]
    headers.append((b"content-security-policy", policy.encode()))
    headers.append((b"x-content-type-options", b"nosniff"))
    return {**start, "headers": headers}


# --- /health ----------------------------------------------------------------------------------


def health_route(engine: Engine, settings: Settings) -> APIRoute:
    """GET /health: 200 once the model answers, 503 while it loads or after it failed.

    Open without a password, so that a load balancer or Spaces can probe it; it names the
    model by its display name, never a server path.
    """

    def health() -> JSONResponse:
        status = engine.status()
        body = {
            "status": status.state,
            "message": status.message,
            "backend": settings.backend,
            "model": settings.model_name,
        }
        return JSONResponse(body, status_code=200 if status.state == "ready" else 503)

    return APIRoute("/health", health, methods=["GET"])
