"""The remote engine: any OpenAI-compatible chat-completions server (vLLM, SGLang, transformers).

Started with `--backend openai --api-base URL [--api-key KEY] [--model NAME]`.

Choices worth knowing:
- Plain httpx (it comes with gradio), not the `openai` client: the engine needs the server's own
  error body (FastAPI servers answer `{"detail": ...}`, not OpenAI's `{"error": ...}`) and the
  connection's socket, so that Stop ends the request at once, even while the server is still
  reading the prompt. The request runs in a thread of its own; `stream` yields an empty Delta
  every HEARTBEAT_SECONDS while the server is silent, so a stopped chat is closed promptly.
- Images are sent as JPEG data URLs of the decoded, already resized `ImageInput`, so the server
  sees the pixels the local engine would see. Videos are sent as their sampled frames, one
  image part each (`video_format="frames"`): every server accepts that, at the cost of twice the
  vision tokens of a real video input and no timestamps. `video_format="video/jpeg"` sends one
  `video_url` part whose data URL holds the frames as comma-separated base64 JPEGs, which vLLM
  reads as a video.
- Settings the chat-completions API has no field for are sent as the extra fields vLLM and
  SGLang read: `top_k` (left out when 0), `repetition_penalty` (left out when 1.0) and
  `skip_special_tokens: false`, which keeps Qwen2-VL's grounding markers in the answer. A server
  that rejects unknown fields by name (`transformers serve` answers 422 "Unexpected fields ...")
  gets the request again without them, and the engine leaves them out from then on.
  `transformers serve` also drops special tokens itself: grounding markers need vLLM or SGLang.
- Vision ids ("Picture 1: ", "Video 1: ") cannot be asked for portably, so they are written into
  the messages as text parts, exactly where the Qwen2-VL chat template would put them.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import queue
import re
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from PIL import Image

from app.config import VIDEO_FORMATS
from app.engine import (
    END_MARKERS,
    HEARTBEAT_SECONDS,
    QWEN2_FORMAT,
    QWEN3_FORMAT,
    ChatRequest,
    Delta,
    EngineStatus,
    GenerationOptions,
    PromptFormat,
)
from app.errors import UserFacingError
from app.grounding import Family, family_of
from app.media import QWEN2_VL, Geometry, ImageInput, VideoInput, decode_all
from app.messages import TEMPLATE_TOKENS, media_of
from app.thinking import CLOSE as THINK_CLOSE
from app.thinking import OPEN as THINK_OPEN

log = logging.getLogger(__name__)

VideoFormat = Literal["frames", "video/jpeg"]  # app.config.VIDEO_FORMATS

DEFAULT_TIMEOUT_SECONDS = 600.0  # longest wait for the next byte of an answer (a long prefill)
CONNECT_TIMEOUT_SECONDS = 10.0
PROBE_TIMEOUT_SECONDS = 3.0  # /v1/models, asked by status(): the page must not wait on it
RECHECK_SECONDS = 5.0  # how often status() asks again while the server is not ready
JPEG_QUALITY = 90
MAX_ERROR_CHARS = 300  # a server's error message is cut to this length for the chat
# Fields a server may reject as unknown; the request is retried once without the ones it names.
OPTIONAL_FIELDS = (
    "skip_special_tokens",
    "top_k",
    "repetition_penalty",
    "stream_options",
    "seed",
    "chat_template_kwargs",
)
_CLOSE = {"Connection": "close"}
_REJECTION = re.compile(
    r"unexpected|unknown|unrecognized|extra|not permitted|not allowed|unsupported", re.IGNORECASE
)


# ----- the request: pure functions -----


def image_data_url(image: Image.Image) -> str:
    """A JPEG data URL of an image."""
    return "data:image/jpeg;base64," + _jpeg_base64(image)


def _jpeg_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _video_parts(video: VideoInput, video_format: VideoFormat) -> list[dict[str, Any]]:
    if video_format == "video/jpeg":
        frames = ",".join(_jpeg_base64(frame) for frame in video.frames)
        return [{"type": "video_url", "video_url": {"url": f"data:video/jpeg;base64,{frames}"}}]
    return [{"type": "image_url", "image_url": {"url": image_data_url(f)}} for f in video.frames]


def _text(content: Any) -> str:
    """The text of a system or assistant message, whether a string or a list of parts."""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content or [] if part.get("type") == "text")


def to_openai_messages(
    messages: Sequence[Mapping[str, Any]],
    add_vision_id: bool = False,
    video_format: VideoFormat = "frames",
) -> list[dict[str, Any]]:
    """Chat-completions messages for a Qwen message list, decoding its media objects.

    The same media always give the same bytes (JPEG encoding is deterministic), so the
    earlier messages of two consecutive turns are byte-identical: a server's prefix cache hits.
    """
    counts = {"image": 0, "video": 0}
    converted: list[dict[str, Any]] = []
    users = [m for m in messages if m["role"] == "user"]
    decoded = iter(decode_all(media_of(users)))  # in prompt order, as the parts come
    for message in messages:
        role, content = message["role"], message.get("content")
        if role != "user" or isinstance(content, str):
            converted.append({"role": role, "content": _text(content)})
            continue
        parts: list[dict[str, Any]] = []
        for part in content or []:
            kind = part.get("type")
            if kind == "text":
                parts.append({"type": "text", "text": part["text"]})
            elif kind in counts:
                counts[kind] += 1
                if add_vision_id:
                    label = "Picture" if kind == "image" else "Video"
                    parts.append({"type": "text", "text": f"{label} {counts[kind]}: "})
                parts.extend(_media_parts(next(decoded), video_format))
        converted.append({"role": role, "content": parts})
    return converted


def _media_parts(item: ImageInput | VideoInput, video_format: VideoFormat) -> list[dict[str, Any]]:
    if isinstance(item, ImageInput):
        return [{"type": "image_url", "image_url": {"url": image_data_url(item.image)}}]
    return _video_parts(item, video_format)


def chat_body(
    model: str,
    messages: list[dict[str, Any]],
    options: GenerationOptions,
    omit: Iterable[str] = (),
    enable_thinking: bool = True,
) -> dict[str, Any]:
    """The JSON body of a streamed chat completion; `omit` names fields the server rejected."""
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},  # vLLM sends the token count only if asked
        "max_tokens": options.max_new_tokens,
        "temperature": options.temperature,  # 0 is greedy for OpenAI-compatible servers too
        "top_p": options.top_p,
        "skip_special_tokens": False,
    }
    if options.top_k > 0:
        body["top_k"] = options.top_k
    if options.repetition_penalty != 1.0:
        body["repetition_penalty"] = options.repetition_penalty
    if options.seed is not None:
        body["seed"] = options.seed
    if not enable_thinking:  # vLLM and SGLang hand these to the chat template (Qwen3.5's switch)
        body["chat_template_kwargs"] = {"enable_thinking": False}
    for name in omit:
        body.pop(name, None)
    return body


def rejected_fields(message: str, body: Mapping[str, Any]) -> set[str]:
    """The optional fields of `body` that an error message says the server does not accept."""
    if not _REJECTION.search(message):
        return set()
    return {name for name in OPTIONAL_FIELDS if name in body and name in message}


# ----- the answer: pure functions -----


def normalize_api_base(url: str) -> str:
    """`host:port`, `http://host:port` and `http://host:port/v1/` all become `http://host:port/v1`."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    url = re.sub(r"/chat/completions$", "", url)
    return url + "/v1" if urlsplit(url).path in ("", "/") else url


def _trim(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def error_text(body: Any) -> str:
    """The message in an error body: OpenAI's `{"error": {"message"}}`, FastAPI's `{"detail"}`."""
    if isinstance(body, Mapping):
        for key in ("error", "detail", "message", "msg"):
            if body.get(key):
                return error_text(body[key])
        return json.dumps(body)
    if isinstance(body, list):  # FastAPI validation errors: a list of {"loc", "msg", ...}
        return "; ".join(error_text(item) for item in body)
    return str(body)


def server_error_message(status_code: int, content: bytes) -> str:
    """What to tell the user about an HTTP error answer, trimmed."""
    text = content.decode("utf-8", errors="replace").strip()
    try:
        text = error_text(json.loads(text))
    except ValueError:
        pass  # not JSON: a proxy's or a framework's plain text
    return _trim(text or f"HTTP {status_code}")


def _strip_end_markers(text: str) -> str:
    for marker in END_MARKERS:
        text = text.replace(marker, "")
    return text


def parse_stream(lines: Iterable[str]) -> Iterator[Delta]:
    """Deltas from the lines of a chat-completions event stream (one token per content chunk).

    A server's reasoning (vLLM's `reasoning`, or the older `reasoning_content` that transformers
    serve still sends) comes back inside `<think>…</think>`, as a thinking model writes it
    locally. When the server reports usage at the end, a last text-less Delta makes the token
    count match.
    """
    counted, usage, reasoning = 0, None, False
    for line in lines:
        if not line.startswith("data:"):
            continue  # blank lines, ": keep-alive" comments, event names
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            break
        try:
            chunk = json.loads(data)
        except ValueError:
            chunk = None
        if not isinstance(chunk, dict):
            raise UserFacingError(f"The model server sent a malformed answer: {_trim(data)}")
        if chunk.get("error"):
            raise UserFacingError(f"The model server failed: {_trim(error_text(chunk))}")
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or ():  # vLLM's last chunk has usage and no choices
            delta = choice.get("delta") or {}
            thought = delta.get("reasoning") or delta.get("reasoning_content") or ""
            text = _strip_end_markers(delta.get("content") or "")
            if thought:
                counted += 1
                yield Delta(text=("" if reasoning else THINK_OPEN) + thought, tokens=1)
                reasoning = True
            if text:
                counted += 1
                yield Delta(text=(THINK_CLOSE if reasoning else "") + text, tokens=1)
                reasoning = False
    total = usage.get("completion_tokens") if isinstance(usage, dict) else None
    if isinstance(total, int) and total > counted:
        yield Delta(tokens=total - counted)


# ----- the engine -----


class _Call:
    """One streamed request, shared by the reader thread and the consumer that may stop it."""

    def __init__(self) -> None:
        self.items: queue.Queue[Delta | BaseException | None] = queue.Queue()
        self.stopped = threading.Event()
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()

    def attach(self, response: httpx.Response) -> None:
        """Remembers the response's socket, so that stop() can cut the connection from outside."""
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        with self._lock:
            self._socket = sock
        if self.stopped.is_set():
            self.stop()

    def stop(self) -> None:
        """Ends the request now: a shutdown wakes the reader and tells the server to stop."""
        self.stopped.set()
        with self._lock:
            if self._socket is not None:
                try:
                    self._socket.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed


class OpenAIEngine:
    """Streams answers from an OpenAI-compatible server; the page opens even if it is down."""

    def __init__(
        self,
        api_base: str,
        api_key: str | None = None,
        model: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        video_format: VideoFormat = "frames",
    ) -> None:
        if video_format not in VIDEO_FORMATS:  # the flag's choices
            raise ValueError(f"video_format must be one of {VIDEO_FORMATS}, got {video_format!r}")
        self.api_base = normalize_api_base(api_base)
        self.model = model
        self.family: Family = family_of(model)
        self.geometry: Geometry = QWEN2_VL
        self.template_tokens: Sequence[str] = TEMPLATE_TOKENS
        self.generation_defaults: Mapping[str, float] = {}
        self.video_format: VideoFormat = video_format
        self.timeout = timeout
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT_SECONDS)),
        )
        connecting = f"Connecting to the model server at {self.api_base}…"
        self._status = EngineStatus("loading", connecting)
        self._checked_at = -math.inf
        self._probing = threading.Lock()
        self._omit: frozenset[str] = frozenset()

    def close(self) -> None:
        self._client.close()

    @property
    def prompt_format(self) -> PromptFormat:
        """The served model's template, by its family (the server's tokenizer is not here)."""
        if self.family != "qwen3_vl":
            return QWEN2_FORMAT
        if "thinking" in (self.model or "").lower():  # e.g. Qwen3-VL-8B-Thinking
            return replace(QWEN3_FORMAT, generation_prompt="<|im_start|>assistant\n<think>\n")
        return QWEN3_FORMAT

    def status(self) -> EngineStatus:
        """Ready once /v1/models answered; until then asked again every RECHECK_SECONDS.

        An unreachable server is "loading", not "failed": the page keeps polling, and the chat
        opens by itself once the server is up.
        """
        stale = time.monotonic() - self._checked_at > RECHECK_SECONDS
        if self._status.state != "ready" and stale:
            self.refresh(wait=False)
        return self._status

    def refresh(self, wait: bool = True) -> EngineStatus:
        """Asks the server's /v1/models now; wait=False returns at once if another thread asks."""
        if not self._probing.acquire(blocking=wait):
            return self._status
        try:
            self._status = self._probe()
            self._checked_at = time.monotonic()
        finally:
            self._probing.release()
        return self._status

    def _probe(self) -> EngineStatus:
        try:
            response = self._client.get(f"{self.api_base}/models", timeout=PROBE_TIMEOUT_SECONDS)
        except httpx.TransportError as exc:
            return EngineStatus("loading", self._unreachable(exc, PROBE_TIMEOUT_SECONDS))
        if response.status_code >= 400:
            reason = server_error_message(response.status_code, response.content)
            return EngineStatus("failed", self._refused(response.status_code, reason))
        try:
            names = [entry["id"] for entry in response.json()["data"]]
        except (ValueError, KeyError, TypeError):
            return EngineStatus("failed", f"{self.api_base}/models is not an OpenAI model list.")
        if self.model is None:
            if not names:
                return EngineStatus(
                    "failed", f"The model server at {self.api_base} lists no model: pass --model."
                )
            self.model, self.family = names[0], family_of(names[0])
        return self._ready(self.model)

    def _ready(self, model: str) -> EngineStatus:
        return EngineStatus("ready", f"{model} at {self.api_base} is ready.")

    def _unreachable(self, exc: httpx.TransportError, timeout: float) -> str:
        if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
            why = f"no answer within {timeout:g} s"
        elif isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
            why = "cannot connect"
        else:
            why = f"the connection failed: {_trim(str(exc)) or exc.__class__.__name__}"
        return (
            f"The model server at {self.api_base} is not reachable ({why}). "
            "Check that it is running and that --api-base points to it."
        )

    def _refused(self, status_code: int, reason: str) -> str:
        return f"The model server at {self.api_base} answered HTTP {status_code}: {reason}"

    def count_tokens(self, text: str) -> int:
        """An estimate: the server's tokenizer is not here (about 3 characters a token)."""
        return len(text) // 3 + 1

    def stream(self, request: ChatRequest) -> Iterator[Delta]:
        call = _Call()
        reader = threading.Thread(
            target=self._pump, args=(request, call), name="openai-stream", daemon=True
        )
        reader.start()
        try:
            while True:
                try:
                    item = call.items.get(timeout=HEARTBEAT_SECONDS)
                except queue.Empty:
                    yield Delta()  # the consumer may close us now (Stop, disconnect)
                    continue
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            call.stop()

    def _pump(self, request: ChatRequest, call: _Call) -> None:
        """The reader thread: the request's deltas into the queue, then None or the error."""
        try:
            for delta in self._deltas(request, call):
                if call.stopped.is_set():
                    return
                call.items.put(delta)
            call.items.put(None)
        except UserFacingError as exc:
            call.items.put(exc)
        except Exception as exc:  # a bug here must still end the chat turn with a message
            if not call.stopped.is_set():
                log.exception("streaming from %s failed", self.api_base)
                call.items.put(UserFacingError(f"The answer failed ({exc.__class__.__name__})."))

    def _model_name(self) -> str:
        if self.model is None:
            self.refresh(wait=True)
        if self.model is None:
            raise UserFacingError(self._status.message)
        return self.model

    def _deltas(self, request: ChatRequest, call: _Call) -> Iterator[Delta]:
        """Sends the request (again without the fields the server rejects) and reads the answer."""
        model = self._model_name()
        messages = to_openai_messages(request.messages, request.add_vision_id, self.video_format)
        body = chat_body(model, messages, request.options, self._omit, request.enable_thinking)
        url = f"{self.api_base}/chat/completions"
        for attempt in range(2):
            if call.stopped.is_set():
                return
            try:
                # A connection of its own (not pooled): stop() may shut it down at any time.
                with self._client.stream("POST", url, json=body, headers=_CLOSE) as response:
                    call.attach(response)
                    if response.status_code < 400:
                        self._status = self._ready(model)
                        yield from self._read(response)
                        return
                    reason = server_error_message(response.status_code, response.read())
            except httpx.TransportError as exc:
                if call.stopped.is_set():
                    return  # our own stop() cut the connection
                self._status = EngineStatus("loading", self._unreachable(exc, self.timeout))
                self._checked_at = time.monotonic()
                raise UserFacingError(self._status.message) from None
            rejected = rejected_fields(reason, body)
            if attempt or not rejected or response.status_code not in (400, 422):
                raise UserFacingError(self._refused(response.status_code, reason))
            log.warning("%s rejects %s; sending requests without them", url, sorted(rejected))
            self._omit = self._omit | rejected
            body = chat_body(model, messages, request.options, self._omit, request.enable_thinking)

    def _read(self, response: httpx.Response) -> Iterator[Delta]:
        kind = response.headers.get("content-type", "")
        if not kind.startswith("text/event-stream"):
            raise UserFacingError(
                f"The model server at {self.api_base} did not stream its answer "
                f"(content type {kind or 'missing'})."
            )
        yield from parse_stream(response.iter_lines())
