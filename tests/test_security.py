"""Security (issue 4, item 10), against private redis-server processes on 127.0.0.1.

* No unsafe deserialization: no pickle / marshal / eval / yaml.load in the package
  (checked on the syntax tree, and ``loadstring`` etc. in the Lua scripts); a payload that
  *looks* like a pickle is plain data, and a real pickle planted in Redis is dead-lettered
  as undecodable without being run.
* Payloads are never logged: a secret marker in the payload (and in progress, results and
  job logs) appears in no log record on any path: success, retry, retry-later, failure to
  the DLQ, non-retryable, timeout, undecodable payload, unknown job name, lease lost
  (detected by renewal and by the fenced finish), stalled-job recovery, failing event and
  DLQ handlers, shutdown hand-back.
* Redis AUTH: a password in the URL or dict works; a wrong or missing one gives a short
  ``ConnectionUnavailableError`` that never contains a password. ACL users: a user
  limited to ``~kq:{myq}:*`` and exactly the commands in ``CORE_ACL_COMMANDS`` runs the
  whole API; a user without the keys or a command gets ``PermissionDeniedError``.
* TLS: ``rediss://...?ssl_ca_certs=`` and the dict forms run a queue end to end against a
  TLS-only server with a CA and certificate made for the test; a wrong CA, a missing CA
  and a plain-text client fail with a clear error.
* Secrets never written to Redis: after a run with credentials, no key or value holds the
  password, the user name or the URL.
* Size limits on what clients send (``kitium_queue.limits``): payload, job name,
  job_id / idempotency_key, options, progress, log lines, add_jobs chunking, error
  messages, retry reasons, tracebacks and results.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import logging
import pickle
import re
import shutil
import socket
import ssl
import subprocess
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis as redis_sync
import redis.asyncio

import kitium_queue
from _redis import _LIVE, RedisServer, RedisServerError
from helpers import wait_until
from kitium_queue import (
    ConfigurationError,
    ConnectionUnavailableError,
    JobQueue,
    JobStatus,
    NonRetryableError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RetryLater,
)
from kitium_queue.limits import (
    ENQUEUE_CHUNK_BYTES,
    ENQUEUE_CHUNK_JOBS,
    MAX_ERROR_CHARS,
    MAX_ID_LENGTH,
    MAX_JOB_NAME_LENGTH,
    MAX_LOG_LINE_CHARS,
    MAX_OPTIONS_BYTES,
    MAX_PROGRESS_BYTES,
    MAX_TRACEBACK_CHARS,
    clip,
)
from kitium_queue.scripts import SCRIPT_NAMES, ScriptRegistry

pytestmark = pytest.mark.redis_only

PACKAGE_DIR = Path(kitium_queue.__file__).resolve().parent

#: Every command the core (``JobQueue`` producer/query/admin API and ``Worker``) sends,
#: directly or from its Lua scripts. docs/RELIABILITY.md (Security: Redis ACL) lists the
#: same set; ``test_core_acl_list_covers_every_command_the_scripts_call`` keeps it honest.
CORE_ACL_COMMANDS = (
    # connection and scripts
    "ping", "script|load", "script|exists", "evalsha", "eval",
    # sent directly by the Python side (queries, the worker's wake-up, the scheduler's
    # change notifications and clock)
    "hgetall", "hget", "lrange", "llen", "zrange", "zrevrange", "bzpopmin", "zadd", "xread",
    "xrevrange", "xinfo|stream", "subscribe", "time",
    # explain(): a waiting job's place in line
    "zrank",
    # the workers' heartbeat records (presence.py: one MULTI/EXEC each)
    "multi", "exec", "zremrangebyscore",
    # called inside the scripts
    "get", "set", "incr", "incrby", "pexpire", "pttl", "del", "unlink", "exists", "type",
    "hset", "hmget", "hdel", "hincrby", "hexists", "rpush", "ltrim",
    "zrem", "zpopmin", "zscore", "zcard", "zrangebyscore", "xadd", "publish",
    # the server checks at connect and in health_check (docs/RELIABILITY.md)
    "info",
)  # fmt: skip
#: The rules of such a user for queue ``myq`` with the default prefix ``kq``.
CORE_ACL_RULES = (
    "~kq:{myq}:*", "resetchannels", "&kq:{myq}:*", "-@all",
    *(f"+{c}" for c in CORE_ACL_COMMANDS),
)  # fmt: skip


# ============================================================== helpers and fixtures


def _acl_setuser(client: redis_sync.Redis, user: str, password: str, *rules: str) -> None:
    client.execute_command("ACL", "SETUSER", user, "reset", "on", f">{password}", *rules)


def _records_text(records: list[logging.LogRecord]) -> list[str]:
    """Everything a log record could print: message, raw args, exception, stack."""
    out = []
    fmt = logging.Formatter()
    for r in records:
        parts = [r.getMessage(), repr(r.msg), repr(r.args)]
        if r.exc_info:
            parts.append(fmt.formatException(r.exc_info))
        if r.exc_text:
            parts.append(r.exc_text)
        if r.stack_info:
            parts.append(r.stack_info)
        out.append("\n".join(parts))
    return out


async def _delete_prefix(url: str, prefix: str) -> None:
    client = redis.asyncio.Redis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def _queue(name: str, **kwargs: Any) -> AsyncIterator[JobQueue]:
    q = JobQueue(name, **kwargs)
    try:
        yield q
    finally:
        worker = q.worker
        if worker is not None and worker.running:
            await worker.stop(timeout_ms=500)
        await q.close()


async def _end_to_end(q: JobQueue, n: int = 5) -> list[Any]:
    """Add ``n`` jobs, process them with a worker in this process, return the results."""
    done: dict[str, Any] = {}

    @q.process("echo")
    async def echo(job: Any) -> Any:
        await job.update_progress(50)
        await job.log("half way")
        return {"i": job.data["i"]}

    q.on("job-completed", lambda ev: done.__setitem__(ev.job_id, ev.result))
    ids = await q.add_jobs([("echo", {"i": i}) for i in range(n)])
    await q.start(concurrency=4)
    await wait_until(lambda: len(done) == n, 10, message=lambda: f"completed {sorted(done)}")
    stats = await q.get_stats()
    assert stats.completed == n and stats.waiting == 0 and stats.active == 0
    info = await q.get_job_status(ids[0])
    assert info is not None and info.status is JobStatus.COMPLETED and info.progress == 50
    assert await q.get_job_logs(ids[0]) == ["half way"]
    return [done[i] for i in ids]


# ============================================================== 1. no unsafe deserialization

_UNSAFE_MODULES = {
    "pickle", "_pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle",
    "jsonpickle", "yaml", "joblib",
}  # fmt: skip
_UNSAFE_CALLS = {"eval", "exec", "compile", "__import__"}
_UNSAFE_LUA = re.compile(r"\b(loadstring|load|dofile|loadfile|cmsgpack|struct\.unpack)\s*\(")


def _unsafe_uses(source: str, filename: str = "<src>") -> list[str]:
    """Imports of deserializers that can run code, and eval/exec-like calls, in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in _UNSAFE_MODULES:
                    found.append(f"{filename}:{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] in _UNSAFE_MODULES:
                found.append(f"{filename}:{node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            fn = node.func
            name = fn.id if isinstance(fn, ast.Name) else None
            if name in _UNSAFE_CALLS:
                found.append(f"{filename}:{node.lineno}: {name}(...)")
            if isinstance(fn, ast.Attribute) and fn.attr == "import_module":
                for arg in node.args[:1]:
                    if isinstance(arg, ast.Constant) and str(arg.value).split(".")[0] in (
                        _UNSAFE_MODULES
                    ):
                        found.append(f"{filename}:{node.lineno}: import_module({arg.value!r})")
    return found


def test_unsafe_use_detector_flags_what_it_should() -> None:
    bad = (
        "import pickle\nfrom yaml import load\nimport importlib\n"
        "x = eval('1')\nexec('y=1')\nimportlib.import_module('marshal')\n"
    )
    assert len(_unsafe_uses(bad)) == 5
    good = 'import orjson\n"""No pickle is used."""\nproc = create_subprocess_exec("x")\n'
    assert _unsafe_uses(good) == []
    assert _UNSAFE_LUA.search("local f = loadstring(ARGV[1])")
    assert not _UNSAFE_LUA.search("redis.call('EVALSHA', sha) -- payload load path")


def test_package_never_imports_pickle_marshal_yaml_nor_calls_eval() -> None:
    sources = sorted(PACKAGE_DIR.rglob("*.py"))
    assert len(sources) > 10, sources
    found: list[str] = []
    for path in sources:
        found += _unsafe_uses(path.read_text("utf-8"), str(path.relative_to(PACKAGE_DIR)))
    assert found == []


def test_lua_scripts_never_load_code_or_binary_formats() -> None:
    lua_dir = resources.files("kitium_queue").joinpath("lua")
    scripts = [p for p in lua_dir.iterdir() if p.name.endswith(".lua")]
    assert scripts
    for path in scripts:
        code = "\n".join(line.split("--", 1)[0] for line in path.read_text("utf-8").splitlines())
        assert not _UNSAFE_LUA.search(code), path.name


class _Planted:
    """Unpickling this object creates the file at ``path`` (a harmless stand-in for RCE)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def _planted_pickle(path: Path) -> bytes:
    return pickle.dumps(_Planted(path), protocol=pickle.HIGHEST_PROTOCOL)


def test_planted_pickle_really_would_run_code(tmp_path: Path) -> None:
    # Guards the next test: the planted bytes are a working exploit when unpickled.
    probe = tmp_path / "probe"
    pickle.loads(_planted_pickle(probe)).close()
    assert probe.exists()


async def test_pickle_bytes_are_plain_data_and_never_unpickled(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    marker = tmp_path / "unpickled"
    evil = _planted_pickle(marker)
    async with _queue("pkl", redis=redis_url, prefix=prefix, dlq={"enabled": True}) as q:
        seen: list[Any] = []

        @q.process("*")
        async def proc(job: Any) -> Any:
            seen.append(job.data)
            return job.data

        # 1. The pickle's bytes as a JSON string: stored and handed back verbatim.
        as_text = evil.decode("latin-1")
        plain = await q.add_job("blob", {"blob": as_text, "b64": "gASVKAAAAAAAAACMCGJ1aWx0"})
        # 2. A raw pickle planted in the job hash (someone with write access to Redis).
        planted = await q.add_job("blob", {"x": 1}, attempts=3)
        client = await q.client()
        await client.hset(q.keys.job(planted), "d", evil)
        # 3. A raw pickle planted as a finished job's result.
        done = await q.add_job("blob", {"y": 2})
        await q.start(concurrency=2)
        await wait_until(lambda: len(seen) == 2, 5)
        info = await wait_until(lambda: _status_is(q, planted, JobStatus.DLQ), 5)
        assert "undecodable payload" in (info.failed_reason or "")
        assert info.attempts == 1  # dead-lettered on first claim, not retried
        await wait_until(lambda: _status_is(q, done, JobStatus.COMPLETED), 5)
        await client.hset(q.keys.job(done), "r", evil)
        result_info = await q.get_job_status(done)
        assert result_info is not None and result_info.result is None

        plain_info = await wait_until(lambda: _status_is(q, plain, JobStatus.COMPLETED), 5)
        assert plain_info.result == {"blob": as_text, "b64": "gASVKAAAAAAAAACMCGJ1aWx0"}
        assert {"blob": as_text, "b64": "gASVKAAAAAAAAACMCGJ1aWx0"} in seen
        assert not marker.exists()
        # bytes themselves are refused at enqueue (JSON has no bytes), never pickled
        with pytest.raises(kitium_queue.SerializationError):
            await q.add_job("blob", evil)
    assert not marker.exists()


async def _status_is(q: JobQueue, job_id: str, status: JobStatus) -> Any:
    info = await q.get_job_status(job_id)
    return info if info is not None and info.status is status else None


# ============================================================== 2. payloads never logged

SECRET = f"kq-secret-{uuid.uuid4().hex}"


async def test_payload_never_appears_in_logs(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="kitium_queue")  # whatever an earlier test set
    payload = {"card": SECRET, "nested": [SECRET, {"k": SECRET}]}
    admin = redis.asyncio.Redis.from_url(redis_url)
    sync_admin = redis_sync.Redis.from_url(redis_url)
    release = asyncio.Event()
    attempts_seen: dict[str, int] = {}
    notified: list[str] = []

    def bad_dlq_handler(info: Any) -> None:
        notified.append(info.id)
        raise RuntimeError("dlq handler failed")

    async with _queue(
        "logs",
        redis=redis_url,
        prefix=prefix,
        settings={"lock_duration": 600, "lock_renew_time": 100, "max_stalled_interval": 100},
        dlq={"notification_handler": bad_dlq_handler},
        default_job_options={"backoff": {"type": "fixed", "delay": 10}},
    ) as q:

        def count(job: Any) -> int:
            attempts_seen[job.id] = job.attempts
            return int(job.attempts)

        @q.process("ok")
        async def ok(job: Any) -> Any:
            count(job)
            await job.update_progress({"at": SECRET})
            await job.log(f"processing {job.data['card']}")
            return job.data  # results are stored, never logged

        @q.process("flaky")
        async def flaky(job: Any) -> Any:
            if count(job) == 1:
                raise RuntimeError("transient failure")
            return "ok"

        deferred: set[str] = set()

        @q.process("later")
        async def later(job: Any) -> Any:
            count(job)
            if job.id not in deferred:
                deferred.add(job.id)
                raise RetryLater(10, "not yet")
            return "ok"

        @q.process("doomed")
        async def doomed(job: Any) -> Any:
            count(job)
            raise ValueError("permanent failure")

        @q.process("fatal")
        async def fatal(job: Any) -> Any:
            count(job)
            raise NonRetryableError("do not retry")

        @q.process("slow")
        async def slow(job: Any) -> Any:
            count(job)
            await asyncio.sleep(30)

        @q.process("held")  # lease lost while running: detected by renewal
        async def held(job: Any) -> Any:
            count(job)
            if job.stalls == 0:  # first run only; the rerun after recovery completes
                await admin.hset(q.keys.job(job.id), "lt", "stolen-token")
                await asyncio.sleep(30)
            return "second run"

        @q.process("stolen")  # lease lost just before the outcome: fenced finish
        async def stolen(job: Any) -> Any:
            count(job)
            if job.stalls == 0:
                # A blocking call on purpose: no lease renewal can run in between, so the
                # loss is found by the fenced finish, not by the renew loop.
                sync_admin.hset(q.keys.job(job.id), "lt", "stolen-token")
            return "recorded only on the second run"

        @q.process("hang")  # running at shutdown: handed back
        async def hang(job: Any) -> Any:
            count(job)
            await release.wait()

        def failing_handler(ev: Any) -> None:
            raise RuntimeError("event handler failed")

        q.on("job-completed", failing_handler)

        ids = {
            "ok": await q.add_job("ok", payload),
            "flaky": await q.add_job("flaky", payload, attempts=3),
            "later": await q.add_job("later", payload),
            "doomed": await q.add_job("doomed", payload, attempts=2),
            "fatal": await q.add_job("fatal", payload),
            "slow": await q.add_job("slow", payload, timeout=100, attempts=1),
            "undecodable": await q.add_job("ok", payload),
            "unknown": await q.add_job("no-such-processor", payload, attempts=1),
            "held": await q.add_job("held", payload),
            "stolen": await q.add_job("stolen", payload),
        }
        client = await q.client()
        await client.hset(q.keys.job(ids["undecodable"]), "d", b"\xff" + SECRET.encode())
        await q.start(concurrency=12)

        expected = {
            "ok": JobStatus.COMPLETED,
            "flaky": JobStatus.COMPLETED,
            "later": JobStatus.COMPLETED,
            "doomed": JobStatus.DLQ,
            "fatal": JobStatus.DLQ,
            "slow": JobStatus.DLQ,
            "undecodable": JobStatus.DLQ,
            "unknown": JobStatus.DLQ,
            "held": JobStatus.COMPLETED,
            "stolen": JobStatus.COMPLETED,
        }

        async def all_final() -> bool:
            for key, status in expected.items():
                if await _status_is(q, ids[key], status) is None:
                    return False
            return True

        await wait_until(all_final, 15, interval=0.05)
        hang_id = await q.add_job("hang", payload)
        await wait_until(lambda: hang_id in attempts_seen, 5)
        await q.worker.stop(timeout_ms=50)  # hands the hanging job back
        release.set()
        await q.emitter.drain()
        assert (await q.get_job_status(hang_id)).status is JobStatus.WAITING  # type: ignore[union-attr]
    await admin.aclose()
    sync_admin.close()
    await _delete_prefix(redis_url, prefix)

    # Each path really ran and logged something about its job ...
    messages = [r.getMessage() for r in caplog.records]

    def logged(pattern: str) -> bool:
        return any(re.search(pattern, m) for m in messages)

    assert logged(rf"job {ids['flaky']} failed \(attempt 1/3\), retrying")
    assert logged(rf"job {ids['doomed']} failed for good after 2 attempt")
    assert logged(rf"job {ids['fatal']} failed for good")
    assert logged(rf"job {ids['slow']} failed for good.*exceeded its timeout")
    assert logged(rf"job {ids['undecodable']} failed for good.*job data cannot be decoded")
    assert logged(rf"job {ids['unknown']} failed for good.*no processor registered")
    assert logged(rf"lease of job {ids['held']} expired.*abandoning")
    assert logged(rf"lease of job {ids['stolen']} was lost before its outcome")
    assert logged(
        rf"stalled \(lease expired\); requeued: .*({ids['held']}|{ids['stolen']})"
    )  # one line per recovery, naming the jobs
    assert logged("event handler .* failed")
    assert logged("dlq.notification_handler failed")
    assert logged("handed back")
    # ... and the secret is in none of the records, whatever their level.
    leaks = [t for t in _records_text(caplog.records) if SECRET in t]
    assert leaks == []


# ============================================================== 3. AUTH and ACL

PASSWORD = f"kq-pw-{uuid.uuid4().hex}"


@dataclass
class AuthServer:
    server: RedisServer
    admin: redis_sync.Redis

    @property
    def port(self) -> int:
        return self.server.port

    def url(self, user: str = "", password: str = PASSWORD, query: str = "") -> str:
        cred = f"{user}:{password}@" if password else ""
        return f"redis://{cred}127.0.0.1:{self.port}/0{query}"


@pytest.fixture(scope="module")
def auth_server() -> Iterator[AuthServer]:
    # Started without a password (the helper PINGs it unauthenticated), then locked.
    srv = RedisServer().start()
    try:
        with redis_sync.Redis(host="127.0.0.1", port=srv.port) as first:
            first.config_set("requirepass", PASSWORD)
        admin = redis_sync.Redis(host="127.0.0.1", port=srv.port, password=PASSWORD)
        try:
            admin.ping()
            yield AuthServer(srv, admin)
        finally:
            admin.close()
    finally:
        srv.close()


async def test_auth_password_in_url_and_dict_runs_a_queue(auth_server: AuthServer) -> None:
    async with _queue("auth-url", redis=auth_server.url()) as q:
        assert await _end_to_end(q) == [{"i": i} for i in range(5)]
        await q.clear(force=True)
    cfg = {"host": "127.0.0.1", "port": auth_server.port, "password": PASSWORD}
    async with _queue("auth-dict", redis=cfg) as q:
        assert await _end_to_end(q) == [{"i": i} for i in range(5)]
        await q.clear(force=True)


def _assert_clear(exc: BaseException, *secrets: str) -> str:
    text = str(exc)
    shown = "".join(traceback.format_exception(exc))
    for s in secrets:
        assert s not in shown, f"secret in error: {shown}"
    # The error is ours and says it all: no chained redis-py traceback to wade through.
    assert exc.__cause__ is None and exc.__suppress_context__, shown
    assert "redis/asyncio" not in shown and "redis/connection" not in shown, shown
    assert len(text) < 600, text
    return text


@pytest.mark.parametrize(
    "form", ["wrong-url", "wrong-query", "wrong-dict", "missing", "unknown-user"]
)
async def test_auth_failures_are_clear_and_never_show_a_password(
    auth_server: AuthServer, form: str
) -> None:
    wrong = f"not-{PASSWORD}"
    redis_opt: Any = {
        "wrong-url": auth_server.url(password=wrong),
        "wrong-query": auth_server.url(password="", query=f"?password={wrong}"),
        "wrong-dict": {"host": "127.0.0.1", "port": auth_server.port, "password": wrong},
        "missing": auth_server.url(password=""),
        "unknown-user": auth_server.url(user="nobody", password=wrong),
    }[form]
    async with _queue("auth-bad", redis=redis_opt) as q:
        with pytest.raises(ConnectionUnavailableError) as info:
            await q.add_job("j", {})
        text = _assert_clear(info.value, wrong, PASSWORD)
        expected = "Authentication required" if form == "missing" else "invalid username"
        # No password given: the message says one is needed, not that it is wrong.
        said = "requires a password and none was given" if form == "missing" else "refused"
        assert said in text and expected in text, text
        with pytest.raises(ConnectionUnavailableError):
            await q.start()
        health = await q.health_check()
        assert not health.healthy
        assert wrong not in str(health) and PASSWORD not in str(health)


@pytest.fixture
def acl_user(auth_server: AuthServer) -> Iterator[Callable[..., str]]:
    made: list[str] = []

    def make(*rules: str) -> str:
        user = f"u{uuid.uuid4().hex[:8]}"
        _acl_setuser(auth_server.admin, user, PASSWORD, *rules)
        made.append(user)
        return user

    auth_server.admin.execute_command("ACL", "LOG", "RESET")
    try:
        yield make
    finally:
        for user in made:
            auth_server.admin.execute_command("ACL", "DELUSER", user)
        for key in auth_server.admin.scan_iter(match="kq:{myq}:*", count=1000):
            auth_server.admin.delete(key)


async def _whole_api(q: JobQueue, admin: redis_sync.Redis, *, clear: bool = True) -> None:
    """Every producer, query, admin and worker path of the core, in one run."""
    runs: dict[str, int] = {}
    go = asyncio.Event()

    @q.process("j")
    async def proc(job: Any) -> Any:
        runs[job.id] = runs.get(job.id, 0) + 1
        await job.update_progress(runs[job.id])
        await job.log(f"run {runs[job.id]}")
        if job.data.get("fail") and runs[job.id] == 1:
            raise RuntimeError("first run fails")
        if job.data.get("later") and runs[job.id] == 1:
            raise RetryLater(10)
        if job.data.get("dead"):
            raise NonRetryableError("dead")
        if job.data.get("wait"):
            await go.wait()
        return runs[job.id]

    a = await q.add_job("j", {"fail": True}, backoff=10, idempotency_key="idem-1")
    assert await q.add_job("j", {}, idempotency_key="idem-1") == a
    b, c, d = await q.add_jobs(
        [("j", {"later": True}), ("j", {}, {"delay": 30, "priority": 5}), ("j", {"dead": True})]
    )
    admin.script_flush()  # forces the NOSCRIPT → EVAL path too
    await q.start(concurrency=4)
    for jid, status in ((a, "completed"), (b, "completed"), (c, "completed"), (d, "dlq")):
        await wait_until(lambda j=jid, s=status: _status_is(q, j, JobStatus(s)), 10)
    stats = await q.get_stats()
    assert (stats.completed, stats.dlq, stats.waiting, stats.active) == (3, 1, 0, 0)
    assert (await q.get_job_logs(a))[-1] == "run 2"
    assert [j.id for j in await q.get_dlq_jobs()] == [d]
    assert len(await q.get_jobs_by_status("completed")) == 3
    assert await q.health_check()
    assert await q.replay_dlq() == 1
    await wait_until(lambda: _status_is(q, d, JobStatus.DLQ), 5)
    await q.retry_job(a)
    await wait_until(lambda: _status_is(q, a, JobStatus.COMPLETED), 5)
    assert await q.bulk_retry("dlq") == 1
    await wait_until(lambda: _status_is(q, d, JobStatus.DLQ), 5)
    w = await q.add_job("j", {"wait": True})
    await wait_until(lambda: _status_is(q, w, JobStatus.ACTIVE), 5)
    assert await q.cancel_job(w) == "cancelling"
    go.set()
    await q.pause()
    assert (await q.get_stats()).is_paused
    e = await q.add_job("j", {})
    assert [j.id for j in await q.get_jobs_by_status("paused")] == [e]
    assert "queue-paused" in str(await q.explain(e))
    await q.resume()
    await wait_until(lambda: _status_is(q, e, JobStatus.COMPLETED), 5)
    f = await q.add_job("j", {}, delay=60_000)
    assert await q.promote_delayed() == 0
    assert await q.remove_job(f)
    await q.add_job("j", {}, delay=60_000)
    assert await q.drain() == 1
    assert await q.recover_stalled() == ([], [])
    names = [ev.event async for ev in q.events(last_id="0", block_ms=50, follow=False)]
    assert "job-completed" in names and "job-dlq" in names
    await q.worker.stop()
    if clear:
        await q.clear()


def _acl_denials(admin: redis_sync.Redis) -> list[Any]:
    # redis-py announces itself with CLIENT SETINFO (Redis 7.2+) and ignores a refusal.
    return [e for e in admin.acl_log() if e.get("object") != "client|setinfo"]


async def test_acl_user_with_the_documented_minimal_commands_runs_the_whole_api(
    auth_server: AuthServer, acl_user: Callable[..., str]
) -> None:
    user = acl_user(*CORE_ACL_RULES)
    async with _queue(
        "myq", redis=auth_server.url(user), settings={"max_stalled_interval": 200}
    ) as q:
        await _whole_api(q, auth_server.admin)
    assert _acl_denials(auth_server.admin) == []


async def test_acl_user_with_all_but_dangerous_commands_runs_the_whole_api(
    auth_server: AuthServer, acl_user: Callable[..., str]
) -> None:
    user = acl_user("~kq:{myq}:*", "resetchannels", "&kq:{myq}:*", "+@all", "-@dangerous", "+info")
    cfg = {"host": "127.0.0.1", "port": auth_server.port, "username": user, "password": PASSWORD}
    async with _queue("myq", redis=cfg) as q:
        await _whole_api(q, auth_server.admin)
    assert _acl_denials(auth_server.admin) == []


def test_core_acl_list_covers_every_command_the_scripts_call() -> None:
    registry = ScriptRegistry()
    used: set[str] = set()
    for name in SCRIPT_NAMES:  # sources with their fragments included
        source = registry.get(name).source
        used |= {c.lower() for c in re.findall(r"redis\.p?call\('(\w+)'", source)}
    assert {"hset", "zadd", "xadd"} <= used, used
    missing = used - set(CORE_ACL_COMMANDS)
    assert not missing, (
        f"core scripts call {sorted(missing)}: add them to CORE_ACL_COMMANDS and to the ACL "
        "list in docs/RELIABILITY.md"
    )


async def test_acl_user_without_the_queue_keys_gets_a_clear_error(
    auth_server: AuthServer, acl_user: Callable[..., str]
) -> None:
    user = acl_user("~other:*", "+@all", "-@dangerous")
    async with _queue("myq", redis=auth_server.url(user)) as q:
        with pytest.raises(PermissionDeniedError) as info:
            await q.add_job("j", {})
        text = _assert_permission_error(info.value)
        assert "no permissions to access one of the keys" in text
        with pytest.raises(PermissionDeniedError):
            await q.get_stats()


async def test_acl_user_missing_a_script_command_gets_a_clear_error(
    auth_server: AuthServer, acl_user: Callable[..., str]
) -> None:
    # Everything but XADD, which every transition script calls to write its event.
    user = acl_user(*(r for r in CORE_ACL_RULES if r != "+xadd"))
    async with _queue("myq", redis=auth_server.url(user)) as q:
        with pytest.raises(PermissionDeniedError) as info:
            await q.add_job("j", {})
        _assert_permission_error(info.value)


async def test_acl_user_that_cannot_load_scripts_runs_the_whole_api_with_eval(
    auth_server: AuthServer, acl_user: Callable[..., str]
) -> None:
    """Without ``SCRIPT`` (an ACL ``-script``, or a managed service that renamed it away)
    nothing is loaded at connect: each script goes with EVAL the first time, then
    EVALSHA. It used to fail every call with PermissionDeniedError."""
    user = acl_user("~kq:{myq}:*", "resetchannels", "&kq:{myq}:*", "+@all", "-script")
    async with _queue("myq", redis=auth_server.url(user)) as q:
        await _whole_api(q, auth_server.admin)
    denied = {e.get("object") for e in _acl_denials(auth_server.admin)}
    assert denied <= {"script|load", "script|exists"}, denied


async def test_a_server_without_the_script_command_runs_the_whole_api() -> None:
    with RedisServer("--rename-command", "SCRIPT", "") as srv:
        admin = redis_sync.Redis(host="127.0.0.1", port=srv.port)
        try:
            async with _queue("myq", redis=srv.url) as q:
                await _whole_api(q, _NoFlush(admin))
                assert (await q.health_check()).healthy
        finally:
            admin.close()


class _NoFlush:
    """An admin client for a server without ``SCRIPT``: its cache cannot be flushed."""

    def __init__(self, client: redis_sync.Redis) -> None:
        self._client = client

    def script_flush(self) -> None:
        return None


def _assert_permission_error(exc: BaseException) -> str:
    text = str(exc)
    assert isinstance(exc, PermissionError)
    assert "lack of permission" in text and "~<prefix>:{<queue>}:*" in text, text
    assert "RELIABILITY.md" in text
    assert PASSWORD not in "".join(traceback.format_exception(exc))
    return text


# ============================================================== 4. secrets never in Redis


async def _dump_everything(client: redis.asyncio.Redis) -> list[bytes]:
    """Every key name and every value in the database, whatever its type."""
    out: list[bytes] = []
    async for key in client.scan_iter(count=1000):
        out.append(key)
        kind = (await client.type(key)).decode()
        if kind == "string":
            out.append(await client.get(key) or b"")
        elif kind == "hash":
            for k, v in (await client.hgetall(key)).items():
                out += [k, v]
        elif kind == "list":
            out += await client.lrange(key, 0, -1)
        elif kind == "set":
            out += list(await client.smembers(key))
        elif kind == "zset":
            out += [m for m, _ in await client.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            for entry_id, fields in await client.xrange(key):
                out.append(entry_id)
                for k, v in fields.items():
                    out += [k, v]
        else:
            raise AssertionError(f"unexpected key type {kind} for {key!r}")
    return out


async def test_credentials_are_never_written_to_redis(
    auth_server: AuthServer, acl_user: Callable[..., str]
) -> None:
    user = acl_user("~kq:{myq}:*", "resetchannels", "&kq:{myq}:*", "+@all", "-@dangerous")
    url = auth_server.url(user)
    async with _queue("myq", redis=url, settings={"max_stalled_interval": 200}) as q:
        await _whole_api(q, auth_server.admin, clear=False)
        admin = redis.asyncio.Redis(host="127.0.0.1", port=auth_server.port, password=PASSWORD)
        try:
            values = await _dump_everything(admin)
        finally:
            await admin.aclose()
    assert len(values) > 50, "the run wrote too little to be a meaningful check"
    blob = b"\n".join(values)
    for secret in (PASSWORD, user, url, f"{user}:{PASSWORD}"):
        assert secret.encode() not in blob, f"{secret!r} found in Redis"


# ============================================================== 5. TLS


@dataclass
class Certs:
    dir: Path
    ca: Path
    cert: Path
    key: Path
    other_ca: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A throw-away CA, a server certificate it signs for 127.0.0.1/localhost, and an
    unrelated CA, made with the openssl CLI (EC keys: fast)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not found")
    d = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    # The extensions Python 3.13's default (VERIFY_X509_STRICT) asks for: a CA's key
    # usage, and a server certificate's key identifiers and usages.
    for name in ("ca", "other-ca"):
        _openssl("req", "-x509", *ec, "-keyout", f"{name}.key", "-out", f"{name}.crt",
                 "-days", "2", "-subj", f"/CN=kitium-queue test {name}",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)  # fmt: skip
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1",
             cwd=d)  # fmt: skip
    (d / "san.cnf").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid:always\n"
    )
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.cnf",
             cwd=d)  # fmt: skip
    return Certs(d, d / "ca.crt", d / "server.crt", d / "server.key", d / "other-ca.crt")


class TLSRedisServer(RedisServer):
    """A redis-server that listens on TLS only (``--port 0 --tls-port N``)."""

    def __init__(self, certs: Certs) -> None:
        super().__init__()
        self.certs = certs

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.certs.ca}"

    def command(self) -> list[str]:
        return [
            *super().command(),
            "--port", "0",
            "--tls-port", str(self.port),
            "--tls-cert-file", str(self.certs.cert),
            "--tls-key-file", str(self.certs.key),
            "--tls-ca-cert-file", str(self.certs.ca),
            "--tls-auth-clients", "no",
        ]  # fmt: skip

    def ping(self) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.certs.ca))
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw:  # noqa: SIM117
                with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                    sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                    return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _launch(self) -> None:
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.dir, start_new_session=True,
            )  # fmt: skip
        self._proc = proc
        _LIVE.add(proc)
        deadline = time.monotonic() + self.startup_timeout
        while not self.ping():
            if proc.poll() is not None:
                _LIVE.discard(proc)
                raise RedisServerError(
                    f"TLS redis-server exited with {proc.returncode}; log tail:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait(timeout=10)
                _LIVE.discard(proc)
                raise RedisServerError(f"TLS redis-server not ready:\n{self.log_tail()}")
            time.sleep(0.02)


@pytest.fixture(scope="module")
def tls_server(certs: Certs) -> Iterator[TLSRedisServer]:
    srv = TLSRedisServer(certs)
    srv.start()
    try:
        yield srv
    finally:
        srv.close()


def _tls_forms(srv: TLSRedisServer) -> dict[str, Any]:
    ca, port = str(srv.certs.ca), srv.port
    return {
        "url-query": srv.url,
        "dict-tls-ca_certs": {"host": "127.0.0.1", "port": port, "tls": {"ca_certs": ca}},
        "dict-tls-hostname": {
            "host": "localhost", "port": port,
            "tls": {"ca_certs": ca, "check_hostname": True, "cert_reqs": "required"},
        },
        "dict-ssl-flat": {"host": "127.0.0.1", "port": port, "ssl": True, "ssl_ca_certs": ca},
        "dict-url-and-tls": {"url": f"rediss://127.0.0.1:{port}/0", "tls": {"ca_certs": ca}},
    }  # fmt: skip


@pytest.mark.parametrize(
    "form",
    ["url-query", "dict-tls-ca_certs", "dict-tls-hostname", "dict-ssl-flat", "dict-url-and-tls"],
)
async def test_tls_forms_run_a_queue_end_to_end(tls_server: TLSRedisServer, form: str) -> None:
    name = f"tls-{form}"
    async with _queue(name, redis=_tls_forms(tls_server)[form]) as q:
        assert await _end_to_end(q) == [{"i": i} for i in range(5)]
        # The worker's blocking wake-up connection is TLS too: a new job starts at once.
        t0 = time.monotonic()
        jid = await q.add_job("echo", {"i": 99})
        await wait_until(lambda: _status_is(q, jid, JobStatus.COMPLETED), 5)
        assert time.monotonic() - t0 < 2.0
        await q.worker.stop()
        await q.clear()


@pytest.mark.parametrize("form", ["wrong-ca", "no-ca", "plain-text"])
async def test_tls_failures_are_clear(tls_server: TLSRedisServer, form: str) -> None:
    port = tls_server.port
    redis_opt: Any = {
        "wrong-ca": f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={tls_server.certs.other_ca}",
        "no-ca": {"host": "127.0.0.1", "port": port, "tls": True},
        # health_check_interval=0: with the default (30 s) redis-py nests its retry loops
        # for a connection reset during the first command, and this error takes ~45 s.
        "plain-text": {"host": "127.0.0.1", "port": port, "health_check_interval": 0},
    }[form]
    async with _queue("tls-bad", redis=redis_opt) as q:
        t0 = time.monotonic()
        with pytest.raises(ConnectionUnavailableError) as info:
            await q.add_job("j", {})
        assert time.monotonic() - t0 < 10
        text = _assert_clear(info.value)
        assert f"127.0.0.1:{port}" in text
        if form != "plain-text":
            assert "certificate verify failed" in text, text


def test_tls_dict_options_are_validated() -> None:
    with pytest.raises(ConfigurationError, match="ca_cert"):
        JobQueue("q", redis={"host": "h", "tls": {"ca_cert": "/x"}})
    plain = JobQueue("q", redis={"host": "127.0.0.1", "tls": False})
    assert "ssl" not in plain.connection._kwargs  # tls=False means no TLS
    with pytest.raises(ConfigurationError, match="rediss://"):
        JobQueue("q", redis={"url": "redis://127.0.0.1:6379/0", "tls": {"ca_certs": "/x"}})


async def test_tls_false_talks_plain_redis(redis_url: str, prefix: str) -> None:
    port = urlsplit(redis_url).port
    async with _queue("plain", redis={"host": "127.0.0.1", "port": port, "tls": False},
                      prefix=prefix) as q:  # fmt: skip
        await q.add_job("j", {})
        assert (await q.get_stats()).waiting == 1
    await _delete_prefix(redis_url, prefix)


# ============================================================== 6. size limits


@pytest.fixture
async def limits_queue(redis_url: str, prefix: str) -> AsyncIterator[JobQueue]:
    async with _queue("limits", redis=redis_url, prefix=prefix, max_payload_bytes=10_000) as q:
        yield q
    await _delete_prefix(redis_url, prefix)


async def _key_count(q: JobQueue) -> int:
    client = await q.client()
    return len([k async for k in client.scan_iter(match=f"{q.keys.base}*", count=1000)])


async def test_payload_limit_is_exact_and_nothing_is_written(limits_queue: JobQueue) -> None:
    q = limits_queue
    fits = "x" * (10_000 - 2)  # JSON quotes
    await q.add_job("j", fits)
    before = await _key_count(q)
    with pytest.raises(PayloadTooLargeError, match="10001 bytes, above max_payload_bytes=10000"):
        await q.add_job("j", fits + "x")
    # add_jobs validates everything before writing anything
    with pytest.raises(PayloadTooLargeError):
        await q.add_jobs([("j", {}), ("j", fits + "xx"), ("j", {})])
    assert await _key_count(q) == before
    assert (await q.get_stats()).waiting == 1


async def test_job_name_limit(limits_queue: JobQueue) -> None:
    q = limits_queue
    await q.add_job("n" * MAX_JOB_NAME_LENGTH, {})
    with pytest.raises(ConfigurationError, match=f"at most {MAX_JOB_NAME_LENGTH} characters"):
        await q.add_job("n" * (MAX_JOB_NAME_LENGTH + 1), {})
    with pytest.raises(ConfigurationError, match="line breaks"):
        await q.add_job("forged\nqueue x: job 1 completed", {})
    with pytest.raises(ConfigurationError) as info:
        await q.add_job("n" * 1_000_000, {})
    assert len(str(info.value)) < 400  # the error does not echo a huge value back


@pytest.mark.parametrize("option", ["job_id", "idempotency_key"])
async def test_id_and_idempotency_key_limits(limits_queue: JobQueue, option: str) -> None:
    q = limits_queue
    assert await q.add_job("j", {}, **{option: "k" * MAX_ID_LENGTH})
    with pytest.raises(ConfigurationError, match=f"at most {MAX_ID_LENGTH}") as info:
        await q.add_job("j", {}, **{option: "k" * 1_000_000})
    assert len(str(info.value)) < 400
    with pytest.raises(ConfigurationError, match="line breaks"):
        await q.add_job("j", {}, **{option: "a\nb"})


async def test_options_size_limit(limits_queue: JobQueue) -> None:
    q = limits_queue
    q.own_options("test-feature", ["tenant_id"])
    await q.add_job("j", {}, tenant_id="t" * 1000)
    with pytest.raises(ConfigurationError, match=f"above {MAX_OPTIONS_BYTES}"):
        await q.add_job("j", {}, tenant_id="t" * (MAX_OPTIONS_BYTES + 1))


async def test_add_jobs_is_chunked_by_count_and_bytes(redis_url: str, prefix: str) -> None:
    async with _queue("chunks", redis=redis_url, prefix=prefix) as q:
        sizes: list[int] = []
        real = q.scripts.call

        async def spy(client: Any, script: str, keys: Any, args: Any) -> Any:
            if script == "enqueue":
                # ARGV: prefix, now, events maxlen, idempotency window, 8 fields per job.
                sizes.append((len(args) - 4) // 8)
            return await real(client, script, keys, args)

        q.scripts.call = spy  # type: ignore[method-assign]
        ids = await q.add_jobs([("j", {"i": i}) for i in range(2 * ENQUEUE_CHUNK_JOBS + 500)])
        assert sizes == [ENQUEUE_CHUNK_JOBS, ENQUEUE_CHUNK_JOBS, 500]
        assert len(set(ids)) == len(ids) == 2500
        sizes.clear()
        big = "b" * (1_000_000 - 20)  # just under the 1 MiB payload limit
        n = 2 * ENQUEUE_CHUNK_BYTES // 1_000_000 + 2
        big_ids = await q.add_jobs([("j", {"i": i, "pad": big}) for i in range(n)])
        assert len(sizes) >= 3 and sum(sizes) == n
        assert all(s * 1_000_000 <= ENQUEUE_CHUNK_BYTES for s in sizes), sizes
        info = await q.get_job_status(big_ids[-1])
        assert info is not None and info.data["i"] == n - 1
        assert (await q.get_stats()).waiting == 2500 + n
    await _delete_prefix(redis_url, prefix)


async def _run_one(
    q: JobQueue, fn: Callable[[Any], Awaitable[Any]], final: JobStatus, **opts: Any
) -> Any:
    name = f"one-{len(q.processors)}"  # a new name: the worker picks it up when it runs
    q.process(name, fn)
    jid = await q.add_job(name, {}, **opts)
    if q.worker is None or not q.worker.running:
        await q.start(concurrency=2)
    return await wait_until(lambda: _status_is(q, jid, final), 10)


async def test_progress_and_log_line_limits(limits_queue: JobQueue) -> None:
    q = limits_queue
    errors: list[BaseException] = []

    async def proc(job: Any) -> str:
        await job.update_progress({"ok": "p" * 1000})
        try:
            await job.update_progress("p" * (MAX_PROGRESS_BYTES + 1))
        except PayloadTooLargeError as exc:
            errors.append(exc)
        await job.log("short line")
        await job.log("L" * 1_000_000)
        return "done"

    info = await _run_one(q, proc, JobStatus.COMPLETED)
    assert len(errors) == 1 and f"above {MAX_PROGRESS_BYTES}" in str(errors[0])
    assert info.progress == {"ok": "p" * 1000}  # the refused value was not stored
    lines = await q.get_job_logs(info.id)
    assert lines[0] == "short line"
    assert len(lines[1]) <= MAX_LOG_LINE_CHARS and lines[1].endswith("chars]")
    assert "truncated" in lines[1]


async def test_max_log_lines_per_job(redis_url: str, prefix: str) -> None:
    async with _queue("loglines", redis=redis_url, prefix=prefix, max_log_lines=5) as q:

        async def proc(job: Any) -> None:
            for i in range(50):
                await job.log(f"line {i}")

        info = await _run_one(q, proc, JobStatus.COMPLETED)
        assert await q.get_job_logs(info.id) == [f"line {i}" for i in range(45, 50)]
    await _delete_prefix(redis_url, prefix)


async def test_error_message_traceback_and_reason_limits(limits_queue: JobQueue) -> None:
    q = limits_queue

    def deep(n: int) -> None:
        if n == 0:
            raise ValueError("E" * 1_000_000)
        deep(n - 1)

    async def raises(job: Any) -> None:
        deep(200)

    info = await _run_one(q, raises, JobStatus.DLQ, attempts=1)
    assert len(info.failed_reason) <= MAX_ERROR_CHARS
    assert info.failed_reason.startswith("ValueError: EEE") and "truncated" in info.failed_reason
    assert len(info.stacktrace) <= MAX_TRACEBACK_CHARS
    assert "ValueError" in info.stacktrace  # the innermost part is the part kept

    async def non_retryable(job: Any) -> None:
        raise NonRetryableError("N" * 1_000_000)

    info = await _run_one(q, non_retryable, JobStatus.DLQ)
    assert len(info.failed_reason) <= MAX_ERROR_CHARS

    calls: list[int] = []

    async def retry_later(job: Any) -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RetryLater(1, reason="R" * 1_000_000)
        return "ok"

    info = await _run_one(q, retry_later, JobStatus.COMPLETED)
    events = [ev async for ev in q.events(last_id="0", block_ms=50, follow=False)]
    delayed = [ev for ev in events if ev.event == "job-delayed" and ev.job_id == info.id]
    assert delayed and len(delayed[0].fields["reason"]) <= MAX_ERROR_CHARS


async def test_result_limit(limits_queue: JobQueue) -> None:
    q = limits_queue

    async def huge(job: Any) -> str:
        return "r" * 20_000  # above this queue's max_payload_bytes=10000

    info = await _run_one(q, huge, JobStatus.DLQ)
    assert "above max_payload_bytes=10000" in (info.failed_reason or "")
    assert info.result is None


@pytest.mark.parametrize("size", [0, 50, 99, 100, 101, 10_000])
def test_clip(size: int) -> None:
    text = "x" * size
    out = clip(text, 100)
    assert len(out) <= 100
    if size <= 100:
        assert out == text
    else:
        kept = len(out) - len(out.lstrip("x"))
        cut = int(re.search(r"truncated (\d+) chars", out).group(1))  # type: ignore[union-attr]
        assert kept + cut == size and kept > 0
