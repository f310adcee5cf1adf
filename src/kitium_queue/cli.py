"""The ``kitium-queue`` command line: run workers, inspect and manage queues, run the demo.

``APP`` arguments name a ``JobQueue`` object as ``module:attribute`` (like uvicorn), e.g.
``kitium-queue worker myapp.tasks:queue``. Environment variables are read here only:
``KITIUM_QUEUE_REDIS`` overrides the queue's Redis URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from .errors import ConfigurationError, KitiumQueueError
from .features.webhooks.cli import commands as webhook_commands
from .limits import printable
from .queue import JobQueue

__all__ = ["load_queue", "main", "text_field"]

T = TypeVar("T")

#: One field of a line of text output (see ``limits.printable``).
text_field = printable


def _row(*fields: object) -> str:
    """One line of text output: the escaped fields, separated by tabs."""
    return "\t".join(text_field(f) for f in fields)


def load_queue(app: str, redis: str | None = None) -> JobQueue:
    """Import ``module:attribute`` and return the JobQueue it names."""
    module_name, _, attr = app.partition(":")
    if not module_name or not attr:
        raise click.BadParameter(f"{app!r}: use module:attribute, e.g. myapp.tasks:queue")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import {module_name!r}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise click.BadParameter(f"{module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if callable(obj) and not isinstance(obj, JobQueue):
        obj = obj()
    if not isinstance(obj, JobQueue):
        raise click.BadParameter(f"{app!r} is a {type(obj).__name__}, not a JobQueue")
    url = redis or os.environ.get("KITIUM_QUEUE_REDIS")
    if url:
        from .connection import ConnectionFactory

        try:
            obj.connection = ConnectionFactory(url)
        except ConfigurationError as exc:  # its message is redacted: no credentials
            raise click.BadParameter(text_field(exc), param_hint="--redis") from None
    return obj


def _run(fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(fn())  # type: ignore[arg-type]


def _with_queue(app: str, redis: str | None, action: Callable[[JobQueue], Awaitable[T]]) -> T:
    queue = load_queue(app, redis)

    async def go() -> T:
        try:
            return await action(queue)
        except KitiumQueueError as exc:
            # A clear one-line error instead of a traceback; the text may quote job or
            # server data, so it is escaped like any field (connection details in it are
            # already redacted by the library).
            raise click.ClickException(text_field(exc)) from None
        finally:
            await queue.close()

    return _run(go)


redis_option = click.option("--redis", default=None, help="Redis URL overriding the queue's.")


@click.group()
@click.version_option(package_name="kitium-job-queue")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """kitium-queue: an asyncio job queue on Redis."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
@click.argument("app")
@click.option("-c", "--concurrency", type=int, default=None, help="Jobs run at once.")
@redis_option
def worker(app: str, concurrency: int | None, redis: str | None) -> None:
    """Run a worker for APP until SIGTERM/SIGINT, then shut down gracefully."""
    logging.getLogger("kitium_queue").setLevel(
        min(logging.INFO, logging.getLogger().level or logging.INFO)
    )
    queue = load_queue(app, redis)

    async def go() -> None:
        try:
            await queue.run_worker(concurrency=concurrency)
        finally:
            await queue.close()

    _run(go)


@main.command()
@click.argument("app")
@redis_option
def stats(app: str, redis: str | None) -> None:
    """Print the counts of every state as JSON."""

    async def act(q: JobQueue) -> None:
        click.echo(json.dumps((await q.get_stats()).to_dict(), indent=2))

    _with_queue(app, redis, act)


@main.command()
@click.argument("app")
@redis_option
def health(app: str, redis: str | None) -> None:
    """Check Redis connectivity; exit 1 when unhealthy."""

    async def act(q: JobQueue) -> bool:
        h = await q.health_check()
        click.echo(
            json.dumps(
                {
                    "healthy": h.healthy,
                    "redis_latency_ms": h.redis_latency_ms,
                    "backend": h.backend,
                    "error": h.error,
                }
            )
        )
        return h.healthy

    if not _with_queue(app, redis, act):
        sys.exit(1)


@main.command()
@click.argument("app")
@redis_option
def pause(app: str, redis: str | None) -> None:
    """Pause the queue for every worker."""
    _with_queue(app, redis, lambda q: q.pause())
    click.echo("paused")


@main.command()
@click.argument("app")
@redis_option
def resume(app: str, redis: str | None) -> None:
    """Resume a paused queue."""
    _with_queue(app, redis, lambda q: q.resume())
    click.echo("resumed")


@main.command()
@click.argument("app")
@click.argument("job_id")
@redis_option
def job(app: str, job_id: str, redis: str | None) -> None:
    """Show one job as JSON."""

    async def act(q: JobQueue) -> None:
        info = await q.get_job_status(job_id)
        if info is None:
            raise click.ClickException(
                f"job {text_field(job_id)} not found in queue '{text_field(q.name)}'"
            )
        click.echo(json.dumps(info.to_dict(), indent=2, default=str))

    _with_queue(app, redis, act)


@main.group()
def dlq() -> None:
    """Inspect and replay the dead-letter queue."""


@dlq.command("list")
@click.argument("app")
@click.option("-n", "--limit", default=20, show_default=True)
@redis_option
def dlq_list(app: str, limit: int, redis: str | None) -> None:
    """List dead-lettered jobs, newest first."""

    async def act(q: JobQueue) -> None:
        for info in await q.get_dlq_jobs(limit):
            click.echo(
                _row(info.id, info.name, f"attempts={info.attempts}", info.failed_reason)
            )

    _with_queue(app, redis, act)


@dlq.command("replay")
@click.argument("app")
@click.option("-n", "--limit", default=1000, show_default=True)
@redis_option
def dlq_replay(app: str, limit: int, redis: str | None) -> None:
    """Move dead-lettered jobs back to waiting."""
    n = _with_queue(app, redis, lambda q: q.replay_dlq(limit))
    click.echo(f"replayed {n} job(s)")


@main.group()
def schedules() -> None:
    """List, pause, resume and remove the queue's schedules."""


def _pair_part(value: object) -> str:
    """A key or value of a ``k=v`` list: escaped, and without a bare space or ``=``."""
    return text_field(value).replace(" ", "\\x20").replace("=", "\\x3d")


def _fmt_ms(ms: int | None) -> str:
    if ms is None:
        return "-"
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="seconds")


@schedules.command("list")
@click.argument("app")
@click.option("--json", "as_json", is_flag=True, help="Print the schedules as JSON.")
@redis_option
def schedules_list(app: str, as_json: bool, redis: str | None) -> None:
    """List schedules: id, timing, state, next run (UTC), runs so far."""

    async def act(q: JobQueue) -> None:
        items = await q.get_schedules()
        if as_json:
            click.echo(json.dumps([s.to_dict() for s in items], indent=2, default=str))
            return
        if not items:
            click.echo(f"no schedules in queue '{text_field(q.name)}'")
            return
        for s in items:
            timing = f"cron {s.cron} ({s.tz})" if s.cron else f"every {s.every_ms} ms"
            state = "paused" if s.paused else "finished" if s.finished else "active"
            click.echo(_row(s.id, s.job_name, timing, state, f"next={_fmt_ms(s.next_run_at)}",
                            f"runs={s.runs}", f"skipped={s.skipped}"))

    _with_queue(app, redis, act)


def _schedule_action(verb: str, method: str, done: str) -> Any:
    @schedules.command(verb)
    @click.argument("app")
    @click.argument("schedule_id")
    @redis_option
    def command(app: str, schedule_id: str, redis: str | None) -> None:
        async def act(q: JobQueue) -> bool:
            ok: bool = await getattr(q, method)(schedule_id)
            return ok

        if not _with_queue(app, redis, act):
            raise click.ClickException(f"schedule '{text_field(schedule_id)}' not found")
        click.echo(f"{done} {text_field(schedule_id)}")

    command.__doc__ = f"{verb.capitalize()} schedule SCHEDULE_ID of APP."
    return command


schedules_pause = _schedule_action("pause", "pause_schedule", "paused")
schedules_resume = _schedule_action("resume", "resume_schedule", "resumed")
schedules_remove = _schedule_action("remove", "remove_schedule", "removed")


@main.command()
@click.argument("app")
@click.option("--from-start", is_flag=True, help="Replay what the stream still holds.")
@redis_option
def events(app: str, from_start: bool, redis: str | None) -> None:
    """Tail the durable event stream (Ctrl-C to stop)."""

    async def act(q: JobQueue) -> None:
        async for ev in q.events(last_id="0" if from_start else "$"):
            # Spaces separate the k=v pairs of the last column: a space inside a key or
            # value is escaped too (\x20), so a value cannot forge another pair.
            extra = " ".join(
                f"{_pair_part(k)}={_pair_part(v)}" for k, v in ev.fields.items()
            )
            click.echo(_row(ev.id, ev.event, ev.job_id or "") + f"\t{extra}")

    with contextlib.suppress(KeyboardInterrupt):
        _with_queue(app, redis, act)


main.add_command(webhook_commands(load_queue, text_field), "webhooks")


@main.command()
@click.option(
    "--redis",
    default="memory://demo",
    show_default=True,
    help="Where to run the demo; memory:// needs no server.",
)
def demo(redis: str) -> None:
    """Show the queue at work: jobs, progress, retries, the DLQ and events."""
    from .demo import run_demo

    asyncio.run(run_demo(redis, click.echo))


if __name__ == "__main__":  # pragma: no cover
    main()
