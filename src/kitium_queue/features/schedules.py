"""Recurring jobs: schedule definitions, their timing, and storage in Redis.

A schedule is stored under the queue's hash tag (``lua/schedule_keys.lua`` lists the
keys) and fired by the scheduler loops of the workers (``scheduler.py``). This module
validates declarations, computes tick times with ``schedule_timing`` (croniter or
arithmetic), and implements ``JobQueue.schedule_job`` / ``schedule_every`` and the
list / get / update / pause / resume / remove calls.

Tick times are epoch milliseconds. A cron schedule ticks on whole seconds; an interval
schedule ticks at ``anchor + k * interval`` where ``anchor`` is ``start_date`` (or the
Unix epoch), so every process computes the same ticks.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from ..damage import named_key
from ..errors import ConfigurationError
from ..limits import MAX_JOB_NAME_LENGTH, QUERY_PAGE, clip, get_logger, printable
from ..middleware import enqueue_origin
from ..options import MAX_COUNT, check_text, did_you_mean, lookup_id, to_int, to_ms
from ..producer import DATA, LIFO, NAME, OPTS, PRIORITY
from .schedule_explain import make_explainer
from .schedule_records import check_intact, schedule_hash, schedule_values, stored_id
from .schedule_timing import CronTiming, IntervalTiming, Timing
from .schedule_update import MOVED, UPDATE_SCRIPT, ScheduleMoved, id_fixed, install, update

if TYPE_CHECKING:
    from ..queue import JobQueue

__all__ = [
    "MIN_MISFIRE_GRACE_MS",
    "MISFIRE_POLICIES",
    "OVERLAP_POLICIES",
    "SCHEDULE_OPTIONS",
    "CronTiming",
    "IntervalTiming",
    "Schedule",
    "ScheduleStore",
    "Timing",
]

log = get_logger(__name__)

MISFIRE_POLICIES = ("skip", "run_once", "catch_up")
OVERLAP_POLICIES = ("allow", "skip")
DEFAULT_CATCH_UP = 100
MAX_CATCH_UP = 1000
DEFAULT_MISFIRE_GRACE_MS = 1000
#: Smallest misfire_grace: a scheduler handles a tick some ms after it (its timer, the
#: round trip), so a smaller grace made a 'skip' schedule drop most ticks (0: all).
#: A schedule stored with less fires as if it had this one.
MIN_MISFIRE_GRACE_MS = 100
MIN_INTERVAL_MS = 10
# job_id_window: a tick's id holds no window (schedule_fire), and a release before it
# refuses to update a schedule whose stored options name it.
_RESERVED_JOB_OPTIONS = ("job_id", "job_id_window", "delay", "idempotency_key")
#: The keyword options of ``schedule_job`` / ``schedule_every`` that configure the
#: schedule itself; any other keyword is a job option.
SCHEDULE_OPTIONS = (
    "schedule_id",
    "tz",
    "start_date",
    "end_date",
    "limit",
    "jitter",
    "misfire",
    "misfire_grace",
    "overlap",
)
_MAX_ID = 200
#: Latest start_date / end_date given as ms since the epoch: 9999-12-31T23:59:59.999Z.
_MAX_EPOCH_MS = 253_402_300_799_999
#: Longest cron pattern accepted (characters): croniter's parse grows with it, in the
#: worker's event loop, several times per scheduler round.
_MAX_CRON = 1000
# A random field value (croniter's R, R(a-b), R/n), case-insensitive.
_RANDOM = re.compile(r"^r(\(\d+-\d+\))?(/\d+)?$", re.IGNORECASE | re.ASCII)
#: The fields of a 6-field pattern (a 5-field one has no second) and their ranges.
_FIELDS = (
    ("second", 0, 59),
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 6),
)
_STEP = re.compile(r"/(\d+)$", re.ASCII)
#: The aliases a cron pattern may be instead of fields (croniter's, in any case).
CRON_ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
#: What a cron pattern may be, as the refusals say it.
_CRON_FORMS = (
    "5 fields (minute hour day-of-month month day-of-week), 6 with seconds first (second "
    f"minute hour day-of-month month day-of-week), or one of {', '.join(CRON_ALIASES)} alone"
)


# ---------------------------------------------------------------------------- record
@dataclass(slots=True)
class Schedule:
    """A stored schedule, as returned by ``get_schedule`` / ``get_schedules``.

    Attributes:
        id: stable id (given as ``schedule_id=`` or derived from job name and timing).
        job_name, data, options: the job each tick enqueues.
        cron: the cron pattern (cron schedules) — or ``every_ms`` (interval schedules).
        tz: IANA time zone of the cron pattern and of naive dates.
        start_date, end_date: first/last allowed tick (ms since the epoch) or None.
        limit: at most this many runs in total, or None.
        jitter_ms: each run starts up to this many ms after its tick (never at or past
            the next tick).
        misfire: ``"skip"``, ``"run_once"`` or ``"catch_up"`` (with ``catch_up_limit``).
        misfire_grace_ms: a tick handled at most this late is on time, not a misfire.
        overlap: ``"allow"`` or ``"skip"`` (skip a tick while the previous run is
            waiting, delayed or active).
        paused, finished: state; ``next_run_at``: nominal time of the next tick.
        runs: ticks enqueued so far; ``skipped``: ticks skipped by the overlap policy
            or refused by a feature (a full group, a quota).
        last_run_at / last_job_id: the last tick enqueued and its job.
        damaged: what is wrong with a record damaged by hand (``schedule_records``).
    """

    id: str
    job_name: str
    data: Any = None
    cron: str | None = None
    every_ms: int | None = None
    tz: str = "UTC"
    start_date: int | None = None
    end_date: int | None = None
    limit: int | None = None
    jitter_ms: int = 0
    misfire: str = "run_once"
    catch_up_limit: int = DEFAULT_CATCH_UP
    misfire_grace_ms: int = DEFAULT_MISFIRE_GRACE_MS
    overlap: str = "allow"
    options: dict[str, Any] = field(default_factory=dict)
    paused: bool = False
    finished: bool = False
    next_run_at: int | None = None
    last_run_at: int | None = None
    last_job_id: str | None = None
    runs: int = 0
    skipped: int = 0
    created_at: int | None = None
    updated_at: int | None = None
    damaged: str | None = None

    @property
    def kind(self) -> str:
        """``"cron"`` or ``"every"``."""
        return "cron" if self.cron is not None else "every"

    def timing(self) -> Timing:
        """The tick calculator of this schedule."""
        return timing_of(self.definition())

    def definition(self) -> dict[str, Any]:
        """The stored definition (everything but the job data and the runtime state)."""
        return {
            "job_name": self.job_name,
            "cron": self.cron,
            "every_ms": self.every_ms,
            "tz": self.tz,
            "start_date": self.start_date,
            "end_date": self.end_date,
            "limit": self.limit,
            "jitter_ms": self.jitter_ms,
            "misfire": self.misfire,
            "catch_up_limit": self.catch_up_limit,
            "misfire_grace_ms": self.misfire_grace_ms,
            "overlap": self.overlap,
            "options": self.options,
        }

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (for JSON output, the CLI)."""
        return {
            "id": self.id,
            **self.definition(),
            "data": self.data,
            "paused": self.paused,
            "finished": self.finished,
            "next_run_at": self.next_run_at,
            "last_run_at": self.last_run_at,
            "last_job_id": self.last_job_id,
            "runs": self.runs,
            "skipped": self.skipped,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "damaged": self.damaged,
        }


def timing_of(defn: Mapping[str, Any]) -> Timing:
    """Build the ``Timing`` of a stored definition."""
    if defn.get("cron"):
        return CronTiming(
            str(defn["cron"]),
            _zone(defn.get("tz") or "UTC"),
            defn.get("start_date"),
            defn.get("end_date"),
        )
    return IntervalTiming(int(defn["every_ms"]), defn.get("start_date"), defn.get("end_date"))


# ---------------------------------------------------------------------------- validation
def _zone(tz: Any) -> tzinfo:
    if tz is None or tz == "UTC":
        return timezone.utc
    if isinstance(tz, tzinfo):
        return tz
    if not isinstance(tz, str) or not tz:
        raise ConfigurationError(
            f"tz must be an IANA time zone name such as 'Europe/Berlin', got {tz!r}"
        )
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(
            f"unknown time zone {tz!r}; use an IANA name such as 'UTC', 'Europe/Berlin' "
            "or 'America/New_York'"
        ) from None


def _zone_name(tz: Any) -> str:
    if tz is None:
        return "UTC"
    if isinstance(tz, str):
        _zone(tz)
        return tz
    if isinstance(tz, ZoneInfo) and tz.key:
        return tz.key
    if tz is timezone.utc:
        return "UTC"
    raise ConfigurationError(
        f"tz must be an IANA time zone name or a zoneinfo.ZoneInfo with a key, got {tz!r} "
        "(fixed offsets do not follow daylight saving time, and a ZoneInfo read from a "
        "file has no name to store; name the zone instead)"
    )


def _date_ms(value: Any, tz: tzinfo, what: str) -> int | None:
    if value is None:
        return None
    given = value
    if isinstance(value, datetime):  # then the range check below, as for ms
        value = value.replace(tzinfo=tz) if value.tzinfo is None else value
        with contextlib.suppress(OverflowError, ValueError):  # beyond the platform's clock
            value = round(value.timestamp() * 1000)
    # ms from 1970 to the end of 9999; NaN and infinities fail here, before int().
    if (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and 0 <= value <= _MAX_EPOCH_MS
    ):
        return int(value)
    raise ConfigurationError(
        f"{what} must be a datetime (naive = in the schedule's tz) or ms since the epoch "
        f"from 0 to {_MAX_EPOCH_MS} (1970 to the end of 9999), got {clip(repr(given), 80)}"
    )


def check_cron(pattern: Any, *, steps: bool = True) -> str:
    """Validate a cron pattern; return it normalized (single spaces).

    5 fields: minute hour day-of-month month day-of-week. 6 fields: **seconds first**,
    then the same five. Or an alias alone (``CRON_ALIASES``: ``@daily``...); a misspelt
    one is refused with the closest as a suggestion. ``steps=False`` lets a step larger
    than its field's range pass (a stored pattern declared before they were refused
    still fires as it did).
    """
    if not isinstance(pattern, str) or not pattern.strip():
        raise ConfigurationError(f"cron pattern must be a non-empty string, got {pattern!r}")
    shown_pattern = clip(repr(pattern), 120)
    if len(pattern) > _MAX_CRON:
        raise ConfigurationError(
            f"invalid cron pattern {shown_pattern}: it has {len(pattern)} characters; at "
            f"most {_MAX_CRON}"
        )
    text = " ".join(pattern.split())
    n = len(text.split())
    if text.startswith("@"):
        alias = text.split()[0].lower()
        if n > 1 or alias not in CRON_ALIASES:  # croniter: "Exactly 5, 6 or 7 columns"
            if alias in CRON_ALIASES:
                what = "an alias takes no fields after it"
            else:
                what = "unknown alias" + did_you_mean(alias, CRON_ALIASES)
            raise ConfigurationError(
                f"invalid cron pattern {shown_pattern}: {what}; use {_CRON_FORMS}"
            )
    elif n not in (5, 6):
        raise ConfigurationError(
            f"invalid cron pattern {shown_pattern}: it has {n} field(s); use {_CRON_FORMS}"
        )
    if any(_RANDOM.match(part) for part in re.split(r"[\s,]+", text)):
        # croniter draws R anew at every parse: every process, every round, other ticks.
        raise ConfigurationError(
            f"invalid cron pattern {shown_pattern}: a random field value (R) is not "
            "supported: every scheduler must compute the same ticks; write the value"
        )
    if steps:
        _check_steps(text, shown_pattern)
    from croniter import croniter  # on first use: schedules of intervals never load it
    from croniter.croniter import CroniterError

    try:
        croniter(text, datetime.now(timezone.utc), second_at_beginning=n == 6)
    except (CroniterError, ValueError, KeyError) as exc:
        layout = (
            "second minute hour day-of-month month day-of-week"
            if n == 6
            else "minute hour day-of-month month day-of-week"
        )
        # croniter's message quotes the pattern as given: escaped and clipped here.
        raise ConfigurationError(
            f"invalid cron pattern {shown_pattern} ({layout}): {clip(printable(exc), 200)}"
        ) from None
    return text


def _changes(was: list[Any], defn: bytes, *, derived: bool) -> str:
    """What an update of a schedule changed, for its log line: the names of the fields
    (``data`` and those of the definition, never their values) from what
    ``schedule_put`` answers (the definition it replaced, whether the data changed); and,
    for an id derived from the job name and timing, that this declaration replaced
    another one's schedule (per-customer schedules collapsing into one)."""
    if len(was) < 2:
        return ""  # created or unchanged
    try:
        old = orjson.loads(was[0]) if was[0] else {}
    except orjson.JSONDecodeError:
        old = {}
    new = orjson.loads(defn)
    names = ["data"] if was[1] == b"1" else []
    names += [k for k in new if not isinstance(old, dict) or old.get(k) != new[k]]
    if not names:
        return ""
    text = f": {', '.join(names)} changed"
    if derived:
        text += (
            "; this declaration replaced the schedule of the same derived id (job name "
            "and timing): if both were meant to run, give each its own schedule_id="
        )
    return text


def _check_steps(text: str, shown_pattern: str) -> None:
    """Refuse a step larger than its field's range (``*/90`` minutes): croniter takes it
    and matches the field's first value only, which is not what it says."""
    fields = text.split()
    if text.startswith("@"):
        return
    for (what, low, high), value in zip(_FIELDS[6 - len(fields) :], fields, strict=True):
        for part in value.split(","):
            step = _STEP.search(part)
            if step and int(step.group(1)) > high - low:
                raise ConfigurationError(
                    f"invalid cron pattern {shown_pattern}: step {clip(step.group(1), 20)} "
                    f"of the {what} field is larger than its range ({low}-{high}), so it "
                    f"would match one value only; use a step of at most {high - low}, or "
                    "write the value"
                )


def _misfire(value: Any) -> tuple[str, int]:
    if isinstance(value, str) and value in MISFIRE_POLICIES:
        return value, DEFAULT_CATCH_UP
    if isinstance(value, (tuple, list)) and len(value) == 2 and value[0] == "catch_up":
        n = value[1]
        if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_CATCH_UP:
            return "catch_up", n
    if isinstance(value, Mapping) and set(value) == {"catch_up"}:
        return _misfire(("catch_up", value["catch_up"]))
    raise ConfigurationError(
        f"misfire must be 'skip', 'run_once', 'catch_up' or ('catch_up', N) with "
        f"1 <= N <= {MAX_CATCH_UP}, got {value!r}"
    )


def _schedule_id(value: Any) -> str:
    # Control characters and lone surrogates are refused like in job ids; braces would
    # change the key's hash tag.
    check_text(value, "schedule_id", max_len=_MAX_ID, rule=" or braces")
    if any(c in value for c in "{}"):
        raise ConfigurationError(
            f"schedule_id must be a non-empty string of at most {_MAX_ID} characters "
            f"without control characters or braces, got {clip(repr(value), 100)}"
        )
    return str(value)


# ---------------------------------------------------------------------------- store
class ScheduleStore:
    """Schedules of one queue in Redis: ``queue.schedules``."""

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue
        queue.add_explainer(make_explainer(self))
        install(queue.scripts)

    async def _now(self) -> int:
        client = await self.queue.client()
        sec, usec = await client.time()
        return int(sec) * 1000 + int(usec) // 1000

    async def declare(
        self,
        job_name: str,
        data: Any,
        *,
        cron: str | None = None,
        every: Any = None,
        schedule_id: str | None = None,
        tz: Any = None,
        start_date: Any = None,
        end_date: Any = None,
        limit: int | None = None,
        jitter: Any = None,
        misfire: Any = "run_once",
        misfire_grace: Any = DEFAULT_MISFIRE_GRACE_MS,
        overlap: str = "allow",
        options: Mapping[str, Any] | None = None,
    ) -> Schedule:
        """Validate and upsert a schedule; see ``JobQueue.schedule_job``.

        An administrative command (``put_schedule``): it passes ``queue.admin``.
        """
        args = {"schedule_id": schedule_id, "job_name": job_name, "cron": cron, "every": every}
        return await self.queue.admin.execute(
            "put_schedule",
            args,
            lambda: self._declare(
                job_name,
                data,
                cron=cron,
                every=every,
                schedule_id=schedule_id,
                tz=tz,
                start_date=start_date,
                end_date=end_date,
                limit=limit,
                jitter=jitter,
                misfire=misfire,
                misfire_grace=misfire_grace,
                overlap=overlap,
                options=options,
            ),
            shown=lambda sched: sched.id,  # subscribers see the id, never the data
        )

    async def _declare(
        self,
        job_name: str,
        data: Any,
        *,
        cron: str | None,
        every: Any,
        schedule_id: str | None,
        tz: Any,
        start_date: Any,
        end_date: Any,
        limit: int | None,
        jitter: Any,
        misfire: Any,
        misfire_grace: Any,
        overlap: str,
        options: Mapping[str, Any] | None,
        expect: bytes | None = None,
    ) -> Schedule:
        """``expect``: write only at this version (an update; else ``ScheduleMoved``)."""
        q = self.queue
        # Before the id is derived from it: a bad name is reported as one.
        check_text(job_name, "job name", max_len=MAX_JOB_NAME_LENGTH)
        zone_name = _zone_name(tz)
        zone = _zone(zone_name)
        cron_text: str | None = None
        every_ms: int | None = None
        if cron is not None:
            cron_text = check_cron(cron)
        else:
            every_ms = to_ms(every, "interval_ms", minimum=MIN_INTERVAL_MS)
        start = _date_ms(start_date, zone, "start_date")
        end = _date_ms(end_date, zone, "end_date")
        if start is not None and end is not None and end < start:
            raise ConfigurationError(f"end_date ({end}) is before start_date ({start})")
        if limit is not None:
            limit = to_int(limit, "limit", minimum=1, maximum=MAX_COUNT)  # number of runs
        jitter_ms = to_ms(jitter, "jitter", allow_none=True) or 0
        policy, catch_up = _misfire(misfire)
        grace = to_ms(misfire_grace, "misfire_grace", minimum=MIN_MISFIRE_GRACE_MS)
        if overlap not in OVERLAP_POLICIES:
            raise ConfigurationError(f"overlap must be 'allow' or 'skip', got {overlap!r}")
        opts = dict(options or {})
        # A keyword that is neither a schedule option nor a job option is reported as
        # an unknown schedule option, with the closest of both as a suggestion.
        q.jobspec.check_names(opts, "schedule", also=SCHEDULE_OPTIONS)
        reserved = [k for k in _RESERVED_JOB_OPTIONS if opts.get(k) is not None]
        if reserved:
            raise ConfigurationError(
                f"schedule options may not set {', '.join(reserved)}: each tick's job id is "
                "sched:<schedule id>:<tick ms>; use jitter= to spread start times"
            )
        if schedule_id is None:
            timing_text = cron_text if cron_text is not None else f"every {every_ms}ms"
            try:
                sid = _schedule_id(f"{job_name}@{timing_text}")
            except ConfigurationError as exc:
                raise ConfigurationError(
                    f"the schedule id derived from the job name and timing is not valid "
                    f"({exc}); pass schedule_id= to name the schedule"
                ) from None
        else:
            sid = _schedule_id(schedule_id)
        if q.enqueue_middleware:
            # The middleware sees which schedule the template is for (its jobs' ids).
            token = enqueue_origin.set(("schedule", sid))
            try:
                job_name, data, opts = await q.producer.through_middleware(job_name, data, opts)
            finally:
                enqueue_origin.reset(token)
        prepared = q.producer.prepare(job_name, data, opts)  # validates options, encodes data
        stored_opts = q.jobspec.check(opts, "schedule")

        sched = Schedule(
            id=sid,
            job_name=job_name,
            cron=cron_text,
            every_ms=every_ms,
            tz=zone_name,
            start_date=start,
            end_date=end,
            limit=limit,
            jitter_ms=jitter_ms,
            misfire=policy,
            catch_up_limit=catch_up,
            misfire_grace_ms=grace or 0,
            overlap=overlap,
            options=stored_opts,
        )
        timing = sched.timing()
        now = await self._now()
        first = timing.next_after(now)
        if first is None and cron_text is not None and (end is None or end > now):
            raise ConfigurationError(
                f"cron {cron_text!r} never fires (no date within 50 years or before end_date)"
            )
        defn = orjson.dumps(sched.definition(), option=orjson.OPT_SORT_KEYS)
        sig = orjson.dumps([cron_text, every_ms, zone_name, start])
        state, due, *was = await q.run(
            "schedule_put" if expect is None else UPDATE_SCRIPT,
            [
                sid,
                defn,
                sig,
                prepared[NAME],
                prepared[DATA],
                prepared[OPTS],
                prepared[PRIORITY],
                # '1' | '0': the 'n' a windowless id adds is enqueue.lua's alone; kept, it
                # made schedule_fire (of either release) add each tick without lifo.
                prepared[LIFO][:1],
                limit or 0,
                "" if first is None else first,
                end or 0,
                *(() if expect is None else (expect,)),
            ],
        )
        if state == MOVED:
            raise ScheduleMoved
        log.info(
            "queue %s: schedule %s %s (next tick %s)%s",
            q.name,
            printable(sid),
            state.decode(),
            due.decode() or "none",
            _changes(was, defn, derived=schedule_id is None),
        )
        got = await self.get(sid)
        assert got is not None
        return got

    async def get(self, schedule_id: str) -> Schedule | None:
        """One schedule, or None if it does not exist."""
        key = self.queue.keys.schedule(lookup_id(schedule_id, "schedule_id"))
        pipe = (await self.queue.client()).pipeline(transaction=False)
        (reply,) = await pipe.hgetall(key).execute(raise_on_error=False)
        problems: list[str] = []
        raw = schedule_hash(reply, problems)
        return self._record(schedule_id, raw, problems) if raw or problems else None

    async def list(self) -> list[Schedule]:
        """Every schedule of the queue, oldest first."""
        q = self.queue
        client = await q.client()
        out: list[Schedule] = []
        start = 0
        # A page of ids at a time (``QUERY_PAGE``): with 100,000 schedules one ZRANGE of
        # the whole index would hold Redis for tens of ms.
        while True:
            page = await named_key(
                client,
                q.keys.schedules,
                "zset",
                client.zrange(q.keys.schedules, start, start + QUERY_PAGE - 1),
            )
            if not page:
                return out
            pipe = client.pipeline(transaction=False)
            for i in page:  # as stored: an id that is not UTF-8 is still read
                pipe.hgetall(q.keys.schedule("").encode() + i)
            for i, reply in zip(page, await pipe.execute(raise_on_error=False), strict=True):
                problems: list[str] = []
                raw = schedule_hash(reply, problems)
                if raw or problems:
                    out.append(self._record(stored_id(i, problems), raw, problems))
            if len(page) < QUERY_PAGE:
                return out
            start += QUERY_PAGE

    def _record(self, sid: str, raw: dict[bytes, bytes], problems: Sequence[str]) -> Schedule:
        return Schedule(**schedule_values(sid, raw, self.queue.serializer, problems))

    @id_fixed
    async def update(self, schedule_id: str, **changes: Any) -> Schedule:
        """Change some fields of a schedule; the others keep their stored values, and
        a concurrent change is never overwritten (``schedule_update``).

        Accepts ``data``, ``cron_pattern``, ``interval_ms``, ``tz``, ``start_date``,
        ``end_date``, ``limit``, ``jitter``, ``misfire``, ``misfire_grace``, ``overlap``
        and job options (merged into the stored ones; ``None`` removes one).
        An administrative command (``update_schedule``; subscribers see the names of the
        changed fields, not their values).
        """
        schedule_id = lookup_id(schedule_id, "schedule_id")
        return await self.queue.admin.execute(
            "update_schedule",
            {"schedule_id": schedule_id, "changes": sorted(changes)},
            lambda: update(self, schedule_id, changes),
            shown=lambda sched: sched.id,
        )

    async def remove(self, schedule_id: str) -> bool:
        """Delete a schedule (its already enqueued jobs stay). False if it did not exist.
        An administrative command (``remove_schedule``)."""
        sid = lookup_id(schedule_id, "schedule_id")

        async def action() -> bool:
            return bool(int(await self.queue.run("schedule_remove", [sid])))

        return await self.queue.admin.execute("remove_schedule", {"schedule_id": sid}, action)

    async def pause(self, schedule_id: str) -> bool:
        """Stop a schedule from firing (every scheduler). False if it does not exist.
        An administrative command (``pause_schedule``)."""
        sid = lookup_id(schedule_id, "schedule_id")

        async def action() -> bool:
            status, _ = await self.queue.run("schedule_pause", [sid, "1", ""])
            return bool(status == b"ok")

        return await self.queue.admin.execute("pause_schedule", {"schedule_id": sid}, action)

    async def resume(self, schedule_id: str) -> bool:
        """Resume a paused schedule at its next tick from now. False if it does not exist.
        An administrative command (``resume_schedule``)."""
        schedule_id = lookup_id(schedule_id, "schedule_id")
        return await self.queue.admin.execute(
            "resume_schedule", {"schedule_id": schedule_id}, lambda: self._resume(schedule_id)
        )

    async def _resume(self, schedule_id: str) -> bool:
        cur = await self.get(schedule_id)
        if cur is None:
            return False
        check_intact(cur)
        nxt = cur.timing().next_after(await self._now())
        status, _ = await self.queue.run(
            "schedule_pause", [schedule_id, "0", "" if nxt is None else nxt]
        )
        return bool(status == b"ok")
