"""The README's ways of calling the asyncio API from blocking code, run under
``python -X dev -W error::ResourceWarning`` (asyncio's debug mode, ResourceWarning on):
none may leave a warning about a connection, socket or transport of an event loop that
ended, nor a task destroyed while pending.

A queue's connections belong to the event loop it was first used in. A queue whose
``asyncio.run`` ended without ``close()`` kept that loop's sockets open until garbage
collection (``unclosed Connection``, ``unclosed transport``, ``loop is closed``), and
``close()`` awaited in the next loop, the README's way to free the queue, dropped them
unclosed. Now the client is closed in its own loop as the loop ends, and ``close()`` or a
refused call from a later loop closes the sockets of a loop that no longer runs directly.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

#: What a leak of the kinds above prints (``-W error`` turns the warnings of ``__del__``
#: into "Exception ignored in ...", which still names the warning).
MARKERS = (
    "ResourceWarning",
    "Task was destroyed but it is pending",
    "was never awaited",
    "Exception ignored",
    "Traceback",
)


def _run(tmp_path: Path, body: str, **names: str) -> str:
    """Run ``body`` (formatted with ``names``) under -X dev with ResourceWarning as an
    error; return its stdout once it exited 0 and printed none of ``MARKERS``."""
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(body).format(**names) + "\nimport gc\ngc.collect()\nprint('end')\n"
    )
    done = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error::ResourceWarning", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = [m for m in MARKERS if m in done.stderr]
    assert done.returncode == 0 and not found, (found, done.stderr[-3000:])
    assert done.stdout.rstrip().endswith("end"), done.stdout
    return done.stdout


def test_asyncio_run_per_call_and_the_documented_recovery(
    tmp_path: Path, backend_url: str, prefix: str
) -> None:
    out = _run(
        tmp_path,
        """
        import asyncio
        from kitium_queue import JobQueue

        q = JobQueue("xdev", redis={url!r}, prefix={prefix!r})
        print("added", asyncio.run(q.add_job("send-email", {{"to": 1}})))
        try:
            asyncio.run(q.add_job("send-email", {{"to": 2}}))  # a second loop: refused
        except RuntimeError as exc:
            print("refused" if "another event loop" in str(exc) else exc)

        async def recover():
            await q.close()  # frees the queue for this loop (README)
            return await q.add_job("send-email", {{"to": 3}})

        print("added", asyncio.run(recover()))  # this loop ends without close()
        asyncio.run(q.close())
        print("added", asyncio.run(q.add_job("send-email", {{"to": 4}})))  # nor this one
        """,
        url=backend_url,
        prefix=prefix,
    )
    assert out.count("added") == 3 and "refused" in out, out


@pytest.mark.redis_only
def test_loops_closed_without_asyncio_run(tmp_path: Path, redis_url: str, prefix: str) -> None:
    """A loop closed by hand never closes its async generators: the refused call of the
    next loop, and close() while the old loop is idle, close its sockets directly (and
    the idle loop, used again, connects anew)."""
    out = _run(
        tmp_path,
        """
        import asyncio
        from kitium_queue import JobQueue

        q = JobQueue("xdev", redis={url!r}, prefix={prefix!r})
        loop = asyncio.new_event_loop()
        loop.run_until_complete(q.add_job("n", {{}}))
        loop.close()
        try:
            asyncio.run(q.add_job("n", {{}}))
        except RuntimeError as exc:
            print("refused" if "another event loop" in str(exc) else exc)
        asyncio.run(q.close())

        idle = asyncio.new_event_loop()
        idle.run_until_complete(q.add_job("n", {{}}))
        asyncio.run(q.close())  # its loop idle, not closed
        for _ in range(2):  # and used again: a new connection (the same fd, likely)
            idle.run_until_complete(q.add_job("n", {{}}))
        print("waiting", idle.run_until_complete(q.get_stats()).waiting)
        idle.run_until_complete(q.close())
        idle.close()
        """,
        url=redis_url,
        prefix=prefix,
    )
    assert "refused" in out and "waiting 4" in out, out


@pytest.mark.redis_only
def test_close_while_another_threads_loop_uses_the_queue(
    tmp_path: Path, redis_url: str, prefix: str
) -> None:
    """close() from this thread's loop while the client's loop runs in another thread:
    that loop's calls keep the connections; they are closed there when it ends."""
    out = _run(
        tmp_path,
        """
        import asyncio, threading
        from kitium_queue import JobQueue

        q = JobQueue("xdev", redis={url!r}, prefix={prefix!r})
        used, go_on = threading.Event(), threading.Event()

        def other():
            async def main():
                await q.add_job("n", {{}})
                used.set()
                while not go_on.is_set():
                    await asyncio.sleep(0.01)

            asyncio.run(main())

        thread = threading.Thread(target=other)
        thread.start()
        assert used.wait(10)

        async def here():
            await q.close()
            try:
                return (await q.get_stats()).waiting
            finally:
                await q.close()

        print("waiting", asyncio.run(here()))
        go_on.set()
        thread.join(10)
        """,
        url=redis_url,
        prefix=prefix,
    )
    assert "waiting 1" in out, out


@pytest.mark.redis_only
def test_a_worker_left_running_when_its_loop_ended(
    tmp_path: Path, redis_url: str, prefix: str
) -> None:
    out = _run(
        tmp_path,
        """
        import asyncio
        from kitium_queue import JobQueue

        q = JobQueue("xdev", redis={url!r}, prefix={prefix!r})

        @q.process("n")
        async def n(job):
            return 1

        async def a_run_that_forgets_close():
            await q.start()
            await q.add_job("n", {{}})
            for _ in range(500):
                if (await q.get_stats()).completed:
                    break
                await asyncio.sleep(0.01)

        asyncio.run(a_run_that_forgets_close())

        async def the_next_run():
            await q.close()  # forgets the worker (a WARNING says so), frees the queue
            try:
                return (await q.get_stats()).completed
            finally:
                await q.close()

        print("completed", asyncio.run(the_next_run()))
        """,
        url=redis_url,
        prefix=prefix,
    )
    assert "completed 1" in out, out


@pytest.mark.redis_only
def test_the_documented_clean_paths(tmp_path: Path, redis_url: str, prefix: str) -> None:
    """close() at the end of each asyncio.run, and the README's SyncJobQueue example
    closed at the end."""
    out = _run(
        tmp_path,
        """
        import asyncio
        from kitium_queue import JobQueue, SyncJobQueue

        q = JobQueue("xdev", redis={url!r}, prefix={prefix!r})

        async def add(i):
            try:
                return await q.add_job("n", {{"i": i}})
            finally:
                await q.close()

        print([asyncio.run(add(i)) for i in range(3)])

        queue = SyncJobQueue("emails", redis={url!r}, prefix={prefix!r})
        job_id = queue.add_job("send-email", {{"to": "ada@example.com"}}, attempts=5)
        print(queue.get_job_status(job_id).status.value)
        queue.close()
        """,
        url=redis_url,
        prefix=prefix,
    )
    assert "['1', '2', '3']\nwaiting" in out, out
