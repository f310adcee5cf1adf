"""``kitium-queue groups ...``: list, show, pause, resume, configure and heal message groups.

The command group is built by ``make_command`` with the CLI's own helpers passed in (so
this module does not import the CLI). Every value printed comes from Redis or the user
and goes through the CLI's field escaping.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import click

from ...errors import JobStateError, PermissionDeniedError

if TYPE_CHECKING:
    from .manager import FIFOQueueManager, MessageGroupStats

__all__ = ["empty_group_note", "make_command"]

WithQueue = Callable[[str, "str | None", Callable[[Any], Awaitable[Any]]], Any]
#: Prints rows under column names: ``table(columns, rows, header=True)``.
Table = Callable[..., None]


def _manager(queue: Any) -> FIFOQueueManager:
    from .manager import FIFOQueueManager

    return FIFOQueueManager.for_queue(queue)


def _age(ms: int | None) -> str:
    if ms is None:
        return "-"
    return f"{ms / 1000:.1f}s" if ms < 120_000 else f"{ms / 60_000:.1f}min"


async def _stats(fifo: FIFOQueueManager, gid: str) -> MessageGroupStats | str:
    """A group's stats, or what is wrong with a group whose keys are damaged (a key of
    another type): one such group is a row of the listing, not its end."""
    try:
        return await fifo.get_group_stats(gid)
    except JobStateError as exc:
        return str(exc)


async def empty_group_note(fifo: FIFOQueueManager, gid: str) -> str | None:
    """After a pause: the note that group ``gid`` has no jobs yet (a pause ahead of its
    first job is kept: that job waits for a resume), else None. None too when the count
    is not kept (``high_throughput``) or a read guard refuses the read."""
    try:
        s = await fifo.get_group_stats(gid)
    except PermissionDeniedError:
        return None
    if s.size != 0:
        return None
    return (
        f"note: group '{gid}' has no jobs yet; it stays paused, so the jobs added to it "
        "wait until it is resumed"
    )


def _summary(s: MessageGroupStats | str, gid: str) -> list[object]:
    if isinstance(s, str):
        return [gid, "damaged", *("-" * 7)]
    return [
        s.group_id,
        "paused" if s.paused else "running",
        "-" if s.size is None else s.size,
        s.waiting,
        s.active,
        s.held,
        "-" if s.completed is None else s.completed,
        "-" if s.failed is None else s.failed,
        _age(s.oldest_waiting_age_ms),
    ]


def make_command(
    with_queue: WithQueue,
    redis_option: Callable[[Any], Any],
    row: Callable[..., str],
    table: Table,
) -> click.Group:
    """The ``groups`` command group, using the CLI's queue loader, ``--redis`` option,
    row formatter and table printer."""
    show = table

    @click.group()
    def groups() -> None:
        """FIFO message groups: list, show, pause, resume, set."""

    @groups.command("list")
    @click.argument("app")
    @click.option("-n", "--limit", default=50, show_default=True, help="Groups per page.")
    @click.option("--cursor", default=None, help="Cursor printed by the previous page.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @redis_option
    def groups_list(
        app: str, limit: int, cursor: str | None, as_json: bool, redis: str | None
    ) -> None:
        """Groups with jobs or settings, in name order, with their counts."""

        async def act(q: Any) -> None:
            fifo = _manager(q)
            page = await fifo.list_groups(cursor, count=limit)
            stats = [await _stats(fifo, g) for g in page.groups]
            if as_json:
                listed = [
                    {"group_id": g, "damaged": s} if isinstance(s, str) else s.as_dict()
                    for g, s in zip(page.groups, stats, strict=True)
                ]
                click.echo(json.dumps({"groups": listed, "cursor": page.cursor}, indent=2))
                return
            show(
                [
                    "group",
                    "state",
                    "size",
                    "waiting",
                    "active",
                    "held",
                    "completed",
                    "failed",
                    "oldest wait",
                ],
                [_summary(s, g) for g, s in zip(page.groups, stats, strict=True)],
            )
            if page.cursor:
                click.echo(row("next page:", f"--cursor {page.cursor}"))

        with_queue(app, redis, act)

    @groups.command("show")
    @click.argument("app")
    @click.argument("group_id")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @redis_option
    def groups_show(app: str, group_id: str, as_json: bool, redis: str | None) -> None:
        """One group: settings, counts, the jobs holding its turns, the next job.
        Exit 1 when the queue knows no such group (no jobs, settings or totals)."""

        async def act(q: Any) -> None:
            s = await _manager(q).get_group_stats(group_id)
            if not (s.exists or s.size or s.waiting or s.held or s.turns):
                # high_throughput keeps no per-group totals: a group whose only jobs are
                # delayed (not due yet) leaves no trace of its own until they are.
                why = (
                    "it has no jobs, settings or totals"
                    if s.size is not None
                    else "nothing of it waits, runs or has settings (high_throughput mode "
                    "keeps no per-group totals: its delayed jobs show once they are due)"
                )
                raise click.ClickException(
                    row(
                        f"group '{group_id}' not found in queue '{q.name}': {why} "
                        "('groups list' shows the groups)"
                    )
                )
            if as_json:
                click.echo(json.dumps(s.as_dict(), indent=2))
                return
            rl = (
                "-"
                if s.rate_limit is None
                else (f"{s.rate_limit.max} per {s.rate_limit.duration} ms")
            )
            for k, v in (
                ("group", s.group_id),
                ("known", s.exists),
                ("paused", s.paused),
                ("group_concurrency", s.group_concurrency),
                ("max_group_size", s.max_group_size or "-"),
                ("rate_limit", rl),
                ("size", "-" if s.size is None else s.size),
                ("waiting", s.waiting),
                ("active", s.active),
                ("held", s.held),
                ("completed", "-" if s.completed is None else s.completed),
                ("failed", "-" if s.failed is None else s.failed),
                ("oldest wait", _age(s.oldest_waiting_age_ms)),
                ("next job", s.next_job_id or "-"),
            ):
                click.echo(row(k, v))
            for t in s.turns:
                click.echo(
                    row("turn", t.job_id, t.status, t.worker or "-", f"attempts={t.attempts}")
                )

        with_queue(app, redis, act)

    def _simple(verb: str) -> None:
        @groups.command(
            verb,
            help=(
                "Pause GROUP_ID: none of its jobs starts until resumed (running ones finish). "
                "A group with no jobs yet is paused ahead: its first jobs wait (said on stderr)."
                if verb == "pause"
                else "Resume GROUP_ID: its held jobs and free turns go on."
            ),
        )
        @click.argument("app")
        @click.argument("group_id")
        @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
        @redis_option
        def cmd(app: str, group_id: str, as_json: bool, redis: str | None) -> None:
            async def act(q: Any) -> None:
                fifo = _manager(q)
                await getattr(fifo, f"{verb}_group")(group_id)
                # Pausing a group before its first job is kept (that job waits): said,
                # as a name mistyped pauses a group of its own.
                note = await empty_group_note(fifo, group_id) if verb == "pause" else None
                click.echo(
                    json.dumps({"action": f"{verb}d", "group": group_id})
                    if as_json
                    else row(f"{verb}d", group_id)
                )
                if note:  # on stderr: stdout keeps its one row (or JSON document)
                    click.echo(row(note), err=True)

            with_queue(app, redis, act)

    _simple("pause")
    _simple("resume")

    @groups.command("set")
    @click.argument("app")
    @click.argument("group_id")
    @click.option("--concurrency", type=int, default=None, help="Jobs holding a turn at once.")
    @click.option("--max-size", type=int, default=None, help="Most unfinished jobs (0: none).")
    @click.option("--rate-max", type=int, default=None, help="Starts per window.")
    @click.option(
        "--rate-duration",
        type=int,
        default=1000,
        show_default=True,
        help="Rate window in ms (with --rate-max).",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print the group's settings as JSON.")
    @redis_option
    def groups_set(
        app: str,
        group_id: str,
        concurrency: int | None,
        max_size: int | None,
        rate_max: int | None,
        rate_duration: int,
        as_json: bool,
        redis: str | None,
    ) -> None:
        """Set GROUP_ID's settings (those not given go back to the defaults)."""
        from .manager import GroupConfig, GroupRateLimit

        async def act(q: Any) -> None:
            rate = None if rate_max is None else GroupRateLimit(rate_max, rate_duration)
            fifo = _manager(q)
            await fifo.set_group(GroupConfig(group_id, concurrency, max_size, rate))
            if as_json:
                click.echo(json.dumps((await fifo.get_group_stats(group_id)).as_dict(), indent=2))
            else:
                click.echo(row("set", group_id))

        with_queue(app, redis, act)

    @groups.command("heal")
    @click.argument("app")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @redis_option
    def groups_heal(app: str, as_json: bool, redis: str | None) -> None:
        """Give back turns held by jobs that already finished (run by a process without
        FIFOQueueManager): the groups' lines take them. Workers do it too, paced."""

        async def act(q: Any) -> None:
            r = await _manager(q).heal()
            got = {"turns_freed": r.turns_freed, "jobs_moved": r.jobs_moved, "groups": r.groups}
            if as_json:
                click.echo(json.dumps(got))
            else:
                for k, v in got.items():
                    click.echo(row(k, v))

        with_queue(app, redis, act)

    return groups
