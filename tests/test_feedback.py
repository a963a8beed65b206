"""Ratings of answers: only ids this process issued, to the same client, logged once per change."""

from __future__ import annotations

import json
import logging

import pytest

from app.errors import UserFacingError
from app.feedback import MAX_CHANGES, NOT_AN_ANSWER, UNKNOWN, Ratings, rate_answer, rated_request
from app.requestlog import anonymous_id, client_scope

CLIENT, SESSION = "203.0.113.7", "session-hash"


def chat(request_id: str) -> list[dict]:
    """A two-turn chat whose second answer (reasoning, answer, statistics) is `request_id`'s."""
    return [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello", "metadata": {"id": "aaaaaaaaaaaa"}},
        {"role": "user", "content": "Why?"},
        {"role": "assistant", "content": "…", "metadata": {"title": "💭", "id": request_id}},
        {"role": "assistant", "content": "Because.", "metadata": {"id": request_id}},
        {"role": "assistant", "content": "", "metadata": {"title": "3 tokens", "id": request_id}},
    ]


def lines(caplog) -> list[dict]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "app.requests"]


def test_the_rating_names_the_request_of_the_rated_turn(caplog):
    caplog.set_level(logging.INFO, logger="app.requests")
    ratings = Ratings()
    ratings.issue("bbbbbbbbbbbb", client_scope(CLIENT), answer="Because.")
    for index in (3, 4, 5):  # any message of the turn rates it
        assert rated_request(chat("bbbbbbbbbbbb"), index) == "bbbbbbbbbbbb"
    rate_answer(ratings, chat("bbbbbbbbbbbb"), 4, True, CLIENT, SESSION)
    rate_answer(ratings, chat("bbbbbbbbbbbb"), 5, True, CLIENT, SESSION)  # no change: no line
    rate_answer(ratings, chat("bbbbbbbbbbbb"), 4, "", CLIENT, SESSION)  # taken back
    rate_answer(ratings, chat("bbbbbbbbbbbb"), 4, False, CLIENT, SESSION)
    session = anonymous_id(SESSION)
    assert lines(caplog) == [
        {"event": "feedback", "request": "bbbbbbbbbbbb", "rating": rating, "answer": "Because.",
         "session": session}
        for rating in ("up", "none", "down")
    ]  # fmt: skip


def test_ratings_of_unknown_or_foreign_answers_are_refused():
    ratings = Ratings(capacity=2)
    ratings.issue("bbbbbbbbbbbb", client_scope(CLIENT))
    with pytest.raises(UserFacingError, match="can no longer be rated"):
        ratings.rate("bbbbbbbbbbbb", client_scope("198.51.100.1"), "up")  # another client
    with pytest.raises(UserFacingError) as refused:
        ratings.rate("cccccccccccc", client_scope(CLIENT), "up")  # never issued
    assert str(refused.value) == UNKNOWN
    ratings.issue("dddddddddddd", "x")
    ratings.issue("eeeeeeeeeeee", "x")  # the oldest id is forgotten beyond the capacity
    with pytest.raises(UserFacingError):
        ratings.rate("bbbbbbbbbbbb", client_scope(CLIENT), "up")


def test_one_clients_many_answers_never_push_out_anothers():
    ratings = Ratings(capacity=10, per_client=3)
    ratings.issue("bbbbbbbbbbbb", "other")
    for n in range(50):  # one client asks again and again
        ratings.issue(f"{n:012d}", "busy")
    assert ratings.rate("bbbbbbbbbbbb", "other", "up") is not None, "still ratable"
    assert ratings.rate("000000000049", "busy", "up") is not None, "the newest of the busy one"
    with pytest.raises(UserFacingError):
        ratings.rate("000000000046", "busy", "up")  # beyond its own three


def test_a_client_cannot_write_unbounded_lines():
    ratings = Ratings()
    ratings.issue("bbbbbbbbbbbb", "x")
    logged = [ratings.rate("bbbbbbbbbbbb", "x", ("up", "down")[i % 2]) for i in range(50)]
    assert sum(entry is not None for entry in logged) == MAX_CHANGES
    assert "answer" not in logged[0]  # without --log-content the answer is not kept


@pytest.mark.parametrize(
    ("history", "index"),
    [
        (chat("b"), 0),  # a user message
        (chat("b"), 99),
        (chat("b"), -1),
        (chat("b"), True),
        (chat("b"), "4"),
        (chat("b"), [4, 0]),
        ("not a chat", 0),
        (None, 0),
        ([{"role": "assistant", "content": "x", "metadata": {"id": 5}}], 0),
        ([{"role": "assistant", "content": "x", "metadata": "id"}], 0),
        ([["assistant", "x"]], 0),
    ],
)
def test_anything_but_an_answer_gets_a_plain_message(history, index):
    with pytest.raises(UserFacingError) as refused:
        rated_request(history, index)
    assert str(refused.value) == NOT_AN_ANSWER


@pytest.mark.parametrize("liked", [None, 1, "Like", ["up"], {"liked": True}])
def test_a_rating_is_a_thumb(liked):
    ratings = Ratings()
    ratings.issue("bbbbbbbbbbbb", client_scope(CLIENT))
    with pytest.raises(UserFacingError, match="thumbs up or a thumbs down"):
        rate_answer(ratings, chat("bbbbbbbbbbbb"), 4, liked, CLIENT, SESSION)
