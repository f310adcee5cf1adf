"""``kitium-queue jobs ...`` and ``kitium-queue dlq ...``: find, show and act on jobs.

* ``jobs list``: one state, filtered, a page at a time;
* ``jobs show``: one job as an operator asks about it (data, shown redacted when the
  payload is protected; progress, logs, attempts, error and traceback, timings, the
  worker holding it and its lease deadline);
* ``jobs retry|remove|promote|cancel``: job ids, or (retry, remove, promote) every job
  of a state that matches a filter, after a confirmation (``--yes`` skips it);
* ``dlq list|replay``: the dead-letter queue, by filter.

Every command works on a ``JobQueue`` and on a ``PartitionedQueue`` (its full ids,
``<partition>:<id>``). Each job's action passes the queue's admin choke point on its
own, so guards and audit see every one.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import click

from ..enums import JobStatus
from ..errors import JobNotFoundError, JobStateError
from ..job import JobInfo
from ..options import MAX_QUERY_LIMIT
from ..queries import parse_status, query_id
from .base import error_line, json_option, redis_option, text_field, with_queue
from .errortext import error_text
from .output import Output, output, span, when
from .select import JobFilter, filter_options, find, make_filter

__all__ = ["dlq", "jobs"]

_STATES = [s.value for s in JobStatus]
_CONCURRENT = 50
_LIMIT = click.IntRange(1, MAX_QUERY_LIMIT)


def _state_column(info: JobInfo, now: int) -> str:
    st = info.status
    if st is JobStatus.DELAYED:
        return f"due in {span((info.delayed_until or now) - now)}"
    if st in (JobStatus.FAILED, JobStatus.DLQ):
        return info.failed_reason or "-"
    if st is JobStatus.COMPLETED:
        return f"ran {span(_ran(info))}"
    if st is JobStatus.ACTIVE:
        return f"running {span(now - (info.started_at or now))}"
    return f"priority {info.priority}"


def _ran(info: JobInfo) -> int | None:
    if info.finished_at is None or info.started_at is None:
        return None
    return info.finished_at - info.started_at


def _listing(out: Output, infos: Sequence[JobInfo], now: int, empty: str) -> None:
    out.table(
        ["id", "name", "state", "attempts", "created", "detail"],
        [
            [
                i.id,
                i.name,
                i.status.value,
                f"{i.attempts}/{i.max_attempts}",
                when(i.created_at),
                _state_column(i, now),
            ]
            for i in infos
        ],
        empty=empty if not infos else None,
    )


def _next_page(cursor: str | None) -> None:
    if cursor is not None:  # on stderr: stdout keeps one record per line
        click.echo(f"next page: --cursor {text_field(cursor)}", err=True)


@click.group()
def jobs() -> None:
    """Find, show, retry, remove, promote and cancel jobs."""


@jobs.command("list")
@click.argument("app")
@click.option(
    "-s",
    "--state",
    type=click.Choice(_STATES),
    default="waiting",
    show_default=True,
    help="The state to list.",
)
@filter_options()
@click.option("-n", "--limit", type=_LIMIT, default=20, show_default=True, help="Jobs per page.")
@click.option("--cursor", default=None, help="Where the previous page ended (printed by it).")
@json_option
@redis_option
def jobs_list(
    app: str,
    state: str,
    limit: int,
    cursor: str | None,
    as_json: bool,
    redis: str | None,
    **flt: Any,
) -> None:
    """Jobs of one state, in its order (finished ones newest first), filtered.

    Plain output: one job per line: id, name, state, attempts/max, created (UTC), and
    by state the priority, due time, run time or failure reason. The cursor of the next
    page goes to stderr."""
    out = output(as_json)
    selector = make_filter(**flt)

    async def act(q: Any) -> None:
        # Rows show no payload: only --json (every field) reads the jobs' data.
        found = await find(
            q, parse_status(state), selector, limit=limit, cursor=cursor, include_data=as_json
        )
        if as_json:
            out.json(
                {
                    "jobs": [i.to_dict() for i in found.jobs],
                    "next_cursor": found.next_cursor,
                    "scanned": found.scanned,
                }
            )
            return
        _listing(out, found.jobs, selector.now_ms, f"no {state} jobs match")
        _next_page(found.next_cursor)

    with_queue(app, redis, act)


@jobs.command("show")
@click.argument("app")
@click.argument("job_id")
@click.option(
    "--logs",
    "log_lines",
    type=click.IntRange(0, 10_000),
    default=20,
    show_default=True,
    help="Latest log lines shown.",
)
@json_option
@redis_option
def jobs_show(app: str, job_id: str, log_lines: int, as_json: bool, redis: str | None) -> None:
    """One job: data (redacted when protected), progress, attempts, timings, error with
    traceback, the worker holding it, its lease deadline and its latest log lines.
    Exit 1 when there is no such job."""
    out = output(as_json)

    async def act(q: Any) -> None:
        d = await q.get_job_detail(job_id)
        if d is None:
            raise click.ClickException(
                f"job {text_field(job_id)} not found in queue '{text_field(q.name)}'"
            )
        logs = await q.get_job_logs(job_id, -log_lines, -1) if log_lines else []
        if as_json:
            out.json({**d.to_dict(), "logs": logs})
            return
        now = int(time.time() * 1000)
        waited = (
            None if d.started_at is None or d.created_at is None else (d.started_at - d.created_at)
        )
        lease = (
            None
            if d.lease_deadline is None
            else (f"{when(d.lease_deadline)} (in {span(d.lease_deadline - now)})")
        )
        out.fields(
            [
                ("id", d.id),
                ("name", d.name),
                ("state", d.status.value),
                ("attempts", f"{d.attempts} of {d.max_attempts}"),
                ("stalls", d.stalls),
                ("priority", d.priority),
                ("progress", json.dumps(d.progress, default=str)),
                ("created", when(d.created_at)),
                ("started", when(d.started_at)),
                ("finished", when(d.finished_at)),
                ("delayed until", when(d.delayed_until)),
                ("waited", span(waited)),
                ("ran", span(_ran(d))),
                ("worker", d.worker),
                ("lease deadline", lease),
                ("failed reason", d.failed_reason),
                ("last error", d.last_error),
                ("options", json.dumps(d.options, default=str)),
                ("damaged", d.damaged),
                ("log lines", d.log_lines),
            ],
            title=f"job {d.id}",
        )
        # Blocks show their first MAX_BLOCK_CHARS characters (--json: all of them).
        out.block("data", json.dumps(d.data, indent=2, default=str))
        if d.result is not None:
            out.block("result", json.dumps(d.result, indent=2, default=str))
        if d.stacktrace:
            out.block("traceback", d.stacktrace)
        out.block("logs", logs)

    with_queue(app, redis, act)


@jobs.command("why")
@click.argument("app")
@click.argument("job_id")
@json_option
@redis_option
def jobs_why(app: str, job_id: str, as_json: bool, redis: str | None) -> None:
    """Why job JOB_ID is not running: each reason (its delay, a paused queue or group,
    the job holding its group's turn, unfinished dependencies, an open breaker, a full
    rate window or concurrency cap, no live worker for its name, the lease holding it),
    with what it refers to and until when. The core's reasons come first, then each
    feature's. Exit 1 when there is no such job."""
    out = output(as_json)

    async def act(q: Any) -> None:
        why = await q.explain(job_id)
        if why.status is None:
            raise click.ClickException(
                f"job {text_field(job_id)} not found in queue '{text_field(q.name)}'"
            )
        if as_json:
            out.json(why.to_dict())
            return
        out.fields(
            [("state", why.status.value), ("held back", "yes" if why.blocked else "no")],
            title=f"job {why.job_id}",  # escaped by the table, as in ``jobs show``
        )
        rows = [
            [
                r.code,
                "yes" if r.blocking else "no",
                _unescaped(r.message),
                "-" if r.until_ms is None else when(r.until_ms),
                r.source,
            ]
            for r in why.reasons
        ]
        out.table(
            ["reason", "holds", "message", "until", "from"], rows, empty="nothing holds it back"
        )

    with_queue(app, redis, act)


# The escapes ``printable`` and ``repr`` write (explain's messages quote job data with
# them): a backslash, a quote, \n \r \t, \xNN, \uNNNN, \UNNNNNNNN.
_ESCAPE = re.compile(r"\\(?:[\\'\"nrt]|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8})")


def _unescaped(message: str) -> str:
    """A reason's message with its escapes read back: the message quotes job data
    escaped already, and every cell of the output is escaped, so each control character
    (and backslash) shows escaped once, as in the other commands' output."""
    return _ESCAPE.sub(lambda m: codecs.decode(m.group(), "unicode_escape"), message)


# ---------------------------------------------------------------------- acting on jobs
async def _each(
    out: Output, label: str, ids: Sequence[str], fn: Callable[[str], Awaitable[Any]]
) -> tuple[list[str], list[tuple[str, str]]]:
    """``fn(id)`` for every id, a few at a time, with a progress bar. A job that is not
    there or not in a state for it is noted and skipped; any other error ends it all.
    Every id is checked first, so an id that cannot name a job is refused before any
    job is acted on."""
    for jid in ids:
        query_id(jid)
    done: list[str] = []
    failed: list[tuple[str, str]] = []
    with out.progress(len(ids), label) as advance:
        for k in range(0, len(ids), _CONCURRENT):
            chunk = ids[k : k + _CONCURRENT]
            results = await asyncio.gather(*(fn(i) for i in chunk), return_exceptions=True)
            for jid, r in zip(chunk, results, strict=True):
                if isinstance(r, (JobNotFoundError, JobStateError)):
                    failed.append((jid, str(r)))
                elif isinstance(r, BaseException):
                    raise r
                elif r is False:  # remove_job: there was no such job
                    failed.append((jid, f"job {jid} does not exist"))
                else:
                    done.append(jid)
            advance(len(chunk))
    return done, failed


def _report(
    out: Output, past: str, matched: int, done: list[str], failed: list[tuple[str, str]]
) -> None:
    if out.as_json:
        out.json(
            {
                "action": past,
                "matched": matched,
                "done": done,
                "failed": [{"id": i, "error": e} for i, e in failed],
            }
        )
    else:
        out.line(f"{past} {len(done)} job(s)")
        for jid, err in failed:
            click.echo(error_line(f"skipped {text_field(jid)}: {error_text(err)}"), err=True)
    if failed:
        raise SystemExit(1)


def _confirm(question: str, yes: bool) -> None:
    if not yes:
        click.confirm(question, abort=True, err=True)


async def _select(
    q: Any, out: Output, ids: Sequence[str], state: str, selector: JobFilter, limit: int
) -> list[str]:
    """The ids given, or those of the jobs of ``state`` that match ``selector``."""
    if ids:
        return list(dict.fromkeys(ids))
    total = (await q.get_stats()).to_dict().get(state, 0)
    with out.progress(
        min(total, limit) if selector.empty else total, f"finding {state} jobs"
    ) as advance:
        found = await find(
            q, parse_status(state), selector, limit=limit, on_page=advance, include_data=False
        )
    return [i.id for i in found.jobs]


def _bulk_command(
    verb: str,
    past: str,
    method: str,
    states: Sequence[str],
    default_state: str | None,
    summary: str,
) -> click.Command:
    state_help = f"State of the jobs to {verb} by filter" + (
        f" (default {default_state})." if default_state else " (required)."
    )

    @jobs.command(
        verb,
        help=(
            f"{summary}\n\nGive JOB_IDS, or no ids and a state (and filters): every matching "
            f"job is {past} after a confirmation (--yes skips it). Exit 1 if any job could "
            "not be (not found, or not in a state for it)."
        ),
    )
    @click.argument("app")
    @click.argument("job_ids", nargs=-1)
    @click.option("-s", "--state", type=click.Choice(list(states)), default=None, help=state_help)
    @filter_options()
    @click.option(
        "-n",
        "--limit",
        type=_LIMIT,
        default=MAX_QUERY_LIMIT,
        help="At most this many jobs by filter.",
    )
    @click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
    @json_option
    @redis_option
    def command(
        app: str,
        job_ids: tuple[str, ...],
        state: str | None,
        limit: int,
        yes: bool,
        as_json: bool,
        redis: str | None,
        **flt: Any,
    ) -> None:
        out = output(as_json)
        selector = make_filter(**flt)
        if job_ids and (state is not None or not selector.empty):
            raise click.UsageError("give job ids or a state and filters, not both")
        chosen = state or default_state
        if not job_ids and chosen is None:
            raise click.UsageError(f"give job ids, or --state to {verb} jobs by filter")

        async def act(q: Any) -> None:
            ids = await _select(q, out, job_ids, chosen or "", selector, limit)
            if not job_ids:
                if not ids:
                    if as_json:
                        out.json({"action": past, "matched": 0, "done": [], "failed": []})
                    else:
                        out.line(f"no {chosen} jobs match ({selector.describe()})")
                    return
                _confirm(
                    f"{verb.capitalize()} {len(ids)} {chosen} job(s) "
                    f"({text_field(selector.describe())}) in queue '{text_field(q.name)}'?",
                    yes,
                )
            done, failed = await _each(out, verb, ids, getattr(q, method))
            _report(out, past, len(ids), done, failed)

        with_queue(app, redis, act)

    return command


jobs_retry = _bulk_command(
    "retry",
    "retried",
    "retry_job",
    ["failed", "dlq", "completed"],
    "failed",
    "Run finished jobs again with fresh attempts.",
)
jobs_remove = _bulk_command(
    "remove",
    "removed",
    "remove_job",
    [s for s in _STATES if s != "active"],
    None,
    "Delete jobs that are not running (cancel running ones).",
)
jobs_promote = _bulk_command(
    "promote",
    "promoted",
    "promote_job",
    ["delayed"],
    "delayed",
    "Move delayed jobs to waiting now, due or not.",
)


@jobs.command("cancel")
@click.argument("app")
@click.argument("job_ids", nargs=-1, required=True)
@json_option
@redis_option
def jobs_cancel(app: str, job_ids: tuple[str, ...], as_json: bool, redis: str | None) -> None:
    """Stop jobs: waiting or delayed ones are removed, running ones are stopped at their
    next lease renewal and failed for good. Exit 1 if a job does not exist."""
    out = output(as_json)

    async def act(q: Any) -> None:
        outcome: dict[str, str] = {}

        async def one(jid: str) -> None:
            outcome[jid] = await q.cancel_job(jid)

        done, failed = await _each(out, "cancel", list(dict.fromkeys(job_ids)), one)
        if as_json:
            out.json(
                {
                    "action": "cancelled",
                    "matched": len(job_ids),
                    "done": [{"id": i, "outcome": outcome[i]} for i in done],
                    "failed": [{"id": i, "error": e} for i, e in failed],
                }
            )
        else:
            out.table(["id", "outcome"], [[i, outcome[i]] for i in done])
            for jid, err in failed:
                click.echo(error_line(f"skipped {text_field(jid)}: {error_text(err)}"), err=True)
        if failed:
            raise SystemExit(1)

    with_queue(app, redis, act)


# ---------------------------------------------------------------------- the DLQ
@click.group()
def dlq() -> None:
    """Inspect and replay the dead-letter queue, by filter."""


@dlq.command("list")
@click.argument("app")
@filter_options()
@click.option("-n", "--limit", type=_LIMIT, default=20, show_default=True)
@click.option("--cursor", default=None, help="Where the previous page ended (printed by it).")
@json_option
@redis_option
def dlq_list(
    app: str, limit: int, cursor: str | None, as_json: bool, redis: str | None, **flt: Any
) -> None:
    """Dead-lettered jobs, newest first, filtered by name, data, error text and age.

    Plain output: one job per line: id, name, attempts=N, failure reason."""
    out = output(as_json)
    selector = make_filter(**flt)

    async def act(q: Any) -> None:
        found = await find(
            q, JobStatus.DLQ, selector, limit=limit, cursor=cursor, include_data=as_json
        )
        if as_json:
            out.json(
                {
                    "jobs": [i.to_dict() for i in found.jobs],
                    "next_cursor": found.next_cursor,
                    "scanned": found.scanned,
                }
            )
            return
        if out.rich:
            out.table(
                ["id", "name", "attempts", "failed", "reason"],
                [
                    [i.id, i.name, i.attempts, when(i.finished_at), i.failed_reason]
                    for i in found.jobs
                ],
                empty="the DLQ holds no matching job",
            )
        else:
            for i in found.jobs:
                out.line(i.id, i.name, f"attempts={i.attempts}", i.failed_reason)
        _next_page(found.next_cursor)

    with_queue(app, redis, act)


@dlq.command("replay")
@click.argument("app")
@filter_options()
@click.option(
    "-n",
    "--limit",
    type=_LIMIT,
    default=1000,
    show_default=True,
    help="At most this many jobs (without filters, the oldest first).",
)
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@redis_option
def dlq_replay(
    app: str, limit: int, yes: bool, as_json: bool, redis: str | None, **flt: Any
) -> None:
    """Move dead-lettered jobs back to waiting with fresh attempts: all of them (up to
    --limit), or those matching the filters, after a confirmation (--yes skips it)."""
    out = output(as_json)
    selector = make_filter(**flt)

    async def act(q: Any) -> None:
        if selector.empty:
            n = min((await q.get_stats()).dlq, limit)
            if n:
                _confirm(f"Replay {n} dead-lettered job(s) of queue '{text_field(q.name)}'?", yes)
            moved = 0
            with out.progress(n, "replay") as advance:
                while moved < n:
                    got = await q.replay_dlq(min(1000, n - moved))
                    advance(got)
                    moved += got
                    if got == 0:
                        break
            if as_json:
                out.json({"action": "replayed", "matched": n, "replayed": moved})
            else:
                out.line(f"replayed {moved} job(s)")
            return
        found = await find(q, JobStatus.DLQ, selector, limit=limit, include_data=False)
        ids = [i.id for i in found.jobs]
        if ids:
            _confirm(
                f"Replay {len(ids)} dead-lettered job(s) ({text_field(selector.describe())}) of "
                f"queue '{text_field(q.name)}'?",
                yes,
            )
        done, failed = await _each(out, "replay", ids, q.retry_job)
        _report(out, "replayed", len(ids), done, failed)

    with_queue(app, redis, act)
