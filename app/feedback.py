"""Thumbs up / down on answers, written to the request log (logger `app.requests`).

Every answer's messages carry the id of the request that made them (chat message metadata
"id"; the same id is in the request's log line), so a demo-day host can join a rating to what
the model was asked and how fast it answered. A rating line looks like
  {"event": "feedback", "request": "3f9a0c1b22de", "rating": "down", "session": "5f0c2a9d41b7"}
with "answer" added only under --log-content (the server's copy of the answer, never the text
the client sends with the rating).

The like event is a page event like any other: anyone may call it with any history and index.
So a rating counts only for an id this process issued, to the same client, and is logged only
when it changes, at most MAX_CHANGES times per answer: a client cannot write unbounded lines.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.errors import UserFacingError
from app.requestlog import LOGGER, anonymous_id, client_scope

CAPACITY = 4096  # the most recent answers that can still be rated
PER_CLIENT = 256  # of them, one client's: its many answers cannot push out the others'
MAX_CHANGES = 8  # rating changes logged per answer (like, undo, dislike, ...)
RATINGS = {True: "up", False: "down", "": "none"}  # LikeData.liked → the logged word
UNKNOWN = (
    "This answer can no longer be rated: it was given before the server restarted, in another "
    "browser, or too long ago."
)
NOT_AN_ANSWER = "Only the model's answers can be rated."


@dataclass
class _Rated:
    scope: str
    answer: str | None = None
    rating: str | None = None
    changes: int = 0


class Ratings:
    """The answers that can be rated: request id → who asked it, the answer and its rating."""

    def __init__(self, capacity: int = CAPACITY, per_client: int = PER_CLIENT) -> None:
        self.capacity, self.per_client = capacity, per_client
        self._rated: OrderedDict[str, _Rated] = OrderedDict()
        self._lock = threading.Lock()

    def issue(self, request_id: str, scope: str, answer: str | None = None) -> None:
        """Makes `request_id` ratable by `scope` (again with its answer, once it is known)."""
        with self._lock:
            rated = self._rated.setdefault(request_id, _Rated(scope))
            rated.answer = answer if rated.scope == scope else rated.answer
            self._rated.move_to_end(request_id)
            mine = [rid for rid, rated in self._rated.items() if rated.scope == scope]
            for oldest in mine[: max(0, len(mine) - self.per_client)]:
                del self._rated[oldest]
            while len(self._rated) > self.capacity:
                self._rated.popitem(last=False)

    def rate(self, request_id: str, scope: str, rating: str) -> dict[str, Any] | None:
        """The log fields of a new rating; None when it changes nothing (same rating, or the
        answer's changes are used up). Raises UserFacingError for an id not issued to `scope`."""
        with self._lock:
            rated = self._rated.get(request_id)
            if rated is None or rated.scope != scope:
                raise UserFacingError(UNKNOWN)
            if rating == rated.rating or rated.changes >= MAX_CHANGES:
                return None
            rated.rating, rated.changes = rating, rated.changes + 1
            fields: dict[str, Any] = {"event": "feedback", "request": request_id, "rating": rating}
            if rated.answer is not None:
                fields["answer"] = rated.answer
            return fields


def rating_of(liked: Any) -> str:
    """The logged word for Gradio's LikeData.liked (True, False, or "" when taken back)."""
    if isinstance(liked, bool | str) and liked in RATINGS:
        return RATINGS[liked]
    raise UserFacingError("A rating is a thumbs up or a thumbs down.")


def rated_request(history: Any, index: Any) -> str:
    """The request id of the answer at `index` of the chat `history` (the client's values).

    The id may sit on any assistant message of the turn (answer, reasoning, statistics), so
    the turn around `index` is searched, from the previous user message to the next.
    """
    if not isinstance(history, Sequence) or isinstance(history, str):
        raise UserFacingError(NOT_AN_ANSWER)
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(history):
        raise UserFacingError(NOT_AN_ANSWER)
    if _role(history[index]) != "assistant":
        raise UserFacingError(NOT_AN_ANSWER)
    start = end = index
    while start > 0 and _role(history[start - 1]) == "assistant":
        start -= 1
    while end + 1 < len(history) and _role(history[end + 1]) == "assistant":
        end += 1
    for message in history[start : end + 1]:
        metadata = message.get("metadata") if _role(message) == "assistant" else None
        request_id = metadata.get("id") if isinstance(metadata, Mapping) else None
        if isinstance(request_id, str) and request_id:
            return request_id
    raise UserFacingError(NOT_AN_ANSWER)


def rate_answer(
    ratings: Ratings, history: Any, index: Any, liked: Any, client: str, session: str
) -> None:
    """Logs a client's rating of the answer at `index` of its chat `history` (the like event's
    values, all from the client); raises UserFacingError with what to tell the user."""
    request_id = rated_request(history, index)
    fields = ratings.rate(request_id, client_scope(client), rating_of(liked))
    if fields:
        line = {**fields, "session": anonymous_id(session)}
        logging.getLogger(LOGGER).info(json.dumps(line, ensure_ascii=False))


def _role(message: Any) -> Any:
    return message.get("role") if isinstance(message, Mapping) else None
