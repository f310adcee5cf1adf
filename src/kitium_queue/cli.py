"""The ``kitium-queue`` command line: run workers, inspect and manage queues, run the demo.

``APP`` arguments name a ``JobQueue`` object as ``module:attribute`` (like uvicorn), e.g.
``kitium-queue worker myapp.tasks:queue``. Environment variables are read here only:
``KITIUM_QUEUE_REDIS`` overrides the queue's Redis URL.

Every subcommand fails the same way (``_Main.invoke``, the one place): one line on
stderr and an exit code from ``EXIT_CODES``; the traceback only with ``--debug`` or
``-v``. Errors from Redis are translated by ``ConnectionFactory.error`` first.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from .errors import ConfigurationError, ConnectionUnavailableError, KitiumQueueError
from .features.webhooks.cli import commands as webhook_commands
from .limits import printable
from .queue import JobQueue
from .redact import redact_url

__all__ = [
    "EXIT_CODES",
    "EXIT_ERROR",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "load_app",
    "load_queue",
    "main",
    "text_field",
]

#: The command failed: a job or schedule not found, an operation refused, an error.
EXIT_ERROR = 1
#: The command line or the queue's configuration is wrong (bad argument, unknown APP,
#: invalid option or connection setting).
EXIT_USAGE = 2
#: Redis cannot be reached, refused the credentials, or did not answer in time.
EXIT_UNREACHABLE = 3
#: Every exit code but 0, with its meaning (also in ``kitium-queue --help`` and the
#: README's "Command line" section).
EXIT_CODES = {
    EXIT_ERROR: "error (not found, refused, failed)",
    EXIT_USAGE: "usage or configuration error",
    EXIT_UNREACHABLE: "cannot connect to Redis (unreachable, refused credentials, no answer)",
}

T = TypeVar("T")

#: One field of a line of text output (see ``limits.printable``).
text_field = printable


def _row(*fields: object) -> str:
    """One line of text output: the escaped fields, separated by tabs."""
    return "\t".join(text_field(f) for f in fields)


def load_app(app: str, kinds: tuple[type, ...] = (JobQueue,)) -> Any:
    """Import ``module:attribute`` and return the object it names (called first if it
    is a factory rather than one of ``kinds``)."""
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
    if callable(obj) and not isinstance(obj, kinds):
        obj = obj()
    return obj


def load_queue(app: str, redis: str | None = None) -> JobQueue:
    """Import ``module:attribute`` and return the JobQueue it names."""
    obj = load_app(app)
    if not isinstance(obj, JobQueue):
        raise click.BadParameter(f"{app!r} is a {type(obj).__name__}, not a JobQueue")
    # What the CLI prints is seen by people: protected payloads are shown redacted.
    obj.ctx.redact_payloads = True
    url = redis or os.environ.get("KITIUM_QUEUE_REDIS")
    if url:
        from .connection import ConnectionFactory

        try:
            obj.connection = ConnectionFactory(url)
        except ConfigurationError as exc:  # its message is redacted: no credentials
            raise click.BadParameter(text_field(exc), param_hint="--redis") from None
    if obj.connection.is_memory:
        # Otherwise an empty queue looks like a bug (or a hang, for events).
        click.echo(
            f"note: queue '{text_field(obj.name)}' uses {text_field(obj.connection.describe())}, "
            "whose data lives only in the process that created it: this command sees an "
            "empty queue. Point it at Redis with --redis URL or KITIUM_QUEUE_REDIS.",
            err=True,
        )
    return obj


def _run(fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(fn())  # type: ignore[arg-type]


def _with_queue(app: str, redis: str | None, action: Callable[[JobQueue], Awaitable[T]]) -> T:
    """Run ``action`` on the queue ``app`` names, then close it. An error from Redis that
    reached this far raw is translated by the connection (``ConnectionFactory.error``);
    ``_Main.invoke`` prints it."""
    queue = load_queue(app, redis)

    async def go() -> T:
        try:
            return await action(queue)
        except (click.ClickException, KitiumQueueError):
            raise
        except Exception as exc:
            wrapped = queue.connection.error(exc, queue.name)
            if wrapped is None:
                raise
            raise wrapped from exc
        finally:
            await queue.close()

    return _run(go)


def _failure(exc: BaseException) -> tuple[int, str]:
    """The exit code and the one line of text for an error that ended a command."""
    if isinstance(exc, ConnectionUnavailableError):
        code = EXIT_UNREACHABLE
    elif isinstance(exc, ConfigurationError):
        code = EXIT_USAGE
    else:
        code = EXIT_ERROR
    # The text may quote job or server data: escaped like any field. The library's
    # messages are redacted already; anything else goes through the redaction too.
    if isinstance(exc, KitiumQueueError):
        return code, text_field(exc)
    text = f"{type(exc).__name__}: {redact_url(exc)}"
    return code, f"unexpected error: {text_field(text)} (--debug shows the traceback)"


class _Main(click.Group):
    """The command group; the one place where a subcommand's error becomes one line on
    stderr and an exit code (``EXIT_CODES``), with the traceback only with ``--debug``
    or ``-v``."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            code, line = _failure(exc)
            if ctx.params.get("debug") or ctx.params.get("verbose"):
                traceback.print_exception(exc, file=sys.stderr)
            click.echo(f"Error: {line}", err=True)
            ctx.exit(code)


redis_option = click.option("--redis", default=None, help="Redis URL overriding the queue's.")


@click.group(cls=_Main)
@click.version_option(package_name="kitium-job-queue")
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="More logging (-v info, -vv debug); errors show their traceback.",
)
@click.option("--debug", is_flag=True, help="Show the traceback of an error.")
def main(verbose: int, debug: bool) -> None:
    """kitium-queue: an asyncio job queue on Redis.

    \b
    Exit codes:
      0  success
      1  error (not found, refused, failed)
      2  usage or configuration error
      3  cannot connect to Redis (unreachable, refused credentials, no answer)

    An error is one line on stderr; --debug or -v adds its traceback.
    """
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
    _with_queue(app, redis, lambda q: q.run_worker(concurrency=concurrency))


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
    """Check Redis connectivity and report its memory against maxmemory, its eviction
    policy and persistence; exit 3 when unhealthy."""

    async def act(q: JobQueue) -> bool:
        # As health_check(), and the persistence settings too (CONFIG GET, if allowed).
        h = await q.queries.health_check(lambda: False, server_config=True)
        click.echo(
            json.dumps(
                {
                    "healthy": h.healthy,
                    "redis_latency_ms": h.redis_latency_ms,
                    "backend": h.backend,
                    "error": h.error,
                    "memory": None
                    if h.memory is None
                    else {
                        "used_bytes": h.memory.used_bytes,
                        "maxmemory_bytes": h.memory.maxmemory_bytes,
                        "used_fraction": h.memory.used_fraction,
                        "maxmemory_policy": h.memory.policy,
                        "persistence": h.memory.persistence,
                    },
                }
            )
        )
        return h.healthy

    if not _with_queue(app, redis, act):
        sys.exit(EXIT_UNREACHABLE)


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
            click.echo(_row(info.id, info.name, f"attempts={info.attempts}", info.failed_reason))

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
            click.echo(
                _row(
                    s.id,
                    s.job_name,
                    timing,
                    state,
                    f"next={_fmt_ms(s.next_run_at)}",
                    f"runs={s.runs}",
                    f"skipped={s.skipped}",
                )
            )

    _with_queue(app, redis, act)


def _schedule_action(verb: str, method: str, done: str, what: str) -> Any:
    # The help is given to click here: a docstring set after the decorators ran would
    # never reach ``--help``.
    @schedules.command(verb, help=f"{what} Exit 1 if APP has no schedule SCHEDULE_ID.")
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

    return command


schedules_pause = _schedule_action(
    "pause",
    "pause_schedule",
    "paused",
    "Stop schedule SCHEDULE_ID of APP from firing (its jobs already enqueued stay).",
)
schedules_resume = _schedule_action(
    "resume",
    "resume_schedule",
    "resumed",
    "Resume paused schedule SCHEDULE_ID of APP at its next tick from now.",
)
schedules_remove = _schedule_action(
    "remove",
    "remove_schedule",
    "removed",
    "Delete schedule SCHEDULE_ID of APP (its jobs already enqueued stay).",
)


@main.group()
def breakers() -> None:
    """List, show, reset and open the queue's circuit breakers."""


def _breaker_row(st: Any) -> str:
    return _row(
        st.config.id,
        st.state,
        f"since={_fmt_ms(st.since_ms)}",
        f"requests={st.requests}",
        f"failures={st.failures}",
        f"rate={st.failure_rate:g}%",
        f"held={st.held_jobs}",
        f"next_probe={_fmt_ms(st.next_probe_ms)}",
        f"job_name={st.config.job_name or '-'}",
    )


def _manager(q: JobQueue) -> Any:
    from .features.breakers import CircuitBreakerManager

    return CircuitBreakerManager(q, events=False)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@breakers.command("list")
@click.argument("app")
@json_option
@redis_option
def breakers_list(app: str, as_json: bool, redis: str | None) -> None:
    """List breakers: id, state, since (UTC), window counts, held jobs, next probe."""

    async def act(q: JobQueue) -> None:
        items = await _manager(q).list_breakers()
        if as_json:
            click.echo(json.dumps([s.to_dict() for s in items], indent=2))
        elif not items:
            click.echo(f"no circuit breakers in queue '{text_field(q.name)}'")
        for st in items if not as_json else ():
            click.echo(_breaker_row(st))

    _with_queue(app, redis, act)


@breakers.command("show")
@click.argument("app")
@click.argument("breaker_id")
@click.option(
    "-n",
    "--history",
    "limit",
    default=10,
    show_default=True,
    help="State changes shown, newest first.",
)
@json_option
@redis_option
def breakers_show(app: str, breaker_id: str, limit: int, as_json: bool, redis: str | None) -> None:
    """Show one breaker: its definition, state, counts and latest state changes."""

    async def act(q: JobQueue) -> None:
        m = _manager(q)
        st = await m.get_stats(breaker_id)
        hist = await m.history(breaker_id, limit)
        if as_json:
            click.echo(
                json.dumps({**st.to_dict(), "history": [h.to_dict() for h in hist]}, indent=2)
            )
            return
        click.echo(_breaker_row(st))
        th = st.config.failure_threshold
        click.echo(
            _row(
                "threshold",
                f"{th.percentage:g}% of >= {th.min_requests}",
                f"window={st.config.window}ms",
                f"timeout={st.config.timeout}ms",
                f"probes={st.config.half_open_probes}",
                f"probe_timeout={st.config.probe_timeout}ms",
            )
        )
        click.echo(_row("reason", st.reason or "-"))
        for h in hist:
            click.echo(_row(_fmt_ms(h.at_ms), f"{h.from_state} -> {h.to_state}", h.reason))

    _with_queue(app, redis, act)


@breakers.command("reset")
@click.argument("app")
@click.argument("breaker_id")
@click.option("--reason", default="", help="Recorded with the state change.")
@json_option
@redis_option
def breakers_reset(
    app: str, breaker_id: str, reason: str, as_json: bool, redis: str | None
) -> None:
    """Close BREAKER_ID now; the jobs it held go back to wait."""
    st = _with_queue(app, redis, lambda q: _manager(q).reset(breaker_id, reason))
    click.echo(json.dumps(st.to_dict(), indent=2) if as_json else _breaker_row(st))


@breakers.command("open")
@click.argument("app")
@click.argument("breaker_id")
@click.option(
    "--duration", type=int, default=None, help="ms to stay open (default: the breaker's timeout)."
)
@click.option("--reason", default="", help="Recorded with the state change.")
@json_option
@redis_option
def breakers_open(
    app: str, breaker_id: str, duration: int | None, reason: str, as_json: bool, redis: str | None
) -> None:
    """Open BREAKER_ID now: its bound jobs are held until it half-opens."""
    st = _with_queue(app, redis, lambda q: _manager(q).force_open(breaker_id, duration, reason))
    click.echo(json.dumps(st.to_dict(), indent=2) if as_json else _breaker_row(st))


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
            extra = " ".join(f"{_pair_part(k)}={_pair_part(v)}" for k, v in ev.fields.items())
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


def _add_feature_commands() -> None:
    from .features.encryption.cli import make_command as encryption_command
    from .features.groups.cli import make_command as groups_command
    from .features.idempotency.cli import make_command as result_command
    from .features.regions.cli import make_command as regions_command
    from .features.workflows.cli import make_command as workflows_command

    main.add_command(groups_command(_with_queue, redis_option, _row), "groups")
    main.add_command(result_command(_with_queue, redis_option, _row), "result")
    main.add_command(encryption_command(_with_queue, redis_option, _row), "encryption")
    main.add_command(workflows_command(_with_queue, redis_option, _row), "workflows")
    main.add_command(regions_command(_with_queue, redis_option, _row, load_app, _run), "regions")
    try:
        from .features.prometheus.cli import make_command as metrics_command
    except ImportError:  # the optional extra "prometheus" is not installed: no command
        return
    main.add_command(metrics_command(_with_queue, redis_option, _row), "metrics")


_add_feature_commands()


if __name__ == "__main__":  # pragma: no cover
    main()
