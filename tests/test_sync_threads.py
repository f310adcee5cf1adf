"""``SyncJobQueue`` as web apps hold it: shared by threads, closed by whichever thread
shuts down first, dropped without ``close()``, and used while the interpreter exits.

Each test failed before the fix it names: two threads closing one client cancelled
each other's steps (RuntimeError, AttributeError, "Invalid file descriptor"); a client
dropped without ``close()`` left its event-loop thread running for good; a call its
caller gave up on (a signal handler's exception) ran on until Redis answered; a connection
opened once the interpreter had begun to exit (an ``atexit`` handler, a non-daemon
thread after the main thread returned) to a host name such as ``localhost`` failed as
"cannot reach Redis", because asyncio resolves names in an executor that then refuses
work.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
import weakref
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from _redis import RedisServer
from kitium_queue import SyncJobQueue

pytestmark = pytest.mark.redis_only


def test_close_from_many_threads_at_once_returns_in_each(redis_url: str, prefix: str) -> None:
    def close_at_once(q: SyncJobQueue, start: threading.Barrier, errors: list[str]) -> None:
        start.wait()
        try:
            q.close()
        except BaseException as exc:  # what each close() ended with
            errors.append(f"{type(exc).__name__}: {exc}")

    for _ in range(10):
        q = SyncJobQueue("closing", redis=redis_url, prefix=prefix)
        q.add_job("n")
        q.get_stats()
        start = threading.Barrier(4)
        errors: list[str] = []
        threads = [
            threading.Thread(target=close_at_once, args=(q, start, errors)) for _ in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not [t for t in threads if t.is_alive()]
        assert not errors, errors
        assert not q._thread.is_alive()
        with pytest.raises(RuntimeError, match="is closed"):
            q.add_job("n")


def test_a_client_dropped_without_close_stops_its_loop_thread(redis_url: str, prefix: str) -> None:
    gc.collect()  # what earlier tests left is collected here, not counted below
    q = SyncJobQueue("dropped", redis=redis_url, prefix=prefix)
    q.add_job("n")  # its hooks hold the client on the loop for a moment (ANNOUNCE_DELAY_S)
    assert q.get_stats().waiting == 1
    thread, loop, ref = q._thread, q._loop, weakref.ref(q)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        del q
        for _ in range(200):
            gc.collect()
            if ref() is None:
                break
            time.sleep(0.01)
        assert ref() is None
        thread.join(10)
    assert not thread.is_alive()
    assert loop.is_closed()
    said = [str(w.message) for w in seen if issubclass(w.category, ResourceWarning)]
    assert "unclosed SyncJobQueue 'dropped': call close()" in said


class RequestTimeout(Exception):
    """What a signal-based request timeout raises in the request's thread."""


def test_a_call_its_caller_gave_up_on_stops(debug_server: RedisServer, prefix: str) -> None:
    """A call interrupted by a signal handler's exception while Redis did not answer
    (stopped here) went on on the loop thread, holding a connection, until Redis answered:
    a web app whose requests time out this way piled them up (100 held the whole pool)."""
    pid = debug_server.pid
    assert pid is not None

    async def tasks_left() -> int:
        return len(asyncio.all_tasks()) - 1

    def time_out(*_: object) -> None:
        raise RequestTimeout

    with SyncJobQueue("given-up", redis=debug_server.url, prefix=prefix) as q:
        job_id = q.add_job("n")
        before = signal.signal(signal.SIGALRM, time_out)
        os.kill(pid, signal.SIGSTOP)
        try:
            for _ in range(5):
                signal.setitimer(signal.ITIMER_REAL, 0.1)
                with pytest.raises(RequestTimeout):
                    q.get_job_status(job_id)  # a plain read: no deadline of its own
            assert q._call(tasks_left()) == 0
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, before)
            os.kill(pid, signal.SIGCONT)
        assert q.get_stats().waiting == 1


EXITING = """
    import atexit
    import sys

    from kitium_queue import SyncJobQueue

    queue = SyncJobQueue("exiting", redis=sys.argv[1], prefix=sys.argv[2])


    @atexit.register
    def last_words() -> None:
        # The client's first connection is opened here, as the interpreter exits.
        print(queue.add_jobs([("late", {"k": 1}, {})])[0], flush=True)
        print(queue.get_stats().waiting, flush=True)
"""


def test_a_connection_opened_as_the_interpreter_exits_resolves_its_host(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    parts = urlsplit(redis_url)
    host = parts.hostname or ""
    if host == "127.0.0.1":
        parts = parts._replace(netloc=parts.netloc.replace("127.0.0.1", "localhost", 1))
    else:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass  # a host name already: asyncio resolves it in its executor
        else:
            pytest.skip("needs a host name for the server (asyncio resolves those only)")
    script = tmp_path / "exiting.py"
    script.write_text(textwrap.dedent(EXITING), "utf-8")
    src = str(Path(__file__).resolve().parents[1] / "src")
    proc = subprocess.run(
        [sys.executable, str(script), urlunsplit(parts), prefix],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": src},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Error" not in proc.stderr, proc.stderr
    job_id, waiting = proc.stdout.split()
    assert waiting == "1"
    with SyncJobQueue("exiting", redis=redis_url, prefix=prefix) as q:
        info = q.get_job_status(job_id)
        assert info is not None and (info.name, info.data) == ("late", {"k": 1})
