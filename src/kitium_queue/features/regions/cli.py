"""``kitium-queue regions ...``: the regions of a global queue: status, failover,
stranded work.

``APP`` names a ``GlobalQueueManager`` built with its configuration
(``GlobalQueueManager(config)``, not initialized: the command initializes it without
the background loop) or, for ``status`` only, a ``JobQueue``: then the record of that
one copy is shown (its region, epoch, primary, lease, replication position), read from
``--redis`` or the queue's own Redis. Every value printed goes through the CLI's field
escaping; no job payload is printed.

``status`` only reads (``GlobalQueueManager.observe``): it claims no record, holds no
election, renews no lease and tells no region of an epoch. It is a probe: exit 0 when a
primary serves, 1 otherwise (see the command's help).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

import click
from redis.exceptions import ResponseError

from ...cli.importuse import add_app_check
from ...errors import ConfigurationError
from ...options import shown
from ...queue import JobQueue
from .stranded import held

if TYPE_CHECKING:
    from .manager import GlobalQueueManager

__all__ = ["make_command"]


def _refuse_manager(app: str, obj: Any) -> None:
    """Refuse a ``GlobalQueueManager`` not initialized (as every APP is: a command cannot
    await its ``initialize``) where a command takes a queue, saying what to use."""
    # An APP holding a GlobalQueueManager has imported its module: no import here (the
    # common path of every command).
    mod = sys.modules.get(f"{__package__}.manager")
    manager = getattr(mod, "GlobalQueueManager", None)
    if manager is not None and isinstance(obj, manager) and obj.topo is None:
        raise click.BadParameter(
            f"{app!r} is a GlobalQueueManager: this command takes a JobQueue (to read one "
            "region's copy: a JobQueue of the queue's name on that region's Redis); for the "
            f"global queue use 'kitium-queue regions status {app}' (and regions failover, "
            "stranded, resubmit, discard); its workers run in a program that calls "
            "await manager.start()"
        )


WithQueue = Callable[[str, "str | None", Callable[[Any], Awaitable[Any]]], Any]


def _quiet(config: Any) -> Any:
    """``config`` without the background loop (a command must not take part in leases
    or elections, only read and act)."""
    from .config import GlobalQueueConfig

    if isinstance(config, GlobalQueueConfig):
        return dataclasses.replace(config, background=False)
    if isinstance(config, Mapping):
        return {**config, "background": False}
    raise ConfigurationError("the GlobalQueueManager of APP was built without a configuration")


def _ms(v: int | None) -> str:
    return "-" if v is None else f"{v} ms"


def make_command(
    with_queue: WithQueue,
    redis_option: Callable[[Any], Any],
    row: Callable[..., str],
    load_app: Callable[..., Any],
    run: Callable[[Coroutine[Any, Any, Any]], Any],
) -> click.Group:
    """The ``regions`` command group, with the CLI's queue loader, ``--redis`` option,
    row formatter, app loader and coroutine runner. Other commands given a
    ``GlobalQueueManager`` are told what to use (``_refuse_manager``)."""
    add_app_check(_refuse_manager)

    def manager_of(app: str, redis: str | None, what: str) -> GlobalQueueManager:
        from .manager import GlobalQueueManager

        obj = load_app(app, (JobQueue, GlobalQueueManager))
        if isinstance(obj, JobQueue):
            raise ConfigurationError(
                f"{app!r} is a JobQueue: 'regions {what}' needs a GlobalQueueManager built with "
                "its configuration (module:attribute of GlobalQueueManager(config))"
            )
        if not isinstance(obj, GlobalQueueManager):
            raise click.BadParameter(f"{app!r} is a {type(obj).__name__}, not a GlobalQueueManager")
        if redis is not None:
            raise ConfigurationError(
                "--redis applies to a JobQueue APP; a GlobalQueueManager names the Redis of "
                "each region in its configuration"
            )
        return obj

    def with_manager(
        app: str,
        redis: str | None,
        what: str,
        act: Callable[[GlobalQueueManager], Awaitable[Any]],
        *,
        observe: bool = False,
    ) -> Any:
        from .manager import GlobalQueueManager

        given = manager_of(app, redis, what)

        async def go() -> Any:
            m = GlobalQueueManager()
            try:
                start = m.observe if observe else m.initialize
                await start(_quiet(given.configuration))
                return await act(m)
            finally:
                await m.close()

        return run(go())

    @click.group()
    def regions() -> None:
        """Regions of a global queue: status, failover, stranded work."""

    @regions.command("status")
    @click.argument("app")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @redis_option
    def status(app: str, as_json: bool, redis: str | None) -> None:
        """Each region: role, health, epoch, lease, replication lag, counts. Read only.

        Exit 0 when a primary serves (holds a running lease), 1 when none does, when no
        region holds a record of the queue (a name never used) or, for a JobQueue APP,
        when the copy has no record or is a primary whose lease ran out."""
        from .manager import GlobalQueueManager

        obj = load_app(app, (JobQueue, GlobalQueueManager))
        if isinstance(obj, JobQueue):

            async def one(q: Any) -> bool:
                client = await q.client()
                (reply,) = (
                    await client.pipeline(transaction=False)
                    .hgetall(q.keys.extra("rg"))
                    .execute(raise_on_error=False)
                )
                damage: list[str] = []
                if isinstance(reply, ResponseError) and "WRONGTYPE" in str(reply):
                    damage.append("its key holds another type, not a hash")
                    reply = {}
                elif isinstance(reply, BaseException):
                    raise reply
                rec = {
                    k.decode(errors="replace"): v.decode(errors="replace") for k, v in reply.items()
                }
                sec, usec = await client.time()
                now = int(sec) * 1000 + int(usec) // 1000
                try:
                    lease = int(rec.get("lease", "0") or 0)
                except ValueError:
                    damage.append(f"lease is not a number: {shown(rec['lease'])}")
                    lease = 0
                primary = rec.get("primary") == rec.get("self") and "self" in rec
                left = (-1 if lease < 0 else max(0, lease - now)) if primary else 0
                out = {
                    "queue": q.name,
                    "region": rec.get("self"),
                    "epoch": rec.get("epoch"),
                    "primary": rec.get("primary"),
                    "lease_ms": left,
                    "position": rec.get("pos", ""),
                    "source": rec.get("src", ""),
                    "damaged": "; ".join(damage) or None,
                }
                # A copy that names its primary; the primary itself with its lease running.
                ok = not damage and bool(rec.get("epoch") and rec.get("primary"))
                ok = ok and (not primary or left != 0)
                if as_json:
                    click.echo(json.dumps(out, indent=2))
                    return ok
                if "self" not in rec and not damage:
                    click.echo(row(q.name, "no region record: not a copy of a global queue"))
                    return False
                for k, v in out.items():
                    click.echo(row(k, "-" if v in (None, "") else v))
                return ok

            if not with_queue(app, redis, one):
                raise click.exceptions.Exit(1)
            return

        async def act(m: GlobalQueueManager) -> bool:
            st = await m.get_global_stats()
            copies = [m.region(n) for n in m.regions]
            up = [c for c in copies if c.reachable]
            if up and not any(c.record is not None and c.record.region for c in up):
                raise click.ClickException(
                    f"no region holds a record of queue {shown(st.name)} ({len(up)} of "
                    f"{len(copies)} regions checked): it was never initialized with this "
                    "configuration (GlobalQueueManager.initialize creates the records); "
                    "check the queue's name"
                )
            if as_json:
                click.echo(json.dumps(st.as_dict(), indent=2, default=str))
                return st.serving
            click.echo(
                row("queue", st.name, "primary", st.primary or "-", "epoch", st.epoch or "-")
            )
            click.echo(row("mode", st.mode, "serving", st.serving))
            click.echo(
                row(
                    "region",
                    "role",
                    "healthy",
                    "epoch",
                    "lease",
                    "lag",
                    "lag age",
                    "waiting",
                    "active",
                    "pinned",
                    "stranded",
                    "error",
                )
            )
            for r in st.regions:
                click.echo(
                    row(
                        r.region,
                        r.role,
                        r.healthy,
                        "-" if r.epoch is None else r.epoch,
                        _ms(r.lease_ms) if r.serving else "-",
                        "-" if r.lag_entries is None else r.lag_entries,
                        _ms(r.lag_ms),
                        "-" if r.queue is None else r.queue.waiting,
                        "-" if r.queue is None else r.queue.active,
                        "-" if r.pinned is None else r.pinned.waiting + r.pinned.active,
                        r.stranded,
                        r.error or "-",
                    )
                )
            return st.serving

        if not with_manager(app, redis, "status", act, observe=True):
            raise click.exceptions.Exit(1)

    @regions.command("failover")
    @click.argument("app")
    @click.argument("region")
    @redis_option
    def failover(app: str, region: str, redis: str | None) -> None:
        """Make REGION the primary now (a planned handover if the primary answers)."""

        async def act(m: GlobalQueueManager) -> None:
            info = await m.failover_to(region)
            click.echo(
                row(
                    "primary",
                    info.primary,
                    "epoch",
                    info.epoch,
                    "was",
                    info.previous or "-",
                    "took",
                    _ms(info.duration_ms),
                )
            )

        with_manager(app, redis, "failover", act)

    @regions.command("stranded")
    @click.argument("app")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @redis_option
    def stranded(app: str, as_json: bool, redis: str | None) -> None:
        """Jobs and outcomes former primaries never replicated (see docs/multi-region.md)."""

        async def act(m: GlobalQueueManager) -> None:
            got = await m.stranded()
            if as_json:
                click.echo(json.dumps([s.as_dict() for s in got], indent=2))
                return
            click.echo(row("id", "kind", "from", "epoch", "name", "state there", "state here"))
            for s in got:
                click.echo(row(s.id, s.kind, s.region, s.epoch, s.name, s.state, s.here))

        with_manager(app, redis, "stranded", act)

    @regions.command("resubmit")
    @click.argument("app")
    @click.argument("ids", nargs=-1)
    @click.option("--all", "every", is_flag=True, help="Every stranded record.")
    @redis_option
    def resubmit(app: str, ids: tuple[str, ...], every: bool, redis: str | None) -> None:
        """Apply stranded records (IDS, or --all) to the current primary."""
        if not ids and not every:
            raise click.UsageError("give the ids to re-submit, or --all")

        async def act(m: GlobalQueueManager) -> list[str]:
            unknown = [] if every else await not_stranded(m, ids)
            known = [i for i in ids if i not in unknown]
            if every or known:
                got = await m.resubmit_stranded(None if every else known)
                for jid, status in got.items():
                    click.echo(row(jid, status))
            return unknown

        refuse(app, with_manager(app, redis, "resubmit", act))

    @regions.command("discard")
    @click.argument("app")
    @click.argument("ids", nargs=-1, required=True)
    @redis_option
    def discard(app: str, ids: tuple[str, ...], redis: str | None) -> None:
        """Forget stranded records IDS without applying them."""

        async def act(m: GlobalQueueManager) -> list[str]:
            unknown = await not_stranded(m, ids)
            known = [i for i in ids if i not in unknown]
            if known:
                click.echo(row("discarded", await m.discard_stranded(known)))
            return unknown

        refuse(app, with_manager(app, redis, "discard", act))

    return regions


async def not_stranded(m: GlobalQueueManager, ids: tuple[str, ...]) -> list[str]:
    """Those of ``ids`` that no reachable region keeps a stranded record of."""
    found: set[str] = set()
    for name in m.regions:
        c = m.region(name)
        if c.reachable:
            found |= await held(c, ids)
    return [i for i in dict.fromkeys(ids) if i not in found]


def refuse(app: str, unknown: list[str]) -> None:
    """Exit 1 saying which ids are not stranded jobs (none: nothing to say)."""
    if not unknown:
        return
    names = ", ".join(shown(i) for i in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
    what = "is not a stranded job" if len(unknown) == 1 else "are not stranded jobs"
    raise click.ClickException(
        f"{names} {what} of this queue (no reachable region keeps a record of "
        f"{'it' if len(unknown) == 1 else 'them'}): 'kitium-queue regions stranded "
        f"{app}' lists the stranded jobs"
    )
