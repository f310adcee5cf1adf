"""One API, several façades: ``api.QueueAPI`` is the single definition that ``JobQueue``
implements, ``PartitionedQueue`` and the sync clients are generated from, and a new
façade (a regional queue, here a fake one over two plain queues) reuses."""

from __future__ import annotations

import inspect
import pydoc
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from helpers import wait_until
from kitium_queue import (
    ConfigurationError,
    JobNotFoundError,
    JobQueue,
    JobStatus,
    PartitionedQueue,
    SyncJobQueue,
    SyncPartitionedQueue,
)
from kitium_queue.api import OPERATIONS, SINGLE_QUEUE_ONLY, Operation, QueueAPI, Route
from kitium_queue.facade import MultiQueue
from kitium_queue.sync import SyncQueueClient

ROOT = Path(__file__).resolve().parent.parent
ASYNC_FACADES = [JobQueue, PartitionedQueue]
SYNC_CLIENTS = [SyncJobQueue, SyncPartitionedQueue]


def _public_methods(cls: type) -> set[str]:
    return {
        name
        for name, value in inspect.getmembers(cls)
        if not name.startswith("_") and inspect.isfunction(value)
    }


def _compatible(declared: inspect.Signature, actual: inspect.Signature) -> str | None:
    """Why ``actual`` cannot be called as ``declared`` is, or None. It may add
    parameters with defaults (or ``*args``/``**kwargs``); every declared one must be
    there with the same kind and default. Annotations are mypy's business."""
    have = dict(actual.parameters)
    for name, p in list(declared.parameters.items())[1:]:  # self aside
        q = have.pop(name, None)
        if q is None:
            if p.kind is p.VAR_KEYWORD and any(x.kind is x.VAR_KEYWORD for x in have.values()):
                continue
            return f"no parameter {name!r}"
        if q.kind is not p.kind and not (
            p.kind is p.POSITIONAL_OR_KEYWORD and q.kind is q.POSITIONAL_ONLY
        ):
            return f"{name!r} is {q.kind.description}, declared {p.kind.description}"
        if q.default != p.default:
            return f"{name!r} defaults to {q.default!r}, declared {p.default!r}"
    extra = [
        n
        for n, q in list(have.items())[1:]
        if q.default is q.empty and q.kind not in (q.VAR_POSITIONAL, q.VAR_KEYWORD)
    ]
    return f"extra required parameters {extra}" if extra else None


# ---------------------------------------------------------------------- the definition
def test_every_public_method_of_jobqueue_is_classified() -> None:
    methods = _public_methods(JobQueue)
    unclassified = methods - set(OPERATIONS) - set(SINGLE_QUEUE_ONLY)
    assert not unclassified, (
        f"JobQueue methods neither in api.QueueAPI nor in api.SINGLE_QUEUE_ONLY: "
        f"{sorted(unclassified)}: declare them (with their route) or list them with a reason"
    )
    assert not set(OPERATIONS) & set(SINGLE_QUEUE_ONLY)
    stale = set(SINGLE_QUEUE_ONLY) - methods
    assert not stale, f"api.SINGLE_QUEUE_ONLY names what JobQueue no longer has: {stale}"
    assert all(reason for reason in SINGLE_QUEUE_ONLY.values())


def test_the_definition_covers_the_brief_api() -> None:
    for name in (
        "add_job",
        "add_jobs",
        "get_job_status",
        "get_job_logs",
        "get_jobs_by_status",
        "get_stats",
        "get_dlq_jobs",
        "health_check",
        "events",
        "pause",
        "resume",
        "drain",
        "clear",
        "retry_job",
        "remove_job",
        "cancel_job",
        "bulk_retry",
        "replay_dlq",
        "promote_delayed",
        "recover_stalled",
        "schedule_job",
        "schedule_every",
        "get_schedules",
        "on",
        "off",
        "process",
        "start",
        "run_worker",
        "close",
    ):
        assert name in OPERATIONS, name
    for op in OPERATIONS.values():
        assert op.doc, f"{op.name} has no docstring"
        assert next(iter(op.signature().parameters)) == "self"
        if op.route is Route.BY_ID:
            assert list(op.signature().parameters)[1] == "job_id", op.name
        if op.route is Route.BUDGET:
            assert "limit" in op.signature().parameters, op.name


@pytest.mark.parametrize("cls", ASYNC_FACADES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("op", list(OPERATIONS.values()), ids=lambda op: op.name)
def test_every_operation_is_on_every_async_facade(cls: type, op: Operation) -> None:
    method = getattr(cls, op.name, None)
    assert callable(method), f"{cls.__name__} has no {op.name}"
    problem = _compatible(op.signature(), inspect.signature(method))
    assert problem is None, f"{cls.__name__}.{op.name}: {problem}"
    if op.is_async:
        assert inspect.iscoroutinefunction(method), f"{cls.__name__}.{op.name} is not async"
    else:
        assert not inspect.iscoroutinefunction(method)
    assert inspect.getdoc(method), f"{cls.__name__}.{op.name} has no docstring"


@pytest.mark.parametrize("cls", SYNC_CLIENTS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("op", list(OPERATIONS.values()), ids=lambda op: op.name)
def test_every_blocking_operation_is_on_every_sync_client(cls: type, op: Operation) -> None:
    method = getattr(cls, op.name, None)
    if not op.blocking:
        # Workers, handlers, processors and the event stream need an event loop of the
        # caller's own; close() is the client's own.
        assert method is None or op.name == "close", f"{cls.__name__}.{op.name}"
        return
    assert callable(method), f"{cls.__name__} has no {op.name}"
    assert not inspect.iscoroutinefunction(method)
    assert inspect.signature(method) == op.signature()
    assert inspect.getdoc(method), f"{cls.__name__}.{op.name} has no docstring"


def test_generated_methods_show_their_signature_and_route_in_help() -> None:
    # The signature itself (pydoc lays a long one out over several lines from 3.13 on).
    sig = str(inspect.signature(PartitionedQueue.add_job))
    assert sig.startswith("(self, job_name: 'str', data: 'Any' = None")
    assert "partition_key: 'str | None' = None" in sig
    text = pydoc.render_doc(PartitionedQueue.add_job, renderer=pydoc.plaintext)
    assert "add_job(" in text and "partition_key: 'str | None' = None" in text
    assert "On PartitionedQueue: the job goes to the partition" in text
    assert PartitionedQueue.cancel_job.__qualname__ == "PartitionedQueue.cancel_job"
    assert "raises ``JobNotFoundError``" in (PartitionedQueue.cancel_job.__doc__ or "")
    stats_doc = PartitionedQueue.get_stats.__doc__ or ""
    assert "``is_paused`` when every partition is paused" in stats_doc
    sig = inspect.signature(SyncJobQueue.get_job_logs)
    assert str(sig) == "(self, job_id: 'str', start: 'int' = 0, end: 'int' = -1) -> 'list[str]'"
    assert "Blocking" in (SyncJobQueue.get_job_logs.__doc__ or "")
    whole = pydoc.render_doc(SyncPartitionedQueue, renderer=pydoc.plaintext)
    assert "get_stats(self) -> 'QueueStats'" in whole


async def test_unsupported_methods_raise_a_clear_error() -> None:
    pq = PartitionedQueue("nosched", partitions=2)
    try:
        with pytest.raises(ConfigurationError, match="schedules belong on a plain JobQueue"):
            await pq.schedule_job("report", {}, "0 2 * * *")
        with pytest.raises(TypeError):
            await pq.get_schedule()  # type: ignore[call-arg]  # a wrong call stays a TypeError
    finally:
        await pq.close()
    with (
        SyncPartitionedQueue("nosched", partitions=2) as spq,
        pytest.raises(ConfigurationError, match="not available on PartitionedQueue"),
    ):
        spq.get_schedules()


def test_a_class_that_misses_an_own_method_is_refused() -> None:
    with pytest.raises(TypeError, match="must define"):

        class Incomplete(MultiQueue[JobQueue]):
            start = QueueAPI.start  # the bare declaration: nothing implements it


# ---------------------------------------------------------------------- a third façade
REGIONS = ("eu", "us")


class TwoRegions(MultiQueue[JobQueue]):
    """What a regional queue would look like: one member queue per region, ids
    ``"<region>/<id>"``, jobs placed by ``home=`` (default: the first region)."""

    member_label = "region"
    member_key = "home"

    def __init__(self, name: str, *, redis: str, prefix: str) -> None:
        super().__init__(
            name, [JobQueue(f"{name}-{r}", redis=redis, prefix=prefix) for r in REGIONS]
        )

    def place(self, options: dict[str, Any]) -> int:
        home = options.pop("home", None) or REGIONS[0]
        if home not in REGIONS:
            raise ConfigurationError(f"unknown region {home!r}")
        return REGIONS.index(home)

    def parse_id(self, job_id: str) -> tuple[int, str] | None:
        region, sep, inner = job_id.partition("/") if isinstance(job_id, str) else ("", "", "")
        return (REGIONS.index(region), inner) if sep and inner and region in REGIONS else None

    def full_id(self, index: int, inner: str) -> str:
        return f"{REGIONS[index]}/{inner}"


@pytest.fixture
async def regions(redis_url: str, prefix: str) -> AsyncIterator[TwoRegions]:
    q = TwoRegions("geo", redis=redis_url, prefix=prefix)
    try:
        yield q
    finally:
        await q.close()


async def test_a_third_facade_built_from_the_definition(regions: TwoRegions) -> None:
    q = regions
    eu = await q.add_job("ship", {"n": 1})
    us = await q.add_job("ship", {"n": 2}, home="us", priority=5)
    later = await q.add_job("ship", {"n": 3}, {"home": "us", "delay": 60_000})
    assert eu.startswith("eu/") and us.startswith("us/") and later.startswith("us/")
    batch = await q.add_jobs([("ship", {"n": 4}), ("ship", {"n": 5}, {"home": "us"})])
    assert [b.split("/")[0] for b in batch] == ["eu", "us"]

    info = await q.get_job_status(us)
    assert info is not None and (info.id, info.data, info.priority) == (us, {"n": 2}, 5)
    inner = us.split("/", 1)[1]
    assert await q.get_job_status(inner) is None  # a bare id names no job of the façade
    with pytest.raises(JobNotFoundError, match="not a job id of TwoRegions"):
        await q.cancel_job(inner)

    stats = await q.get_stats()
    assert (stats.waiting, stats.delayed) == (4, 1)
    per_member = [await m.get_stats() for m in q.queues]
    assert [s.waiting for s in per_member] == [2, 2]
    waiting = await q.get_jobs_by_status(JobStatus.WAITING)
    assert waiting[0].id == us  # priority first, over both members
    assert sorted(j.id for j in waiting) == sorted([eu, us, *batch])
    # An offset applies to the merged order, not to each member.
    pages = [await q.get_jobs_by_status("waiting", limit=2, offset=o) for o in (0, 2, 4)]
    assert [[j.id for j in p] for p in pages] == [
        [j.id for j in waiting[:2]],
        [j.id for j in waiting[2:4]],
        [],
    ]
    with pytest.raises(ConfigurationError):
        await q.get_jobs_by_status("waiting", offset=-1)
    with pytest.raises(ConfigurationError, match="not available on TwoRegions"):
        await q.list_jobs("waiting")
    assert (await q.health_check()).healthy

    done: list[str] = []
    q.on("job-completed", lambda ev: done.append(ev.job_id))
    q.process("ship", lambda job: job.data["n"])
    assert await q.cancel_job(later) == "removed"
    await q.start(concurrency=2)  # each region's own worker
    await wait_until(lambda: len(done) == 4, 10)
    assert sorted(done) == sorted([eu, us, *batch])
    finished = await q.get_job_status(us)
    assert finished is not None and finished.status is JobStatus.COMPLETED
    assert finished.result == 2
    assert (await q.get_stats()).completed == 4
    with pytest.raises(ConfigurationError, match="not available on TwoRegions"):
        await q.schedule_every("tick", {}, 1000)


@pytest.mark.redis_only
def test_the_sync_client_serves_any_facade(redis_url: str, prefix: str) -> None:
    async def make() -> TwoRegions:
        return TwoRegions("geo", redis=redis_url, prefix=prefix)

    client = SyncQueueClient("geo", make)
    try:
        jid = client.add_job("ship", {"n": 1}, home="us")
        info = client.get_job_status(jid)
        assert jid.startswith("us/") and info is not None and info.id == jid
        assert client.get_stats().waiting == 1
        assert client.add_jobs(iter([("ship", 2), ("ship", 3)]))[0].startswith("eu/")
        assert client.drain() == 3
    finally:
        client.close()


# ---------------------------------------------------------------------- static typing
# Each line marked "# error" must be refused by mypy, each "# reveal: T" typed T, and
# no other line may be refused.
_TYPED_USE = """
from kitium_queue import JobQueue, PartitionedQueue, SyncJobQueue, SyncPartitionedQueue
from kitium_queue.api import QueueAPI

async def use(pq: PartitionedQueue, q: JobQueue) -> None:
    anyq: QueueAPI = pq
    anyq = q
    reveal_type(await pq.add_job("a", {}, partition_key="k"))  # reveal: str
    reveal_type(await pq.get_job_status("0:1"))  # reveal: kitium_queue.job.JobInfo | None
    await pq.get_job_logs("0:1", start="x")  # error
    await anyq.drain(True)  # error

def use_sync(s: SyncJobQueue, sp: SyncPartitionedQueue) -> None:
    reveal_type(s.add_jobs([("a", 1)]))  # reveal: list[str]
    reveal_type(sp.recover_stalled())  # reveal: tuple[list[str], list[str]]
    reveal_type(sp.get_schedule("s"))  # reveal: kitium_queue.features.schedules.Schedule | None
    s.get_stats(1)  # error
    sp.start()  # error
"""


@pytest.mark.skipif(
    shutil.which("mypy", path=str(Path(sys.executable).parent)) is None,
    reason="mypy is not installed",
)
def test_mypy_checks_calls_of_generated_methods(tmp_path: Path) -> None:
    src = tmp_path / "use_facades.py"
    src.write_text(_TYPED_USE)
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", str(src)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    ).stdout
    got: dict[int, list[str]] = {}
    for line in out.splitlines():
        _, number, message = line.split(":", 2)
        got.setdefault(int(number), []).append(message.strip().replace("builtins.", ""))
    for number, line in enumerate(_TYPED_USE.splitlines(), 1):
        said = [m for m in got.get(number, []) if not m.startswith('note: "')]
        errors = [m for m in said if m.startswith("error:")]
        if line.endswith("# error"):
            assert errors, f"mypy accepted line {number}: {line}\n{out}"
        else:
            assert not errors, f"mypy refused line {number}: {line}\n{out}"
        if "# reveal: " in line:
            want = line.split("# reveal: ")[1]
            assert f'note: Revealed type is "{want}"' in said, f"line {number}: {said}"
