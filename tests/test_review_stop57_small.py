"""The ``atexit`` handlers of ``kitium-queue worker``'s exit code 5, and the masking of
short credentials, on a real Redis.

* ``cli/base.py`` ``_exit_stuck``: the worker whose stop gave up on a processor that
  ignores its cancellation ends its process with ``os._exit(5)``, which skipped the
  ``atexit`` handlers (an OpenTelemetry batch exporter's last spans, what a log queue's
  listener holds). They now run first (``runends.run_exit_handlers``), in a daemon
  thread for a few seconds at most: a handler that hangs cannot keep the process alive.
* ``redact.py``: the credentials a queue was given were replaced wherever their text
  occurred, so a one-letter user name (``redis://e@host``) or a short password starred
  that letter inside every word of a connection error ("R***dis at ..."). A short one
  is masked now where it stands whole; a long one still wherever it occurs, and neither
  is ever shown.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from _redis import free_port
from kitium_queue import JobQueue
from kitium_queue.redact import redact_url

pytestmark = pytest.mark.redis_only
SRC = str(Path(__file__).resolve().parents[1] / "src")
EXIT_STUCK = 5

# A processor that ignores its cancellation, and two atexit handlers: registered last,
# run first (the interpreter's order), one that writes a file and prints without a
# flush, then one that never ends.
STUCK_APP = """
import asyncio, atexit, os, threading
from kitium_queue import JobQueue

queue = JobQueue(
    "ax",
    redis=os.environ["KQT_REDIS"],
    prefix=os.environ["KQT_PREFIX"],
    worker={"shutdown_timeout": 500},
    settings={"lock_duration": 30_000},
)
MARK = os.environ["KQT_MARK"]


def hang():
    threading.Event().wait()


def flush_spans():
    with open(os.environ["KQT_ATEXIT"], "w") as f:
        f.write("flushed\\n")
    print("atexit handler ran")  # buffered stdout: flushed before the process ends


atexit.register(hang)
atexit.register(flush_spans)


@queue.process("stubborn")
async def stubborn(job):
    while True:
        try:
            with open(MARK, "a") as f:
                f.write("tick\\n")
            await asyncio.sleep(0.1)
        except asyncio.CancelledError:
            pass
"""


def _add_job(redis_url: str, prefix: str) -> None:
    async def go() -> None:
        q = JobQueue("ax", redis=redis_url, prefix=prefix)
        try:
            await q.add_job("stubborn", {})
        finally:
            await q.close()

    asyncio.run(go())


def test_exit_code_5_runs_the_atexit_handlers_within_a_bound(
    tmp_path: Path, redis_url: str, prefix: str
) -> None:
    (tmp_path / "axapp.py").write_text(STUCK_APP)
    mark, flushed = tmp_path / "mark.txt", tmp_path / "atexit.txt"
    out_path, err_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([SRC, str(tmp_path)]),
        "KQT_REDIS": redis_url,
        "KQT_PREFIX": prefix,
        "KQT_MARK": str(mark),
        "KQT_ATEXIT": str(flushed),
    }
    argv = [sys.executable, "-m", "kitium_queue.cli", "worker", "axapp:queue"]
    with out_path.open("w") as out, err_path.open("w") as err:
        proc = subprocess.Popen(argv, cwd=tmp_path, stdout=out, stderr=err, env=env)
        try:
            _add_job(redis_url, prefix)
            deadline = time.monotonic() + 60
            while not (mark.exists() and len(mark.read_text().split()) >= 3):
                assert proc.poll() is None, err_path.read_text()
                assert time.monotonic() < deadline, err_path.read_text()
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            # The handler that never ends is given a few seconds, then left.
            code = proc.wait(timeout=90)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    err_text = err_path.read_text()
    assert code == EXIT_STUCK, (code, err_text)
    assert "ignored its cancellation" in err_text, err_text
    assert flushed.read_text() == "flushed\n", err_text  # skipped by os._exit before
    assert "atexit handler ran" in out_path.read_text()
    assert "the atexit handlers did not end within" in err_text, err_text


# ------------------------------------------------------------------ redaction
# Short credentials whose letters stand inside the words of every connection error.
SHORT_USER, SHORT_PASSWORD = "e", "re"
LONG_PASSWORD = "Pw7xQ2zK9vB"


def _whole(secret: str, text: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(secret)}(?!\w)", text) is not None


def test_short_secrets_are_masked_whole_and_words_are_left_alone() -> None:
    text = "Redis at redis://e@h:1/0 refused: Error connecting; e said 'e' and re: 're'"
    shown = redact_url(text, {SHORT_USER, SHORT_PASSWORD})
    assert shown == (
        "Redis at redis://***@h:1/0 refused: Error connecting; *** said '***' and ***: '***'"
    )
    # A long secret is masked inside a word too (after an escape it is still the secret).
    assert LONG_PASSWORD not in redact_url(f"bad \\x00{LONG_PASSWORD}x", {LONG_PASSWORD})
    assert redact_url("AUTH failed for pw2 here", secrets=["pw2"]) == "AUTH failed for *** here"


async def _failures(url: str, caplog: pytest.LogCaptureFixture) -> list[str]:
    """What a queue on ``url`` shows of its connection failure: the error raised, the
    error of ``health_check()``, ``describe()``, and every log record meanwhile."""
    caplog.clear()
    q = JobQueue("short-secrets", redis=url)
    try:
        with caplog.at_level(logging.DEBUG):
            health = await asyncio.wait_for(q.health_check(), 60)
            try:
                await asyncio.wait_for(q.client(), 60)
            except Exception as exc:
                raised = str(exc)
            else:
                raise AssertionError(f"{url}: connected")
        assert health.error, health
        return [raised, health.error, q.connection.describe()] + [
            r.getMessage() for r in caplog.records
        ]
    finally:
        await q.close()


async def test_connection_errors_never_show_credentials_nor_mangle_words(
    redis_server: Any, redis_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    live, closed = f"127.0.0.1:{redis_server.port}", f"127.0.0.1:{free_port()}"
    user = f"{SHORT_USER}{os.getpid()}"  # its password is not SHORT_PASSWORD
    await redis_client.acl_setuser(user, enabled=True, passwords=[f"+{LONG_PASSWORD}"])
    cases = [
        # A lone user name (redis-py reads it as the user; the queue hides it as a
        # possible password): unreachable, then refused by a server without that user.
        (f"redis://{SHORT_USER}@{closed}/0", [SHORT_USER], "connecting to"),
        (f"redis://{SHORT_USER}@{live}/0", [SHORT_USER], "requires a password"),
        (f"redis://{user}:{SHORT_PASSWORD}@{live}/0", [SHORT_PASSWORD], "refused the cred"),
        (f"redis://{user}:{LONG_PASSWORD}x@{live}/0", [LONG_PASSWORD], "refused the cred"),
        (f"redis://{LONG_PASSWORD}@{closed}/0", [LONG_PASSWORD], "connecting to"),
    ]
    try:
        await _check_cases(cases, caplog)
    finally:
        await redis_client.acl_deluser(user)


async def _check_cases(cases: list[Any], caplog: pytest.LogCaptureFixture) -> None:
    for url, secrets, words in cases:
        texts = await _failures(url, caplog)
        assert words in texts[0], (url, texts)
        assert "Redis at redis://***@127.0.0.1:" in texts[0], (url, texts)
        for text in texts:
            assert not re.search(r"\w\*{3}|\*{3}\w", text), (url, text)  # no word starred
            for secret in secrets:
                assert not _whole(secret, text), (url, secret, text)
                if len(secret) > 2:
                    assert secret not in text, (url, secret, text)


async def test_health_check_keeps_the_password_hint_readable() -> None:
    """health_check() redacted the connection error's text a second time, and the
    example URL of the password hint (``redis://USERNAME:PASSWORD@host:port/db``) then
    lost everything from its scheme to its host: the host and the advice were gone."""
    import redis as redis_sync

    from _redis import RedisServer

    with RedisServer() as srv:
        redis_sync.Redis.from_url(srv.url).config_set("requirepass", "kq-s57-health-secret")
        url = f"redis://kq-s57-user@127.0.0.1:{srv.port}/0"
        queue = JobQueue("s57-health", redis=url)
        try:
            status = await queue.health_check()
        finally:
            await queue.close()
    assert not status.healthy
    error = status.error or ""
    assert "requires a password and none was given" in error, error
    assert "redis://USERNAME:PASSWORD@host:port/db" in error, error
    assert f"127.0.0.1:{srv.port}" in error, error
    assert "kq-s57-health-secret" not in error
