"""Observability: the cost of Prometheus metrics and of OpenTelemetry tracing on the
drain rate.

    .venv/bin/python bench/bench_observability.py                 # private redis-server
    .venv/bin/python bench/bench_observability.py --jobs 20000 --reps 5 --concurrency 20
    .venv/bin/python bench/bench_observability.py --redis redis://127.0.0.1:6379/0

One worker in this process drains ``--jobs`` no-op jobs (added beforehand with
``add_jobs``), timed from the worker's start to the last completion, in three variants
run interleaved, ``--reps`` times each, on one redis-server (flushed before each run):

* ``plain``: the queue as it is;
* ``prometheus``: a ``PrometheusSubscriber`` on the queue (counters per outcome,
  duration and wait histograms per queue and job name);
* ``otel``: ``OpenTelemetryTracing`` with the SDK's ``TracerProvider`` and a
  ``BatchSpanProcessor`` feeding an exporter that drops the spans (so the figure is the
  cost of making, recording and batching spans, not of shipping them); the jobs are
  added traced (each carries its traceparent), and every run makes a process span;
* ``otel-10%``: the same with 10 % of traces sampled (``ParentBased(TraceIdRatioBased(
  0.1))``): the other runs get a non-recording span.

Prints the median (min-max) jobs/s of each variant and its ratio to ``plain``. A
benchmark, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _drain import compare, drain, fresh_queue, report
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from prometheus_client import CollectorRegistry

from kitium_queue.features.prometheus import PrometheusSubscriber
from kitium_queue.features.tracing import OpenTelemetryTracing

VARIANTS = ("plain", "prometheus", "otel", "otel-10%")


class Dropping(SpanExporter):
    """Counts the spans it is given and drops them."""

    def __init__(self) -> None:
        self.count = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.count += len(spans)
        return SpanExportResult.SUCCESS


async def one_run(url: str, variant: str, jobs: int, concurrency: int, n: int) -> float:
    q = await fresh_queue(url, f"bench-obs-{n}", "bob", concurrency)
    provider = None
    if variant == "prometheus":
        q.subscribe(PrometheusSubscriber(CollectorRegistry()))
    elif variant.startswith("otel"):
        # otel-10%: the SDK's default sampler (parent-based) over a 10 % ratio at the
        # root: the publish span decides, the worker follows the stored flag.
        sampler = TraceIdRatioBased(0.1) if variant == "otel-10%" else None
        provider = TracerProvider(sampler=ParentBased(sampler) if sampler else None)
        # A queue that holds every span of the run: none dropped, all of them recorded.
        provider.add_span_processor(BatchSpanProcessor(Dropping(), max_queue_size=2 * jobs + 100))
        OpenTelemetryTracing(q, tracer_provider=provider)
    try:
        return await drain(q, jobs)
    finally:
        if provider is not None:
            provider.shutdown()


async def main(args: argparse.Namespace) -> None:
    async def run(url: str, variant: str, n: int) -> float:
        return await one_run(url, variant, args.jobs, args.concurrency, n)

    rates = await compare(args.redis, VARIANTS, args.reps, run)
    report(rates, args.jobs, args.concurrency, args.reps)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--redis", default=None, help="a Redis URL (default: a private server)")
    p.add_argument("--jobs", type=int, default=20_000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=20)
    asyncio.run(main(p.parse_args()))
