"""Observability: the per-job cost of the tracing layer and of the Prometheus
subscriber, in microseconds, measured in-process (no Redis, no worker).

    .venv/bin/python bench/bench_observability_hooks.py
    .venv/bin/python bench/bench_observability_hooks.py --before main   # also the
        # modules as they are at that git revision, measured in the same process
    .venv/bin/python bench/bench_observability_hooks.py --n 20000 --rounds 9

Each figure is the median of ``--rounds`` rounds of ``--n`` jobs; a row is the time the
feature adds to one job, the time of the same loop without it taken away. Timing the
code alone over many iterations is far less sensitive to the other work on a shared
machine than a drain's throughput (``bench_observability.py``), though a busy machine
still shifts every row a little.

Rows:

* ``otel publish``: the enqueue middleware plus the ``enqueued`` hook for one job (the
  producer's side: publish span started, traceparent written, span ended);
* ``otel process``: one run through the queue's process chain with tracing (the
  stored traceparent parsed, the process span started, made current, ended) against
  the same run without middleware (what the worker does then);
* ``sdk span``: the OpenTelemetry SDK alone: ``tracer.start_span`` with the same seven
  attributes, then ``end()``, on the same provider: the floor of one recorded span;
* ``sdk attach``: ``context.attach(set_span_in_context(span))`` and ``detach``: the
  floor of making a span current;
* ``prometheus``: the subscriber's ``started`` and ``finished`` hooks for one completed
  run, with the ``Outcome`` the worker builds for it (nobody builds one without a
  ``finished`` subscriber);
* ``prometheus worker``: what the worker does for one completed run with the
  subscriber on the queue against the same without it: the ``started`` hooks and the
  report of a batch of 20 recorded outcomes (``Outcomes._recorded``: the ``Outcome``
  built, the ``finished`` hooks, asking the subscribers which outcomes they ignore).
  ``--before`` loads ``outcomes.py`` of that revision too for this row.

The tracing rows are measured at 100 % sampling (the SDK's default sampler), with
``ParentBased(TraceIdRatioBased(0.1))`` and with a ratio of 0 (every job sampled out:
the cost of a job nobody traces), on an SDK ``TracerProvider`` with a
``BatchSpanProcessor`` whose exporter drops the spans (its thread runs, as in a
process that ships spans). A benchmark, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry

from kitium_queue import JobQueue, outcomes
from kitium_queue.features import tracing
from kitium_queue.features.prometheus import subscriber as prom
from kitium_queue.hooks import Outcome
from kitium_queue.job import Job
from kitium_queue.leases import Run
from kitium_queue.middleware import run_process_chain

ROOT = Path(__file__).resolve().parent.parent


class Dropping(SpanExporter):
    """Drops the spans it is given."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def load_at(rev: str, path: str, name: str) -> ModuleType:
    """The module ``path`` (under src/) as it is at git revision ``rev``, imported as
    ``name`` (a sibling of the current module, so its relative imports resolve)."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:src/{path}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    exec(compile(source, f"{rev}:src/{path}", "exec"), module.__dict__)
    return module


def provider(ratio: float | None) -> TracerProvider:
    sampler = ParentBased(TraceIdRatioBased(ratio)) if ratio is not None else None
    tp = TracerProvider(sampler=sampler)
    tp.add_span_processor(BatchSpanProcessor(Dropping(), max_queue_size=100_000))
    return tp


def per_job(fn: Callable[[int], float], n: int, rounds: int) -> float:
    """Median over ``rounds`` of ``fn(n)`` (seconds for n jobs), in µs per job."""
    return statistics.median(fn(n) for _ in range(rounds)) / n * 1e6


def job(i: int, traceparent: str | None) -> Job[Any]:
    opts = {"traceparent": traceparent} if traceparent else {}
    return Job(
        id=f"job-{i}",
        name="noop",
        data=None,
        attempts=1,
        max_attempts=1,
        created_at=int(time.time() * 1000),
        options=opts,
        queue_name="bench",
    )


def publish_loop(mod: ModuleType, tp: TracerProvider) -> tuple[Callable[[int], float], Any]:
    """The producer's side of ``mod.OpenTelemetryTracing`` on a queue of its own."""
    q = JobQueue("bench")
    t = mod.OpenTelemetryTracing(q, tracer_provider=tp)
    on_enqueue, enqueued = t._on_enqueue, t.enqueued

    def run(n: int) -> float:
        t0 = time.process_time()
        for _ in range(n):
            _, _, opts = on_enqueue("noop", None, {})
            enqueued("bench", (opts["job_id"],), ("noop",))
        return time.process_time() - t0

    return run, t


def process_loop(
    loop: asyncio.AbstractEventLoop, q: Any, jobs: list[Job[Any]]
) -> Callable[[int], float]:
    """One run per job through ``q``'s process chain (as the worker calls it)."""

    async def noop() -> None:
        return None

    chain = q.process_middleware

    async def many(n: int) -> float:
        t0 = time.process_time()
        if chain:
            for i in range(n):
                await run_process_chain(chain, jobs[i], noop)
        else:
            for _ in range(n):
                await noop()
        return time.process_time() - t0

    return lambda n: loop.run_until_complete(many(n))


def traced_jobs(mod: ModuleType, tp: TracerProvider, n: int) -> list[Job[Any]]:
    """``n`` jobs carrying the traceparent of a publish span made by ``mod``."""
    _, t = publish_loop(mod, tp)
    out = []
    for i in range(n):
        _, _, opts = t._on_enqueue("noop", None, {})
        t.enqueued("bench", (opts["job_id"],), ("noop",))
        out.append(job(i, opts["traceparent"]))
    return out


def sdk_rows(tp: TracerProvider, n: int, rounds: int) -> dict[str, float]:
    tracer = tp.get_tracer("bench")
    attrs = {
        "messaging.system": "kitium-queue",
        "messaging.destination.name": "bench",
        "messaging.operation": "process",
        "messaging.operation.type": "process",
        "messaging.message.id": "job-1",
        "kitium_queue.job.name": "noop",
        "kitium_queue.job.attempt": 1,
    }

    def span(k: int) -> float:
        t0 = time.process_time()
        for _ in range(k):
            tracer.start_span("bench process", kind=SpanKind.CONSUMER, attributes=attrs).end()
        return time.process_time() - t0

    one = tracer.start_span("x")

    def attach(k: int) -> float:
        t0 = time.process_time()
        for _ in range(k):
            otel_context.detach(otel_context.attach(trace.set_span_in_context(one)))
        return time.process_time() - t0

    def empty(k: int) -> float:
        t0 = time.process_time()
        for _ in range(k):
            pass
        return time.process_time() - t0

    base = per_job(empty, n, rounds)
    return {
        "sdk span": per_job(span, n, rounds) - base,
        "sdk attach": per_job(attach, n, rounds) - base,
    }


def prometheus_row(mod: ModuleType, n: int, rounds: int) -> float:
    sub = mod.PrometheusSubscriber(CollectorRegistry())
    j = job(0, None)
    started, finished = sub.started, sub.finished

    def run(k: int) -> float:
        t0 = time.process_time()
        for _ in range(k):
            started("bench", j)
            finished("bench", j, Outcome("completed", None, None, None, None, 0.2))
        return time.process_time() - t0

    def empty(k: int) -> float:
        t0 = time.process_time()
        for _ in range(k):
            pass
        return time.process_time() - t0

    return per_job(run, n, rounds) - per_job(empty, n, rounds)


def prometheus_worker_row(
    loop: asyncio.AbstractEventLoop, pmod: ModuleType, omod: ModuleType, n: int, rounds: int
) -> float:
    def timed(subscribed: bool) -> Callable[[int], float]:
        q = JobQueue("bench")
        if subscribed:
            q.subscribe(pmod.PrometheusSubscriber(CollectorRegistry()))
        outcomes = omod.Outcomes(q, "w", q.hooks, forget=lambda run: None, wake=lambda: None)
        runs = [Run(job(i, None), "token", q.policy) for i in range(20)]
        done = [(run, "C", None, None, 0) for run in runs]
        statuses = [b"ok"] * len(runs)
        bus = q.hooks

        async def many(k: int) -> float:
            for run in runs:
                run.started = loop.time()
            t0 = time.process_time()
            for _ in range(k // len(runs)):
                for run in runs:
                    if bus.started:
                        bus.emit_started("bench", run.job)
                outcomes._recorded(done, statuses)
            return time.process_time() - t0

        return lambda k: loop.run_until_complete(many(k))

    return per_job(timed(True), n, rounds) - per_job(timed(False), n, rounds)


def main(args: argparse.Namespace) -> None:
    versions: dict[str, tuple[ModuleType, ModuleType, ModuleType]] = {
        "now": (tracing, prom, outcomes)
    }
    if args.before:
        versions["before"] = (
            load_at(
                args.before,
                "kitium_queue/features/tracing.py",
                "kitium_queue.features._tracing_before",
            ),
            load_at(
                args.before,
                "kitium_queue/features/prometheus/subscriber.py",
                "kitium_queue.features.prometheus._subscriber_before",
            ),
            load_at(args.before, "kitium_queue/outcomes.py", "kitium_queue._outcomes_before"),
        )
    loop = asyncio.new_event_loop()
    rows: dict[str, dict[str, float]] = {}
    for label, ratio in (("100 %", None), ("10 %", 0.1), ("0 %", 0.0)):
        tp = provider(ratio)
        rows[f"sdk ({label})"] = sdk_rows(tp, args.n, args.rounds)
        for version, (tmod, _, _) in versions.items():
            run, _ = publish_loop(tmod, tp)
            got = {"otel publish": per_job(run, args.n, args.rounds)}
            plain = process_loop(loop, JobQueue("bench-plain"), [])
            q = JobQueue("bench")
            tmod.OpenTelemetryTracing(q, tracer_provider=tp)
            jobs = traced_jobs(tmod, tp, args.n)
            traced = process_loop(loop, q, jobs)
            # The plain loop runs no middleware: the jobs are not looked at.
            got["otel process"] = per_job(traced, args.n, args.rounds) - per_job(
                plain, args.n, args.rounds
            )
            rows[f"otel {version} ({label})"] = got
        tp.shutdown()
    for version, (_, pmod, omod) in versions.items():
        rows[f"prometheus {version}"] = {
            "prometheus": prometheus_row(pmod, args.n, args.rounds),
            "prometheus worker": prometheus_worker_row(loop, pmod, omod, args.n, args.rounds),
        }
    loop.close()
    print(
        f"µs per job, median of {args.rounds} rounds of {args.n:,} "
        f"(load average {' '.join(f'{x:.1f}' for x in _load())})"
    )
    for name, got in rows.items():
        print(f"  {name:22s} " + "  ".join(f"{k} {v:6.2f}" for k, v in got.items()))


def _load() -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return ()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20_000, help="jobs per round")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument(
        "--before", default=None, help="a git revision whose modules are measured alongside"
    )
    main(p.parse_args())
