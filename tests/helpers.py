"""Small helpers shared by the behaviour tests.

* ``wait_until(cond, timeout)``: poll a condition (sync or async callable) until it is
  truthy, with a deadline; returns the truthy value or fails the test with a message.
* ``QueueFactory``: builds ``JobQueue`` objects with the test's backend and unique prefix
  and closes them all at the end of the test.
* ``EventLog``: records in-process events (``queue.on``) with their monotonic time.
* ``app_module(folder, source)``: an importable module written from ``source``, for CLI
  ``APP`` arguments (``module:queue``); forgotten again afterwards.
* ``in_forked_child(fn)``: what ``fn`` returns (or raises) in a forked child.
* ``health_cli(tmp_path, url, name)``: ``kitium-queue health --json`` on a queue: exit
  code and report.
* ``recording_worker(url, prefix, name, **options)``: a started queue whose processor of
  jobs ``work`` records their ids; its worker; closed afterwards.
* ``backlog_alert_rules()``: the monitoring section of one alert on ``queue_depth``,
  evaluated every 50 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from kitium_queue import EventData, JobQueue, JobStatus

__all__ = [
    "SAVING_SERVER_ARGS",
    "EventLog",
    "QueueFactory",
    "app_module",
    "backlog_alert_rules",
    "fail_saves",
    "mend_saves",
    "recording_worker",
    "wait_for_status",
    "wait_replica_online",
    "wait_until",
]


@contextlib.contextmanager
def app_module(folder: Path, source: str, stem: str = "kq_app") -> Iterator[str]:
    """Write ``source`` as a new module in ``folder``, put ``folder`` on ``sys.path`` and
    yield the module's name; both are undone afterwards."""
    module = f"{stem}_{uuid.uuid4().hex[:8]}"
    (folder / f"{module}.py").write_text(source)
    sys.path.insert(0, str(folder))
    try:
        yield module
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(module, None)


async def health_cli(tmp_path: Path, url: str, name: str, prefix: str = "kq") -> tuple[int, Any]:
    """Run ``kitium-queue health --json`` on a queue ``name`` at ``url`` (in a thread,
    from an app module written to ``tmp_path``): its exit code and its JSON report."""
    from click.testing import CliRunner

    from kitium_queue.cli import main as cli_main

    source = (
        "from kitium_queue import JobQueue\n"
        f"queue = JobQueue({name!r}, redis={url!r}, prefix={prefix!r})\n"
    )
    with app_module(tmp_path, source, f"kq_{name}") as module:
        got = await asyncio.to_thread(
            CliRunner().invoke, cli_main, ["health", f"{module}:queue", "--json"]
        )
    return got.exit_code, json.loads(got.stdout)


async def user_without(url: str, port: int, name: str, command: str) -> str:
    """Make an ACL user ``name`` (password ``pw``) allowed every command but ``command``
    on the server at ``url`` (as its default user); return its URL."""
    import redis.asyncio as aioredis

    admin = aioredis.from_url(url)
    try:
        await admin.acl_setuser(
            name, enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
            commands=["+@all", f"-{command}"],
        )  # fmt: skip
    finally:
        await admin.aclose()
    return f"redis://{name}:pw@127.0.0.1:{port}/0"


def in_forked_child(fn: Callable[[], str]) -> str:
    """Run ``fn`` in a forked child and return the text it returned (at most 4000
    bytes, UTF-8), or ``"raised <type>: <text>"``; the child never runs pytest's exit."""
    import os

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            try:
                said = fn()
            except BaseException as exc:
                said = f"raised {type(exc).__name__}: {exc}"
            os.write(write, said.encode()[:4000])
        finally:
            os._exit(0)
    os.close(write)
    try:
        return os.read(read, 4000).decode()
    finally:
        os.close(read)
        os.waitpid(pid, 0)


async def wait_until(
    cond: Callable[[], Any | Awaitable[Any]],
    timeout: float = 5.0,
    *,
    interval: float = 0.005,
    message: str | Callable[[], str] = "",
) -> Any:
    """Poll ``cond()`` until it returns something truthy; return that value.

    ``cond`` may be a plain or an async function. Fails with ``AssertionError`` (showing
    ``message`` and the last value seen) when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = cond()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(
                f"condition not met within {timeout:.2f} s: {text or cond!r} (last value: {last!r})"
            )
        await asyncio.sleep(interval)


def gated(queue: JobQueue, name: str = "w") -> tuple[asyncio.Event, list[str]]:
    """Register a processor for jobs named ``name`` on ``queue``: a job whose data has
    ``hold`` set waits for the returned gate; every job's id joins the returned list as
    it ends."""
    gate = asyncio.Event()
    done: list[str] = []

    async def run(job: Any) -> None:
        if job.data.get("hold"):
            await gate.wait()
        done.append(job.id)

    queue.process(name, run)
    return gate, done


async def all_completed(queue: JobQueue, ids: list[str]) -> bool:
    """Whether every job of ``ids`` is completed (a ``wait_until`` condition)."""
    for job_id in ids:
        info = await queue.get_job_status(job_id)
        if info is None or info.status is not JobStatus.COMPLETED:
            return False
    return True


@contextlib.asynccontextmanager
async def recording_worker(
    backend_url: str, prefix: str, name: str, **options: Any
) -> AsyncIterator[tuple[JobQueue, Any, list[str]]]:
    """A started ``JobQueue`` ``name`` (``options``: its other arguments) whose processor
    of jobs ``work`` appends each job's id to a list and returns 1: the queue, its
    worker and that list. The queue is closed afterwards."""
    q = JobQueue(name, redis=backend_url, prefix=prefix, **options)
    ran: list[str] = []

    async def work(job: Any) -> int:
        ran.append(job.id)
        return 1

    q.process("work", work)
    try:
        await q.start()
        assert q.worker is not None
        yield q, q.worker, ran
    finally:
        await q.close()


def backlog_alert_rules() -> dict[str, Any]:
    """``advanced=`` of a queue whose monitoring fires an alert ``backlog`` once a job
    waits (``queue_depth`` >= 1), evaluated every 50 ms under a 500 ms leader lease."""
    return {
        "monitoring": {
            "enabled": True,
            "evaluation_interval_ms": 50,
            "leader_lease_ms": 500,
            "alerts": [{"name": "backlog", "metric": "queue_depth", "threshold": 1}],
        }
    }


async def wait_for_status(
    queue: JobQueue, job_id: str, *statuses: JobStatus | str, timeout: float = 5.0
) -> Any:
    """Wait until job ``job_id`` is in one of ``statuses``; return its ``JobInfo``."""
    wanted = {JobStatus(s) for s in statuses}
    seen: list[Any] = [None]

    async def check() -> Any:
        info = await queue.get_job_status(job_id)
        seen[0] = info.status if info is not None else None
        return info if info is not None and info.status in wanted else None

    return await wait_until(
        check,
        timeout,
        message=lambda: f"job {job_id} to reach {sorted(s.value for s in wanted)}, is {seen[0]}",
    )


class QueueFactory:
    """Makes queues on one backend with one key prefix; ``aclose()`` closes them all."""

    def __init__(self, backend_url: str, prefix: str) -> None:
        self.backend_url = backend_url
        self.prefix = prefix
        self.queues: list[JobQueue] = []

    def __call__(self, name: str = "q", **kwargs: Any) -> JobQueue:
        kwargs.setdefault("redis", self.backend_url)
        kwargs.setdefault("prefix", self.prefix)
        queue = JobQueue(name, **kwargs)
        self.queues.append(queue)
        return queue

    async def aclose(self) -> None:
        # Stop workers first (so no job is mid-flight) with a short grace period.
        for q in self.queues:
            worker = q.worker
            if worker is not None and worker.running:
                await worker.stop(timeout_ms=500)
        for q in self.queues:
            await q.close()


class EventLog:
    """Collects ``EventData`` of the given events (``queue.on``), in arrival order."""

    def __init__(self, queue: JobQueue, events: Iterable[str]) -> None:
        self.items: list[tuple[float, EventData]] = []
        for event in events:
            queue.on(event, self._record)

    def _record(self, data: EventData) -> None:
        self.items.append((time.monotonic(), data))

    def of(self, event: str, job_id: str | None = None) -> list[EventData]:
        return [
            d for _, d in self.items if d.event == event and (job_id is None or d.job_id == job_id)
        ]

    def times(self, event: str, job_id: str | None = None) -> list[float]:
        return [
            t for t, d in self.items if d.event == event and (job_id is None or d.job_id == job_id)
        ]

    def names(self) -> list[str]:
        return [d.event for _, d in self.items]


def damage_key(client: Any, key: str, how: str = "string") -> None:
    """Overwrite ``key`` (blocking client) as a hand-made mistake would leave it: with
    another type (``string``, ``hash``, ``set``, ``list``), or any other ``how`` as the
    text of a string (garbage in a counter)."""
    client.delete(key)
    if how == "string":
        client.set(key, "x")
    elif how == "hash":
        client.hset(key, "x", "y")
    elif how == "set":
        client.sadd(key, "x")
    elif how == "list":
        client.rpush(key, "x")
    else:
        client.set(key, how)


def key_snapshot(client: Any, prefix: str) -> dict[bytes, bytes | None]:
    """Every key under ``prefix`` by its serialized value: equal means nothing was written."""
    return {k: client.dump(k) for k in sorted(client.scan_iter(match=f"{prefix}*", count=1000))}


def wait_replica_online(primary_port: int, replica_port: int, timeout: float = 20.0) -> None:
    """Block until the replica on ``replica_port`` is in sync with the primary on
    ``primary_port`` as *both* see it: the replica's link is up, the primary lists it
    ``online``, and it has acknowledged a write. After a diskless sync the primary lists
    the replica ``online`` at once but sends it the writes since only from the replica's
    first acknowledgement, up to a second later: a write made before that reached the
    replica late. The write here is a ``PUBLISH`` (replicated, no key), waited for with
    ``WAIT``. Only for a primary with this one replica."""
    import redis  # blocking client: called from fixtures and set-up code

    rep, pri = redis.Redis(port=replica_port), redis.Redis(port=primary_port)
    deadline = time.monotonic() + timeout
    try:
        while True:
            up = rep.info("replication").get("master_link_status") == "up"
            info = pri.info("replication")
            online = any(
                isinstance(v, dict)
                and int(v.get("port", 0)) == replica_port
                and v.get("state") == "online"
                for k, v in info.items()
                if k.startswith("slave")
            )
            if up and online:
                break
            assert time.monotonic() < deadline, f"replica did not sync: {info}"
            time.sleep(0.02)
        pri.publish("kq-test:replica-sync", "")
        left_ms = max(1, int((deadline - time.monotonic()) * 1000))
        acked = pri.execute_command("WAIT", 1, left_ms)
        assert acked >= 1, f"replica online but no write acknowledged within {timeout} s"
    finally:
        rep.close()
        pri.close()


#: Arguments of a server whose saves ``fail_saves`` can break: RDB rules (without one
#: Redis never refuses writes for a failed save) and ``CONFIG SET dir`` allowed.
SAVING_SERVER_ARGS = ("--save", "3600 1", "--enable-protected-configs", "yes")


def _bgsave_until(client: Any, status: str, timeout: float) -> None:
    client.bgsave()
    deadline = time.monotonic() + timeout
    while True:
        info = client.info("persistence")
        if info["rdb_last_bgsave_status"] == status and not info["rdb_bgsave_in_progress"]:
            return
        assert time.monotonic() < deadline, f"background save did not end {status}: {info}"
        time.sleep(0.02)


def fail_saves(port: int, timeout: float = 10.0) -> None:
    """Make the server on ``port`` (started with ``SAVING_SERVER_ARGS``) fail a background
    save, as a full or broken disk does: it then refuses every write, and ``PING``, with
    ``MISCONF`` until a save succeeds (``mend_saves``). Its directory is removed from
    under it (permissions would not stop root)."""
    import redis  # blocking client: fixtures and scenario drivers

    client = redis.Redis(port=port)
    gone = Path(tempfile.mkdtemp(prefix="kq-nosave-"))
    try:
        client.config_set("dir", str(gone))
        gone.rmdir()
        _bgsave_until(client, "err", timeout)
    finally:
        client.close()


def mend_saves(port: int, directory: Path, timeout: float = 10.0) -> None:
    """Give the server on ``port`` the existing ``directory`` and save once: it accepts
    writes again."""
    import redis

    client = redis.Redis(port=port)
    try:
        client.config_set("dir", str(directory))
        _bgsave_until(client, "ok", timeout)
    finally:
        client.close()
