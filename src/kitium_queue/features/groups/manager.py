"""``FIFOQueueManager``: strict order per message group, fair across groups.

Enabling groups on a queue (``FIFOQueueManager(queue)``, in every process that adds or
runs the queue's jobs, like ``process``) declares the job option ``message_group_id``
and fills the Lua slots with the group fragments (``lua.py``). From then on:

* jobs of one group start in their group's order (priority, then the order they were
  added), at most ``group_concurrency`` at a time (default 1: one after the other);
* a job holds its group's turn from its first start until it completes, fails for good
  (dead-lettered or failed), or is removed or cancelled: a retry waiting out its
  backoff, a ``RetryLater``, a stalled or handed-back job keeps the group waiting;
* the next job of a group goes to the back of the queue's wait when the turn frees, so
  groups take turns: a group with 100,000 jobs does not delay one with a single job;
* the group's waiting jobs are parked (status ``pending``, out of wait), so no claim
  ever scans them.

The exact semantics (priority, delay, lifo, retry_job, replay_dlq, schedules, pause,
partitions) are in ``docs/groups.md``.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from ...errors import ConfigurationError, JobStateError
from ...options import MAX_COUNT, check_text, has_bad_char, shown, to_int, to_ms
from ...queries import check_reads
from ...slots import ORDER_LINE
from . import lua
from .explain import make_explainer
from .heal import GroupHealReport, heal_groups, heal_service
from .lua import FEATURE, MAX_GROUP_ID

if TYPE_CHECKING:
    from ...queue import JobQueue

__all__ = [
    "FIFOQueueManager",
    "GroupConfig",
    "GroupHealReport",
    "GroupPage",
    "GroupRateLimit",
    "GroupTurn",
    "MessageGroupStats",
    "check_group_id",
]

_MAX_CONCURRENCY = 1_000_000
_MAX_SIZE = 1_000_000_000
_PAGE_MAX = 1000


def check_group_id(value: Any, what: str = "message_group_id") -> str:
    """A group id: a non-empty string of at most 256 characters without control
    characters or lone surrogates (it ends up in key names and log lines)."""
    return check_text(value, what, max_len=MAX_GROUP_ID)


@dataclass(frozen=True, slots=True)
class GroupRateLimit:
    """At most ``max`` starts of the group's jobs per ``duration`` ms window."""

    max: int
    duration: int


@dataclass(frozen=True, slots=True)
class GroupConfig:
    """A group and, optionally, its settings (``None``: leave as it is).

    ``group_concurrency``: how many of its jobs may hold a turn at once (1 = strictly
    one after the other). ``max_group_size``: most unfinished jobs it may hold (a job
    beyond is refused at enqueue, atomically: ``JobRefusedError``; 0 = no limit).
    ``rate_limit``: at most ``max`` starts per ``duration`` ms.
    """

    group_id: str
    group_concurrency: int | None = None
    max_group_size: int | None = None
    rate_limit: GroupRateLimit | None = None

    @classmethod
    def of(cls, config: GroupConfig | Mapping[str, Any] | str) -> GroupConfig:
        """A ``GroupConfig`` from itself, a group id, or a mapping with ``group_id`` and
        any of the settings (``rate_limit`` as ``{"max": ..., "duration": ...}``)."""
        if isinstance(config, GroupConfig):
            return _checked(config)
        if isinstance(config, str):
            return cls(check_group_id(config, "group_id"))
        if not isinstance(config, Mapping):
            raise ConfigurationError(
                f"a group config is a GroupConfig, a group id or a mapping with 'group_id', "
                f"got {type(config).__name__}"
            )
        known = {"group_id", "group_concurrency", "max_group_size", "rate_limit"}
        unknown = sorted(str(k) for k in config if k not in known)
        if unknown:
            raise ConfigurationError(
                f"unknown group config key(s) {', '.join(unknown)}; valid keys: "
                f"{', '.join(sorted(known))}"
            )
        if "group_id" not in config:
            raise ConfigurationError("a group config needs 'group_id'")
        rl = config.get("rate_limit")
        rate: GroupRateLimit | None = None
        if rl is not None:
            if isinstance(rl, GroupRateLimit):
                rate = rl
            elif isinstance(rl, Mapping) and set(rl) <= {"max", "duration"} and "max" in rl:
                rate = GroupRateLimit(rl["max"], rl.get("duration", 1000))
            else:
                raise ConfigurationError(
                    "rate_limit must be GroupRateLimit(max, duration) or "
                    f"{{'max': n, 'duration': ms}}, got {rl!r}"
                )
        return _checked(
            cls(
                config["group_id"],
                config.get("group_concurrency"),
                config.get("max_group_size"),
                rate,
            )
        )

    @property
    def has_settings(self) -> bool:
        return (
            self.group_concurrency is not None
            or self.max_group_size is not None
            or self.rate_limit is not None
        )


def _checked(c: GroupConfig) -> GroupConfig:
    gid = check_group_id(c.group_id, "group_id")
    conc = (
        None
        if c.group_concurrency is None
        else to_int(c.group_concurrency, "group_concurrency", minimum=1, maximum=_MAX_CONCURRENCY)
    )
    size = (
        None
        if c.max_group_size is None
        else to_int(c.max_group_size, "max_group_size", minimum=0, maximum=_MAX_SIZE)
    )
    rate = None
    if c.rate_limit is not None:
        rate = GroupRateLimit(
            to_int(c.rate_limit.max, "group rate_limit max", minimum=1, maximum=MAX_COUNT),
            to_ms(c.rate_limit.duration, "group rate_limit duration", minimum=1),
        )
    return GroupConfig(gid, conc, size, rate)


@dataclass(frozen=True, slots=True)
class GroupTurn:
    """A job holding its group's turn: running (``status`` active), or waiting to run
    again (a retry's backoff, a ``RetryLater``, a stall: waiting or delayed)."""

    job_id: str
    status: str
    worker: str | None
    started_at: int | None
    attempts: int
    created_at: int | None
    due_at: int | None


@dataclass(frozen=True, slots=True)
class MessageGroupStats:
    """One group, read atomically (``FIFOQueueManager.get_group_stats``).

    ``size``: its unfinished jobs (waiting, delayed, parked, running, retrying);
    ``waiting``: jobs in its line (parked until their turn); ``held``: jobs holding a
    turn but held (paused group, rate limit); ``active``: jobs running now;
    ``completed`` / ``failed``: totals since the group was last empty without settings.
    ``size``, ``completed`` and ``failed`` are ``None`` with ``high_throughput`` (not
    counted). ``oldest_waiting_age_ms``: age of the oldest job waiting for its turn or
    to run again (``None``: none waits).
    """

    group_id: str
    exists: bool
    paused: bool
    group_concurrency: int
    max_group_size: int | None
    rate_limit: GroupRateLimit | None
    size: int | None
    waiting: int
    held: int
    active: int
    completed: int | None
    failed: int | None
    turns: list[GroupTurn] = field(default_factory=list)
    next_job_id: str | None = None
    oldest_waiting_age_ms: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the CLI's ``--json``)."""
        out: dict[str, Any] = {
            k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("turns",)
        }
        out["rate_limit"] = (
            None
            if self.rate_limit is None
            else {"max": self.rate_limit.max, "duration": self.rate_limit.duration}
        )
        out["turns"] = [{k: getattr(t, k) for k in t.__dataclass_fields__} for t in self.turns]
        return out


@dataclass(frozen=True, slots=True)
class GroupPage:
    """One page of ``list_groups``: group ids in name order, and the cursor of the next
    page (``None``: this was the last)."""

    groups: list[str]
    cursor: str | None


# One installation per queue object: the declarations compiled into its scripts.
_INSTALLED: weakref.WeakKeyDictionary[Any, tuple[int, int, bool]] = weakref.WeakKeyDictionary()


def _num(v: Any) -> int | None:
    if v is None or v in (b"", ""):
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v or "")


def _index_damaged(exc: ResponseError, key: str) -> Exception:
    """The error of a read of the group index ``key``: a key of another type (damaged
    by hand) is said as such; any other error reply is itself."""
    if "WRONGTYPE" not in str(exc):
        return exc
    return JobStateError(
        f"the index of message groups {key} holds another type than a sorted set (damaged "
        "by hand?): delete it (the groups' jobs and settings are kept; a group is indexed "
        "again at its next job or set_group), then try again"
    )


class FIFOQueueManager:
    """FIFO message groups on one queue (or on each partition of a ``PartitionedQueue``,
    where a group lives in the partition its id maps to).

    Args:
        queue: the ``JobQueue`` (or ``PartitionedQueue``).
        group_concurrency: default number of jobs of a group that may hold a turn at
            once (1: strictly one after the other). A group's own setting wins.
        max_group_size: default limit of a group's unfinished jobs (``None`` / 0: none).
        high_throughput: keep no per-group counts (size, completed, failed): fewer
            writes per job; order and turns are the same. ``max_group_size`` needs the
            counts, so it cannot be combined with this.

    Every process that adds or runs the queue's jobs must create the manager with the
    same arguments (like ``process``): they are compiled into the queue's scripts.
    """

    def __init__(
        self,
        queue: Any,
        *,
        group_concurrency: int = 1,
        max_group_size: int | None = None,
        high_throughput: bool = False,
    ) -> None:
        conc = to_int(group_concurrency, "group_concurrency", minimum=1, maximum=_MAX_CONCURRENCY)
        size = (
            0
            if max_group_size is None
            else to_int(max_group_size, "max_group_size", minimum=0, maximum=_MAX_SIZE)
        )
        if high_throughput and size:
            raise ConfigurationError(
                "max_group_size needs per-group counts, which high_throughput turns off: "
                "use one or the other"
            )
        self.queue = queue
        self.group_concurrency = conc
        self.max_group_size = size or None
        self.high_throughput = bool(high_throughput)
        self._parts: list[JobQueue] = list(getattr(queue, "queues", None) or [queue])
        for q in self._parts:
            _install(q, conc, size, not self.high_throughput)

    @classmethod
    def for_queue(cls, queue: Any) -> FIFOQueueManager:
        """A manager of ``queue`` with the declarations groups were enabled with on it
        in this process (the defaults when they were not): what tools that only have the
        queue (the CLI) use."""
        first = (getattr(queue, "queues", None) or [queue])[0]
        conc, size, count = _INSTALLED.get(first, (1, 0, True))
        return cls(
            queue, group_concurrency=conc, max_group_size=size or None, high_throughput=not count
        )

    # ------------------------------------------------------------------ routing
    def queue_of(self, group_id: str) -> JobQueue:
        """The queue (partition) that holds ``group_id``'s jobs."""
        if len(self._parts) == 1:
            return self._parts[0]
        index: int = self.queue.partition_of(group_id)
        return self._parts[index]

    # ------------------------------------------------------------------ adding
    async def add_to_group(
        self,
        job_name: str,
        data: Any,
        config: GroupConfig | Mapping[str, Any] | str,
        options: Mapping[str, Any] | None = None,
    ) -> str:
        """Add a job to a group; returns its id.

        ``config`` names the group (``{"group_id": "customer-42"}``, a ``GroupConfig``
        or the id) and may carry its settings, which are applied first (one more round
        trip: for a hot path, set them once with ``set_group``). ``options``: any other
        job options. Raises ``JobRefusedError`` when the group is at its
        ``max_group_size``.
        """
        cfg = GroupConfig.of(config)
        if options is not None and not isinstance(options, Mapping):
            raise ConfigurationError(
                f"options must be a mapping of job options, got {type(options).__name__}"
            )
        if cfg.has_settings:
            await self.set_group(cfg)
        opts = dict(options or {})
        given = opts.get("message_group_id")
        if given is not None and given != cfg.group_id:
            raise ConfigurationError(
                f"options name message_group_id {given!r} but config names group "
                f"{cfg.group_id!r}: give the group once"
            )
        opts["message_group_id"] = cfg.group_id
        job_id: str = await self.queue.add_job(job_name, data, **opts)
        return job_id

    # ------------------------------------------------------------------ admin
    async def set_group(self, config: GroupConfig | Mapping[str, Any]) -> None:
        """Set a group's settings (``None`` fields go back to the defaults).

        A raised ``group_concurrency`` hands out the extra turns at once; a lowered one
        lets running jobs finish. A group with settings is kept (with its totals) when
        it has no jobs.
        """
        cfg = GroupConfig.of(config)
        rl = cfg.rate_limit
        args = [
            "" if cfg.group_concurrency is None else cfg.group_concurrency,
            "" if cfg.max_group_size is None else cfg.max_group_size,
            "" if rl is None else rl.max,
            "" if rl is None else rl.duration,
        ]
        if self.high_throughput and cfg.max_group_size:
            raise ConfigurationError(
                "max_group_size needs per-group counts, which high_throughput turns off"
            )
        await self._admin("set_group", cfg.group_id, "set", args)

    async def pause_group(self, group_id: str) -> None:
        """Pause a group: none of its jobs starts until ``resume_group``; its running
        jobs finish; other groups are not affected."""
        await self._admin("pause_group", check_group_id(group_id, "group_id"), "pause", [])

    async def resume_group(self, group_id: str) -> None:
        """Resume a paused group (its held jobs and its free turns go back to wait)."""
        await self._admin("resume_group", check_group_id(group_id, "group_id"), "resume", [])

    async def _admin(self, command: str, group_id: str, op: str, extra: list[Any]) -> None:
        q = self.queue_of(group_id)

        async def action() -> Any:
            client = await q.client()
            return await q.scripts.call(
                client,
                "group_admin",
                q.keys.all,
                [*q.ctx.argv_head(), op, group_id, *extra],
            )

        await q.admin.execute(command, {"group_id": group_id, "settings": extra}, action)

    async def heal(self) -> GroupHealReport:
        """Give back the turns held by jobs that already finished, in every group of
        the queue (all partitions): a process without ``FIFOQueueManager`` finished
        them. The queue's workers do this by themselves, paced
        (``heal.HealWalk``); this runs a whole walk now. See ``docs/groups.md``."""
        reports = []
        for q in self._parts:

            async def action(q: JobQueue = q) -> GroupHealReport:
                return await heal_groups(q)

            reports.append(await q.admin.execute("heal_groups", {}, action))
        return GroupHealReport(
            sum(r.turns_freed for r in reports),
            sum(r.jobs_moved for r in reports),
            sum(r.groups for r in reports),
        )

    # ------------------------------------------------------------------ reading
    async def get_group_stats(self, group_id: str) -> MessageGroupStats:
        """One group's settings, counts, turns and oldest waiting job, read atomically.
        A read of the queue: it passes the queue's read guards first."""
        gid = check_group_id(group_id, "group_id")
        q = self.queue_of(gid)
        await q.queries.check("get_group_stats", {"group_id": gid})
        client = await q.client()
        settings, counts, turns, head = await q.scripts.call(
            client,
            "group_stats",
            q.keys.all,
            [*q.ctx.argv_head(), gid],
        )
        now = int(time.time() * 1000)
        held_turns = [
            GroupTurn(
                job_id=_text(t[0]),
                status=_text(t[1]) or "missing",
                worker=_text(t[2]) or None,
                started_at=_num(t[3]),
                attempts=_num(t[4]) or 0,
                created_at=_num(t[5]),
                due_at=_num(t[6]),
            )
            for t in turns
        ]
        held_turns.sort(key=lambda t: (t.created_at or 0, t.job_id))
        waiting_since = [t.created_at for t in held_turns if t.status != "active"]
        next_id = _text(head[0]) if head else None
        if head:
            waiting_since.append(_num(head[1]))
        oldest = min((w for w in waiting_since if w is not None), default=None)
        rl_max, rl_dur = _num(settings[3]) or 0, _num(settings[4]) or 0
        counted = not self.high_throughput
        return MessageGroupStats(
            group_id=gid,
            exists=_text(settings[5]) == "1",
            paused=_text(settings[0]) == "1",
            group_concurrency=_num(settings[1]) or 1,
            max_group_size=_num(settings[2]) or None,
            rate_limit=GroupRateLimit(rl_max, rl_dur) if rl_max and rl_dur else None,
            size=_num(counts[0]) if counted else None,
            waiting=_num(counts[1]) or 0,
            held=_num(counts[2]) or 0,
            active=sum(1 for t in held_turns if t.status == "active"),
            completed=_num(counts[3]) if counted else None,
            failed=_num(counts[4]) if counted else None,
            turns=held_turns,
            next_job_id=next_id,
            oldest_waiting_age_ms=None if oldest is None else max(0, now - oldest),
        )

    async def count_groups(self) -> int:
        """How many groups have jobs or settings (every partition summed): one ``ZCARD``
        per partition."""
        await check_reads(self._parts, "count_groups", {})
        total = 0
        for q in self._parts:
            client = await q.client()
            try:
                total += int(await client.zcard(q.keys.extra("groups")))
            except ResponseError as exc:
                raise _index_damaged(exc, q.keys.extra("groups")) from None
        return total

    async def list_groups(self, cursor: str | None = None, count: int = 100) -> GroupPage:
        """Group ids in name order, ``count`` (1..1000) per page; pass the returned
        cursor for the next page. On a partitioned queue the pages walk the partitions
        one after the other (the cursor carries the partition)."""
        count = to_int(count, "count", minimum=1, maximum=_PAGE_MAX)
        await check_reads(self._parts, "list_groups", {"cursor": cursor, "count": count})
        part, after = 0, None
        if cursor:
            if not isinstance(cursor, str) or "|" not in cursor:
                raise ConfigurationError(
                    f"invalid list_groups cursor {shown(cursor)}: pass the cursor a page returned"
                )
            p, _, after = cursor.partition("|")
            if not p.isdigit() or int(p) >= len(self._parts) or has_bad_char(after):
                raise ConfigurationError(
                    f"invalid list_groups cursor {shown(cursor)}: pass the cursor a page returned"
                )
            part = int(p)
        groups: list[str] = []
        while part < len(self._parts):
            q = self._parts[part]
            client = await q.client()
            lo = "-" if not after else "(" + after
            try:
                got = await client.zrangebylex(
                    q.keys.extra("groups"), lo, "+", start=0, num=count - len(groups)
                )
            except ResponseError as exc:
                raise _index_damaged(exc, q.keys.extra("groups")) from None
            groups.extend(_text(g) for g in got)
            if len(groups) >= count:
                return GroupPage(groups, f"{part}|{groups[-1]}")
            part, after = part + 1, None
        return GroupPage(groups, None)


def _install(q: JobQueue, conc: int, size: int, count: bool) -> None:
    have = _INSTALLED.get(q)
    want = (conc, size, count)
    if have is not None:
        if have != want:
            raise ConfigurationError(
                f"FIFO groups are already enabled on queue {q.name!r} with other defaults "
                f"(group_concurrency, max_group_size, counts = {have}); create one "
                "FIFOQueueManager per queue, with the same arguments in every process"
            )
        return
    q.declare_option(
        "message_group_id",
        feature=FEATURE,
        normalize=lambda v, section: check_group_id(v, f"{section}: message_group_id"),
        doc="the FIFO message group of the job (features.groups)",
    )
    frags = lua.fragments(conc, size, count)
    scripts = q.scripts
    for name in lua.SCRIPTS:
        scripts.add_fragment(name, lua.script(name, conc, size, count))
    if "accept" in frags:
        scripts.add_slot("accept", FEATURE, frags["accept"])
    # A job in its group's line is parked there before a capacity feature (tenants'
    # lanes, flow control) hands it a ticket or parks it elsewhere: the line keeps its
    # place (slots.ORDER_LINE).
    scripts.add_slot("enqueue", FEATURE, frags["enqueue"], order=ORDER_LINE)
    scripts.add_slot(
        "admission", FEATURE, frags["admission"], fields=lua.ADMISSION_FIELDS, order=ORDER_LINE
    )
    scripts.add_slot("release", FEATURE, frags["release"])
    # A turn holder a debounce moves from wait to delayed gives its turn back
    # (duplicate.lua): a delayed job holds no turn.
    for name, order in lua.DUPLICATE_ORDERS.items():
        scripts.add_slot("duplicate", f"{FEATURE}:{name}", frags[name], order=order)

    clear_lua = resources.files(__package__).joinpath("group_clear.lua").read_text("utf-8")
    scripts.add_fragment("group_clear", clear_lua)

    async def forget_groups() -> None:
        # clear() deleted the jobs, their lines and turns: the turn keys go, and each
        # group's counts, totals and rate window; its settings stay (a paused group stays
        # paused), as the queue's own do (lua/clear.lua).
        client = await q.client()
        head, index = q.keys.extra("grp:").encode(), q.keys.extra("groups")
        ids = {k[len(head) :] async for k in client.scan_iter(match=head + b"*", count=500)}
        start: bytes = b"-"
        while await client.type(index) in (b"zset", "zset"):
            page = await client.zrangebylex(index, start, b"+", start=0, num=500)
            ids.update(page)
            if len(page) < 500:
                break
            start = b"(" + page[-1]
        todo = sorted(ids)
        for i in range(0, max(len(todo), 1), 200):
            argv = [*q.ctx.argv_head(), *todo[i : i + 200]]
            await q.scripts.call(client, "group_clear", q.keys.all, argv)
        batch: list[Any] = []
        async for key in client.scan_iter(match=q.keys.extra("grp-*"), count=500):
            batch.append(key)
            if len(batch) >= 500:
                await client.unlink(*batch)
                batch = []
        if batch:
            await client.unlink(*batch)

    q.admin.add_clear_step(forget_groups)
    q.add_service(heal_service(q))
    q.add_explainer(make_explainer(q, conc))
    _INSTALLED[q] = want
