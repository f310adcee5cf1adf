"""Soak run (issue 4, item 9): a steady load for a long time, with worker restarts and one
Redis crash, checking that memory stays bounded and that no job is lost.

    .venv/bin/python chaos/soak.py                  # the full hour
    .venv/bin/python chaos/soak.py --minutes 10     # shorter
    .venv/bin/python chaos/soak.py --rate 2000 --workers 4   # the hour at 2,000 jobs/s
    .venv/bin/python chaos/soak.py --help           # every knob

Not part of the test run (it takes as long as you ask). What it does:

1. Freezes a copy of ``src/kitium_queue`` (so edits to the working tree during a long run
   cannot change the code under test; the git commit and dirty flag are recorded) and
   starts a private ``redis-server`` on loopback with ``appendonly yes`` and
   ``appendfsync always``.
2. Starts ``--workers`` worker processes (``python chaos/soak.py worker ...``). Worker 0
   is never restarted: its RSS is the leak signal. The others are restarted in turn every
   ``--restart-every`` seconds, alternating SIGTERM (graceful: must exit 0) and SIGKILL.
3. A producer adds ``--rate`` jobs/s (each a short ``asyncio.sleep`` with a padded
   payload) with ``add_jobs``; every id it gets back is an *acknowledged* enqueue.
4. A reader follows the queue's durable event stream (written inside the same Lua script
   as each transition) and records, per job, how often it was started, completed and
   dead-lettered. This is the ledger; finished jobs are trimmed from Redis by the default
   retention, so Redis stays bounded while the ledger stays complete. A trimmed-away gap
   in the stream is detected and fails the run rather than passing it silently.
5. At ``--redis-restart-at`` (fraction of the run) Redis is SIGKILLed and restarted from
   its AOF; the time until jobs complete again is measured.
6. Every ``--sample-every`` seconds: RSS of every worker process (``/proc/<pid>/status``)
   and Redis ``used_memory`` / ``used_memory_rss``, queue counts and throughput.
7. At the end the producer stops, the backlog drains, the workers get SIGTERM, and the
   run is judged:
     * lost = acknowledged jobs with no completion and no dead-lettering: must be 0;
     * duplicate completions (two recorded outcomes for one job): must be 0;
     * memory bounded: after warm-up, a least-squares line through the never-restarted
       worker's RSS and through Redis ``used_memory`` may not rise by more than the
       tolerance over the measured window (and neither may the mean of the last quarter
       exceed the mean of the first quarter by more than it);
     * workers never exited on their own, SIGTERMed workers exited 0.
   Results go to ``chaos/soak-results.json`` (``--out``); exit status 0 = all passed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
QUEUE = "soak"
PREFIX = "kqsoak"


# ====================================================================== worker process


def worker_main(argv: list[str]) -> int:
    """``soak.py worker``: one worker process (imports the frozen copy via PYTHONPATH)."""
    import logging

    p = argparse.ArgumentParser(prog="soak.py worker")
    p.add_argument("--url", required=True)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--lock-duration", type=int, default=5000)
    p.add_argument("--stalled-interval", type=int, default=1000)
    p.add_argument("--events-max-len", type=int, default=60_000)
    p.add_argument("--ready-file", required=True)
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("kitium_queue.worker").setLevel(logging.INFO)  # its start and stop

    from kitium_queue import ConnectionUnavailableError, JobQueue

    async def run() -> None:
        queue = JobQueue(
            QUEUE,
            redis=args.url,
            prefix=PREFIX,
            events_max_len=args.events_max_len,
            settings={
                "lock_duration": args.lock_duration,
                "max_stalled_interval": args.stalled_interval,
            },
            worker={"concurrency": args.concurrency, "shutdown_timeout": 5000},
        )

        @queue.process("soak")
        async def work(job: Any) -> dict[str, int]:
            await asyncio.sleep(job.data.get("ms", 0) / 1000)
            return {"n": len(job.data.get("pad", ""))}

        async def announce() -> None:
            while queue.worker is None or not queue.worker.running:
                await asyncio.sleep(0.01)
            import kitium_queue

            # Written whole, then renamed: the controller never reads a half-written file.
            ready = Path(args.ready_file)
            partial = ready.with_name(ready.name + ".partial")
            partial.write_text(f"{os.getpid()} {kitium_queue.__file__}\n")
            partial.replace(ready)

        task = asyncio.ensure_future(announce())
        try:
            # A worker started while Redis is down (a restart during the Redis crash)
            # cannot connect: retry as a process manager would restart it, within a
            # minute. Once running, the worker rides out outages by itself.
            deadline = time.monotonic() + 60
            while True:
                try:
                    await queue.run_worker()
                    break
                except ConnectionUnavailableError as exc:
                    if time.monotonic() > deadline:
                        raise
                    print(f"start failed, retrying in 0.2 s: {exc}", file=sys.stderr, flush=True)
                    await asyncio.sleep(0.2)
        finally:
            task.cancel()
            await queue.close()

    asyncio.run(run())
    return 0


# ====================================================================== controller


def _rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _sid(raw: Any) -> tuple[int, int]:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _trend(points: list[tuple[float, float]]) -> dict[str, float] | None:
    """Least-squares line through (t seconds, value): slope per hour and rise over the span."""
    if len(points) < 3:
        return None
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return None
    slope = sum((t - mt) * (v - mv) for t, v in points) / var
    span = points[-1][0] - points[0][0]
    q = max(1, n // 4)
    first_q = sum(v for _, v in points[:q]) / q
    last_q = sum(v for _, v in points[-q:]) / q
    return {
        "samples": n,
        "span_s": round(span, 1),
        "mean": round(mv, 1),
        "min": round(min(v for _, v in points), 1),
        "max": round(max(v for _, v in points), 1),
        "slope_per_hour": round(slope * 3600, 1),
        "fitted_rise": round(slope * span, 1),
        "last_quarter_minus_first_quarter": round(last_q - first_q, 1),
    }


def _bounded(trend: dict[str, float] | None, tolerance: float) -> bool:
    if trend is None:
        return False
    return (
        trend["fitted_rise"] <= tolerance
        and trend["last_quarter_minus_first_quarter"] <= tolerance
    )


@dataclass
class Slot:
    index: int
    restartable: bool
    proc: subprocess.Popen[bytes] | None = None
    ready_file: Path | None = None
    started_at: float = 0.0
    generation: int = 0
    peak_rss_kib: dict[int, int] = field(default_factory=dict)


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.duration = args.minutes * 60.0
        self.t0 = 0.0
        self.work = Path(tempfile.mkdtemp(prefix="kq-soak-"))
        self.snapshot = self.work / "src"
        self.server: Any = None
        self.url = ""
        self.slots: list[Slot] = []
        self.acked: set[int] = set()
        self.started: Counter[int] = Counter()
        self.completed: Counter[int] = Counter()
        self.dead: set[int] = set()
        self.enqueue_errors = 0
        self.enqueue_batches = 0
        self.stream_gap = False
        self.last_stream_id: tuple[int, int] = (0, 0)
        self.last_completion = 0.0
        self.samples: list[dict[str, Any]] = []
        self.restarts: list[dict[str, Any]] = []
        #: Every restart's signal as sent (the last may still be starting at the end).
        self.signalled: list[dict[str, Any]] = []
        self.chaos_errors: list[str] = []
        self.unexpected_exits: list[dict[str, Any]] = []
        self.redis_restart: dict[str, Any] = {}
        self.producing = True
        self.reader_errors = 0

    # ------------------------------------------------------------------ setup
    def freeze_source(self) -> dict[str, Any]:
        shutil.copytree(ROOT / "src" / "kitium_queue", self.snapshot / "kitium_queue")
        sys.path.insert(0, str(self.snapshot))
        info: dict[str, Any] = {"snapshot": str(self.snapshot)}
        with contextlib.suppress(Exception):
            info["commit"] = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                check=True,
            ).stdout.strip()
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True,
                text=True, check=True,
            ).stdout
            info["src_dirty"] = bool(dirty.strip())
        return info

    def start_redis(self) -> None:
        sys.path.insert(0, str(ROOT / "tests"))
        from _redis import RedisServer

        self.server = RedisServer(
            "--appendonly", "yes", "--appendfsync", "always", dir=self.work / "redis"
        ).start()
        self.url = f"redis://127.0.0.1:{self.server.port}/0"

    def spawn(self, slot: Slot) -> None:
        slot.generation += 1
        slot.ready_file = self.work / f"w{slot.index}-{slot.generation}.ready"
        err = open(self.work / f"w{slot.index}.stderr", "ab")  # noqa: SIM115
        env = dict(os.environ)
        env["PYTHONPATH"] = str(self.snapshot)
        env["PYTHONUNBUFFERED"] = "1"
        a = self.args
        slot.proc = subprocess.Popen(
            [
                sys.executable, str(Path(__file__).resolve()), "worker",
                "--url", self.url, "--concurrency", str(a.concurrency),
                "--lock-duration", str(a.lock_duration),
                "--stalled-interval", str(a.stalled_interval),
                "--events-max-len", str(a.events_max_len),
                "--ready-file", str(slot.ready_file),
            ],
            stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        err.close()
        slot.started_at = time.monotonic()

    async def wait_ready(self, slot: Slot, timeout: float = 30.0) -> float:
        assert slot.proc is not None and slot.ready_file is not None
        deadline = time.monotonic() + timeout
        while not slot.ready_file.exists():
            if slot.proc.poll() is not None:
                raise RuntimeError(f"worker {slot.index} exited {slot.proc.returncode} at start")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker {slot.index} not ready after {timeout} s")
            await asyncio.sleep(0.02)
        text = slot.ready_file.read_text()
        if str(self.snapshot) not in text:
            raise RuntimeError(f"worker imported kitium_queue from elsewhere: {text}")
        return time.monotonic() - slot.started_at

    def now(self) -> float:
        return time.monotonic() - self.t0

    # ------------------------------------------------------------------ tasks
    async def produce(self) -> None:
        from kitium_queue import JobQueue

        q = JobQueue(QUEUE, redis=self.url, prefix=PREFIX, events_max_len=self.args.events_max_len)
        rnd = random.Random(4)
        rate = self.args.rate
        sent = 0
        base = time.monotonic()
        try:
            while self.producing:
                due = int((time.monotonic() - base) * rate)
                n = min(1000, due - sent)
                if n <= 0:
                    await asyncio.sleep(0.02)
                    continue
                jobs = [
                    ("soak", {"ms": rnd.randint(0, 10), "pad": "x" * rnd.randint(50, 500)})
                    for _ in range(n)
                ]
                try:
                    ids = await q.add_jobs(jobs)
                except Exception:
                    # Not acknowledged: the caller would retry. Do not catch up afterwards,
                    # so the rate stays steady around the outage.
                    self.enqueue_errors += 1
                    sent = due
                    await asyncio.sleep(0.1)
                    continue
                self.enqueue_batches += 1
                self.acked.update(int(i) for i in ids)
                sent += n
        finally:
            await q.close()

    async def read_events(self) -> None:
        import redis.asyncio as aioredis

        key = f"{PREFIX}:{{{QUEUE}}}:events"
        client = aioredis.Redis.from_url(self.url, socket_timeout=None, socket_connect_timeout=2)
        last = "0"
        last_check = 0.0
        try:
            while True:
                try:
                    reply = await client.xread({key: last}, count=2000, block=500)
                    if time.monotonic() - last_check > 2.0 and last != "0":
                        last_check = time.monotonic()
                        info = await client.xinfo_stream(key)
                        first = info.get("first-entry")
                        if first and _sid(first[0]) > self.last_stream_id:
                            self.stream_gap = True
                except asyncio.CancelledError:
                    raise
                except Exception:
                    self.reader_errors += 1
                    await asyncio.sleep(0.05)
                    continue
                for _key, entries in reply or ():
                    for entry_id, raw in entries:
                        last = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                        self.last_stream_id = _sid(last)
                        ev = raw.get(b"e")
                        jid = raw.get(b"id")
                        if not jid or not jid.isdigit():
                            continue
                        j = int(jid)
                        if ev == b"job-started":
                            self.started[j] += 1
                        elif ev == b"job-completed":
                            self.completed[j] += 1
                            self.last_completion = time.monotonic()
                        elif ev == b"job-dlq":
                            self.dead.add(j)
        finally:
            await client.aclose()

    async def sample(self) -> None:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=2)
        prev_done, prev_t = 0, self.now()
        try:
            while True:
                t = self.now()
                row: dict[str, Any] = {"t": round(t, 1), "workers_rss_kib": {}}
                for s in self.slots:
                    if s.proc is not None and s.proc.poll() is None:
                        rss = _rss_kib(s.proc.pid)
                        if rss is not None:
                            row["workers_rss_kib"][f"w{s.index}"] = rss
                            s.peak_rss_kib[s.proc.pid] = max(s.peak_rss_kib.get(s.proc.pid, 0), rss)
                try:
                    mem = await client.info("memory")
                    row["redis_used_memory"] = int(mem["used_memory"])
                    row["redis_used_memory_rss"] = int(mem["used_memory_rss"])
                    row["redis_keys"] = int(await client.dbsize())
                    pipe = client.pipeline(transaction=False)
                    for part in ("wait", "active", "delayed", "completed", "dlq"):
                        pipe.zcard(f"{PREFIX}:{{{QUEUE}}}:{part}")
                    pipe.xlen(f"{PREFIX}:{{{QUEUE}}}:events")
                    w, a, d, c, dl, xl = await pipe.execute()
                    row.update(waiting=w, active=a, delayed=d, completed_kept=c, dlq=dl,
                               stream_len=xl)  # fmt: skip
                except Exception as exc:
                    row["redis_error"] = f"{type(exc).__name__}: {exc}"
                done = len(self.completed)
                row["acked"] = len(self.acked)
                row["completed"] = done
                row["rate_per_s"] = round((done - prev_done) / max(1e-9, t - prev_t), 1)
                prev_done, prev_t = done, t
                self.samples.append(row)
                rss = row["workers_rss_kib"]
                print(
                    f"[{t:7.1f}s] acked={row['acked']} done={done} "
                    f"rate={row['rate_per_s']}/s waiting={row.get('waiting')} "
                    f"redis={row.get('redis_used_memory', 0) / 2**20:.1f}MiB "
                    f"rss={ {k: round(v / 1024, 1) for k, v in rss.items()} }",
                    flush=True,
                )
                await asyncio.sleep(self.args.sample_every)
        finally:
            await client.aclose()

    async def watch_exits(self) -> None:
        while True:
            for s in self.slots:
                if s.proc is not None and s.proc.poll() is not None:
                    self.unexpected_exits.append(
                        {"t": round(self.now(), 1), "worker": s.index, "code": s.proc.returncode}
                    )
                    print(f"!! worker {s.index} exited by itself ({s.proc.returncode})", flush=True)
                    self.spawn(s)
            await asyncio.sleep(0.2)

    def fault_failed(self, what: str) -> None:
        """A fault that did not take place as planned: reported now, and it fails the run."""
        self.chaos_errors.append(what)
        print(f"!! {what}", flush=True)

    async def restart_workers(self) -> None:
        restartable = [s for s in self.slots if s.restartable]
        if not restartable or self.args.restart_every <= 0:
            return
        k = 0
        while True:
            await asyncio.sleep(self.args.restart_every)
            s = restartable[k % len(restartable)]
            sig = signal.SIGTERM if k % 2 == 0 else signal.SIGKILL
            k += 1
            assert s.proc is not None
            proc, s.proc = s.proc, None  # keep watch_exits away from it
            print(f"-- restarting worker {s.index} with {sig.name}", flush=True)
            t_sig = time.monotonic()
            proc.send_signal(sig)
            sent = {"t": round(self.now(), 1), "worker": s.index, "signal": sig.name}
            self.signalled.append(sent)
            code = await asyncio.to_thread(proc.wait, 60)
            exit_s = time.monotonic() - t_sig
            self.spawn(s)
            try:
                ready_s = await self.wait_ready(s)
            except RuntimeError as exc:
                # The rotation goes on, but the run fails: a restart that did not
                # come back ready is a finding, never a silent end of the faults.
                self.fault_failed(f"t={self.now():.1f} restart of worker {s.index}: {exc}")
                continue
            self.restarts.append(
                {
                    "t": round(self.now(), 1),
                    "worker": s.index,
                    "signal": sig.name,
                    "exit_code": code,
                    "exit_s": round(exit_s, 3),
                    "replacement_ready_s": round(ready_s, 3),
                }
            )
            print(f"-- restarted worker {s.index} with {sig.name} (exit {code})", flush=True)

    async def crash_redis(self) -> None:
        at = self.args.redis_restart_at
        if not 0 < at < 1:
            return
        await asyncio.sleep(self.duration * at)
        done_before = len(self.completed)
        t_kill = time.monotonic()
        await asyncio.to_thread(self.server.kill)
        await asyncio.sleep(self.args.redis_down_s)
        await asyncio.to_thread(self.server.restart)
        t_back = time.monotonic()
        while self.last_completion < t_back:
            await asyncio.sleep(0.01)
        self.redis_restart = {
            "t": round(t_kill - self.t0, 1),
            "signal": "SIGKILL",
            "appendfsync": "always",
            "down_s": round(t_back - t_kill, 3),
            "first_completion_after_back_s": round(self.last_completion - t_back, 3),
            "completed_before": done_before,
            "workers_alive_after": sum(
                1 for s in self.slots if s.proc is not None and s.proc.poll() is None
            ),
        }
        print(f"-- Redis SIGKILLed and restarted from AOF: {self.redis_restart}", flush=True)

    # ------------------------------------------------------------------ run
    async def run(self) -> dict[str, Any]:
        a = self.args
        source = self.freeze_source()
        self.start_redis()
        self.slots = [Slot(i, restartable=i > 0) for i in range(a.workers)]
        for s in self.slots:
            self.spawn(s)
        for s in self.slots:
            await self.wait_ready(s)
        self.t0 = time.monotonic()
        print(f"soak: {a.minutes} min at {a.rate} jobs/s, {a.workers} workers, {self.url}",
              flush=True)  # fmt: skip
        # The workers' logs while it runs, and the server a killed soak leaves behind
        # (it runs in a session of its own).
        print(f"soak: work dir {self.work} redis pid {self.server.pid}", flush=True)
        reader = asyncio.ensure_future(self.read_events())
        sampler = asyncio.ensure_future(self.sample())
        exits = asyncio.ensure_future(self.watch_exits())
        producer = asyncio.ensure_future(self.produce())
        chaos = [
            asyncio.ensure_future(self.restart_workers()),
            asyncio.ensure_future(self.crash_redis()),
        ]
        try:
            await asyncio.sleep(self.duration)
            self.producing = False
            await producer
            for t in chaos:
                t.cancel()
            ended = await asyncio.gather(*chaos, return_exceptions=True)
            for t, res in zip(chaos, ended, strict=True):
                if isinstance(res, Exception):
                    self.fault_failed(f"{t.get_coro().__name__} died: {res!r}")
            # Drain: every acknowledged job must reach an outcome.
            deadline = time.monotonic() + a.drain_timeout
            while time.monotonic() < deadline and self.acked - self.completed.keys() - self.dead:
                await asyncio.sleep(0.1)
            drained_s = round(a.drain_timeout - max(0.0, deadline - time.monotonic()), 1)
            exits.cancel()
            await asyncio.gather(exits, return_exceptions=True)
            stops = []
            for s in self.slots:
                if s.proc is not None and s.proc.poll() is None:
                    # A replacement started by the last restart may still be importing:
                    # SIGTERM before its handlers are in place is not a graceful stop.
                    with contextlib.suppress(RuntimeError):
                        await self.wait_ready(s)
                    s.proc.send_signal(signal.SIGTERM)
            for s in self.slots:
                if s.proc is not None:
                    stops.append(await asyncio.to_thread(s.proc.wait, 60))
            await asyncio.sleep(a.sample_every / 10)
        finally:
            producer.cancel()
            for t in (*chaos, exits):
                t.cancel()
            sampler.cancel()
            reader.cancel()
            await asyncio.gather(producer, sampler, reader, *chaos, exits,
                                 return_exceptions=True)  # fmt: skip
        return self.judge(source, drained_s, stops)

    def _restarts_expected(self) -> int:
        every = self.args.restart_every
        if every <= 0 or not any(s.restartable for s in self.slots):
            return 0
        return int(self.duration // (every + 5))

    def judge(self, source: dict[str, Any], drained_s: float, stops: list[int]) -> dict[str, Any]:
        a = self.args
        lost = sorted(self.acked - self.completed.keys() - self.dead)
        dup = sorted(j for j, n in self.completed.items() if n > 1)
        reruns = sum(1 for j in self.acked if self.started[j] > 1)
        warm = min(max(120.0, 0.15 * self.duration), 0.5 * self.duration)
        steady = [
            (r["t"], r["workers_rss_kib"]["w0"] / 1024)
            for r in self.samples
            if r["t"] >= warm and "w0" in r["workers_rss_kib"]
        ]
        redis_mem = [
            (r["t"], r["redis_used_memory"] / 2**20)
            for r in self.samples
            if r["t"] >= warm and "redis_used_memory" in r
        ]
        w_trend, r_trend = _trend(steady), _trend(redis_mem)
        w_tol = max(a.worker_tolerance_mib, 0.10 * (w_trend["mean"] if w_trend else 0))
        r_tol = max(a.redis_tolerance_mib, 0.15 * (r_trend["mean"] if r_trend else 0))
        peaks = {
            f"w{s.index}": round(max(s.peak_rss_kib.values(), default=0) / 1024, 1)
            for s in self.slots
        }
        sigterm_codes = [r["exit_code"] for r in self.restarts if r["signal"] == "SIGTERM"]
        checks = {
            "zero_lost": not lost,
            "zero_duplicate_completions": not dup,
            "ledger_complete": not self.stream_gap,
            "worker_memory_bounded": _bounded(w_trend, w_tol),
            "redis_memory_bounded": _bounded(r_trend, r_tol),
            "workers_never_exited_by_themselves": not self.unexpected_exits,
            "sigterm_exits_clean": all(c == 0 for c in sigterm_codes) and all(
                c == 0 for c in stops
            ),
            "redis_restart_done": bool(self.redis_restart) or not 0 < a.redis_restart_at < 1,
            # Every planned worker restart happened (a restart takes a few seconds on top
            # of the period), each came back ready but the last one (its replacement may
            # still be starting when the run ends: on a loaded machine a new process took
            # up to 10 s), and no fault task ended early.
            "worker_restarts_done": not self.chaos_errors
            and len(self.signalled) >= self._restarts_expected()
            and len(self.restarts) >= len(self.signalled) - 1,
        }
        elapsed = self.samples[-1]["t"] if self.samples else 0.0
        return {
            "passed": all(checks.values()),
            "checks": checks,
            "config": {
                "minutes": a.minutes,
                "rate_per_s": a.rate,
                "workers": a.workers,
                "concurrency": a.concurrency,
                "lock_duration_ms": a.lock_duration,
                "stalled_interval_ms": a.stalled_interval,
                "restart_every_s": a.restart_every,
                "redis_restart_at": a.redis_restart_at,
                "events_max_len": a.events_max_len,
                "sample_every_s": a.sample_every,
                "warmup_s": warm,
                "worker_tolerance_mib": round(w_tol, 1),
                "redis_tolerance_mib": round(r_tol, 1),
            },
            "environment": {
                "python": platform.python_version(),
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "redis_server": subprocess.run(
                    [self.server.executable, "--version"], capture_output=True, text=True
                ).stdout.strip(),
                **source,
            },
            "totals": {
                "elapsed_s": elapsed,
                "acknowledged": len(self.acked),
                "completed": len(self.completed),
                "dead_lettered": len(self.dead),
                "lost": len(lost),
                "lost_ids_sample": lost[:20],
                "duplicate_completions": len(dup),
                "jobs_started_more_than_once": reruns,
                "enqueue_batches": self.enqueue_batches,
                "enqueue_batches_refused": self.enqueue_errors,
                "mean_completion_rate_per_s": round(len(self.completed) / max(1.0, elapsed), 1),
                "drain_s": drained_s,
                "reader_reconnects": self.reader_errors,
            },
            "restarts": self.restarts,
            "restarts_signalled": self.signalled,
            "restarts_expected_at_least": self._restarts_expected(),
            "chaos_errors": self.chaos_errors,
            "unexpected_exits": self.unexpected_exits,
            "redis_restart": self.redis_restart,
            "memory": {
                "steady_worker_rss_mib": w_trend,
                "redis_used_memory_mib": r_trend,
                "peak_rss_mib_per_slot": peaks,
            },
            "samples": self.samples,
            # A failed run keeps the end of each worker's output (its log lines: never
            # job data), so a finding says what the workers were doing.
            "worker_log_tails": {} if all(checks.values()) else self.log_tails(),
        }

    def log_tails(self, lines: int = 60) -> dict[str, list[str]]:
        tails: dict[str, list[str]] = {}
        for path in sorted(self.work.glob("w*.stderr")):
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").splitlines()
                tails[path.stem] = [line[:400] for line in text[-lines:]]
        return tails

    def cleanup(self) -> None:
        for s in self.slots:
            if s.proc is not None and s.proc.poll() is None:
                with contextlib.suppress(OSError):
                    s.proc.kill()
                with contextlib.suppress(Exception):
                    s.proc.wait(timeout=10)
        if self.server is not None:
            with contextlib.suppress(Exception):
                self.server.kill()
        shutil.rmtree(self.work, ignore_errors=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="soak.py", description="Soak run: steady load, restarts, memory and ledger checks."
    )
    p.add_argument("--minutes", type=float, default=60.0, help="length of the run (60)")
    p.add_argument("--rate", type=int, default=200, help="jobs added per second (200)")
    p.add_argument("--workers", type=int, default=3, help="worker processes (3; w0 steady)")
    p.add_argument("--concurrency", type=int, default=16, help="jobs per worker at once (16)")
    p.add_argument("--lock-duration", type=int, default=5000, help="lease in ms (5000)")
    p.add_argument("--stalled-interval", type=int, default=1000, help="recover sweep ms (1000)")
    p.add_argument("--restart-every", type=float, default=60.0,
                   help="seconds between worker restarts, SIGTERM/SIGKILL alternating (60)")
    p.add_argument("--redis-restart-at", type=float, default=0.5,
                   help="fraction of the run at which Redis is SIGKILLed and restarted (0.5)")
    p.add_argument("--redis-down-s", type=float, default=1.0, help="seconds Redis stays down")
    p.add_argument("--sample-every", type=float, default=10.0, help="sampling period s (10)")
    p.add_argument("--events-max-len", type=int, default=0,
                   help="event stream length kept (default: 2 minutes of history at --rate, "
                        "3 entries per job, at least 60000); the ledger reader must never "
                        "fall further behind than that")
    p.add_argument("--drain-timeout", type=float, default=120.0)
    p.add_argument("--worker-tolerance-mib", type=float, default=8.0,
                   help="allowed RSS rise of the steady worker after warm-up (max of this "
                        "and 10%% of its mean)")
    p.add_argument("--redis-tolerance-mib", type=float, default=16.0,
                   help="allowed used_memory rise after warm-up (max of this and 15%%)")
    p.add_argument("--out", type=Path, default=ROOT / "chaos" / "soak-results.json")
    args = p.parse_args(argv)  # fmt: skip
    if args.events_max_len <= 0:
        args.events_max_len = max(60_000, args.rate * 3 * 120)
    return args


def main(argv: list[str]) -> int:
    if argv and argv[0] == "worker":
        return worker_main(argv[1:])
    args = parse_args(argv)
    soak = Soak(args)
    try:
        result = asyncio.run(soak.run())
    finally:
        soak.cleanup()
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    summary = {k: result[k] for k in ("passed", "checks", "totals", "redis_restart")}
    summary["memory"] = {k: v for k, v in result["memory"].items()}
    print(json.dumps(summary, indent=2))
    print(f"results written to {args.out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
