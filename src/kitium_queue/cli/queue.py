"""Queue-level commands: ``worker``, ``stats`` (``--watch``), ``health`` (probes),
``pause`` / ``resume`` (a queue or one message group), ``job``, ``events``, ``demo``.

``health`` is made for container probes: ``--probe liveness`` asks only whether Redis
answers (exit 0, else 3); ``--probe readiness`` (the default) also checks that the
queue can be read, that Redis is a primary with room and an eviction policy that keeps
jobs, and the thresholds given (backlog latency, DLQ size): exit 4 when Redis answers
but a check fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import sys
import time
from typing import Any

import click

from ..errors import WriteRefusedError
from ..eventfeed import giving_up_after
from ..facade import MultiQueue
from ..queries import QueueStats
from ..serverinfo import answered_check, node_info, server_checks, writes_stalled
from .base import (
    EXIT_NOT_READY,
    EXIT_UNREACHABLE,
    FiniteFloatRange,
    cell,
    json_option,
    members,
    redis_option,
    row,
    text_field,
    with_queue,
)
from .output import Output, output, span
from .select import parse_duration

__all__ = ["demo", "events", "health", "job", "pause", "resume", "stats", "worker"]

#: ``events`` reconnects after a lost connection, and gives up (exit 3) once Redis has
#: stayed unreachable this long: a script tailing the stream learns of an outage.
EVENTS_GIVE_UP_S = 10.0

_COUNTS = ("waiting", "active", "delayed", "pending", "paused", "completed", "failed", "dlq")


@click.command()
@click.argument("app")
@click.option("-c", "--concurrency", type=int, default=None, help="Jobs run at once.")
@redis_option
def worker(app: str, concurrency: int | None, redis: str | None) -> None:
    """Run a worker for APP until SIGTERM/SIGINT, then shut down gracefully."""
    logging.getLogger("kitium_queue").setLevel(
        min(logging.INFO, logging.getLogger().level or logging.INFO)
    )
    with_queue(app, redis, lambda q: q.run_worker(concurrency=concurrency), worker=True)


# ---------------------------------------------------------------------- stats
async def _read_stats(q: Any) -> list[tuple[str, QueueStats]]:
    """(label, stats) per physical queue, and the total first for a façade."""
    if isinstance(q, MultiQueue):
        parts = await asyncio.gather(*(m.get_stats() for m in q.queues))
        return [
            ("total", await q.get_stats()),
            *((m.name, s) for m, s in zip(q.queues, parts, strict=True)),
        ]
    return [(q.name, await q.get_stats())]


def _stats_table(
    out: Output, rows: list[tuple[str, QueueStats]], rates: dict[str, float] | None
) -> None:
    cols = ["queue", *_COUNTS, "latency", "state"]
    if rates is not None:
        cols.append("done/s")
    body = []
    for label, s in rows:
        r: list[object] = [
            label,
            *(getattr(s, c) for c in _COUNTS),
            span(s.latency_ms),
            "paused" if s.is_paused else "running",
        ]
        if rates is not None:
            r.append(f"{rates.get(label, 0.0):.1f}")
        body.append(r)
    out.table(cols, body, header=True)


@click.command()
@click.argument("app")
@click.option("-w", "--watch", is_flag=True, help="Refresh until Ctrl-C.")
@click.option(
    "-i",
    "--interval",
    type=FiniteFloatRange(0.1, 3600),
    default=2.0,
    show_default=True,
    help="Seconds between refreshes (--watch).",
)
@click.option(
    "--count",
    type=click.IntRange(1),
    default=None,
    help="Stop after this many refreshes (--watch).",
)
@json_option
@redis_option
def stats(
    app: str, watch: bool, interval: float, count: int | None, as_json: bool, redis: str | None
) -> None:
    """Counts of every state, the age of the oldest waiting job, paused or not; per
    partition too for a partitioned queue. --watch refreshes the table (with the
    completions per second since the last refresh); with --json it prints one JSON
    document per line and refresh."""
    out = output(as_json)

    def as_doc(rows: list[tuple[str, QueueStats]], compact: bool) -> str:
        doc: Any = (
            rows[0][1].to_dict()
            if len(rows) == 1
            else {
                "total": rows[0][1].to_dict(),
                "partitions": [{"queue": n, **s.to_dict()} for n, s in rows[1:]],
            }
        )
        return json.dumps(doc) if compact else json.dumps(doc, indent=2)

    async def act(q: Any) -> None:
        if not watch:
            rows = await _read_stats(q)
            if as_json:
                click.echo(as_doc(rows, False))
            else:
                _stats_table(out, rows, None)
            return
        last: dict[str, tuple[float, int]] = {}
        n = 0
        while count is None or n < count:
            if n:
                await asyncio.sleep(interval)
            rows = await _read_stats(q)
            now = time.monotonic()
            rates = {}
            for label, s in rows:
                done = s.completed + s.failed + s.dlq
                if label in last:
                    t0, d0 = last[label]
                    rates[label] = max(0, done - d0) / max(now - t0, 1e-6)
                last[label] = (now, done)
            if as_json:
                click.echo(as_doc(rows, True))
            else:
                out.refresh(functools.partial(_stats_table, out, rows, rates), first=n == 0)
            n += 1

    if not watch:
        # A single read interrupted is not a result: Ctrl-C aborts (non-zero exit).
        with_queue(app, redis, act)
        return
    with contextlib.suppress(KeyboardInterrupt):  # the way to stop watching
        with_queue(app, redis, act)


# ---------------------------------------------------------------------- health
READS_REFUSED = "Redis refuses reads too (see the writes check)"


async def _role(client: Any, key: str) -> str | None:
    """The role of the server (on a Cluster, of the node that holds ``key``)."""
    try:
        info = await node_info(client, "replication", key)
    except Exception:  # an ACL user without +info: not checked
        return None
    role = info.get("role")
    return None if role is None else str(role)


async def _readiness(
    q: Any, max_memory: float, max_latency: int | None, max_dlq: int | None
) -> list[dict[str, Any]]:
    """The readiness checks after Redis answered: name, ok, detail."""
    checks: list[dict[str, Any]] = []

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append({"name": name, "ok": ok, "detail": detail})

    s = await q.get_stats()  # runs the queue's stats script: scripts load, keys readable
    check("queue readable", True, f"{s.waiting} waiting, {s.active} active")
    first = members(q)[0]
    if not first.connection.is_memory:
        h = await first.queries.health_check(lambda: False, server_config=True)
        role = await _role(await first.client(), first.keys.meta)
        allowed = bool(first.settings.allow_eviction)
        for c in server_checks(h.memory, role, allow_eviction=allowed, max_memory=max_memory):
            check(*c)
    if max_latency is not None:
        check(
            "latency",
            s.latency_ms <= max_latency,
            f"oldest waiting job waited {span(s.latency_ms)} (limit {span(max_latency)})",
        )
    if max_dlq is not None:
        check("dlq", s.dlq <= max_dlq, f"{s.dlq} dead-lettered (limit {max_dlq})")
    return checks


@click.command()
@click.argument("app")
@click.option(
    "--probe",
    type=click.Choice(["liveness", "readiness"]),
    default="readiness",
    show_default=True,
    help="liveness: Redis answers; readiness: and the checks.",
)
@click.option(
    "--max-memory",
    type=FiniteFloatRange(0, 1),
    default=0.95,
    show_default=True,
    help="Readiness fails at this share of maxmemory in use.",
)
@click.option(
    "--max-latency",
    default=None,
    metavar="DURATION",
    help="Readiness fails when the oldest waiting job waited longer (30s, 5m).",
)
@click.option(
    "--max-dlq",
    type=click.IntRange(0),
    default=None,
    help="Readiness fails with more dead-lettered jobs than this.",
)
@json_option
@redis_option
def health(
    app: str,
    probe: str,
    max_memory: float,
    max_latency: str | None,
    max_dlq: int | None,
    as_json: bool,
    redis: str | None,
) -> None:
    """Probe APP's Redis and queue; the exit code is the verdict.

    \b
    0  liveness: Redis answers (even while it refuses writes);
       readiness: ready
    3  Redis unreachable, refused the credentials or did not answer
    4  readiness only: Redis answers but a key of the queue is damaged (holds
       another type) or it refuses writes (full, a failed background save, too
       few replicas, busy with another client's long script) or takes none
       within 10 s (clients paused, a failover), or the Redis user may not run
       the queue's scripts (ACL), or a check failed (memory nearly full, an
       evicting maxmemory-policy, a replica, --max-latency or --max-dlq)
    With --json, "verdict" and "ready" are the probe's; "healthy" is
    health_check()'s own (false while writes are refused, also under liveness).

    Reports Redis latency, memory against maxmemory, eviction policy and persistence."""
    out = output(as_json)
    latency_ms = None if max_latency is None else parse_duration(max_latency)

    async def act(q: Any) -> int:
        first = members(q)[0]
        h = await first.queries.health_check(lambda: False, server_config=probe == "readiness")
        if isinstance(q, MultiQueue) and not (redis or os.environ.get("KITIUM_QUEUE_REDIS")):
            h.backend = q.describe_backend([h])  # its members share one client: its name
        checks: list[dict[str, Any]] = []
        # Redis answered but the queue refuses the server (an evicting policy, a
        # database it does not have), a key of the queue is damaged, or the server
        # refuses writes (its last background save failed): not ready.
        name = answered_check(h.healthy, h.error)
        answers = h.healthy or bool(name)
        if name:
            checks.append({"name": name, "ok": False, "detail": h.error})
        # A server that holds writes (CLIENT PAUSE WRITE) would hold the readiness
        # checks' reads too (the stats script): its verdict is in already.
        stalled = writes_stalled(h.error)
        if (h.healthy or name == "writes") and probe == "readiness" and not stalled:
            try:
                checks += await _readiness(q, max_memory, latency_ms, max_dlq)
            except WriteRefusedError:  # busy with a long script: reads are refused too
                checks.append({"name": "queue readable", "ok": False, "detail": READS_REFUSED})
        ready = answers and (probe == "liveness" or all(c["ok"] for c in checks))
        code = 0 if ready else EXIT_UNREACHABLE if not answers else EXIT_NOT_READY
        verdict = (
            ("healthy" if probe == "liveness" else "ready")
            if ready
            else ("unreachable" if not answers else "not ready")
        )
        m = h.memory
        if as_json:
            out.json(
                {
                    "probe": probe,
                    "verdict": verdict,
                    "healthy": h.healthy,
                    "ready": ready,
                    "redis_latency_ms": h.redis_latency_ms,
                    "backend": h.backend,
                    "error": h.error,
                    "missing_records": h.missing_records,
                    "checks": checks,
                    "memory": None
                    if m is None
                    else {
                        "used_bytes": m.used_bytes,
                        "maxmemory_bytes": m.maxmemory_bytes,
                        "used_fraction": m.used_fraction,
                        "maxmemory_policy": m.policy,
                        "persistence": m.persistence,
                        "evicted_keys": m.evicted_keys,
                    },
                }
            )
            return code
        pairs: list[tuple[str, object]] = [
            ("verdict", verdict),
            ("backend", h.backend),
            (
                "redis latency",
                None if h.redis_latency_ms is None else f"{h.redis_latency_ms:.1f} ms",
            ),
        ]
        if h.error and not any(c["detail"] == h.error for c in checks):  # said once
            pairs.append(("error", h.error))
        if h.missing_records:
            pairs.append(("missing records", h.missing_records))
        if m is not None:
            pairs += [
                (
                    "memory used",  # the readiness check of the same subject is "memory"
                    f"{m.used_bytes} bytes of "
                    + (f"{m.maxmemory_bytes}" if m.maxmemory_bytes else "no limit"),
                ),
                ("maxmemory-policy", m.policy),
                ("persistence", m.persistence),
            ]
            if m.evicted_keys:
                pairs.append(("evicted keys", f"{m.evicted_keys} since the server started"))
        pairs += [(c["name"], ("ok: " if c["ok"] else "FAILED: ") + c["detail"]) for c in checks]
        out.fields(pairs, title=f"{probe} of queue {q.name}")
        return code

    code = with_queue(app, redis, act)
    if code:
        sys.exit(code)


# ---------------------------------------------------------------------- pause / resume
def _pause_command(verb: str) -> click.Command:
    @click.command(
        verb,
        help=(
            "Pause APP for every worker: running jobs finish, nothing new starts; with "
            "--group, only that message group."
            if verb == "pause"
            else "Resume a paused APP, or with --group one paused message group."
        ),
    )
    @click.argument("app")
    @click.option(
        "-g",
        "--group",
        "group_id",
        default=None,
        help="A FIFO message group of APP instead of the whole queue.",
    )
    @json_option
    @redis_option
    def command(app: str, group_id: str | None, as_json: bool, redis: str | None) -> None:
        async def act(q: Any) -> str:
            if group_id is None:
                await getattr(q, verb)()
                return str(q.name)
            from ..features.groups import FIFOQueueManager
            from ..features.groups.cli import empty_group_note

            # A group's jobs share one member of a façade: where a job of the group goes.
            target = (
                q.queues[q.place({"message_group_id": group_id})]
                if isinstance(q, MultiQueue)
                else q
            )
            fifo = FIFOQueueManager.for_queue(target)
            await getattr(fifo, f"{verb}_group")(group_id)
            if verb == "pause":  # paused ahead of its first job: said (a typo pauses too)
                notes.append(await empty_group_note(fifo, group_id))
            return str(target.name)

        notes: list[str | None] = []
        name = with_queue(app, redis, act)
        done = f"{verb}d"
        if as_json:
            click.echo(json.dumps({"action": done, "queue": name, "group": group_id}))
        else:
            click.echo(done if group_id is None else row(done, "group", group_id))
        for note in filter(None, notes):  # on stderr: stdout keeps only the data
            click.echo(row(note), err=True)

    return command


pause = _pause_command("pause")
resume = _pause_command("resume")


# ---------------------------------------------------------------------- job, events, demo
@click.command()
@click.argument("app")
@click.argument("job_id")
@redis_option
def job(app: str, job_id: str, redis: str | None) -> None:
    """Show one job as JSON (as ``jobs show --json``, without the logs)."""

    async def act(q: Any) -> None:
        info = await q.get_job_status(job_id)
        if info is None:
            raise click.ClickException(
                f"job {text_field(job_id)} not found in queue '{text_field(q.name)}'"
            )
        click.echo(json.dumps(info.to_dict(), indent=2, default=str))

    with_queue(app, redis, act)


#: What a key or value of ``events``' ``k=v`` column may hold without quotes: printable
#: ASCII but the space, ``=``, ``"`` and ``\\``.
_BARE = frozenset(map(chr, range(0x21, 0x7F))) - set('="\\')


def _pair_part(value: object) -> str:
    """A key or value of a ``k=v`` list, logfmt style: escaped and bounded (``cell``:
    control characters and backslashes as escapes), and double-quoted with each ``"``
    escaped unless it is all ``_BARE`` (so ``reason="LookupError: no processor"``).
    Inside quotes every backslash starts an escape, so no value closes its quotes early
    or forges another pair; non-ASCII text is quoted too (a look-alike space or ``=``)."""
    text = cell(value)
    if text and all(ch in _BARE for ch in text):
        return text
    return '"' + text.replace('"', '\\"') + '"'


@click.command()
@click.argument("app")
@click.option("--from-start", is_flag=True, help="Replay what the stream still holds.")
@json_option
@redis_option
def events(app: str, from_start: bool, as_json: bool, redis: str | None) -> None:
    """Tail the durable event stream (Ctrl-C to stop); --json: one JSON object a line.

    A connection the server closes is opened again and the tail reads on after the
    last event shown; once Redis stays unreachable for 10 s it ends with exit code 3."""

    async def act(q: Any) -> None:
        async for ev in q.events(last_id="0" if from_start else "$"):
            if as_json:
                click.echo(
                    json.dumps(
                        {"id": ev.id, "event": ev.event, "job_id": ev.job_id, "fields": ev.fields},
                        default=str,
                    )
                )
                continue
            # Spaces separate the k=v pairs of the last column: a key or value holding a
            # space, '=', a quote or an escape is quoted (_pair_part), so none forges a pair.
            extra = " ".join(f"{_pair_part(k)}={_pair_part(v)}" for k, v in ev.fields.items())
            click.echo(row(ev.id, ev.event, ev.job_id or "") + f"\t{extra}")

    with contextlib.suppress(KeyboardInterrupt), giving_up_after(EVENTS_GIVE_UP_S):
        with_queue(app, redis, act)


@click.command()
@click.option(
    "--redis",
    default="memory://demo",
    show_default=True,
    help="Where to run the demo; memory:// needs no server.",
)
def demo(redis: str) -> None:
    """Show the queue at work: jobs, progress, retries, the DLQ and events."""
    from ..demo import run_demo

    asyncio.run(run_demo(redis, click.echo))
