"""Where the time of one awaited ``add_job`` goes (issue 18, item 8): the same number of
sequential calls, each awaited before the next, against the shared Redis:

* ``lpush (blocking)``: redis-py's blocking client, one ``LPUSH`` per call (what a
  blocking one-command producer such as huey's costs);
* ``ping (asyncio)`` and ``evalsha return 1 (asyncio)``: redis-py's asyncio client, the
  floor of one awaited round trip, without and with a script call;
* ``add_job``: kitium-queue's awaited ``add_job`` (one enqueue script call);
* ``add_job, redis-py reads replies``: the same with the replies read through
  redis-py's connection instead of the engine's reply channel (``replies.py``);
* ``add_job, exchange stubbed``: the same with the Redis exchange replaced by a stub
  that packs the arguments and returns a canned reply: our own Python per call;
* ``SyncJobQueue.add_job``: the blocking client's ``add_job`` from plain synchronous code
  (served in the caller's thread over a blocking connection), and the same call handed
  to the client's event-loop thread as every other blocking method is
  (``SyncJobQueue.add_job, via the loop thread``), taking turns; the same two for a
  ``SyncPartitionedQueue`` of 4 partitions (round-robin placement).

Then the floor without any library (``_bare_cases``): µs per awaited round trip of a bare
asyncio protocol on one connection, for ``LPUSH``, ``EVALSHA`` of ``return 1`` with the
enqueue's keys and arguments, and the enqueue script itself.

Per line: calls/s (median of ``--reps``) and the client's CPU µs per call (user + system
of this process, median).

Then the Redis side (``--server``, on by default): the server's own µs per call from
``INFO commandstats`` (``CONFIG RESETSTAT`` before each case: run it against a Redis
nothing else uses), blocking calls back to back: ``LPUSH``; ``EVALSHA`` of ``return 1``
with no keys, and with the enqueue script's keys and arguments; a server clock read
(``TIME``) with them; the enqueue script with
its definitions only (its code up to the first job, then ``return 1``); the whole
enqueue script; and the commands it runs inside, each at its own cost.

    .venv/bin/python bench/bench_single.py [--url redis://127.0.0.1:6379] [--calls 5000]

Benchmarks are not tests: nothing here asserts. Keys go under ``kqbs:`` and are removed.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _scriptparts import fixed_part, one_job_call

import kitium_queue.scripts as scripts_mod
from kitium_queue import JobQueue, SyncJobQueue, SyncPartitionedQueue

PREFIX = "kqbs"
#: The same add_job with its replies read by redis-py instead of the engine's own
#: reply channel (kitium_queue.replies).
REDIS_PY_READS = "add_job, redis-py reads replies"


def _report(label: str, runs: list[tuple[float, float]]) -> None:
    rate = statistics.median(r for r, _ in runs)
    cpu = statistics.median(c for _, c in runs)
    spread = " / ".join(f"{r:,.0f}" for r, _ in runs)
    print(f"{label:32s} {rate:8,.0f} calls/s   {cpu:6.0f} µs CPU/call   ({spread})")


async def _timed(n: int, call: Callable[[int], Awaitable[Any]]) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        await call(i)
    return n / (time.perf_counter() - t0), (time.process_time() - c0) / n * 1e6


def _blocking_lpush(url: str, n: int, reps: int) -> list[tuple[float, float]]:
    r = redis.Redis.from_url(url)
    out = []
    try:
        for _ in range(reps):
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(n):
                r.lpush(f"{PREFIX}:list", b'{"i":%d}' % i)
            out.append((n / (time.perf_counter() - t0), (time.process_time() - c0) / n * 1e6))
    finally:
        r.delete(f"{PREFIX}:list")
        r.close()
    return out


async def _async_cases(url: str, n: int, reps: int) -> None:
    r = aioredis.Redis.from_url(url)
    sha = await r.script_load("return 1")
    q = JobQueue("single", redis=url, prefix=PREFIX)
    await q.add_job("warm-up", {})
    cases: dict[str, Callable[[int], Awaitable[Any]]] = {
        "ping (asyncio)": lambda i: r.ping(),
        "evalsha return 1 (asyncio)": lambda i: r.evalsha(sha, 0),
        "add_job": lambda i: q.add_job("single", {"i": i}),
        REDIS_PY_READS: lambda i: q.add_job("single", {"i": i}),
    }
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in cases}
    try:
        for _ in range(reps):  # the cases take turns, so a drift hits them alike
            for label, call in cases.items():
                scripts_mod._DIRECT_REPLIES = label != REDIS_PY_READS
                runs[label].append(await _timed(n, call))
        scripts_mod._DIRECT_REPLIES = True
        for label, got in runs.items():
            _report(label, got)
        real = scripts_mod.ScriptRegistry._run_packed

        async def stub(self: Any, client: Any, calls: Any) -> list[Any]:
            for c in calls:
                scripts_mod.pack_args(c.args)
            return [[b"1", b"new"] for _ in calls]

        scripts_mod.ScriptRegistry._run_packed = stub  # type: ignore[method-assign]
        try:
            got = [
                await _timed(n, lambda i: q.add_job("single", {"i": i})) for _ in range(reps)
            ]
        finally:
            scripts_mod.ScriptRegistry._run_packed = real  # type: ignore[method-assign]
        _report("add_job, exchange stubbed", got)
    finally:
        await q.close()
        async for key in r.scan_iter(f"{PREFIX}:*", count=10_000):
            await r.unlink(key)
        await r.aclose()


def _sync_cases(url: str, n: int, reps: int) -> None:
    for kind in ("SyncJobQueue", "SyncPartitionedQueue"):
        q: SyncJobQueue | SyncPartitionedQueue = (
            SyncJobQueue("single", redis=url, prefix=PREFIX)
            if kind == "SyncJobQueue"
            else SyncPartitionedQueue("psingle", partitions=4, redis=url, prefix=PREFIX)
        )
        direct = q._direct.get("add_job")
        for _ in range(4):  # every partition connects through the loop thread once
            q.add_job("warm-up", {})
        labels = (f"{kind}.add_job", f"{kind}.add_job, via the loop thread")
        runs: dict[str, list[tuple[float, float]]] = {k: [] for k in labels}
        try:
            for _ in range(reps):
                for label in labels:
                    if label == labels[1]:
                        q._direct.pop("add_job", None)
                    elif direct is not None:
                        q._direct["add_job"] = direct
                    t0, c0 = time.perf_counter(), time.process_time()
                    for i in range(n):
                        q.add_job("single", {"i": i})
                    runs[label].append(
                        (n / (time.perf_counter() - t0), (time.process_time() - c0) / n * 1e6)
                    )
            for label, got in runs.items():
                _report(label, got)
        finally:
            q.clear()
            q.close()


def _server_side(url: str, n: int, reps: int) -> None:
    """µs of Redis time per call (see the module docstring)."""
    r = redis.Redis.from_url(url)
    q = JobQueue("single", redis=url, prefix=PREFIX)
    ctx = q.producer.ctx
    keys, args = one_job_call(q, "single")
    source = ctx.scripts.get("enqueue").source
    cases = {
        "lpush": None,
        "evalsha return 1, no keys": ("return 1", [], []),
        "evalsha return 1, enqueue's keys+args": ("return 1", keys, args),
        "evalsha TIME, enqueue's keys+args": ("redis.call('TIME') return 1", keys, args),
        "enqueue's definitions, then return 1": (fixed_part("enqueue", source), keys, args),
        "enqueue (one job)": (source, keys, args),
    }
    inner = ("incr", "exists", "hset", "zadd", "xadd")
    got: dict[str, list[float]] = {k: [] for k in cases}
    parts: dict[str, list[float]] = {k: [] for k in inner}
    try:
        for _ in range(reps):
            for label, case in cases.items():
                if case is None:
                    r.config_resetstat()
                    for i in range(n):
                        r.lpush(f"{PREFIX}:list", b'{"i":%d}' % i)
                    got[label].append(r.info("commandstats")["cmdstat_lpush"]["usec_per_call"])
                    r.delete(f"{PREFIX}:list")
                    continue
                body, k, a = case
                sha = r.script_load(body)
                r.config_resetstat()
                for _ in range(n):
                    r.evalsha(sha, len(k), *k, *a)
                stats = r.info("commandstats")
                got[label].append(stats["cmdstat_evalsha"]["usec_per_call"])
                if label.startswith("enqueue ("):
                    for c in inner:
                        st = stats.get(f"cmdstat_{c}")
                        if st:  # per enqueue call, not per command
                            parts[c].append(st["usec"] / n)
        print("\nRedis time per call (µs, median; INFO commandstats):")
        for label, v in got.items():
            print(f"  {label:40s} {statistics.median(v):7.2f}")
        print("  inside the enqueue script, per call:")
        for c, v in parts.items():
            if v:
                print(f"    {c:38s} {statistics.median(v):7.2f}")
    finally:
        for key in r.scan_iter(f"{PREFIX}:*", count=10_000):
            r.unlink(key)
        r.close()


class _Bare(asyncio.Protocol):
    """One reply per request, nothing else: the floor of an awaited round trip."""

    def __init__(self) -> None:
        self.fut: asyncio.Future[bytes] | None = None

    def data_received(self, data: bytes) -> None:
        fut, self.fut = self.fut, None
        if fut is not None:
            fut.set_result(data)


async def _bare_cases(url: str, n: int, reps: int) -> None:
    """µs per awaited round trip with a bare asyncio protocol (no library): ``LPUSH``,
    ``EVALSHA`` of ``return 1`` with the enqueue's keys and arguments, and the enqueue
    script itself (each reply fits one read, so one ``data_received`` is one reply)."""
    r = redis.Redis.from_url(url)
    q = JobQueue("single", redis=url, prefix=PREFIX)
    ctx = q.producer.ctx
    keys, args = one_job_call(q, "single")
    one = r.script_load("return 1")
    enqueue = r.script_load(ctx.scripts.get("enqueue").source)

    def packed(*parts: Any) -> bytes:
        return b"*%d\r\n" % len(parts) + scripts_mod.pack_args(parts)

    cases = {
        "lpush": packed("LPUSH", f"{PREFIX}:list", b'{"i":1}'),
        "evalsha return 1, enqueue's keys+args": packed("EVALSHA", one, len(keys), *keys, *args),
        "evalsha enqueue (one job)": packed("EVALSHA", enqueue, len(keys), *keys, *args),
    }
    host = r.connection_pool.connection_kwargs.get("host", "127.0.0.1")
    port = r.connection_pool.connection_kwargs.get("port", 6379)
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_connection(_Bare, host, port)
    got: dict[str, list[float]] = {k: [] for k in cases}
    try:
        for _ in range(reps):
            for label, payload in cases.items():
                t0 = time.perf_counter()
                for _ in range(n):
                    proto.fut = fut = loop.create_future()
                    transport.write(payload)
                    await fut
                got[label].append((time.perf_counter() - t0) / n * 1e6)
        print("\nBare asyncio protocol, one connection, no library (µs per round trip, median):")
        for label, v in got.items():
            spread = " / ".join(f"{x:.0f}" for x in v)
            print(f"  {label:40s} {statistics.median(v):7.1f}   ({spread})")
    finally:
        transport.close()
        await q.close()
        for key in r.scan_iter(f"{PREFIX}:*", count=10_000):
            r.unlink(key)
        r.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="redis://127.0.0.1:6379")
    p.add_argument("--calls", type=int, default=5000)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument(
        "--no-server", dest="server", action="store_false", help="skip the Redis-side figures"
    )
    args = p.parse_args(argv)
    _report("lpush (blocking)", _blocking_lpush(args.url, args.calls, args.reps))
    asyncio.run(_async_cases(args.url, args.calls, args.reps))
    _sync_cases(args.url, args.calls, args.reps)
    asyncio.run(_bare_cases(args.url, args.calls, args.reps))
    if args.server:
        _server_side(args.url, args.calls, args.reps)


if __name__ == "__main__":
    main()
