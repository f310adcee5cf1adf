"""A worker process for the chaos suite (run as a script; stdlib + kitium_queue only).

    python chaos/worker.py --url redis://127.0.0.1:PORT/0 --prefix P --queue Q \
        --log /tmp/w.log --state-dir /tmp/state [--concurrency 4] [--lock-duration 1000] ...

It runs ``JobQueue.run_worker()`` (SIGTERM/SIGINT take the library's graceful path).
What a job does is decided by its name and its data, so one process can serve every
scenario:

    work       ``await asyncio.sleep(ms)``; data keys (all optional):
                 ms          length of the run (default 0)
                 first_ms    length of the job's first execution only (a marker file in
                             --state-dir remembers that it ran once)
                 crash       SIGKILL this process at a step, on the job's first lease only
                             (``job.stalls == 0``): "claim" (on entry), "mid" (half way),
                             "done" (process middleware, after the processor returned),
                             "retry" (process middleware, after the processor raised)
                 fail_first  raise on the job's first execution only (marker file)
                 fail_on     list of attempt numbers (``job.attempts``) on which the
                             run raises after its sleep (a seeded failure pattern)
                 wake        poll in 5 ms steps and return as soon as a wall-clock gap
                             > 0.5 s shows that the process was frozen (SIGSTOP)
                 note        a text the run writes before its sleep, with
                             ``job.update_progress({"note": note})`` and
                             ``job.log(note)``; a ``fail_first`` / ``fail_on`` failure
                             quotes it in its message (so it reaches the failure texts)
    sync       ``time.sleep(ms)`` in a plain function (the worker's thread pool)
    fail       always raises ``RuntimeError``
    hang       never returns (``await`` on an event nobody sets)
    hang-sync  ``time.sleep(ms)`` in a plain function, meant to outlive its timeout
    poison     hostile outcomes (issue 19), after ``await asyncio.sleep(ms)``; data
               ``mode`` (numbers given as strings such as "maxsize", "inf", "1e30" are
               read by ``special()``):
                 exc-cause     ValueError raised from a cause whose text holds a lone
                               surrogate (a file name decoded with surrogateescape)
                 exc-message   the surrogate in the exception's own message
                 exc-context   the surrogate in the implicit context (raised while
                               handling another exception)
                 exc-control   newlines, tabs, NUL and ANSI escapes in the message
                 exc-str       an exception whose ``__str__`` raises
                 nonretryable  NonRetryableError with a surrogate in its message
                 log           job.log / job.update_progress with surrogates, control
                               characters, NaN, deep nesting (a KitiumQueueError is
                               accepted and logged as ``refused``); then returns
                 retry-later   first execution: ``RetryLater(delay, reason)``; then returns
                 rate-limited  first execution: ``RateLimited(delay, reason, scope=...)``
                 result        returns a value JSON cannot carry (``result``: surrogate,
                               int, deep, set, nan)
                 backoff       always raises; use with the custom backoff strategy
                               ``from-data``, which returns ``special(data["backoff"])``
    dep        (with ``--breakers``) a call to a dependency whose health is the Redis
               string ``<prefix>:dep``: ``up`` returns, ``hang`` waits while it says
               so, anything else raises ``ConnectionError``
    any other  not registered: an unknown job name

``--breakers`` creates a ``CircuitBreakerManager`` on the queue (jobs bound to a breaker
are held while it is open); ``--compliance`` a ``ComplianceManager`` (jobs may carry
``subject_id``; ``erase_subject`` finds them through its index); ``--tenancy`` enables
multi-tenancy (tenants' quotas and fair dispatch; the tenants are created by the
scenario).

Every job appends lines to ``--log`` (one ``O_APPEND`` write each, so a SIGKILL loses
nothing already written and processes may share the file)::

    <event> <job id> <pid> <attempt> <stalls> <unix time>

events: ``ready``, ``clock`` (job id field = this process's idea of the time, which
differs from the real time under ``--clock-skew``), ``start``, ``finish`` (processor
returned), ``raise`` (processor raised), ``cancel`` (the run was cancelled: timeout,
abandoned lease, shutdown), ``crash`` (about to SIGKILL itself), ``refused`` (a poison
job's log/progress call got a KitiumQueueError), ``exit``. Times in the
log are always the real time, even under ``--clock-skew``.

The result of every job is ``{"pid", "attempt", "stalls"}``: which run was recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import logging
import math
import os
import signal
import sys
import time
from typing import Any

REAL_TIME = time.time  # bound before any clock skew is installed


def install_clock_skew(seconds: float) -> None:
    """Shift this process's wall clock (time.time, time.time_ns, datetime.now) by
    ``seconds``. Called before kitium_queue is imported; monotonic clocks are untouched."""
    real_time, real_time_ns = time.time, time.time_ns
    shift_ns = int(seconds * 1e9)
    time.time = lambda: real_time() + seconds
    time.time_ns = lambda: real_time_ns() + shift_ns
    delta = _dt.timedelta(seconds=seconds)
    base = _dt.datetime

    class SkewedDatetime(base):  # type: ignore[misc, valid-type]
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return base.now(tz) + delta

        @classmethod
        def utcnow(cls) -> Any:
            return base.now(_dt.timezone.utc).replace(tzinfo=None) + delta

        @classmethod
        def today(cls) -> Any:
            return base.now() + delta

    _dt.datetime = SkewedDatetime  # type: ignore[misc]


class EventLog:
    """Append-only line log shared by processes (one write per line)."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.pid = os.getpid()

    def write(self, event: str, job_id: str = "-", attempt: int = 0, stalls: int = 0) -> None:
        line = f"{event} {job_id} {self.pid} {attempt} {stalls} {REAL_TIME():.6f}\n"
        os.write(self.fd, line.encode())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="kitium-queue chaos worker")
    p.add_argument("--url", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--queue", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--state-dir", required=True)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--lock-duration", type=int, default=30_000)
    p.add_argument("--lock-renew", type=int, default=None)
    p.add_argument("--stalled-interval", type=int, default=5000)
    p.add_argument("--max-stalled", type=int, default=2)
    p.add_argument("--shutdown-timeout", type=int, default=30_000)
    p.add_argument("--events-max-len", type=int, default=1_000_000)
    p.add_argument("--clock-skew", type=float, default=0.0, help="seconds")
    p.add_argument("--fifo-groups", type=int, default=0,
                   help="1: enable FIFO message groups (FIFOQueueManager) on the queue")
    p.add_argument("--breakers", type=int, default=0, help="1: circuit breakers enabled")
    p.add_argument("--workflows", type=int, default=0,
                   help="1: enable workflows (JobChainManager) on the queue")
    p.add_argument("--compliance", type=int, default=0,
                   help="1: enable compliance (ComplianceManager: subject_id, erasure)")
    p.add_argument("--tenancy", type=int, default=0,
                   help="1: enable multi-tenancy (TenantRegistry.enable) on the queue")
    p.add_argument("--slow-claim-ms", type=int, default=0,
                   help="delay every claim by this long before sending it (a slow link)")
    p.add_argument("--encrypt", default="",
                   help="comma-separated key ids: encrypt every job (EncryptionManager), "
                        "each key read from the environment variable KQ_CHAOS_KEY_<id>")
    return p.parse_args(argv)


def _marker(state_dir: str, kind: str, job_id: str) -> bool:
    """True the first time it is called for (kind, job id), in any process."""
    path = os.path.join(state_dir, f"{kind}-{job_id}")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def _data(job: Any) -> dict[str, Any]:
    return job.data if isinstance(job.data, dict) else {}


#: A file name as ``os.listdir`` returns it for non-UTF-8 bytes: it holds a lone surrogate.
SURROGATE_NAME = b"r-\xff.csv".decode("utf-8", "surrogateescape")
_SPECIAL: dict[str, Any] = {
    "maxsize": sys.maxsize, "2**64": 2**64, "1e17": 1e17, "1e30": 10**30,
    "inf": math.inf, "-inf": -math.inf, "nan": math.nan,
}


def special(value: Any) -> Any:
    """JSON cannot carry inf, NaN or ints above 64 bits: job data names them."""
    return _SPECIAL.get(value, value) if isinstance(value, str) else value


def _deep(n: int) -> Any:
    v: Any = []
    for _ in range(n):
        v = [v]
    return v


class _StrRaises(Exception):
    def __str__(self) -> str:
        raise RuntimeError(f"__str__ failed on {SURROGATE_NAME}")


async def logged(log: EventLog, job: Any, body: Any) -> None:
    """Run ``await body()`` for ``job``, logging start, then finish, raise or cancel."""
    log.write("start", job.id, job.attempts, job.stalls)
    try:
        await body()
    except asyncio.CancelledError:
        log.write("cancel", job.id, job.attempts, job.stalls)
        raise
    except Exception:
        log.write("raise", job.id, job.attempts, job.stalls)
        raise
    log.write("finish", job.id, job.attempts, job.stalls)


def build_queue(args: argparse.Namespace, log: EventLog) -> Any:
    from kitium_queue import JobQueue

    settings: dict[str, Any] = {
        "lock_duration": args.lock_duration,
        "max_stalled_interval": args.stalled_interval,
        "max_stalled_count": args.max_stalled,
    }
    if args.lock_renew is not None:
        settings["lock_renew_time"] = args.lock_renew
    queue = JobQueue(
        args.queue,
        redis=args.url,
        prefix=args.prefix,
        settings=settings,
        worker={"concurrency": args.concurrency, "shutdown_timeout": args.shutdown_timeout},
        events_max_len=args.events_max_len,
    )
    if args.fifo_groups:
        from kitium_queue.features.groups import FIFOQueueManager

        FIFOQueueManager(queue)
    if args.workflows:
        from kitium_queue import JobChainManager

        JobChainManager(queue, events=False)
    if args.compliance:
        from kitium_queue import ComplianceManager

        ComplianceManager(queue, run_service=False)
    if args.tenancy:
        from kitium_queue.features.tenancy import TenantRegistry

        TenantRegistry.enable(queue)
    state = args.state_dir

    def result(job: Any) -> dict[str, int]:
        return {"pid": log.pid, "attempt": job.attempts, "stalls": job.stalls}

    def crash(job: Any) -> None:
        log.write("crash", job.id, job.attempts, job.stalls)
        os.kill(os.getpid(), signal.SIGKILL)

    def length_s(job: Any) -> float:
        d = _data(job)
        if "first_ms" in d and _marker(state, "first", job.id):
            return float(d["first_ms"]) / 1000
        return float(d.get("ms", 0)) / 1000

    async def work(job: Any) -> dict[str, int]:
        await logged(log, job, lambda: work_body(job))
        return result(job)

    async def work_body(job: Any) -> None:
        d = _data(job)
        step = d.get("crash") if job.stalls == 0 else None
        if step == "claim":
            crash(job)
        note = d.get("note")
        if note is not None:
            await job.update_progress({"note": note})
            await job.log(str(note))
        quoted = "" if note is None else f" (note {note})"
        seconds = length_s(job)
        if step == "mid":
            await asyncio.sleep(seconds / 2)
            crash(job)
        if d.get("wake"):
            end = REAL_TIME() + seconds
            last = REAL_TIME()
            while REAL_TIME() < end:
                await asyncio.sleep(0.005)
                now = REAL_TIME()
                if now - last > 0.5:
                    log.write("wake", job.id, job.attempts, job.stalls)
                    break
                last = now
        else:
            await asyncio.sleep(seconds)
        if d.get("fail_first") and _marker(state, "failed", job.id):
            raise RuntimeError(f"job {job.id}: first execution fails (fail_first){quoted}")
        if job.attempts in (d.get("fail_on") or ()):
            raise RuntimeError(f"job {job.id}: attempt {job.attempts} fails (fail_on){quoted}")

    def sync(job: Any) -> dict[str, int]:
        log.write("start", job.id, job.attempts, job.stalls)
        time.sleep(length_s(job))
        log.write("finish", job.id, job.attempts, job.stalls)
        return result(job)

    async def fail(job: Any) -> None:
        log.write("start", job.id, job.attempts, job.stalls)
        log.write("raise", job.id, job.attempts, job.stalls)
        raise RuntimeError(f"job {job.id} always fails (attempt {job.attempts})")

    async def hang(job: Any) -> None:
        log.write("start", job.id, job.attempts, job.stalls)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            log.write("cancel", job.id, job.attempts, job.stalls)
            raise

    from kitium_queue import KitiumQueueError, NonRetryableError, RateLimited, RetryLater

    async def poison_step(job: Any, d: dict[str, Any]) -> Any:
        mode = d.get("mode")
        if mode == "exc-cause":
            try:
                raise RuntimeError(f"cannot open {SURROGATE_NAME}")
            except RuntimeError as exc:
                raise ValueError("upload failed") from exc
        if mode == "exc-message":
            raise RuntimeError(f"cannot open {SURROGATE_NAME}")
        if mode == "exc-context":
            try:
                raise KeyError(SURROGATE_NAME)
            except KeyError:
                # The implicit context (not a cause) carries the surrogate.
                raise RuntimeError("lookup failed")  # noqa: B904
        if mode == "exc-control":
            raise RuntimeError("line one\nforged row\tcol\r\x1b[31mred\x1b[0m\x00nul\x85")
        if mode == "exc-str":
            raise _StrRaises()
        if mode == "nonretryable":
            raise NonRetryableError(f"bad input file {SURROGATE_NAME}")
        if mode == "log":
            for line in (f"reading {SURROGATE_NAME}", "a\nforged\tline\x1b[2J\x00",
                         "x" * 100_000):
                try:
                    await job.log(line)
                except KitiumQueueError:
                    log.write("refused", job.id, job.attempts, job.stalls)
            for value in ({"file": SURROGATE_NAME}, math.nan, _deep(300), 2**64, 42):
                try:
                    await job.update_progress(value)
                except KitiumQueueError:
                    log.write("refused", job.id, job.attempts, job.stalls)
            return result(job)
        if mode in ("retry-later", "rate-limited"):
            if _marker(state, "deferred", job.id):
                delay, reason = special(d.get("delay")), d.get("reason", "later")
                if mode == "rate-limited":
                    raise RateLimited(delay, reason, scope=d.get("scope", "auto"))
                raise RetryLater(delay, reason)
            return result(job)
        if mode == "result":
            return {
                "surrogate": f"saved {SURROGATE_NAME}", "int": 2**64, "deep": _deep(300),
                "set": {1, 2}, "nan": math.nan,
            }[d.get("result", "surrogate")]
        if mode == "backoff":
            raise RuntimeError(f"job {job.id} fails every time (attempt {job.attempts})")
        raise RuntimeError(f"unknown poison mode {mode!r}")

    async def poison(job: Any) -> Any:
        d = _data(job)
        log.write("start", job.id, job.attempts, job.stalls)
        try:
            await asyncio.sleep(float(d.get("ms", 0)) / 1000)
            out = await poison_step(job, d)
        except asyncio.CancelledError:
            log.write("cancel", job.id, job.attempts, job.stalls)
            raise
        except BaseException:
            log.write("raise", job.id, job.attempts, job.stalls)
            raise
        log.write("finish", job.id, job.attempts, job.stalls)
        return out

    queue.process("poison", poison)
    queue.register_backoff("from-data", lambda attempts, error, job: special(
        _data(job).get("backoff")))
    queue.process("work", work)
    queue.process("sync", sync)
    queue.process("hang-sync", sync)
    queue.process("fail", fail)
    queue.process("hang", hang)
    if args.breakers:
        install_breakers(queue, args.prefix, log)

    async def crash_after(job: Any, call_next: Any) -> Any:
        step = _data(job).get("crash") if job.stalls == 0 else None
        try:
            out = await call_next()
        except Exception:
            if step == "retry":
                crash(job)
            raise
        if step == "done":
            crash(job)
        return out

    queue.use_process(crash_after)

    if args.slow_claim_ms > 0:
        real_pipeline = queue.scripts.pipeline
        delay = args.slow_claim_ms / 1000

        async def slow_pipeline(client: Any, calls: Any) -> Any:
            if any(getattr(c, "script", None) == "claim" for c in calls):
                await asyncio.sleep(delay)
            return await real_pipeline(client, calls)

        queue.scripts.pipeline = slow_pipeline
    if args.encrypt:
        from kitium_queue.features.encryption import EncryptionManager, KeyConfig

        EncryptionManager(
            queue, keys=[KeyConfig.from_env(f"KQ_CHAOS_KEY_{k}", k)
                         for k in args.encrypt.split(",")],
            encrypt_all=True, refresh_ms=200, rotation_grace_ms=500,
        )
    return queue


def install_breakers(queue: Any, prefix: str, log: EventLog) -> None:
    """Circuit breakers on, and the ``dep`` job (see the module docstring)."""
    from kitium_queue import CircuitBreakerManager

    CircuitBreakerManager(queue)
    dep_key = f"{prefix}:dep"

    async def call_dep() -> None:
        client = await queue.client()
        while True:
            health = await client.get(dep_key)
            if health == b"up":
                return
            if health != b"hang":
                raise ConnectionError("dependency down")
            await asyncio.sleep(0.05)

    async def dep(job: Any) -> dict[str, int]:
        await logged(log, job, call_dep)
        return {"pid": log.pid, "attempt": job.attempts, "stalls": job.stalls}

    queue.process("dep", dep)


async def main(args: argparse.Namespace) -> int:
    log = EventLog(args.log)
    log.write("clock", f"{time.time():.6f}")
    queue = build_queue(args, log)

    async def announce() -> None:
        # Ready once the worker runs and SIGTERM takes the graceful path (run_worker
        # installs its handler after start(): a SIGTERM before that kills the process).
        while (
            queue.worker is None
            or not queue.worker.running
            or signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None)
        ):
            await asyncio.sleep(0.005)
        log.write("ready")

    announcer = asyncio.create_task(announce())
    try:
        await queue.run_worker()
    finally:
        announcer.cancel()
        await queue.close()
    log.write("exit")
    return 0


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.clock_skew:
        install_clock_skew(arguments.clock_skew)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )
    sys.exit(asyncio.run(main(arguments)))
