"""Fair use of the model: who is asking, and how many answers each may have at once.

The "client" is defined once, in `app.hosting.client_of`: the login user, else the peer
address (the forwarded one on Spaces, whose proxy sets it). Gradio's session hash is chosen by
the caller, so it bounds nothing alone; it only keeps one conversation to one answer at a time.

- One running answer per session: a second one waits a little for the first to end (a Stop
  takes a moment to land), then is refused with a message.
- At most `per_client` answers running or waiting per client (`--max-chats-per-client`), sized
  so that a whole office behind one address at a demo day is still served.
- An answer whose stream nobody reads (a queue join whose results are never fetched) never
  reaches the engine: it waits up to `listen_seconds` for its reader, then is dropped. It
  takes no place while it waits, so unread joins cannot lock out the others at an address;
  they only hold one of Gradio's worker threads for those seconds.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from app.errors import UserFacingError

SESSION_WAIT_SECONDS = 5.0  # how long a session's next answer waits for its previous one
LISTEN_SECONDS = 3.0  # how long an answer waits for someone to read its stream
_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class Caller:
    """Who asks: the client (see the module docstring), the Gradio session, and a check that
    the answer's stream is being read (None: always, as for direct calls in tests)."""

    client: str = ""
    session: str = ""
    listening: Callable[[], bool] | None = None


class Abandoned(Exception):
    """Nobody reads this answer's stream: it was dropped before reaching the engine."""


class Admission:
    """Counts the answers running or waiting, per session and per client."""

    def __init__(
        self,
        per_client: int,
        session_wait: float = SESSION_WAIT_SECONDS,
        listen_seconds: float = LISTEN_SECONDS,
    ) -> None:
        self.per_client = per_client
        self.session_wait = session_wait
        self.listen_seconds = listen_seconds
        self._sessions: set[str] = set()
        self._clients: Counter[str] = Counter()
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def enter(self, caller: Caller) -> Iterator[None]:
        """Holds the caller's places while its answer runs; UserFacingError when over a bound,
        Abandoned when nobody reads the answer."""
        self._wait_for_reader(caller)  # first: an unread job takes nobody's place
        self._take(caller)
        try:
            yield
        finally:
            with self._changed:
                self._sessions.discard(caller.session)
                self._clients[caller.client] -= 1
                if self._clients[caller.client] <= 0:
                    del self._clients[caller.client]
                self._changed.notify_all()

    def running(self, client: str) -> int:
        with self._changed:
            return self._clients[client]

    def _take(self, caller: Caller) -> None:
        with self._changed:
            if caller.session:
                free = self._changed.wait_for(
                    lambda: caller.session not in self._sessions, timeout=self.session_wait
                )
                if not free:
                    raise UserFacingError(
                        "An answer is still being written in this conversation. "
                        "Wait for it to finish, or press Stop, then send again."
                    )
            if caller.client and self._clients[caller.client] >= self.per_client:
                raise UserFacingError(
                    f"Too many answers at once from your address or account "
                    f"({self.per_client} running or waiting). Wait for one to finish."
                )
            if caller.session:
                self._sessions.add(caller.session)
            self._clients[caller.client] += 1

    def _wait_for_reader(self, caller: Caller) -> None:
        if caller.listening is None:
            return
        deadline = time.monotonic() + self.listen_seconds
        while not caller.listening():
            if time.monotonic() > deadline:
                raise Abandoned(f"nobody read the answer within {self.listen_seconds:g} s")
            time.sleep(_POLL_SECONDS)
