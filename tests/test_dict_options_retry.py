"""A queue configured with a dict of options tries a command once, as with a URL.

redis-py's ``Redis(**options)`` gives its connections a retry with backoff (up to 10
tries in 8.2) where ``Redis.from_url`` gives none. So ``redis={"host": ..., "port": ...}``
made up to 29 connection attempts over 10 s against a server that closed each one, then
said the server "did not answer within 10 s", where ``redis="redis://..."`` failed at once
naming the cause; and a script call whose reply was lost could be sent again. Both
forms now behave alike: one attempt, the cause named. The server here is a loopback
listener that counts the connections it accepts and closes each at once.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest

from kitium_queue import ConnectionUnavailableError, JobQueue, SyncJobQueue

CLOSED_AT_ONCE = "closed the connection"


class Closer:
    """A TCP listener on a free loopback port that closes every connection it accepts."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def closer() -> Iterator[Closer]:
    c = Closer()
    try:
        yield c
    finally:
        c.close()


def _forms(port: int) -> list[object]:
    return [{"host": "127.0.0.1", "port": port}, f"redis://127.0.0.1:{port}"]


@pytest.mark.parametrize("form", ["dict", "url"])
async def test_a_call_is_tried_once_and_names_the_cause(closer: Closer, form: str) -> None:
    redis = _forms(closer.port)[0 if form == "dict" else 1]
    q = JobQueue("once", redis=redis)  # type: ignore[arg-type]
    try:
        with pytest.raises(ConnectionUnavailableError) as info:
            await asyncio.wait_for(q.get_stats(), 30)
        assert CLOSED_AT_ONCE in str(info.value), info.value
        assert closer.accepted == 1, f"{closer.accepted} connection attempts for one call"
    finally:
        await q.close()


@pytest.mark.parametrize("form", ["dict", "url"])
def test_a_blocking_add_is_tried_once(closer: Closer, form: str) -> None:
    redis = _forms(closer.port)[0 if form == "dict" else 1]
    q = SyncJobQueue("once", redis=redis)  # type: ignore[arg-type]
    try:
        with pytest.raises(ConnectionUnavailableError):
            q.add_job("x", {"n": 1})
        # The blocking client may open its connection, and the asyncio client its own,
        # once each; before, the dict form's blocking client alone tried 4 times and more.
        assert closer.accepted <= 2, f"{closer.accepted} connection attempts for one add"
    finally:
        q.close()
