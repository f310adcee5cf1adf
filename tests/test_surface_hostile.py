"""Hostile input and misbehaving user code at the queue's surface: the ``redis=`` setting,
constructor flags, event listeners, lifecycle subscribers, enqueue middleware, the outbox
read back from Redis, and OpenTelemetry tracing.

Each test pins one defect found in review: bad input is refused before anything connects
or is written, with a message that says what is wrong (and never a password); user code
that misbehaves (a listener, a subscriber, a middleware, a tracer) costs no job its
outcome and no other listener its call; one damaged entry never stops a reader.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import AsyncIterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import ConfigurationError, EventData, JobQueue, JobStatus
from kitium_queue.connection import ConnectionFactory
from kitium_queue.features.tracing import OPTION, OpenTelemetryTracing
from kitium_queue.outbox import DEFAULT_CAP, Outbox

SECRET = "Pw9Secr3tZ"


@pytest.fixture
async def make_queue(redis_url: str, prefix: str) -> AsyncIterator[QueueFactory]:
    """Queues on the real Redis (streams, scripts and tracing as deployed)."""
    factory = QueueFactory(redis_url, prefix)
    yield factory
    await factory.aclose()


def _all_text(exc: BaseException) -> str:
    parts = ["".join(traceback.format_exception(exc))]
    for chained in (exc.__cause__, exc.__context__):
        if chained is not None:
            parts.append(repr(chained))
    return "\n".join(parts)


# ------------------------------------------------------------------ the redis= setting


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (f"redis://:{SECRET}@127.0.0.1:6379/0?socket_timeout=nan", "socket_timeout=nan"),
        (f"redis://:{SECRET}@127.0.0.1:6379/0?socket_timeout=-1", "socket_timeout=-1"),
        (f"redis://:{SECRET}@127.0.0.1:6379/0?max_connections=-5", "max_connections=-5"),
        (f"redis://:{SECRET}@127.0.0.1:6379/0?max_connections=0", "max_connections=0"),
        (f"redis://:{SECRET}@127.0.0.1:6379/-1", "db=-1"),
        (f"redis://:{SECRET}@127.0.0.1:6379/0?db=-1", "db=-1"),
        (f"rediss://:{SECRET}@127.0.0.1:6379/0?ssl_cert_reqs=bogus", "ssl_cert_reqs='bogus'"),
        (f"redis+cluster://:{SECRET}@h:7000?socket_timeout=inf", "socket_timeout=inf"),
        (f"redis+cluster://:{SECRET}@h:7000?max_connections=-1", "max_connections=-1"),
        (f"redis+cluster://:{SECRET}@h:65536", "ports of 1-65535"),
        (f"redis+cluster://:{SECRET}@h:0", "ports of 1-65535"),
        (f"redis+sentinel://:{SECRET}@h:1/svc/-1", "invalid database"),
        ({"host": "127.0.0.1", "port": -1, "password": SECRET}, "port=-1"),
        ({"host": "127.0.0.1", "port": "abc", "password": SECRET}, "port='abc'"),
        ({"host": "127.0.0.1", "port": True}, "port=True"),
        ({"host": 5}, "host=5"),
        ({"host": "127.0.0.1", "db": "x"}, "db='x'"),
        ({"host": "127.0.0.1", "socket_timeout": float("nan")}, "socket_timeout=nan"),
        ({"host": "127.0.0.1", "socket_timeout": -1, "password": SECRET}, "socket_timeout=-1"),
        ({"host": "127.0.0.1", "tls": {"cert_reqs": "bogus"}}, "ssl_cert_reqs='bogus'"),
        ({"startup_nodes": [("h", "x")]}, "invalid cluster node address"),
        ({"sentinels": [("h", 99999)], "service_name": "s"}, "invalid sentinel address"),
    ],
)
def test_values_redis_py_fails_on_later_are_refused_at_construction(
    setting: Any, message: str
) -> None:
    """Each of these was accepted, then failed at the first connection with redis-py's
    bare ValueError/TypeError/RedisError (or not at all: a NaN timeout, port 0)."""
    with pytest.raises(ConfigurationError) as info:
        ConnectionFactory(setting)
    assert message in str(info.value)
    assert SECRET not in _all_text(info.value)


def test_an_unknown_url_option_is_refused_with_the_closest_names() -> None:
    """``?sockettimeout=1`` reached redis-py's connection as a keyword argument: every
    command then failed with ``TypeError: ... unexpected keyword argument``."""
    with pytest.raises(ConfigurationError, match="did you mean socket_timeout") as info:
        ConnectionFactory(f"redis://:{SECRET}@127.0.0.1:6379/0?sockettimeout=1")
    assert SECRET not in _all_text(info.value)
    with pytest.raises(ConfigurationError, match=r"need a rediss:// URL"):
        ConnectionFactory("redis://127.0.0.1:6379/0?ssl_ca_certs=/tmp/ca.pem")
    # Known options (TLS ones on rediss://) still pass.
    ConnectionFactory("rediss://127.0.0.1:6379/0?ssl_cert_reqs=none&socket_timeout=2")
    ConnectionFactory("unix:///tmp/r.sock?db=2&client_name=app")


def test_empty_node_lists_never_fall_back_to_localhost() -> None:
    """``startup_nodes=[]`` built a plain client to localhost:6379, silently."""
    with pytest.raises(ConfigurationError, match="startup_nodes is empty"):
        ConnectionFactory({"startup_nodes": []})
    with pytest.raises(ConfigurationError, match="startup_nodes must be a list"):
        ConnectionFactory({"startup_nodes": "h:7000"})
    with pytest.raises(ConfigurationError, match="sentinels is empty"):
        ConnectionFactory({"sentinels": [], "service_name": "mymaster"})


def test_a_tls_flag_that_is_not_a_bool_is_refused() -> None:
    """``tls="false"`` turned TLS on (``bool("false")`` is True)."""
    for flag in ("false", "yes", 1):
        with pytest.raises(ConfigurationError, match="tls must be True, False"):
            ConnectionFactory({"host": "127.0.0.1", "tls": flag})
    assert ConnectionFactory({"host": "h", "tls": False}).client is not None


def test_ipv6_node_addresses() -> None:
    """``[::1]`` without a port was refused and ``[::1`` read as host ``[:`` port 1."""
    f = ConnectionFactory({"startup_nodes": ["[::1]", "[fe80::2]:7001"]})
    assert f.describe() == "cluster ::1:6379,fe80::2:7001"
    for bad in ("redis+cluster://[::1", "redis+cluster://[::1]x", "redis+cluster://[]:7000"):
        with pytest.raises(ConfigurationError, match="invalid node address"):
            ConnectionFactory(bad)


# ------------------------------------------------------------------ constructor flags


def test_dlq_and_scheduler_flags_that_are_not_bools_are_refused() -> None:
    """``dlq={"enabled": "no"}`` dead-lettered jobs (``"no"`` is truthy); likewise
    ``worker={"scheduler": "off"}`` ran the scheduler."""
    with pytest.raises(ConfigurationError, match=r"dlq\.enabled must be True or False"):
        JobQueue("q", dlq={"enabled": "no"})
    with pytest.raises(ConfigurationError, match=r"worker\.scheduler must be True or False"):
        JobQueue("q", worker={"scheduler": "off"})
    with pytest.raises(ConfigurationError, match="notification_handler must be a function"):
        JobQueue("q", dlq={"notification_handler": "alert"})
    assert JobQueue("q", dlq={"enabled": False}).dlq.enabled is False


# ------------------------------------------------------------------ event listeners


async def test_a_listener_that_unsubscribes_itself_skips_no_other(
    make_queue: QueueFactory,
) -> None:
    """Removing a handler while handlers ran shifted the list: the next handler missed
    that event."""
    q = make_queue("off")
    calls: list[tuple[str, str | None]] = []

    def once(data: EventData) -> None:
        calls.append(("once", data.job_id))
        q.off("job-completed", once)

    def always(data: EventData) -> None:
        calls.append(("always", data.job_id))

    q.on("job-completed", once)
    q.on("job-completed", always)
    q.process("t", lambda job: None)
    first = await q.add_job("t", {})
    await q.start()
    await wait_until(lambda: ("always", first) in calls)
    second = await q.add_job("t", {})
    await wait_until(lambda: ("always", second) in calls)
    assert calls == [("once", first), ("always", first), ("always", second)]


def test_a_handler_that_is_not_callable_is_refused() -> None:
    """``queue.on(event, 42)`` was accepted; every event then logged a TypeError."""
    q = JobQueue("q")
    with pytest.raises(TypeError, match="must be a function taking the EventData"):
        q.on("job-completed", 42)  # type: ignore[arg-type]


class _Stop(BaseException):
    """Not an Exception: what a careless handler may raise."""


async def test_base_exceptions_from_listeners_and_subscribers_are_contained(
    make_queue: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler or subscriber raising a BaseException subclass (or a CancelledError from
    a plain function) escaped the hook loop: later hooks of the batch were not called,
    ``add_job`` raised after its job was written, and a ``started`` subscriber's
    CancelledError failed the run (the job was retried)."""
    q = make_queue("base")
    seen: dict[str, list[str]] = {"added": [], "completed": [], "after": [], "started": []}

    def added(data: EventData) -> None:
        seen["added"].append(str(data.job_id))
        raise _Stop()

    def completed(data: EventData) -> None:
        seen["completed"].append(str(data.job_id))
        raise asyncio.CancelledError()

    def after(data: EventData) -> None:
        seen["after"].append(str(data.job_id))

    class Subscriber:
        def started(self, queue: str, job: Any) -> None:
            seen["started"].append(job.id)
            raise asyncio.CancelledError()

        def finished(self, queue: str, job: Any, outcome: Any) -> None:
            raise _Stop()

    q.on("job-added", added)
    q.on("job-completed", completed)
    q.on("job-completed", after)
    q.subscribe(Subscriber())
    q.process("t", lambda job: job.data["i"])
    with caplog.at_level(logging.ERROR):
        ids = [await q.add_job("t", {"i": i}) for i in range(3)]  # never raises
        assert seen["added"] == ids
        await q.start()
        for jid in ids:
            info = await wait_for_status(q, jid, JobStatus.COMPLETED)
            assert info.attempts == 1
        await wait_until(lambda: sorted(seen["after"]) == sorted(ids))
    assert sorted(seen["completed"]) == sorted(ids) == sorted(seen["started"])
    assert q.worker is not None and q.worker.running


# ------------------------------------------------------------------ enqueue middleware


@pytest.mark.parametrize(
    ("returns", "said"),
    [
        (lambda n, d, o: None, "returned NoneType"),
        (lambda n, d, o: (n, d), "a tuple of 2 items"),
        (lambda n, d, o: "abc", "returned str"),
        (lambda n, d, o: (n, d, None), "options of type NoneType"),
        (lambda n, d, o: (n, d, "priority"), "options of type str"),
    ],
)
async def test_enqueue_middleware_returning_the_wrong_shape_is_named(
    make_queue: QueueFactory, returns: Any, said: str
) -> None:
    """A middleware returning None or a short tuple failed with Python's bare
    ``cannot unpack`` (or ``dictionary update sequence``) error, naming neither the
    middleware nor what it must return."""
    q = make_queue("mw")
    q.use_enqueue(returns)
    with pytest.raises(TypeError, match=f"enqueue middleware .*{said}.*job_name, data, options"):
        await q.add_job("t", {})
    # The item is named in a note (Python 3.11+) or, on 3.10, before the message.
    with pytest.raises(TypeError, match=r"(?s)(?=.*enqueue middleware)(?=.*add_jobs item 0)"):
        await q.add_jobs([("t", {})])
    assert (await q.get_stats()).waiting == 0  # nothing was written


# ------------------------------------------------------------------ the outbox


async def test_an_entry_that_is_not_utf8_does_not_stop_its_group(
    make_queue: QueueFactory,
) -> None:
    """A field name that is not UTF-8 (written by another client) made every ``read``
    raise UnicodeDecodeError: the consumer died, and the entry, pending again after a
    restart, stopped the whole group for good."""
    q = make_queue("ob")
    outbox = Outbox(q)
    await outbox.create_group("g")
    client = await q.client()
    await client.xadd(outbox.key, {b"t": b"\xff topic", b"\xff\xfe": b"\x00\xff"})
    good = await outbox.add("order.paid", b"42")
    consumer = outbox.consumer("g", "c1", block_ms=0)
    got = await consumer.read()
    assert [e.id for e in got][-1] == good and got[-1].payload == b"42"
    assert got[0].fields == {"\\xff\\xfe": b"\x00\xff"}
    assert await consumer.ack([e.id for e in got]) == 2


async def test_damaged_outbox_counters_and_dead_entries_are_read(
    make_queue: QueueFactory,
) -> None:
    """A cap or delivery count that is not a whole number (set by hand) made ``stats()``
    and ``dead()`` raise ValueError, and with them the housekeeping service's loop."""
    q = make_queue("obd")
    outbox = Outbox(q)
    client = await q.client()
    await outbox.add("x", b"1")
    await client.hset(q.keys.meta, "outbox_cap", "lots")
    await client.set(outbox.overflow_key, "nan")
    assert (await outbox.stats()).cap == DEFAULT_CAP  # as the Lua side reads it
    await client.hset(q.keys.meta, "outbox_cap", "2.5")
    st = await outbox.stats()
    assert (st.cap, st.overflow) == (3, 0)
    await client.xadd(outbox.dead_key, {"_id": "1-1", "_deliveries": "many", "t": "x"})
    await client.xadd(outbox.dead_key, {"_id": "1-2", "_deliveries": "4", "t": "y"})
    dead = await outbox.dead()
    assert [(d.entry.id, d.entry.deliveries) for d in dead] == [("1-1", 0), ("1-2", 4)]


# ------------------------------------------------------------------ tracing


class _Raising(SpanProcessor):
    def __init__(self, where: str) -> None:
        self.where = where

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        if self.where == "start":
            raise RuntimeError("exporter down")

    def on_end(self, span: Any) -> None:
        if self.where == "end":
            raise RuntimeError("exporter down")


@pytest.mark.parametrize("where", ["start", "end"])
async def test_a_tracer_that_raises_costs_no_job_its_add_or_its_outcome(
    make_queue: QueueFactory, where: str
) -> None:
    """A span processor raising in ``on_start`` made ``add_job`` raise (the job was not
    added); raising in ``on_end`` turned a completed run into a failure, so the job ran
    again."""
    provider = TracerProvider()
    provider.add_span_processor(_Raising(where))
    q = make_queue(f"tr{where}")
    OpenTelemetryTracing(q, tracer_provider=provider)
    runs: list[str] = []

    async def work(job: Any) -> str:
        runs.append(job.id)
        return "done"

    q.process("t", work)
    jid = await q.add_job("t", {})
    await q.start()
    info = await wait_for_status(q, jid, JobStatus.COMPLETED, JobStatus.DELAYED)
    assert info.status == JobStatus.COMPLETED and info.result == "done"
    assert runs == [jid] and info.attempts == 1


async def test_a_given_traceparent_the_worker_would_ignore_is_refused(
    make_queue: QueueFactory,
) -> None:
    """A caller's traceparent with zero ids or version ``ff`` was stored as valid, then
    ignored by every worker (its run started an unrelated trace)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    q = make_queue("tp")
    OpenTelemetryTracing(q, tracer_provider=provider)
    for bad in (
        "00-" + "0" * 32 + "-" + "1" * 16 + "-01",
        "00-" + "1" * 32 + "-" + "0" * 16 + "-01",
        "ff-" + "1" * 32 + "-" + "1" * 16 + "-01",
        "00-" + "1" * 32 + "-" + "1" * 16 + "-01\r\nX-Injected: 1",
    ):
        with pytest.raises(ConfigurationError, match="W3C traceparent"):
            await q.add_job("t", {}, traceparent=bad)
    good = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    info = await q.get_job_status(await q.add_job("t", {}, traceparent=good))
    assert info is not None and info.options[OPTION] == good
