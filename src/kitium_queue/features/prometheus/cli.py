"""``kitium-queue metrics APP --port N``: serve the queue's Prometheus metrics.

Built by ``make_command`` with the CLI's own helpers passed in (this module does not
import the CLI). Redis is read once before the server starts, so an unreachable Redis
fails at once with the CLI's one-line error instead of a server that scrapes nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import click

from ...serving import serve_until_stopped

__all__ = ["make_command"]

WithQueue = Callable[[str, "str | None", Callable[[Any], Awaitable[Any]]], Any]


def make_command(
    with_queue: WithQueue, redis_option: Callable[[Any], Any], row: Callable[..., str]
) -> click.Command:
    """The ``metrics`` command, using the CLI's queue loader, ``--redis`` option and row
    formatter."""

    @click.command()
    @click.argument("app")
    @click.option(
        "--port",
        default=9464,
        show_default=True,
        type=click.IntRange(0, 65535),
        help="TCP port to listen on (0: any free port).",
    )
    @click.option(
        "--host",
        default="127.0.0.1",
        show_default=True,
        help="Address to listen on (0.0.0.0 to expose it beyond this host).",
    )
    @click.option(
        "--once", is_flag=True, help="Print the metrics once to stdout and exit (no server)."
    )
    @click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="With --once: the samples as JSON (name, labels, value).",
    )
    @redis_option
    def metrics(
        app: str, port: int, host: str, once: bool, as_json: bool, redis: str | None
    ) -> None:
        """Serve Prometheus metrics of APP's queue on http://HOST:PORT/metrics: jobs per
        state, DLQ size, latency, breakers and groups, read from Redis at each scrape.
        A partitioned APP is exported partition by partition. Runs until SIGINT or
        SIGTERM, then closes the server and its connections and exits 0."""

        async def act(q: Any) -> None:
            from .exporter import PrometheusExporter  # prometheus_client: loaded to serve

            # A partitioned queue: every partition, each under its own queue label.
            exporter = PrometheusExporter(getattr(q, "queues", [q]), subscribe=False)
            await q.get_stats()  # fails fast, with the CLI's error, when Redis is not there
            if once or as_json:
                text = (await exporter.render()).decode()
                if not as_json:
                    click.echo(text, nl=False)
                    return
                from prometheus_client.parser import text_string_to_metric_families

                click.echo(
                    json.dumps(
                        [
                            {"name": s.name, "labels": s.labels, "value": s.value}
                            for fam in text_string_to_metric_families(text)
                            for s in fam.samples
                        ],
                        indent=2,
                    )
                )
                return
            # A host or port it cannot listen on: ConfigurationError, saying which (the
            # port or host, not Redis: read above already).
            server = await exporter.serve(host, port)  # accepting connections from here
            click.echo(row("serving", server.url))
            # SIGINT and SIGTERM stop it gracefully through the loop's own handlers,
            # whatever the process inherited (a shell starts background commands with
            # SIGINT ignored; a service manager stops with SIGTERM).
            stopped = asyncio.Event()

            async def stop() -> None:
                stopped.set()

            try:
                await serve_until_stopped(stopped, stop)
            except asyncio.CancelledError:
                pass
            finally:
                await server.close()

        with_queue(app, redis, act)

    return metrics
