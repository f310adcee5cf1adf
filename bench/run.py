"""kitium-queue benchmark suite: kitium-queue and its Python peers side by side.

    .venv/bin/python bench/run.py                     # everything, 3 repetitions
    .venv/bin/python bench/run.py --quick             # smaller sizes, a smoke run
    .venv/bin/python bench/run.py --only drain1,latency --peers saq,huey --reps 5
    .venv/bin/python bench/run.py --peers none        # kitium-queue only

One private ``redis-server`` (free loopback port, no persistence) serves every run;
it is flushed before each workload and each workload runs in fresh subprocesses
(kitium-queue in the project's venv, each peer in its own venv under ``bench/.peers/``,
created on first use). Peers run interleaved with kitium-queue, repetition by
repetition; the figures are medians over the repetitions.

Output: a table on stdout, all raw figures in ``bench/results-<timestamp>.json`` and
the summary in ``bench/RESULTS.md``. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import queue
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from _redis import RedisServer  # noqa: E402

KITIUM = "kitium-queue"

# --------------------------------------------------------------------------- peers


@dataclass(frozen=True)
class Peer:
    name: str
    packages: tuple[str, ...]
    dist: str  # distribution whose version is reported
    guarantee: str
    settings: str
    worker: dict[str, Any] = field(default_factory=dict)
    bulk: bool = False  # has a bulk enqueue API (the adapter's enqueue_many)
    async_client: bool = True  # producer API is asyncio (concurrent add_job applies)
    runtime: str = "python"  # "node": bench/node/<name>_peer.mjs, installed with npm ci


PEERS: dict[str, Peer] = {
    p.name: p
    for p in [
        Peer(
            "arq", ("arq", "hiredis"), "arq",
            "at-least-once (job stays queued until done; re-run after its in-progress key "
            "expires)",
            "max_jobs=20, poll_delay=0.01 s (default 0.5 s caps it at ~200 jobs/s)",
            {"concurrency": 20, "poll_delay": 0.01},
        ),
        Peer(
            "saq", ("saq[redis]", "hiredis", "typing_extensions"), "saq",
            "at-least-once (sweep retries jobs of a dead worker, after up to 60 s)",
            "Worker(concurrency=20)",
            {"concurrency": 20},
        ),
        Peer(
            "rq", ("rq", "hiredis"), "rq",
            "at-most-once by default (a dead worker's job goes to the failed registry; "
            "re-run only with Retry)",
            "SimpleWorker (no fork per job), one job at a time per process",
            {}, bulk=True, async_client=False,
        ),
        Peer(
            "celery", ("celery[redis]", "hiredis"), "celery",
            "at-most-once for a running task (early ack, the default); at-least-once "
            "with acks_late",
            "Redis broker, -P threads -c 20 (solo and -c 1/4 no faster), no result backend, "
            "prefetch x4",
            {"concurrency": 20, "pool": "threads"}, async_client=False,
        ),
        Peer(
            "dramatiq", ("dramatiq[redis]", "hiredis"), "dramatiq",
            "at-least-once (unacked messages of a dead worker are requeued)",
            "RedisBroker, default middleware, worker_threads=20 (default 8 drained 2.5x "
            "slower here)",
            {"concurrency": 20}, async_client=False,
        ),
        Peer(
            "huey", ("huey", "redis", "hiredis"), "huey",
            "at-most-once (a job is popped before it runs; lost if its worker dies)",
            "RedisHuey (blocking pop), thread consumer, workers=1 (its default; 2-20 threads "
            "were no faster here)",
            {"concurrency": 1}, async_client=False,
        ),
        Peer(
            "taskiq", ("taskiq", "taskiq-redis", "hiredis"), "taskiq",
            "at-most-once with ListQueueBroker (BRPOP); RedisStreamBroker acks",
            "ListQueueBroker, max_async_tasks=100 (its default), no result backend",
            {"concurrency": 100},
        ),
        Peer(
            "bullmq", ("bullmq", "hiredis"), "bullmq",
            "at-least-once (locks + stalled-job check)",
            "Worker(concurrency=20), defaults otherwise (completed jobs kept)",
            {"concurrency": 20}, bulk=True,
        ),
        # The engine the brief is built on: BullMQ itself, on Node.js.
        Peer(
            "bullmq-node", ("bullmq",), "bullmq",
            "at-least-once (locks + stalled-job check)",
            "Node.js BullMQ 5.x (bench/node, npm ci): Worker(concurrency=20), defaults "
            "otherwise (completed jobs kept)",
            {"concurrency": 20}, bulk=True, runtime="node",
        ),
    ]
}

NODE_DIR = BENCH / "node"

KITIUM_GUARANTEE = "at-least-once (leases + fencing; a dead worker's job re-runs)"


def peer_python(name: str) -> Path:
    return BENCH / ".peers" / name / "bin" / "python"


def ensure_node_env(log: Callable[[str], None]) -> str | None:
    """``npm ci`` in ``bench/node`` (from its lockfile) unless already installed."""
    if (NODE_DIR / "node_modules" / "bullmq" / "package.json").exists():
        return None
    log("installing bench/node: npm ci")
    try:
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True,
                       capture_output=True, text=True, timeout=900)
    except FileNotFoundError:
        return "npm not found (install Node.js 18+ with npm)"
    except subprocess.CalledProcessError as exc:
        tail = "\n".join((exc.stderr or exc.stdout or "").strip().splitlines()[-5:])
        return f"npm ci failed: {tail}"
    except subprocess.TimeoutExpired:
        return "npm ci timed out"
    return None


def node_version(package: str) -> str:
    try:
        meta = json.loads((NODE_DIR / "node_modules" / package / "package.json").read_text())
        node = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=30)
        return f"{meta['version']} (node {node.stdout.strip()})"
    except Exception:
        return "?"


def ensure_peer_env(peer: Peer, log: Callable[[str], None]) -> str | None:
    """Create ``bench/.peers/<name>`` with the peer installed; return an error or None.

    One venv per peer: their redis-py pins do not fit one environment (arq needs
    redis<6, saq redis<8, taskiq-redis redis>=8). A Node peer is installed once in
    ``bench/node`` from its lockfile.
    """
    if peer.runtime == "node":
        return ensure_node_env(log)
    py = peer_python(peer.name)
    marker = py.parent.parent / ".kq-installed"
    want = " ".join(peer.packages)
    if py.exists() and marker.exists() and marker.read_text() == want:
        return None
    env_dir = py.parent.parent
    log(f"creating {env_dir.relative_to(REPO)}: pip install {want}")
    try:
        if not py.exists():
            subprocess.run(
                [sys.executable, "-m", "venv", str(env_dir)], check=True, capture_output=True
            )
        subprocess.run(
            [str(py), "-m", "pip", "install", "-q", *peer.packages],
            check=True, capture_output=True, text=True, timeout=900,
        )
    except subprocess.CalledProcessError as exc:
        tail = "\n".join((exc.stderr or exc.stdout or "").strip().splitlines()[-5:])
        return f"install failed: {tail}"
    except subprocess.TimeoutExpired:
        return "install timed out"
    marker.write_text(want)
    return None


def dist_version(py: Path | str, dist: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({dist!r}))"
    try:
        res = subprocess.run(
            [str(py), "-c", code], capture_output=True, text=True, timeout=60, check=True
        )
        return res.stdout.strip()
    except Exception:
        return "?"


# --------------------------------------------------------------------------- processes


class Proc:
    """One adapter subprocess speaking the line protocol of ``_common.py``."""

    def __init__(self, argv: list[str], log_path: Path, events: queue.Queue[Any], tag: int,
                 env: dict[str, str] | None = None):
        self.tag = tag
        self.log_path = log_path
        self.result: dict[str, Any] | None = None
        self.count = 0
        self.ready = False
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in kill()
        self.p = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            bufsize=1,
            cwd=REPO,
            env=env,
            start_new_session=True,
        )
        self._events = events
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            line = line.rstrip("\n")
            if line == "READY":
                self.ready = True
            elif line.startswith("P "):
                self.count = int(line[2:])
            elif line.startswith("RESULT "):
                self.result = json.loads(line[7:])
            self._events.put((self.tag, line))
        self._events.put((self.tag, None))

    def send(self, cmd: str) -> None:
        with contextlib.suppress(BrokenPipeError, OSError, ValueError):
            assert self.p.stdin is not None
            self.p.stdin.write(cmd + "\n")
            self.p.stdin.flush()

    def alive(self) -> bool:
        return self.p.poll() is None

    def kill(self) -> None:
        if self.p.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.p.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.p.wait(timeout=10)
        self._log.close()

    def log_tail(self, n: int = 12) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


class BenchError(RuntimeError):
    pass


class ForeignCpu:
    """CPU used on this machine by processes that are not part of the benchmark.

    busy CPU time of the whole machine (``/proc/stat``) minus the CPU time of this
    process, of its reaped subprocesses (``RUSAGE_CHILDREN``) and of the private
    redis-server (``INFO cpu``). Divided by wall time it is the number of cores other
    work took while a case ran: on a 2-core machine anything above ~0.2 disturbs the
    figures (it slows every library, but not evenly).
    """

    def __init__(self, r: redis.Redis) -> None:
        self.r = r
        self.tick = os.sysconf("SC_CLK_TCK")

    def _busy(self) -> float:
        try:
            f = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        except OSError:
            return float("nan")
        v = [int(x) for x in f]
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return (sum(v[:8]) - idle) / self.tick

    def _ours(self) -> float:
        me = resource.getrusage(resource.RUSAGE_SELF)
        ch = resource.getrusage(resource.RUSAGE_CHILDREN)
        c = self.r.info("cpu")
        rs = float(c["used_cpu_user"]) + float(c["used_cpu_sys"])
        return me.ru_utime + me.ru_stime + ch.ru_utime + ch.ru_stime + rs

    def snapshot(self) -> tuple[float, float, float]:
        return (time.monotonic(), self._busy(), self._ours())

    def wait_quiet(self, budget: float, limit: float = 0.2) -> float:
        """Wait (up to ``budget`` s) until other work takes < ``limit`` cores; return it."""
        end = time.monotonic() + budget
        while True:
            snap = self.snapshot()
            time.sleep(0.5)
            load = self.cores(snap)
            if load < limit or time.monotonic() >= end:
                return load

    def cores(self, since: tuple[float, float, float]) -> float:
        t0, b0, o0 = since
        t1, b1, o1 = self.snapshot()
        return max(0.0, ((b1 - b0) - (o1 - o0)) / max(1e-9, t1 - t0))


# --------------------------------------------------------------------------- runner


class Runner:
    def __init__(self, args: argparse.Namespace, server: RedisServer, logdir: Path) -> None:
        self.args = args
        self.url = server.url
        self.r = redis.Redis.from_url(server.url)
        self.logdir = logdir
        self.quick = args.quick
        self._seq = 0

    # ---- helpers
    def env(self, lib: str) -> dict[str, str] | None:
        if lib == KITIUM and self.args.kitium_path:
            env = dict(os.environ)
            env["PYTHONPATH"] = self.args.kitium_path
            return env
        return None

    def argv(self, lib: str, role: str, params: dict[str, Any]) -> list[str]:
        if lib == KITIUM:
            return [sys.executable, str(BENCH / "kitium_adapter.py"), role, json.dumps(params)]
        if PEERS[lib].runtime == "node":
            script = NODE_DIR / f"{lib.removesuffix('-node')}_peer.mjs"
            return ["node", str(script), role, json.dumps(params)]
        return [str(peer_python(lib)), str(BENCH / "peers" / f"{lib}_peer.py"), role,
                json.dumps(params)]

    def fresh(self, lib: str, wl: str) -> dict[str, Any]:
        self.r.flushall()
        self._seq += 1
        q = f"b{self._seq}-{wl}-{uuid.uuid4().hex[:6]}"
        return {"url": self.url, "queue": q}

    def logfile(self, lib: str, wl: str, what: str) -> Path:
        return self.logdir / f"{self._seq:03d}-{lib}-{wl}-{what}.log"

    def oneshot(self, lib: str, role: str, params: dict[str, Any], wl: str,
                timeout: float) -> dict[str, Any]:
        log = self.logfile(lib, wl, role)
        with open(log, "w") as fh:
            try:
                res = subprocess.run(
                    self.argv(lib, role, params), stdout=subprocess.PIPE, stderr=fh,
                    text=True, timeout=timeout, cwd=REPO, env=self.env(lib),
                )
            except subprocess.TimeoutExpired:
                raise BenchError(f"{role} timed out after {timeout:.0f} s") from None
        for line in res.stdout.splitlines():
            if line.startswith("RESULT "):
                out: dict[str, Any] = json.loads(line[7:])
                if "error" in out:
                    raise BenchError(out["error"])
                return out
        tail = "\n".join(log.read_text(errors="replace").strip().splitlines()[-6:])
        raise BenchError(f"{role} failed (exit {res.returncode}): {tail}")

    def info(self, section: str) -> dict[str, Any]:
        return dict(self.r.info(section))

    def cmdstats(self) -> dict[str, int]:
        raw = self.info("commandstats")
        out: dict[str, int] = {}
        for k, v in raw.items():
            name = k.removeprefix("cmdstat_")
            if name in ("info", "flushall", "config|resetstat"):
                continue
            out[name] = int(v["calls"])
        return out

    def redis_cpu(self) -> float:
        c = self.info("cpu")
        return float(c["used_cpu_user"]) + float(c["used_cpu_sys"])

    def workers(self, lib: str, wl: str, nproc: int, params: dict[str, Any], expect: int,
                timeout: float, after_go: Callable[[], None] | None = None,
                stall: float = 30.0) -> tuple[list[dict[str, Any]], float]:
        """Start ``nproc`` workers, GO once all are READY, STOP when ``expect`` jobs ran."""
        events: queue.Queue[Any] = queue.Queue()
        procs = [
            Proc(self.argv(lib, "worker", params), self.logfile(lib, wl, f"worker{i}"),
                 events, i, self.env(lib))
            for i in range(nproc)
        ]
        try:
            deadline = time.monotonic() + 120
            while not all(p.ready for p in procs):
                if time.monotonic() > deadline:
                    raise BenchError("workers did not get ready within 120 s")
                for p in procs:
                    if not p.alive() and not p.ready:
                        raise BenchError(f"worker exited during start-up:\n{p.log_tail()}")
                with contextlib.suppress(queue.Empty):
                    events.get(timeout=0.1)
            t_go = time.time()
            for p in procs:
                p.send("GO")
            if after_go is not None:
                after_go()
            deadline = time.monotonic() + timeout
            last_total, last_change = -1, time.monotonic()
            error: str | None = None
            while True:
                total = sum(p.count for p in procs)
                now = time.monotonic()
                if total >= expect:
                    break
                if total != last_total:
                    last_total, last_change = total, now
                if now > deadline:
                    error = f"timeout after {timeout:.0f} s with {total}/{expect} jobs done"
                    break
                if now - last_change > stall:
                    error = f"no progress for {stall:.0f} s at {total}/{expect} jobs"
                    break
                dead = [p for p in procs if not p.alive()]
                if dead:
                    raise BenchError(f"worker died:\n{dead[0].log_tail()}")
                with contextlib.suppress(queue.Empty):
                    events.get(timeout=0.05)
            for p in procs:
                p.send("STOP")
            end = time.monotonic() + 15
            while any(p.result is None for p in procs) and time.monotonic() < end:
                with contextlib.suppress(queue.Empty):
                    events.get(timeout=0.1)
            results = [p.result for p in procs]
            if any(r is None for r in results):
                raise BenchError("a worker did not report its figures")
            if error:
                got = sum(r["count"] for r in results if r)
                firsts = [r["first"] for r in results if r and r["first"]]
                lasts = [r["last"] for r in results if r and r["last"]]
                if firsts and lasts:
                    error += f" (partial: {got / max(1e-9, max(lasts) - min(firsts)):,.0f} jobs/s)"
                raise BenchError(error)
            return [r for r in results if r is not None], t_go
        finally:
            for p in procs:
                p.kill()

    # ---- workloads
    def enqueue(self, lib: str, wl: str, mode: str, blocking: bool = False) -> dict[str, Any]:
        sizes = {
            "single": (1000, 5000),
            "concurrent": (5000, 20000),
            "bulk": (10000, 50000),
        }
        n = sizes[mode][0 if self.quick else 1]
        params = {**self.fresh(lib, wl), "mode": mode, "n": n, "batch": 1000, "conc": 100,
                  "max_seconds": 5, "blocking": blocking}
        s0 = self.cmdstats()
        res = self.oneshot(lib, "enqueue", params, wl, timeout=300)
        s1 = self.cmdstats()
        cmds = sum(s1.values()) - sum(s0.values())
        done = res["n"] + 20  # 20 warm-up jobs
        return {
            "rate": res["rate"], "n": res["n"],
            "round_trips_per_job": res["sends"] / res["n"],
            "cmds_per_job": cmds / done,
        }

    def drain(self, lib: str, wl: str, nproc: int, worker: dict[str, Any],
              n: int | None = None, fill: dict[str, Any] | None = None) -> dict[str, Any]:
        n = n or (5000 if self.quick else 20000)
        base = self.fresh(lib, wl)
        s0, m0 = self.cmdstats(), int(self.info("memory")["used_memory"])
        fres = self.oneshot(lib, "fill", {**base, "n": n, **(fill or {})}, wl, timeout=600)
        s1, m1 = self.cmdstats(), int(self.info("memory")["used_memory"])
        cpu1 = self.redis_cpu()
        results, _ = self.workers(lib, wl, nproc, {**base, **worker}, n,
                                  timeout=60 if self.quick else 300)
        s2, cpu2 = self.cmdstats(), self.redis_cpu()
        first = min(r["first"] for r in results if r["first"])
        last = max(r["last"] for r in results if r["last"])
        count = sum(r["count"] for r in results)
        consume = {k: v - s1.get(k, 0) for k, v in s2.items() if v - s1.get(k, 0) > 0}
        produce = sum(s1.values()) - sum(s0.values())
        top = sorted(consume.items(), key=lambda kv: -kv[1])[:6]
        return {
            "rate": count / (last - first),
            "seconds": last - first,
            "jobs": count,
            "per_process": [r["count"] for r in results],
            "fill_rate": fres["rate"],
            "mem_per_job": (m1 - m0) / n,
            "cmds_per_job_produce": produce / n,
            "cmds_per_job_consume": sum(consume.values()) / count,
            "scripts_per_job_consume": sum(
                v for k, v in consume.items() if k in ("eval", "evalsha", "fcall", "evalsha_ro")
            ) / count,
            "round_trips_per_job_consume": sum(r["sends"] for r in results) / count,
            "round_trips_per_job_produce": fres["sends"] / n,
            "top_commands_consume": {k: round(v / count, 3) for k, v in top},
            # CPU seconds redis-server spent per second of drain (1.0 = one core busy);
            # the window also holds worker start-up, so it is a lower bound.
            "redis_cpu_util": (cpu2 - cpu1) / (last - first),
            "redis_cpu_us_per_job": (cpu2 - cpu1) / count * 1e6,
        }

    def latency(self, lib: str, wl: str, worker: dict[str, Any]) -> dict[str, Any]:
        rate = 200
        secs = 3 if self.quick else 10
        n = rate * secs
        base = self.fresh(lib, wl)
        steady: dict[str, Any] = {}

        def produce() -> None:
            def go() -> None:
                time.sleep(0.5)  # let the worker reach its idle wait
                try:
                    steady.update(self.oneshot(lib, "steady", {**base, "n": n, "rate": rate},
                                               wl, timeout=secs + 120))
                except BenchError as exc:
                    steady["error"] = str(exc)

            threading.Thread(target=go, daemon=True).start()

        results, _ = self.workers(lib, wl, 1, {**base, **worker, "latency": True}, n,
                                  timeout=secs + 60, after_go=produce)
        time.sleep(0.05)
        if "error" in steady:
            raise BenchError(steady["error"])
        lat = results[0]["lat_ms"]
        skip = min(rate, len(lat) // 10)  # the first second is warm-up
        lat = sorted(lat[skip:])
        return {
            "p50_ms": pct(lat, 50),
            "p99_ms": pct(lat, 99),
            "max_ms": lat[-1],
            "samples": len(lat),
            "producer_lag_p99_ms": steady.get("lag_p99_ms"),
        }

    def memory(self, lib: str, wl: str) -> dict[str, Any]:
        n = 20000 if self.quick else 100000
        base = self.fresh(lib, wl)
        m0 = int(self.info("memory")["used_memory"])
        self.oneshot(lib, "fill", {**base, "n": n}, wl, timeout=600)
        m1 = int(self.info("memory")["used_memory"])
        keys = int(self.r.dbsize())
        return {"bytes_per_job": (m1 - m0) / n, "jobs": n, "keys": keys}


def pct(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


# --------------------------------------------------------------------------- plan


@dataclass
class Case:
    workload: str  # --only name
    variant: str  # row label
    lib: str
    fn: Callable[[Runner], dict[str, Any]]
    na: str = ""  # set: not applicable to this library (nothing is run)


WORKLOADS = [
    "single", "single_blocking", "concurrent", "bulk", "drain1", "drain2", "latency", "memory",
    "io", "mix",
]


def kitium_cases() -> list[Case]:
    k = KITIUM
    cases = [
        Case("single", "add_job awaited one at a time", k,
             lambda r: r.enqueue(k, "single", "single")),
        Case("single_blocking", "add_job from blocking code (SyncJobQueue), one at a time", k,
             lambda r: r.enqueue(k, "single_blocking", "single", blocking=True)),
        Case("concurrent", "add_job from 100 coroutines", k,
             lambda r: r.enqueue(k, "concurrent", "concurrent")),
        Case("bulk", "add_jobs, batches of 1000", k,
             lambda r: r.enqueue(k, "bulk", "bulk")),
    ]
    for procs in (1, 2):
        for conc in (20, 200):
            cases.append(Case(
                f"drain{procs}", f"drain no-op, {procs} process{'es' if procs > 1 else ''}, "
                f"concurrency {conc}", k,
                lambda r, p=procs, c=conc: r.drain(k, f"drain{p}-c{c}", p, {"concurrency": c}),
            ))
    cases += [
        Case("latency", "enqueue→start latency at 200 jobs/s (concurrency 20)", k,
             lambda r: r.latency(k, "latency", {"concurrency": 20})),
        Case("memory", "Redis memory per waiting job", k, lambda r: r.memory(k, "memory")),
        Case("io", "drain, 1 ms await asyncio.sleep per job, 1 process, concurrency 500", k,
             lambda r: r.drain(k, "io", 1, {"concurrency": 500, "sleep_ms": 1})),
        Case("mix", "drain, 10% delayed (1-100 ms) + 30% prioritized, 1 process, "
             "concurrency 20", k,
             lambda r: r.drain(k, "mix", 1, {"concurrency": 20}, fill={"mix": True})),
    ]
    return cases


def peer_cases(peer: Peer) -> list[Case]:
    name, w = peer.name, peer.worker
    return [
        Case("single", "add_job awaited one at a time", name,
             lambda r: r.enqueue(name, "single", "single")),
        # The same call again where the producer is blocking code: the column to read
        # beside kitium-queue's SyncJobQueue (asyncio producers have no such call).
        Case("single_blocking", "add_job from blocking code, one at a time", name,
             lambda r: r.enqueue(name, "single_blocking", "single"),
             "n/a: asyncio client" if peer.async_client else ""),
        Case("concurrent", "add_job from 100 coroutines", name,
             lambda r: r.enqueue(name, "concurrent", "concurrent"),
             "" if peer.async_client else "n/a: synchronous client"),
        Case("bulk", "add_jobs, batches of 1000", name,
             lambda r: r.enqueue(name, "bulk", "bulk"),
             "" if peer.bulk else "n/a: no bulk enqueue API"),
        Case("drain1", "drain no-op, 1 process", name,
             lambda r: r.drain(name, "drain1", 1, w)),
        Case("latency", "enqueue→start latency at 200 jobs/s", name,
             lambda r: r.latency(name, "latency", w)),
    ]


# --------------------------------------------------------------------------- report


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt_rate(v: float | None) -> str:
    if v is None or v != v:
        return "–"
    return f"{v:,.0f}"


def fmt_num(v: float | None, nd: int = 2) -> str:
    if v is None or v != v:
        return "–"
    return f"{v:.{nd}f}"


def summarize(records: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(lib, workload, variant) → {metric: [values]} and errors."""
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    for rec in records:
        key = (rec["lib"], rec["workload"], rec["variant"])
        slot = out.setdefault(key, {"values": {}, "errors": [], "foreign": []})
        slot["foreign"].append(rec.get("foreign_cores", 0.0))
        if rec.get("error"):
            slot["errors"].append(rec["error"])
            continue
        for m, v in rec["metrics"].items():
            if isinstance(v, (int, float)):
                slot["values"].setdefault(m, []).append(float(v))
            else:
                slot["values"].setdefault(m, []).append(v)
    return out


def dagger(summary: dict[Any, Any], key: tuple[str, str, str] | None) -> str:
    """' †0.4' when the median load of other work during this case was above 0.2 cores."""
    slot = summary.get(key) if key else None
    vals = slot.get("foreign", []) if slot else []
    m = med(vals) if vals else 0.0
    return f" †{m:.1f}" if m > 0.2 else ""


def mval(summary: dict[Any, Any], key: tuple[str, str, str], metric: str) -> float | None:
    slot = summary.get(key)
    if not slot:
        return None
    vals = [v for v in slot["values"].get(metric, []) if isinstance(v, float)]
    return med(vals) if vals else None


def spread(summary: dict[Any, Any], key: tuple[str, str, str], metric: str) -> str:
    slot = summary.get(key) or {"values": {}}
    vals = [v for v in slot["values"].get(metric, []) if isinstance(v, float)]
    if len(vals) < 2:
        return ""
    return f" ({min(vals):,.0f}–{max(vals):,.0f})"


KITIUM_ROWS = [
    ("single", "add_job awaited one at a time", "rate", "jobs/s"),
    ("single_blocking", "add_job from blocking code (SyncJobQueue), one at a time", "rate",
     "jobs/s"),
    ("concurrent", "add_job from 100 coroutines", "rate", "jobs/s"),
    ("bulk", "add_jobs, batches of 1000", "rate", "jobs/s"),
]


def kitium_table(summary: dict[Any, Any], reps: int) -> list[str]:
    lines = ["| workload | figure (median of reps; min–max) | notes |", "|---|---|---|"]
    seen: list[tuple[str, str]] = []
    for (lib, wl, var) in summary:
        if lib == KITIUM and (wl, var) not in seen:
            seen.append((wl, var))
    order = {w: i for i, w in enumerate(WORKLOADS)}
    seen.sort(key=lambda x: order.get(x[0], 99))
    for wl, var in seen:
        key = (KITIUM, wl, var)
        slot = summary[key]
        if not slot["values"]:
            lines.append(f"| {var} | failed | {'; '.join(slot['errors'])[:200]} |")
            continue

        def g(m: str, key: tuple[str, str, str] = key) -> float | None:
            return mval(summary, key, m)

        if wl in ("single", "single_blocking", "concurrent", "bulk"):
            fig = f"**{fmt_rate(g('rate'))} jobs/s**{spread(summary, key, 'rate')}"
            note = (f"{fmt_num(g('round_trips_per_job'), 3)} round trips/job, "
                    f"{fmt_num(g('cmds_per_job'), 1)} Redis commands/job")
        elif wl in ("drain1", "drain2", "io", "mix"):
            fig = f"**{fmt_rate(g('rate'))} jobs/s**{spread(summary, key, 'rate')}"
            note = (f"consume: {fmt_num(g('round_trips_per_job_consume'), 3)} round trips/job, "
                    f"{fmt_num(g('cmds_per_job_consume'), 1)} Redis commands/job "
                    f"({fmt_num(g('scripts_per_job_consume'), 3)} script calls); "
                    f"produce (add_jobs): {fmt_num(g('cmds_per_job_produce'), 1)} commands/job; "
                    f"{fmt_rate(g('mem_per_job'))} B/waiting job; redis-server CPU "
                    f"{fmt_num(g('redis_cpu_us_per_job'), 1)} µs/job")
        elif wl == "latency":
            fig = (f"**p50 {fmt_num(g('p50_ms'))} ms, p99 {fmt_num(g('p99_ms'))} ms**")
            note = (f"max {fmt_num(g('max_ms'))} ms, {fmt_rate(g('samples'))} samples after "
                    f"1 s warm-up; producer lag p99 {fmt_num(g('producer_lag_p99_ms'))} ms")
        elif wl == "memory":
            fig = f"**{fmt_rate(g('bytes_per_job'))} bytes/job**"
            note = (f"used_memory delta over {fmt_rate(g('jobs'))} small waiting jobs, "
                    f"{fmt_rate(g('keys'))} keys")
        else:
            fig, note = "?", ""
        lines.append(f"| {var} | {fig}{dagger(summary, key)} | {note} |")
    return lines


PEER_COLS = [
    ("single", "rate", "add_job single (jobs/s)", True),
    ("single_blocking", "rate", "add_job single, blocking code (jobs/s)", True),
    ("concurrent", "rate", "add_job ×100 coroutines (jobs/s)", True),
    ("bulk", "rate", "bulk (jobs/s)", True),
    ("drain1", "rate", "drain 20k, 1 proc (jobs/s)", True),
    ("latency", "p50_ms", "latency p50 (ms)", False),
    ("latency", "p99_ms", "latency p99 (ms)", False),
]


def peer_table(summary: dict[Any, Any], libs: list[str]) -> list[str]:
    def pick(lib: str, wl: str) -> tuple[str, str, str] | None:
        if lib == KITIUM and wl == "drain1":
            key = (KITIUM, "drain1", "drain no-op, 1 process, concurrency 20")
            return key if key in summary else None
        cands = [k for k in summary if k[0] == lib and k[1] == wl]
        return cands[0] if cands else None

    head = ["library"] + [c[2] for c in PEER_COLS] + ["commands/job (consume)",
                                                     "round trips/job (consume)",
                                                     "B/waiting job"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for lib in libs:
        row = [f"**{lib}**" if lib == KITIUM else lib]
        for wl, metric, _, higher in PEER_COLS:
            key = pick(lib, wl)
            if key is None:
                row.append("–")
                continue
            v = mval(summary, key, metric)
            errs = summary[key]["errors"]
            if v is None:
                row.append("n/a" if errs and errs[0].startswith("n/a") else "failed")
                continue
            cell = (fmt_rate(v) if higher else fmt_num(v)) + dagger(summary, key)
            kkey = pick(KITIUM, wl)
            kv = mval(summary, kkey, metric) if kkey else None
            if lib != KITIUM and kv and v:
                ratio = kv / v if higher else v / kv
                cell += f" (kq {ratio:.1f}×)"
            row.append(cell)
        dkey = pick(lib, "drain1")
        for metric, nd in (("cmds_per_job_consume", 1), ("round_trips_per_job_consume", 2),
                           ("mem_per_job", 0)):
            v = mval(summary, dkey, metric) if dkey else None
            row.append(fmt_rate(v) if nd == 0 else fmt_num(v, nd))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def failures(summary: dict[Any, Any], na: bool = False) -> list[str]:
    """Failed runs (or, with ``na``, workloads a library has no API for)."""
    lines = []
    for (lib, _wl, var), slot in summary.items():
        errs = [e for e in slot["errors"] if e.startswith("n/a") == na]
        if errs:
            uniq = sorted(set(e.splitlines()[0][:300] for e in errs))
            lines.append(f"- {lib} / {var}: {'; '.join(uniq)}")
    return lines


def write_markdown(path: Path, summary: dict[Any, Any], meta: dict[str, Any],
                   libs: list[str], setup_errors: dict[str, str]) -> None:
    reps = meta["reps"]
    lines = [
        "# Benchmark results",
        "",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}; total run time {meta['elapsed_s'] / 60:.1f} min; "
        f"{reps} repetition{'s' if reps > 1 else ''}, peers interleaved with kitium-queue, "
        "figures are medians.",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in meta["machine"].items()),
        "",
        f"Other work on the machine during the run (CPU not used by the benchmark, its "
        f"subprocesses or its redis-server): median {meta['foreign_cores_median']:.2f} "
        f"cores, max {meta['foreign_cores_max']:.2f}; {meta['foreign_disturbed_cases']} of "
        f"{meta['cases']} runs had more than 0.2 cores of it (marked † below, with the "
        "median load in cores). Such runs are slower than on a quiet machine.",
        "",
        "Each workload runs in fresh processes against one private redis-server (no "
        "persistence), flushed before each workload. Jobs are no-ops unless stated. "
        "Drain rates are measured from the first job start to the last job completion "
        "(across processes). Round trips are counted in the client (one per request "
        "write: a command or a whole pipeline); Redis commands come from `INFO "
        "commandstats` and include the commands run inside Lua scripts.",
        "",
        "## kitium-queue",
        "",
        "Default settings except `worker.concurrency` (leases, fencing, the event stream, "
        "the default 300 s job timeout and retention on).",
        "",
        *kitium_table(summary, reps),
        "",
    ]
    if len(libs) > 1:
        lines += [
            "## Side by side with the Python peers",
            "",
            "One worker process each; `kq N×` = how many times kitium-queue's figure "
            "(throughput: higher is better; latency: lower is better). kitium-queue's "
            "drain column is its default concurrency 20. Commands, round trips and memory "
            "come from the drain run (memory: `used_memory` delta after putting the 20,000 "
            "jobs in the queue).",
            "",
            *peer_table(summary, libs),
            "",
            "### Versions, settings and delivery guarantees",
            "",
            "| library | version | settings used | delivery guarantee |",
            "|---|---|---|---|",
            f"| kitium-queue | {meta['versions'].get(KITIUM, '?')} | defaults, concurrency "
            f"20 | {KITIUM_GUARANTEE} |",
        ]
        for lib in libs:
            if lib == KITIUM:
                continue
            p = PEERS[lib]
            lines.append(
                f"| {lib} | {meta['versions'].get(lib, '?')} | {p.settings} | {p.guarantee} |"
            )
        lines += [
            "",
            "Each peer is installed in its own venv `bench/.peers/<peer>` (their redis-py "
            "pins conflict: arq needs redis<6, saq redis<8, taskiq-redis redis>=8), with "
            "hiredis. Workloads a peer has no API for are marked n/a.",
            "",
        ]
    fails = failures(summary)
    extra = [f"- {lib}: could not be set up: {err}" for lib, err in setup_errors.items()]
    if fails or extra:
        lines += ["## Failures", "", *extra, *fails, ""]
    nas = failures(summary, na=True)
    if nas:
        lines += ["## Not applicable", "", *nas, ""]
    path.write_text("\n".join(lines) + "\n")


def print_table(summary: dict[Any, Any], libs: list[str], reps: int) -> None:
    print()
    print("\n".join(kitium_table(summary, reps)))
    if len(libs) > 1:
        print()
        print("\n".join(peer_table(summary, libs)))
    fails = failures(summary)
    if fails:
        print("\nFailures:")
        print("\n".join(fails))


# --------------------------------------------------------------------------- main


def machine_facts(r: redis.Redis) -> dict[str, str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    srv = r.info("server")
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "redis": str(srv.get("redis_version")),
        "os": f"{platform.system()} {platform.release()}",
    }


def kitium_source(rev: str) -> str:
    """Which kitium-queue code is measured: a commit, and whether src/ had local edits."""
    def git(*a: str) -> str:
        res = subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True)
        return res.stdout.strip()

    if rev:
        return f"commit {git('rev-parse', '--short', rev)}"
    dirty = bool(git("status", "--porcelain", "--", "src"))
    head = git("rev-parse", "--short", "HEAD")
    return f"work tree at {head}" + (" with uncommitted changes in src/" if dirty else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    ap.add_argument("--only", default="", help=f"comma list of workloads: {','.join(WORKLOADS)}")
    ap.add_argument("--peers", default=",".join(PEERS),
                    help="comma list of peers, or 'none' (default: all)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    ap.add_argument("--md", default=str(BENCH / "RESULTS.md"), help="markdown output path")
    ap.add_argument("--kitium-rev", default="",
                    help="benchmark kitium-queue as committed at this git revision (its src/ "
                         "is exported to a temporary directory) instead of the work tree")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                    help="before each case, wait up to this long for other work on the "
                         "machine to drop below 0.2 cores (default 0: do not wait)")
    ap.add_argument("--set", action="append", default=[], metavar="PEER.KEY=VALUE",
                    help="override a peer's worker setting, e.g. huey.concurrency=8, "
                         "celery.pool=solo (repeatable)")
    args = ap.parse_args()

    only = [w for w in args.only.split(",") if w] or WORKLOADS
    bad = [w for w in only if w not in WORKLOADS]
    if bad:
        ap.error(f"unknown workload(s) {bad}; choose from {WORKLOADS}")
    peer_names = [] if args.peers in ("", "none") else args.peers.split(",")
    bad = [p for p in peer_names if p not in PEERS]
    if bad:
        ap.error(f"unknown peer(s) {bad}; choose from {list(PEERS)}")

    for item in args.set:
        try:
            target, value = item.split("=", 1)
            pname, key = target.split(".", 1)
            peer = PEERS[pname]
        except (ValueError, KeyError):
            ap.error(f"--set {item!r}: use PEER.KEY=VALUE with a known peer")
        with contextlib.suppress(json.JSONDecodeError):
            value = json.loads(value)
        peer.worker[key] = value
        PEERS[pname] = dataclasses.replace(
            peer, settings=peer.settings + f" [overridden: {key}={value}]"
        )

    t_start = time.time()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    command = ".venv/bin/python bench/run.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    log = lambda msg: print(f"[{time.time() - t_start:7.1f}s] {msg}", flush=True)  # noqa: E731

    args.kitium_path = ""
    kitium_src = kitium_source(args.kitium_rev)
    if args.kitium_rev:
        tmp = Path(tempfile.mkdtemp(prefix="kq-bench-src-"))
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.kitium_rev, "src"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
        args.kitium_path = str(tmp / "src")
    log(f"kitium-queue source: {kitium_src}")

    setup_errors: dict[str, str] = {}
    versions = {KITIUM: dist_version(sys.executable, "kitium-job-queue") + f" ({kitium_src})"}
    ready_peers = []
    for name in peer_names:
        err = ensure_peer_env(PEERS[name], log)
        if err:
            setup_errors[name] = err
            log(f"{name}: {err}")
            continue
        versions[name] = (node_version(PEERS[name].dist) if PEERS[name].runtime == "node"
                          else dist_version(peer_python(name), PEERS[name].dist))
        ready_peers.append(name)

    logdir = Path(tempfile.mkdtemp(prefix="kq-bench-logs-"))
    log(f"subprocess logs in {logdir}")
    records: list[dict[str, Any]] = []
    with RedisServer() as server:
        runner = Runner(args, server, logdir)
        foreign = ForeignCpu(runner.r)
        machine = machine_facts(runner.r)
        log(f"private redis-server {machine['redis']} on {server.url}")
        cases = [c for c in kitium_cases() if c.workload in only]
        pcases = {p: [c for c in peer_cases(PEERS[p]) if c.workload in only] for p in ready_peers}
        for rep in range(args.reps):
            for wl in WORKLOADS:
                if wl not in only:
                    continue
                libs = [KITIUM, *ready_peers]
                shift = rep % len(libs)
                libs = libs[shift:] + libs[:shift]  # interleave: rotate who goes first
                for lib in libs:
                    todo = [c for c in (cases if lib == KITIUM else pcases[lib])
                            if c.workload == wl]
                    for case in todo:
                        rec: dict[str, Any] = {"rep": rep, "lib": lib, "workload": wl,
                                               "variant": case.variant}
                        if case.na:
                            records.append({**rec, "error": case.na, "wall_s": 0.0,
                                            "foreign_cores": 0.0})
                            continue
                        if args.wait_quiet > 0:
                            foreign.wait_quiet(args.wait_quiet)
                        t0 = time.time()
                        snap = foreign.snapshot()
                        try:
                            rec["metrics"] = case.fn(runner)
                            m = rec["metrics"]
                            shown = (f"{m['rate']:,.0f} jobs/s" if "rate" in m else
                                     f"p50 {m['p50_ms']:.2f} ms p99 {m['p99_ms']:.2f} ms"
                                     if "p50_ms" in m else
                                     f"{m.get('bytes_per_job', 0):,.0f} B/job")
                        except BenchError as exc:
                            rec["error"] = str(exc)
                            shown = "n/a" if str(exc).startswith("n/a") else f"FAILED: {exc}"
                        rec["wall_s"] = time.time() - t0
                        rec["foreign_cores"] = foreign.cores(snap)
                        records.append(rec)
                        busy = (f"  [other load {rec['foreign_cores']:.2f} cores]"
                                if rec["foreign_cores"] > 0.2 else "")
                        log(f"rep {rep + 1}/{args.reps} {lib:13s} {case.variant}: {shown}{busy}")
    elapsed = time.time() - t_start
    libs = [KITIUM, *ready_peers]
    fc = sorted(r.get("foreign_cores", 0.0) for r in records
                if not str(r.get("error", "")).startswith("n/a"))
    summary = summarize(records)
    meta = {
        "command": command, "date": stamp, "elapsed_s": elapsed, "reps": args.reps,
        "machine": machine, "versions": versions, "quick": args.quick,
        "foreign_cores_median": pct(fc, 50) if fc else 0.0,
        "foreign_cores_max": fc[-1] if fc else 0.0,
        "foreign_disturbed_cases": sum(1 for x in fc if x > 0.2),
        "cases": len(fc),
    }
    out_json = BENCH / f"results-{stamp}.json"  # raw figures first: a report bug loses nothing
    out_json.write_text(json.dumps(
        {"meta": meta, "setup_errors": setup_errors, "records": records}, indent=1
    ))
    print_table(summary, libs, args.reps)
    write_markdown(Path(args.md), summary, meta, libs, setup_errors)
    log(f"wrote {out_json.relative_to(REPO)} and {args.md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
