"""``SyncJobQueue.add_job`` (and ``SyncPartitionedQueue.add_job``) served from the
caller's thread, against a real Redis.

On a queue that talks to one plain Redis server, a blocking ``add_job`` runs the enqueue
script over a blocking connection of its own (``kitium_queue.blocking``) instead
of handing the call to the client's event-loop thread and waiting for it there. These
tests check that it is the same ``add_job``: same records, duplicates, refusals and
errors; that its hooks still run, on the loop thread, in order; that queues with enqueue
middleware, a write barrier or tracing keep the loop-thread path; and that the blocking
connection survives what a server does to it (script cache flushed, restart, a reply
past its deadline, killed under load from many threads) without a reply ever reaching
the wrong call and without losing an acknowledged job.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

import kitium_queue.sync as sync_mod
from _redis import RedisServer
from kitium_queue import (
    ConfigurationError,
    JobRefusedError,
    JobStatus,
    PayloadTooLargeError,
    SerializationError,
    SyncJobQueue,
    SyncPartitionedQueue,
    WriteRefusedError,
)
from kitium_queue.blocking import BlockingScripts
from kitium_queue.features.compression import CompressionCodec
from kitium_queue.features.groups import FIFOQueueManager

pytestmark = pytest.mark.redis_only


@pytest.fixture
def server(debug_server: RedisServer) -> RedisServer:
    # A private server (conftest): it is flushed, restarted, put to sleep and killed.
    return debug_server


@pytest.fixture
def admin(server: RedisServer) -> Iterator[redis.Redis]:
    """A blocking client of the private server, for what the test does to it."""
    client = redis.Redis.from_url(server.url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def direct_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the scripts run through ``call_blocking`` (the caller-thread path)."""
    calls: list[str] = []
    real = BlockingScripts.call

    def spy(self: BlockingScripts, name: str, keys: Any, args: Any, registry: Any = None) -> Any:
        calls.append(name)
        return real(self, name, keys, args, registry)

    monkeypatch.setattr(BlockingScripts, "call", spy)
    return calls


@pytest.fixture
def queue(server: RedisServer, prefix: str) -> Iterator[SyncJobQueue]:
    q = SyncJobQueue("direct", redis=server.url, prefix=prefix)
    try:
        yield q
    finally:
        q.close()


def _stored(q: SyncJobQueue | SyncPartitionedQueue, jid: str, name: str, data: Any) -> None:
    """Job ``jid`` is in Redis as added: the id this add got back was its own reply."""
    info = q.get_job_status(jid)
    assert info is not None, jid
    assert (info.name, info.data) == (name, data)


def test_add_job_runs_in_the_callers_thread(queue: SyncJobQueue, direct_calls: list[str]) -> None:
    loop_thread = queue._thread
    seen: list[threading.Thread] = []
    real = queue._call

    def counting_call(coro: Any) -> Any:
        seen.append(threading.current_thread())
        return real(coro)

    queue.add_job("warm-up")  # the first use connects through the loop thread
    queue._call = counting_call  # type: ignore[method-assign]
    ids = [queue.add_job("n", {"i": i}) for i in range(20)]
    assert direct_calls.count("enqueue") == 21
    assert seen == [], "add_job handed a call to the loop thread"
    assert loop_thread.is_alive()
    queue._call = real  # type: ignore[method-assign]
    for i, jid in enumerate(ids):
        _stored(queue, jid, "n", {"i": i})
    assert len(set(ids)) == 20


def test_same_records_options_and_duplicates(queue: SyncJobQueue, direct_calls: list[str]) -> None:
    jid = queue.add_job("mail", {"to": "a@b.c"}, attempts=4, priority=9, job_id="custom-1")
    assert jid == "custom-1"
    detail = queue.get_job_detail(jid)
    assert detail is not None
    assert detail.status == JobStatus.WAITING and detail.priority == 9
    assert detail.max_attempts == 4
    # The same job_id: the existing id back, nothing written.
    assert queue.add_job("mail", {"to": "other"}, job_id="custom-1") == "custom-1"
    _stored(queue, "custom-1", "mail", {"to": "a@b.c"})
    a = queue.add_job("pay", {"n": 1}, idempotency_key="order-7")
    assert queue.add_job("pay", {"n": 2}, idempotency_key="order-7") == a
    _stored(queue, a, "pay", {"n": 1})
    later = queue.add_job("later", None, delay=60_000)
    assert queue.get_job_status(later).status == JobStatus.DELAYED  # type: ignore[union-attr]
    assert queue.get_stats().waiting == 2
    assert direct_calls.count("enqueue") == 5


def test_bad_input_fails_alone_and_writes_nothing(
    queue: SyncJobQueue, direct_calls: list[str]
) -> None:
    queue.add_job("ok")
    bad: list[tuple[tuple[Any, ...], dict[str, Any], type[Exception]]] = [
        (("n", {"x": float("nan")}), {}, SerializationError),
        (("n", {"s": "\ud800"}), {}, SerializationError),
        (("n", object()), {}, SerializationError),
        (("\ud800",), {}, ConfigurationError),
        (("n\x00",), {}, ConfigurationError),
        (("n",), {"attempts": float("inf")}, ConfigurationError),
        (("n",), {"priority": 10**30}, ConfigurationError),
        (("n",), {"delay": -1}, ConfigurationError),
        (("n",), {"not_an_option": 1}, ConfigurationError),
        (("n", "x" * 2_000_000), {}, PayloadTooLargeError),
    ]
    for args, kwargs, error in bad:
        with pytest.raises(error):
            queue.add_job(*args, **kwargs)
    # Each was refused before its script call; the queue holds only the good job.
    assert direct_calls.count("enqueue") == 1
    assert queue.get_stats().waiting == 1
    assert queue.add_job("ok-again") != ""


def test_feature_refusal_and_server_errors(
    admin: redis.Redis, queue: SyncJobQueue, direct_calls: list[str]
) -> None:
    fifo = FIFOQueueManager(queue.queue)
    queue._call(fifo.set_group({"group_id": "g", "max_group_size": 2}))
    first = queue.add_job("n", 1, message_group_id="g")
    queue.add_job("n", 2, message_group_id="g")
    with pytest.raises(JobRefusedError, match="message group g is full"):
        queue.add_job("n", 3, message_group_id="g")
    assert direct_calls.count("enqueue") == 3  # the groups feature needs no middleware
    _stored(queue, first, "n", 1)
    # A server that refuses writes: the error names the cause, nothing is written.
    admin.config_set("maxmemory", 1)
    try:
        with pytest.raises(WriteRefusedError, match=r"(?i)out of memory"):
            queue.add_job("n", "too much")
    finally:
        admin.config_set("maxmemory", 0)
    stats = queue.get_stats()
    assert stats.waiting + stats.pending == 2  # the group's second job waits its turn


def test_hooks_run_on_the_loop_thread_in_order(
    queue: SyncJobQueue, direct_calls: list[str]
) -> None:
    heard: list[tuple[str, threading.Thread]] = []
    queue.queue.on("job-added", lambda e: heard.append((e.job_id, threading.current_thread())))
    ids = [queue.add_job("n", i) for i in range(29)]
    ids.append(queue.add_job("n", "chosen", job_id="chosen-1"))
    assert queue.add_job("n", "dup", job_id="chosen-1") == "chosen-1"  # no job-added
    deadline = time.monotonic() + 5
    while len(heard) < 30 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert [jid for jid, _ in heard] == ids[:30]
    assert {t for _, t in heard} == {queue._thread}
    assert direct_calls.count("enqueue") == 31


def test_close_runs_the_hooks_still_pending(server: RedisServer, prefix: str) -> None:
    heard: list[str] = []
    q = SyncJobQueue("direct", redis=server.url, prefix=prefix)
    q.queue.on("job-added", lambda e: heard.append(e.job_id))
    sync_mod_delay = sync_mod.ANNOUNCE_DELAY_S
    try:
        sync_mod.ANNOUNCE_DELAY_S = 60.0  # the hooks would run a minute later
        jid = q.add_job("n")
    finally:
        sync_mod.ANNOUNCE_DELAY_S = sync_mod_delay
        q.close()
    assert heard == [jid]


def test_middleware_keeps_the_loop_thread_path(
    queue: SyncJobQueue, direct_calls: list[str]
) -> None:
    def tag(name: str, data: Any, opts: dict[str, Any]) -> tuple[str, Any, dict[str, Any]]:
        return name, {"tagged": data}, opts

    queue.add_job("before", 1)
    queue.queue.use_enqueue(tag)
    jid = queue.add_job("after", 2)
    assert direct_calls.count("enqueue") == 1
    _stored(queue, jid, "after", {"tagged": 2})


def test_codecs_run_in_many_callers_threads_at_once(
    server: RedisServer, prefix: str, direct_calls: list[str]
) -> None:
    # A codec runs in each caller's thread now: the compression codec keeps a context
    # per thread. Every payload comes back whole, under its own id.
    codec = CompressionCodec(algorithm="zlib", threshold=64)
    with SyncJobQueue("direct", redis=server.url, prefix=prefix, codecs=[codec]) as q:

        def produce(w: int) -> list[tuple[str, dict[str, Any]]]:
            out = []
            for i in range(40):
                data = {"w": w, "i": i, "text": f"{w}-{i} " * (50 + i)}
                out.append((q.add_job("n", data), data))
            return out

        with ThreadPoolExecutor(6) as pool:
            added = [x for batch in pool.map(produce, range(6)) for x in batch]
        assert codec.stats().compressed == 240
        for jid, data in added:
            _stored(q, jid, "n", data)
    assert direct_calls.count("enqueue") == 240


@pytest.mark.parametrize("form", ["unix", "dict"])
def test_other_connection_forms(prefix: str, form: str, direct_calls: list[str]) -> None:
    # A unix socket, and a dict of options instead of a URL: the blocking pool is built
    # from the same settings as the asyncio client.
    sock = f"/tmp/kq-direct-{uuid.uuid4().hex[:8]}.sock"
    srv = RedisServer("--unixsocket", sock, "--unixsocketperm", "700").start()
    target: Any = (
        f"unix://{sock}" if form == "unix" else {"host": "127.0.0.1", "port": srv.port, "db": 3}
    )
    try:
        with SyncJobQueue("direct", redis=target, prefix=prefix) as q:
            ids = [q.add_job("n", i) for i in range(5)]
            for i, jid in enumerate(ids):
                _stored(q, jid, "n", i)
        if form == "dict":  # in the database the options named
            admin = redis.Redis(port=srv.port, db=3)
            assert admin.dbsize() > 0
            admin.close()
    finally:
        srv.close()
    assert direct_calls.count("enqueue") == 5


def test_script_cache_flushed(
    admin: redis.Redis, queue: SyncJobQueue, direct_calls: list[str]
) -> None:
    queue.add_job("n", 0)
    admin.script_flush()
    _stored(queue, queue.add_job("n", 1), "n", 1)  # NOSCRIPT -> EVAL
    _stored(queue, queue.add_job("n", 2), "n", 2)  # cached again by that EVAL
    assert admin.info("commandstats")["cmdstat_eval"]["calls"] == 1
    assert direct_calls.count("enqueue") == 3


def test_server_restart_and_down(
    server: RedisServer, queue: SyncJobQueue, direct_calls: list[str]
) -> None:
    queue.add_job("n", 0)
    server.restart()  # the kept connection is closed by the old server (no persistence)
    _stored(queue, queue.add_job("n", 1), "n", 1)
    server.stop()
    with pytest.raises((RedisConnectionError, OSError)):
        queue.add_job("n", 2)
    server.restart()  # the same port
    _stored(queue, queue.add_job("n", 3), "n", 3)
    assert direct_calls.count("enqueue") == 4


def test_reply_past_its_deadline(
    server: RedisServer,
    admin: redis.Redis,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    direct_calls: list[str],
) -> None:
    monkeypatch.setattr(sync_mod, "REPLY_TIMEOUT_S", 0.3)
    with SyncJobQueue("direct", redis=server.url, prefix=prefix) as q:
        q.add_job("n", 0)
        sleeper = threading.Thread(target=lambda: admin.execute_command("DEBUG", "SLEEP", 1))
        sleeper.start()
        time.sleep(0.1)
        try:
            with pytest.raises(RedisTimeoutError):
                q.add_job("late", "unknown")  # may or may not be written: its reply is lost
        finally:
            sleeper.join()
        # The next call reads its own reply, not the late one's.
        for i in range(5):
            _stored(q, q.add_job("n", {"after": i}), "n", {"after": i})
    assert direct_calls.count("enqueue") == 7


def test_threads_and_a_killed_server_lose_no_acknowledged_job(
    prefix: str, direct_calls: list[str]
) -> None:
    """Chaos: 6 threads add jobs while the server is killed (SIGKILL) and restarted
    twice. Every id an add returned is stored with that add's own data; adds that raised
    are the only ones allowed to be missing."""
    # appendfsync always: a job acknowledged before the kill must survive it.
    srv = RedisServer("--appendonly", "yes", "--appendfsync", "always").start()
    try:
        with SyncJobQueue("direct", redis=srv.url, prefix=prefix) as q:
            q.add_job("warm-up")
            acked = _add_through_kills(
                srv, 6, 2, lambda w, i: q.add_job("n", {"w": w, "i": i}), min_acked=100
            )
            for jid, (w, i) in acked.items():
                _stored(q, jid, "n", {"w": w, "i": i})
    finally:
        srv.close()
    assert direct_calls.count("enqueue") >= len(acked)


def _add_through_kills(
    srv: RedisServer,
    threads: int,
    kills: int,
    add: Callable[[int, int], str],
    min_acked: int = 50,
) -> dict[str, tuple[int, int]]:
    """``threads`` threads call ``add(thread, i)`` (i = 0, 1, ...) while ``srv`` is
    SIGKILLed and restarted ``kills`` times; returns each id an add returned with its
    (thread, i). Fails unless the kills failed some adds and more than ``min_acked``
    were acknowledged."""
    acked: dict[str, tuple[int, int]] = {}
    failed = [0]
    lock = threading.Lock()
    stop = threading.Event()

    def produce(worker: int) -> None:
        i = 0
        while not stop.is_set():
            try:
                jid = add(worker, i)
            except (RedisConnectionError, RedisTimeoutError, OSError):
                with lock:
                    failed[0] += 1
                time.sleep(0.01)
            else:
                with lock:
                    assert jid not in acked, "one id given to two adds"
                    acked[jid] = (worker, i)
            i += 1

    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(produce, w) for w in range(threads)]
        for _ in range(kills):
            time.sleep(0.4)
            srv.kill()
            time.sleep(0.2)
            srv.restart()
        time.sleep(0.4)
        stop.set()
        for f in futures:
            f.result(30)
    assert failed[0] > 0, "the kills should have failed some adds"
    assert len(acked) > min_acked
    return acked


# ---------------------------------------------------------------------- partitioned


@pytest.fixture
def pqueue(server: RedisServer, prefix: str) -> Iterator[SyncPartitionedQueue]:
    q = SyncPartitionedQueue("pdirect", partitions=4, redis=server.url, prefix=prefix)
    try:
        yield q
    finally:
        q.close()


def _part(q: SyncPartitionedQueue, full_id: str) -> int:
    parsed = q.parse_id(full_id)
    assert parsed is not None, full_id
    return parsed[0]


def _warm(q: SyncPartitionedQueue) -> None:
    """One job on every partition: the first use of each connects through the loop."""
    for p in range(q.partitions):
        key = next(f"k{n}" for n in range(1000) if q.partition_of(f"k{n}") == p)
        q.add_job("warm-up", partition_key=key)


def test_partitioned_add_job_runs_in_the_callers_thread(
    pqueue: SyncPartitionedQueue, direct_calls: list[str]
) -> None:
    _warm(pqueue)
    seen: list[Any] = []
    real = pqueue._call

    def counting_call(coro: Any) -> Any:
        seen.append(coro)
        return real(coro)

    pqueue._call = counting_call  # type: ignore[method-assign]
    ids = [pqueue.add_job("n", {"i": i}) for i in range(20)]
    keyed = [pqueue.add_job("k", {"c": c}, partition_key=f"customer-{c}") for c in range(8)]
    pqueue._call = real  # type: ignore[method-assign]
    assert seen == [], "add_job handed a call to the loop thread"
    assert direct_calls.count("enqueue") == 4 + 28
    # Round-robin spreads over every partition; a key lands on its own partition.
    assert {_part(pqueue, j) for j in ids} == {0, 1, 2, 3}
    for c, jid in enumerate(keyed):
        assert _part(pqueue, jid) == pqueue.partition_of(f"customer-{c}")
        _stored(pqueue, jid, "k", {"c": c})
    for i, jid in enumerate(ids):
        _stored(pqueue, jid, "n", {"i": i})
    assert pqueue.get_stats().waiting == 32


def test_partitioned_placement_and_duplicates_as_on_the_loop(
    pqueue: SyncPartitionedQueue, direct_calls: list[str]
) -> None:
    # The key inside options wins over the keyword, as in PartitionedQueue.add_job.
    a = pqueue.add_job("n", 1, {"partition_key": "alpha"}, partition_key="beta")
    assert _part(pqueue, a) == pqueue.partition_of("alpha")
    first = pqueue.add_job("pay", {"n": 1}, idempotency_key="order-7")
    assert pqueue.add_job("pay", {"n": 2}, idempotency_key="order-7") == first
    _stored(pqueue, first, "pay", {"n": 1})
    chosen = pqueue.add_job("mail", None, job_id="inv-4")
    assert chosen == f"{pqueue.partition_of('inv-4')}:inv-4"
    assert pqueue.add_job("mail", "again", job_id="inv-4") == chosen
    calls = direct_calls.count("enqueue")
    before = pqueue.get_stats().waiting
    # Refused before any write, with the asyncio path's errors.
    with pytest.raises(ConfigurationError, match="begins like a full id"):
        pqueue.add_job("n", job_id="1:inv-4")
    with pytest.raises(ConfigurationError, match="not both"):
        pqueue.add_job("n", partition_key="a", message_group_id="b")
    with pytest.raises(ConfigurationError, match="partition_key must be"):
        pqueue.add_job("n", partition_key="")
    with pytest.raises(ConfigurationError):
        pqueue.add_job("n", no_such_option=1)
    assert direct_calls.count("enqueue") == calls
    assert pqueue.get_stats().waiting == before == 3


def test_partitioned_middleware_keeps_the_loop_path_and_the_callers_key(
    pqueue: SyncPartitionedQueue, direct_calls: list[str]
) -> None:
    """A partition with enqueue middleware hands the call to the loop thread with the
    caller's own arguments: the partition_key still places it (placement in the
    caller's thread took the key out of its own copy only)."""

    def tag(name: str, data: Any, opts: dict[str, Any]) -> tuple[str, Any, dict[str, Any]]:
        return name, {"tagged": data}, opts

    for member in pqueue.queue.queues:
        member.use_enqueue(tag)
    for c in range(6):
        jid = pqueue.add_job("after", c, partition_key=f"cust-{c}")
        assert _part(pqueue, jid) == pqueue.partition_of(f"cust-{c}")
        _stored(pqueue, jid, "after", {"tagged": c})
    assert direct_calls.count("enqueue") == 0


def test_partitioned_hooks_match_the_loop_path(
    pqueue: SyncPartitionedQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    heard: list[tuple[str, str]] = []
    for member in pqueue.queue.queues:
        member.on("job-added", lambda e, m=member.name: heard.append((m, e.job_id)))
    direct = pqueue.add_job("n", partition_key="one")
    # The same call through the loop thread (what a queue with middleware does).
    monkeypatch.setattr(type(pqueue.queue.queues[0].producer), "blocking_ready", lambda self: False)
    looped = pqueue.add_job("n", partition_key="two")
    pqueue.close()  # runs the hooks still pending
    names = [q.name for q in pqueue.queue.queues]
    want = []
    for full in (direct, looped):
        p, inner = pqueue.parse_id(full)  # type: ignore[misc]
        want.append((names[p], inner))
    assert sorted(heard) == sorted(want)


def test_partitioned_killed_server_loses_no_acknowledged_job(
    prefix: str, direct_calls: list[str]
) -> None:
    """Chaos: 4 threads add keyed jobs to a partitioned queue while its server is
    SIGKILLed and restarted; every full id an add returned is stored, on the partition
    its key names, with that add's own data."""
    srv = RedisServer("--appendonly", "yes", "--appendfsync", "always").start()
    try:
        with SyncPartitionedQueue("pchaos", partitions=3, redis=srv.url, prefix=prefix) as q:
            _warm(q)
            acked = _add_through_kills(
                srv, 4, 1, lambda w, i: q.add_job("n", {"w": w, "i": i}, partition_key=f"w{w}-{i}")
            )
            for jid, (w, i) in acked.items():
                assert _part(q, jid) == q.partition_of(f"w{w}-{i}")
                _stored(q, jid, "n", {"w": w, "i": i})
    finally:
        srv.close()
    assert direct_calls.count("enqueue") >= len(acked)
