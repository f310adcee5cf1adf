"""Harness of one benchmark subprocess. Standard library only: it runs in the project's
venv (kitium-queue) and in each peer's venv under ``bench/.peers/``.

An adapter module (``bench/kitium_adapter.py``, ``bench/peers/<peer>_peer.py``) defines
a subclass of :class:`Adapter` and calls :func:`main`. The orchestrator (``run.py``)
starts it as ``python <adapter> <role> '<json params>'`` and talks to it over stdout and
stdin, one line per message:

    stdout  READY            the worker is connected and waits for GO
            P <count>        jobs completed so far (at most every 10 ms)
            RESULT <json>    the figures of this process (last line)
    stdin   GO               start consuming
            STOP             print RESULT and exit at once

Roles:
    enqueue   {mode: single|concurrent|bulk, n, batch, conc}: time the producer API
    fill      {n, mix}: put n no-op jobs in the queue as fast as the adapter can (untimed
              by the caller; the drain workloads run on them)
    steady    {n, rate}: enqueue at a steady rate, job data carries ``t`` = time.time()
    worker    {concurrency, sleep_ms, latency}: consume; figures are taken in the job

Every process counts its client round trips to Redis: redis-py's
``send_packed_command`` is wrapped (one call per command, or per pipeline), and so is
kitium-queue's ``ReplyChannel.exchange`` (its hot path writes to the transport itself),
so ``sends`` is the number of request writes, each answered before the client goes on.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import sys
import threading
import time
from typing import Any

__all__ = ["Adapter", "Ctl", "main"]

_SENDS = [0]
# The protocol goes to a private copy of the original stdout: some libraries redirect
# sys.stdout into their logging (Celery does), which must not swallow READY / RESULT.
_OUT = os.fdopen(os.dup(1), "w", buffering=1)


def _count_round_trips() -> None:
    """Wrap redis-py's request write (sync and asyncio clients) with a counter."""
    try:
        import redis.asyncio.connection as aconn
        import redis.connection as sconn
    except ImportError:  # pragma: no cover - every adapter uses redis-py
        return
    for mod in (sconn, aconn):
        cls = getattr(mod, "AbstractConnection", None) or getattr(mod, "Connection", None)
        if cls is None or getattr(cls.send_packed_command, "_kq_counted", False):
            continue
        orig = cls.send_packed_command
        if inspect.iscoroutinefunction(orig):

            async def send_async(self: Any, *a: Any, __orig: Any = orig, **kw: Any) -> Any:
                _SENDS[0] += 1
                return await __orig(self, *a, **kw)

            wrapped: Any = send_async
        else:

            def send_sync(self: Any, *a: Any, __orig: Any = orig, **kw: Any) -> Any:
                _SENDS[0] += 1
                return __orig(self, *a, **kw)

            wrapped = send_sync
        wrapped._kq_counted = True
        cls.send_packed_command = wrapped
    replies = sys.modules.get("kitium_queue.replies")  # imported by kitium_adapter only
    if replies is None:
        return
    ReplyChannel = replies.ReplyChannel
    if not getattr(ReplyChannel.exchange, "_kq_counted", False):
        exchange = ReplyChannel.exchange

        def counted(self: Any, *a: Any, **kw: Any) -> Any:
            _SENDS[0] += 1
            return exchange(self, *a, **kw)

        counted._kq_counted = True  # type: ignore[attr-defined]
        ReplyChannel.exchange = counted  # type: ignore[method-assign]


def out(line: str) -> None:
    _OUT.write(line + "\n")
    _OUT.flush()


class Ctl:
    """Figures of a worker process, updated from inside the job function.

    Call ``hit(data)`` when a job starts and ``done()`` when it returns. Both are cheap
    (a clock read and a few assignments) and safe from threads.
    """

    def __init__(self, latency: bool) -> None:
        self.count = 0
        self.first: float | None = None
        self.last: float | None = None
        self.lat: list[float] | None = [] if latency else None
        self.go = threading.Event()
        self._lock = threading.Lock()

    def hit(self, data: Any) -> None:
        now = time.time()
        if self.first is None:
            self.first = now
        if self.lat is not None and isinstance(data, dict) and "t" in data:
            self.lat.append(now - float(data["t"]))

    def done(self) -> None:
        with self._lock:
            self.count += 1
            self.last = time.time()

    def ready(self) -> None:
        out("READY")

    def wait_go(self) -> None:
        self.go.wait()

    async def wait_go_async(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.go.wait)

    def result(self) -> dict[str, Any]:
        res: dict[str, Any] = {
            "count": self.count,
            "first": self.first,
            "last": self.last,
            "sends": _SENDS[0],
        }
        if self.lat is not None:
            res["lat_ms"] = [round(x * 1000, 4) for x in self.lat]
        return res


class Adapter:
    """What one library provides to the harness. Methods may be sync or ``async``.

    ``enqueue_one(data)`` is required; ``enqueue_many(datas)`` only if the library has a
    bulk API (then ``bulk`` is measured); ``worker(ctl, params)`` runs the consumer:
    connect, ``ctl.ready()``, wait for ``ctl.wait_go()``, consume, never return.
    """

    name = "?"
    has_bulk = False

    def __init__(self, url: str, queue: str) -> None:
        self.url = url
        self.queue = queue

    def connect(self) -> Any:
        return None

    def enqueue_one(self, data: dict[str, Any]) -> Any:
        raise NotImplementedError

    def enqueue_many(self, datas: list[dict[str, Any]]) -> Any:
        raise NotImplementedError

    def fill(self, n: int, params: dict[str, Any]) -> Any:
        """Fastest way to put ``n`` jobs in the queue; default: bulk, else one by one."""
        return None  # replaced by _default_fill unless an adapter overrides it

    def worker(self, ctl: Ctl, params: dict[str, Any]) -> Any:
        raise NotImplementedError


# ---------------------------------------------------------------------------- roles


async def _call(fn: Any, *args: Any) -> Any:
    res = fn(*args)
    if inspect.isawaitable(res):
        res = await res
    return res


def _is_async(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn)


async def _default_fill(ad: Adapter, n: int) -> None:
    if ad.has_bulk:
        for start in range(0, n, 1000):
            await _call(ad.enqueue_many, [{"i": i} for i in range(start, min(n, start + 1000))])
    elif _is_async(ad.enqueue_one):
        await _concurrent(ad, n, 100)
    else:
        for i in range(n):
            ad.enqueue_one({"i": i})


async def _concurrent(ad: Adapter, n: int, conc: int) -> None:
    it = iter(range(n))

    async def one() -> None:
        for i in it:
            await ad.enqueue_one({"i": i})

    await asyncio.gather(*(one() for _ in range(conc)))


async def _role_enqueue(ad: Adapter, p: dict[str, Any]) -> dict[str, Any]:
    mode, n = p["mode"], int(p["n"])
    budget = float(p.get("max_seconds", 1e9))
    await _call(ad.connect)
    # warm up: connection, script loading, imports on first use
    for i in range(20):
        await _call(ad.enqueue_one, {"i": -i})
    sends0 = _SENDS[0]
    done = 0
    t0 = time.perf_counter()
    if mode == "single":
        if _is_async(ad.enqueue_one):
            for i in range(n):
                await ad.enqueue_one({"i": i})
                if i % 256 == 255 and time.perf_counter() - t0 > budget:
                    done = i + 1
                    break
            else:
                done = n
        else:
            for i in range(n):
                ad.enqueue_one({"i": i})
                if i % 256 == 255 and time.perf_counter() - t0 > budget:
                    done = i + 1
                    break
            else:
                done = n
    elif mode == "concurrent":
        if not _is_async(ad.enqueue_one):
            return {"error": "n/a: synchronous client"}
        await _concurrent(ad, n, int(p.get("conc", 100)))
        done = n
    elif mode == "bulk":
        if not ad.has_bulk:
            return {"error": "n/a: no bulk enqueue API"}
        batch = int(p.get("batch", 1000))
        for start in range(0, n, batch):
            await _call(ad.enqueue_many, [{"i": i} for i in range(start, min(n, start + batch))])
        done = n
    else:
        raise SystemExit(f"unknown enqueue mode {mode!r}")
    secs = time.perf_counter() - t0
    return {"n": done, "seconds": secs, "rate": done / secs, "sends": _SENDS[0] - sends0}


async def _role_fill(ad: Adapter, p: dict[str, Any]) -> dict[str, Any]:
    n = int(p["n"])
    await _call(ad.connect)
    sends0 = _SENDS[0]
    t0 = time.perf_counter()
    custom = type(ad).fill is not Adapter.fill
    if custom:
        await _call(ad.fill, n, p)
    else:
        await _default_fill(ad, n)
    secs = time.perf_counter() - t0
    return {"n": n, "seconds": secs, "rate": n / secs, "sends": _SENDS[0] - sends0}


async def _role_steady(ad: Adapter, p: dict[str, Any]) -> dict[str, Any]:
    n, rate = int(p["n"]), float(p["rate"])
    await _call(ad.connect)
    is_async = _is_async(ad.enqueue_one)
    period = 1.0 / rate
    lags: list[float] = []
    t0 = time.perf_counter() + 0.05
    for i in range(n):
        due = t0 + i * period
        wait = due - time.perf_counter()
        if wait > 0:
            if is_async:
                await asyncio.sleep(wait)
            else:
                time.sleep(wait)
        lags.append(time.perf_counter() - due)
        data = {"i": i, "t": time.time()}
        if is_async:
            await ad.enqueue_one(data)
        else:
            ad.enqueue_one(data)
    secs = time.perf_counter() - t0
    lags.sort()
    return {"n": n, "seconds": secs, "rate": n / secs, "lag_p99_ms": lags[int(0.99 * n)] * 1000}


def _role_worker(ad: Adapter, p: dict[str, Any]) -> None:
    ctl = Ctl(bool(p.get("latency")))
    seen = [0]

    def progress() -> None:
        while True:
            time.sleep(0.01)
            c = ctl.count
            if c != seen[0]:
                seen[0] = c
                out(f"P {c}")

    def control() -> None:
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "GO":
                ctl.go.set()
            elif cmd == "STOP":
                break
        # STOP or the orchestrator went away: report and leave at once.
        out("RESULT " + json.dumps(ctl.result()))
        os._exit(0)

    threading.Thread(target=progress, daemon=True).start()
    threading.Thread(target=control, daemon=True).start()
    res = ad.worker(ctl, p)
    if inspect.isawaitable(res):
        asyncio.run(res)  # type: ignore[arg-type]
    # A worker that returns still waits for STOP (the control thread exits the process).
    threading.Event().wait()


def main(adapter_cls: type[Adapter]) -> None:
    _count_round_trips()
    role = sys.argv[1]
    params: dict[str, Any] = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    ad = adapter_cls(params["url"], params["queue"])
    if role == "worker":
        _role_worker(ad, params)
        return
    roles = {"enqueue": _role_enqueue, "fill": _role_fill, "steady": _role_steady}
    if role not in roles:
        raise SystemExit(f"unknown role {role!r}")
    res = asyncio.run(roles[role](ad, params))
    out("RESULT " + json.dumps(res))
    os._exit(0)  # do not wait for library threads / pools to wind down
