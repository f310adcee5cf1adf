"""A process out of connections: the server at its ``maxclients``, the process at its
open-files limit (``EMFILE``). Each is said as such (``ConnectionLimitError``, a
``ConnectionUnavailableError``): which limit, what a queue holds, what to do; never
redis-py's raw error or "check that the server runs". Nothing is lost: the jobs wait
until the worker can run them.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from typing import Any

import pytest
import redis

from _redis import RedisServer, free_port
from helpers import wait_until
from kitium_queue import ConnectionUnavailableError, JobQueue
from kitium_queue.connerrors import ConnectionLimitError


def _connected(admin: redis.Redis) -> int:
    return int(admin.info("clients")["connected_clients"])


def _says_what_to_do_at_maxclients(text: str) -> None:
    assert "maxclients setting allows" in text, text
    assert "about 6 for a queue with a worker" in text, text
    assert "raise maxclients" in text and "tenancy" in text, text
    assert "one shared redis.asyncio client" in text and "fewer queues per process" in text
    assert "that the server is running" not in text and "server runs" not in text, text


async def test_a_start_refused_by_maxclients_says_so_and_leaves_nothing_behind(
    prefix: str,
) -> None:
    """``start()`` raises when the worker cannot get the connections it needs to run,
    refused by the server's ``maxclients``: a worker that cannot get a connection at
    start is better refused loudly than started in name only (before, ``start()``
    returned while its waker and pump lanes never got a connection, and only warnings
    said so). It needs them all at once (its pump lanes', the waker's, the
    scheduler's); the refused start closes what it opened, claims nothing, and the
    same jobs run once there is room. Redis unreachable at start raises as before,
    an ordinary ``ConnectionUnavailableError`` saying to check that the server runs
    (an outage that begins after the first connection is the worker's to ride out)."""
    down = JobQueue("limits", redis=f"redis://127.0.0.1:{free_port()}", prefix=prefix)
    with pytest.raises(ConnectionUnavailableError, match="that the server is running") as info:
        await down.start()
    assert not isinstance(info.value, ConnectionLimitError)
    await down.close()

    with RedisServer("--maxclients", "12") as srv:
        admin = redis.Redis.from_url(srv.url)
        producer = JobQueue("limits", redis=srv.url, prefix=prefix)
        ids = [await producer.add_job("n", {"i": i}) for i in range(3)]
        await producer.close()
        q = JobQueue("limits", redis=srv.url, prefix=prefix)
        done: list[str] = []

        @q.process("n")
        async def n(job: Any) -> None:
            done.append(job.id)

        try:
            before = _connected(admin)
            admin.config_set("maxclients", before + 2)  # room for 2 more connections
            with pytest.raises(ConnectionLimitError) as refused:
                await q.start()
            text = str(refused.value)
            assert "queue 'limits' cannot start its worker: it needs 4 connections" in text
            assert "could open only 2 of them; nothing was claimed" in text, text
            _says_what_to_do_at_maxclients(text)
            assert isinstance(refused.value, ConnectionUnavailableError)
            assert q.worker is None
            assert _connected(admin) == before  # what the refused start opened is closed
            assert await q.get_job_status(ids[0]) is not None  # waiting, not claimed
            admin.config_set("maxclients", 100)
            await q.start()
            await wait_until(lambda: len(done) == 3, 8)
            assert sorted(done) == sorted(ids)
        finally:
            await q.close()
            admin.close()


async def test_add_job_and_reads_at_maxclients_raise_the_librarys_error(prefix: str) -> None:
    """A connected queue whose call needs one more connection while the server is at
    ``maxclients``: ``add_job`` (its first add checks the user's rights first) and a
    read raise ``ConnectionLimitError`` naming the setting, not redis-py's
    ``MaxClientsReachedError``; nothing is written, and the next call succeeds once
    there is room."""
    with RedisServer("--maxclients", "12") as srv:
        admin = redis.Redis.from_url(srv.url)
        q = JobQueue("limits", redis=srv.url, prefix=prefix)
        try:
            client = await q.client()
            pool = client.connection_pool
            busy = await pool.get_connection()  # its only connection is in use
            admin.config_set("maxclients", _connected(admin))
            try:
                with pytest.raises(ConnectionLimitError) as adding:
                    await q.add_job("n", {"i": 1})
                text = str(adding.value)
                assert "refused a new connection of queue 'limits'" in text, text
                _says_what_to_do_at_maxclients(text)
                with pytest.raises(ConnectionUnavailableError, match="maxclients") as reading:
                    await q.get_job_status("1")
                _says_what_to_do_at_maxclients(str(reading.value))
            finally:
                await pool.release(busy)
            admin.config_set("maxclients", 100)
            assert await q.get_jobs_by_status("waiting") == []  # nothing was written
            job_id = await q.add_job("n", {"i": 2})
            assert await q.get_job_status(job_id) is not None
        finally:
            await q.close()
            admin.close()


async def test_a_running_workers_outage_warning_names_maxclients(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The worker's waker loses its connection while the server is at ``maxclients``:
    its outage warning says the server refused the connection for its ``maxclients``
    and what to do (before: "Redis unreachable (MaxClientsReachedError: max number of
    clients reached)"). It keeps retrying, and runs the jobs once there is room."""
    caplog.set_level(logging.WARNING, logger="kitium_queue")
    with RedisServer("--maxclients", "40") as srv:
        admin = redis.Redis.from_url(srv.url)
        q = JobQueue("limits", redis=srv.url, prefix=prefix, worker={"scheduler": False})
        done: list[str] = []

        @q.process("n")
        async def n(job: Any) -> None:
            done.append(job.id)

        try:
            await q.start()
            blocked = await wait_until(
                lambda: [c for c in admin.client_list() if "b" in c["flags"]], 5
            )
            admin.config_set("maxclients", _connected(admin) - 1)  # full once one goes
            admin.client_kill_filter(_id=blocked[0]["id"])
            await wait_until(
                lambda: [r for r in caplog.records if "maxclients" in r.getMessage()], 5
            )
            warning = next(r for r in caplog.records if "maxclients" in r.getMessage())
            text = warning.getMessage()
            assert "refused a new connection of queue 'limits'" in text, text
            _says_what_to_do_at_maxclients(text)
            admin.config_set("maxclients", 100)
            ids = [await q.add_job("n", {"i": i}) for i in range(3)]
            await wait_until(lambda: len(done) == 3, 8)
            assert sorted(done) == sorted(ids)
        finally:
            await q.close()
            admin.close()


# Run in a child process whose open-files limit is lowered to leave ``free`` more files:
# prints one JSON line of what each call raised.
_AT_EMFILE = textwrap.dedent(
    """
    import asyncio, json, os, resource, sys
    from kitium_queue import JobQueue

    url, prefix = sys.argv[1], sys.argv[2]
    _, HARD = resource.getrlimit(resource.RLIMIT_NOFILE)

    def is_open(fd):
        try:
            os.fstat(fd)
            return True
        except OSError:
            return False

    def leave(free):
        # Open now: not the descriptor listdir itself used (closed once it returned).
        fds = [f for f in map(int, os.listdir("/proc/self/fd")) if is_open(f)]
        soft = len(fds)
        while soft - sum(1 for f in fds if f < soft) < free:
            soft += 1
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, HARD))
        return soft

    def said(exc):
        return {"type": type(exc).__name__, "text": str(exc),
                "mro": [c.__name__ for c in type(exc).__mro__]}

    async def main():
        out = {}
        done = []
        producer = JobQueue("files", redis=url, prefix=prefix)
        await producer.add_job("n", {"i": 0})
        await producer.close()
        q = JobQueue("files", redis=url, prefix=prefix)

        @q.process("n")
        async def n(job):
            done.append(job.id)

        out["soft"] = leave(2)  # the first connection, and one more
        try:
            await asyncio.wait_for(q.start(), 10)
            out["start"] = None
        except Exception as exc:
            out["start"] = said(exc)
        resource.setrlimit(resource.RLIMIT_NOFILE, (HARD, HARD))
        fresh = JobQueue("files", redis=url, prefix=prefix)
        leave(0)
        try:
            await asyncio.wait_for(fresh.add_job("n", {"i": 1}), 10)
            out["add"] = None
        except Exception as exc:
            out["add"] = said(exc)
        resource.setrlimit(resource.RLIMIT_NOFILE, (HARD, HARD))
        await fresh.close()
        await q.close()
        await asyncio.wait_for(q.start(), 10)
        for _ in range(200):
            if done:
                break
            await asyncio.sleep(0.02)
        out["done"] = len(done)
        await q.close()
        print(json.dumps(out))

    asyncio.run(main())
    """
)


def test_the_open_files_limit_is_named_with_what_to_do(prefix: str) -> None:
    """The process at its open-files limit (``RLIMIT_NOFILE``, lowered in a child
    process): ``start()`` raises ``ConnectionLimitError`` naming the limit (EMFILE, its
    current value) and what to do, instead of starting a worker that retries a socket
    it can never open (said as "check that the server runs"); ``add_job`` on a queue
    that cannot open its first connection says the same. The job added before runs
    once the limit is raised."""
    with RedisServer() as srv:
        run = subprocess.run(
            [sys.executable, "-c", _AT_EMFILE, srv.url, prefix],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    start, add = out["start"], out["add"]
    assert start is not None, "start() returned though its worker could not connect"
    assert "ConnectionUnavailableError" in start["mro"], start
    assert "queue 'files' cannot start its worker" in start["text"], start
    for said in (start, add):
        text = said["text"]
        assert said["type"] == "ConnectionLimitError", said
        assert "open-files limit" in text and "EMFILE" in text, text
        assert "Too many open files" in text, text
        assert "ulimit -n" in text and "fewer queues per process" in text, text
        assert "server is running" not in text and "server runs" not in text, text
    assert f"RLIMIT_NOFILE soft {out['soft']}," in start["text"], start
    assert out["done"] == 1  # the job added before the refusal ran once the limit rose
