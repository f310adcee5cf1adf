"""The job record: the fields of a job's hash, and its decoding into ``JobInfo``.

Every job is one Redis hash, ``<prefix>:{<queue>}:job:<id>`` (``QueueKeys.job``), written
only by the Lua scripts. Its fields have short names (the hash is stored once per job, so
bytes count); ``JOB_FIELDS`` below is the one table of them, with what each holds and
which scripts write it (Lua library functions are named without their file, which may
move). ``tests/test_records.py`` checks the table against the Lua sources both ways.

The job's place in the queue is not on the record but in the state sets (``wait``,
``delayed``, ``active``, ``completed``, ``failed``, ``dlq``; parked jobs in their
blocker's set): the score of ``active`` is the lease deadline, of ``delayed`` the due
time, of the finished sets the finish time.

The layouts of the script arguments and replies (enqueue, claim, finish, outcome codes)
are in ``wire.py``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import orjson
from redis.exceptions import ResponseError

from .codec import Serializer
from .enums import JobStatus
from .job import JobInfo
from .jobspec import resolve_policy
from .limits import clip
from .options import Policy, shown

__all__ = [
    "JOB_FIELDS",
    "LISTED_FIELDS",
    "META_FIELDS",
    "JobDetail",
    "JobField",
    "decode_id",
    "hash_reply",
    "job_id_pages",
    "job_values",
    "stored_status",
]


class JobField(NamedTuple):
    """One field of the job hash: its name, what it holds, and who writes it."""

    name: str
    meaning: str
    writers: str


_ENQ = "enqueue.lua, schedule_fire.lua (add_job in lib_add.lua)"

#: The fields of a job's hash. Times are ms since the epoch on the Redis clock, numbers
#: are decimal text.
JOB_FIELDS: Final[dict[str, JobField]] = {
    f.name: f
    for f in (
        JobField("n", "job name (selects the processor)", _ENQ),
        JobField("d", "payload, encoded by the queue's serializer and codecs", _ENQ),
        JobField("ts", "created at (ms)", _ENQ),
        JobField("p", "priority 0..65535, higher runs first", _ENQ),
        JobField(
            "q",
            "enqueue sequence number, negative for LIFO jobs; with 'p' it gives "
            "the score in 'wait'",
            _ENQ,
        ),
        JobField(
            "o",
            "stored options, JSON (only the options the job set; absent when "
            "none); read by the worker and by the features' Lua",
            _ENQ,
        ),
        JobField("ik", "idempotency key the job was added with", "enqueue.lua"),
        JobField(
            "st",
            "state: waiting | delayed | pending (parked) | active | completed | "
            "failed | dlq (absent = waiting)",
            "every transition script",
        ),
        JobField(
            "pk",
            "blocker of a parked job (the key it is parked behind), while pending",
            "park in lib_parking.lua; removed when unparked",
        ),
        JobField(
            "rk",
            "rate-limit key of the job (flow control's marker, read by claim)",
            "flow control's enqueue slot fragment (features/flowcontrol.py)",
        ),
        JobField(
            "ck",
            "concurrency key of the job (flow control's marker, read by claim)",
            "flow control's enqueue slot fragment (features/flowcontrol.py)",
        ),
        JobField(
            "gk",
            "message group of the job (FIFO groups' marker, read by claim)",
            "the groups' enqueue slot fragment (features/groups/enqueue.lua)",
        ),
        JobField(
            "gm",
            "'1' while the job is counted in its group's size",
            "features/groups (enqueue and admission fragments; removed by release)",
        ),
        JobField(
            "wd",
            "'1': the job had unfinished parents when added (read by claim)",
            "the workflows' enqueue fragment and scripts (features/workflows)",
        ),
        JobField(
            "eo",
            "'1': the job is exactly-once (its result is kept under its key)",
            "the effectively-once enqueue fragment (features/idempotency/enqueue.lua)",
        ),
        JobField(
            "iw",
            "'f': the job's idempotency window ends when it finishes",
            "the effectively-once enqueue fragment (features/idempotency/enqueue.lua)",
        ),
        JobField(
            "it",
            "the length (ms) of an until_finished job's idempotency window, kept when "
            "it is added (on a job added before, when its key is freed), for a "
            "put-back job to take the key again for as long",
            "the effectively-once enqueue, release and requeue fragments "
            "(features/idempotency/enqueue.lua, release.lua, requeue.lua)",
        ),
        JobField(
            "wu",
            "the job's own webhook URL (its webhook_url option; the webhooks "
            "feature's marker, read by its release fragment)",
            "the webhooks enqueue slot fragment (features/webhooks/lua.py)",
        ),
        JobField(
            "ep",
            "multi-region: the epoch of the primary that accepted the job (kept by every "
            "copy; a job stranded on a former primary shows its old epoch)",
            "the regions enqueue slot fragment (features/regions/enqueue.lua); rg_apply.lua "
            "copies it",
        ),
        JobField(
            "rq",
            "multi-region: the latest requeue entry of a replication source copied here, "
            "'<its outbox entry id: ms of its clock>-<seq>|<region>@<epoch>'; an outcome "
            "entry of that source written before it, applied late, is skipped",
            "rg_apply.lua",
        ),
        JobField(
            "sj",
            "the subject whose data the job carries (its subject_id option; the "
            "compliance feature's marker, read when the job is erased)",
            "the compliance enqueue slot fragment (features/compliance/enqueue.lua)",
        ),
        JobField(
            "tn",
            "tenant of the job (its tenant_id; multi-tenancy's marker, read by claim and release)",
            "the tenancy enqueue fragment (features/tenancy)",
        ),
        JobField(
            "tq",
            "'1' while the job is counted in its tenant's unfinished jobs",
            "features/tenancy (enqueue and admission fragments; removed by release)",
        ),
        JobField(
            "tr",
            "the recount pass of its tenant's damaged count that counted the job (an id; "
            "left behind once the pass is over, and only compared with an open pass's)",
            "features/tenancy (tn_recount.lua, and the fragments while a pass is open)",
        ),
        JobField(
            "cb",
            "circuit breaker of the run, while a run its breaker admitted is under way "
            "(its outcome is counted in that breaker)",
            "the circuit breakers' admission fragment (features/breakers/lua.py; it drops "
            "one found on a waiting job); removed by their release fragment",
        ),
        JobField(
            "fw",
            "run links: the contexts of the runs this job's run follows, newline-separated, "
            "at most 32; present (maybe empty) on every job another job follows, so the "
            "worker sends the run's own context with its outcome; claim hands it out "
            "(Job.follows)",
            "features' Lua (the workflows' enqueue and release fragments and scripts: "
            "features/workflows)",
        ),
        JobField(
            "a",
            "attempts made, the running one included; a deferred or handed-back "
            "run and a stalled one are not counted",
            "claim.lua (+1), finish.lua (D, H: -1), lib_recover.lua (-1), lib_requeue.lua (0)",
        ),
        JobField(
            "s",
            "stalls: times its lease expired while it ran",
            "lib_recover.lua (+1), lib_requeue.lua (0)",
        ),
        JobField(
            "due",
            "delayed until (ms), while delayed",
            "push_delayed in lib_jobs.lua; removed by lib_promote.lua and retry",
        ),
        JobField(
            "lt",
            "lease (fencing) token of the current run, while active",
            "claim.lua; removed by finish, lib_recover.lua, dead_letter, retry",
        ),
        JobField("ps", "processing started at (ms): the start of the latest run", "claim.lua"),
        JobField(
            "w",
            "id of the worker that claimed the latest run (host:pid:random): "
            "the holder while the job is active",
            "claim.lua",
        ),
        JobField(
            "cx",
            "cancel requested by cancel_job() for the running job ('1')",
            "cancel.lua; read by extend.lua; removed by finish, recover, retry",
        ),
        JobField(
            "pg", "progress reported by the processor, JSON", "update.lua; removed by retry/replay"
        ),
        JobField(
            "e",
            "failure reason of the latest failed run",
            "finish.lua (R, F), dead_letter in lib_retention.lua",
        ),
        JobField("tb", "traceback of the latest failed run", "finish.lua (R, F), dead_letter"),
        JobField(
            "le",
            "last error: the reason of an earlier failure, kept once the job "
            "completed or was retried by hand",
            "finish.lua (C), requeue",
        ),
        JobField(
            "f", "finished at (ms): completed or failed for good", "finish.lua (C), dead_letter"
        ),
        JobField("r", "result, encoded by the queue's serializer and codecs", "finish.lua (C)"),
        JobField(
            "m",
            "completion metadata ('meta' of a C outcome, when given): the run's context "
            "(Job.run_context) of a job that takes part in run links",
            "finish.lua (C)",
        ),
    )
}

#: The fields a listing of jobs without their data reads (``include_data=False`` of
#: ``get_jobs_by_status`` and friends): every field ``job_values`` decodes except the
#: payloads (``d``, ``r``, ``pg``) and the traceback (``tb``), whose sizes are the
#: application's; the others are bounded (``limits.py``), so a row costs the same
#: whatever the job carries.
LISTED_FIELDS: Final[tuple[bytes, ...]] = (
    b"n",
    b"st",
    b"o",
    b"a",
    b"s",
    b"p",
    b"ts",
    b"ps",
    b"f",
    b"due",
    b"e",
    b"le",
)

#: The fields of the queue's meta hash (``QueueKeys.meta``).
META_FIELDS: Final[dict[str, JobField]] = {
    f.name: f
    for f in (
        JobField("paused", "'1' while the queue is paused", "pause.lua"),
        JobField("outbox_cap", "length cap of the outbox stream", "Outbox.set_cap"),
        JobField("parked", "how many jobs are parked in all", "lib_parking.lua"),
        JobField(
            "missing",
            "job records found missing (deleted or evicted while their job sat in a "
            "state set): QueueStats.missing_records",
            "count_missing in lib_base.lua (claim, promote, recover, finish)",
        ),
        JobField(
            "missing_at",
            "when a job record was last found missing (ms, Redis clock)",
            "count_missing in lib_base.lua",
        ),
        JobField(
            "-",
            "never set: deleting it is the first write of claim, extend and "
            "recover, so they still run on a full Redis (keep_running_when_full)",
            "lib_base.lua",
        ),
    )
}


@dataclass(slots=True)
class JobDetail(JobInfo):
    """A ``JobInfo`` with what an operator asks about a running job (``get_job_detail``).

    Attributes:
        worker: id of the worker that claimed the latest run (``host:pid:random``): it
            holds the job while ``status`` is active; None if the job never ran.
        lease_deadline: while active, when its lease expires (ms since the epoch on the
            Redis clock) unless the worker renews it: past it, the job is recovered.
        log_lines: how many log lines the job has (``get_job_logs``).
    """

    worker: str | None = None
    lease_deadline: int | None = None
    log_lines: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = JobInfo.to_dict(self)
        out["worker"] = self.worker
        out["lease_deadline"] = self.lease_deadline
        out["log_lines"] = self.log_lines
        return out


_STATES = {s.value.encode(): s for s in JobStatus}


def stored_status(raw: Mapping[bytes, bytes]) -> JobStatus | None:
    """The state written on a job hash (missing = waiting), or None when it is unknown."""
    return _STATES.get(raw.get(b"st") or b"waiting")


#: What ``job_values`` says of a job whose key holds another type than a hash.
WRONG_TYPE = "job record damaged: its key holds another type, not a hash"


def hash_reply(reply: Any, problems: list[str]) -> Mapping[bytes, bytes]:
    """The reply of ``HGETALL`` on a job key, read with ``raise_on_error=False``: a
    ``WRONGTYPE`` error (the key was overwritten with another type) is an empty record
    with the damage noted in ``problems``; any other error is raised."""
    if isinstance(reply, ResponseError) and "WRONGTYPE" in str(reply):
        problems.append(WRONG_TYPE)
        return {}
    if isinstance(reply, BaseException):
        raise reply
    return reply  # type: ignore[no-any-return]


def decode_id(member: str | bytes, problems: list[str]) -> str:
    """A job id as read from a state set; one that is not UTF-8 is shown escaped (and
    noted in ``problems``)."""
    if not isinstance(member, bytes):
        return member
    try:
        return member.decode()
    except UnicodeDecodeError:
        problems.append("job id is not valid UTF-8")
        return member.decode("utf-8", "backslashreplace")


#: The largest count or ms timestamp a record is read with (2**53: exact as a float and
#: in JSON, and 285,000 years in ms); a larger one is reported as damage.
_MAX_NUMBER = 2**53


def job_values(
    job_id: str,
    raw: Mapping[bytes, bytes],
    *,
    paused: bool,
    serializer: Serializer,
    base: Policy,
    found_in: JobStatus | None = None,
    problems: list[str] | None = None,
) -> dict[str, Any]:
    """The ``JobInfo`` fields of a job hash, as keyword arguments
    (``JobInfo(**job_values(...))``).

    Never raises on damaged fields: what could be read is filled in, the rest keeps its
    default, and ``damaged`` names every problem (together with ``problems`` found
    before, such as an id that is not UTF-8). ``found_in``: the state set the job was
    found in, used when the record's own state is unknown. ``base``: the queue's policy,
    for ``max_attempts``.
    """
    g = raw.get
    damage = list(problems or ())

    def text(key: bytes, what: str) -> str | None:
        v = g(key)
        if not v:
            return None
        try:
            return v.decode()
        except UnicodeDecodeError:
            damage.append(f"{what} is not valid UTF-8")
            return v.decode("utf-8", "backslashreplace")

    def num(key: bytes, what: str) -> int | None:
        v = g(key)
        if not v:
            return None
        try:
            n = int(v)
        except ValueError:
            try:
                f = float(v)
            except ValueError:
                f = math.nan
            if not math.isfinite(f):
                damage.append(f"{what} is not a number: {shown(v)}")
                return None
            n = int(f)
        # No count or ms timestamp is negative or comes near 2**53: written by hand.
        if not 0 <= n <= _MAX_NUMBER:
            damage.append(f"{what} is out of range: {shown(v)}")
            return None
        return n

    # An empty record is a key of another type (``hash_reply``): no state of its own.
    st = stored_status(raw) if raw else None
    if st is None:
        if raw:
            damage.append(f"unknown state {shown(g(b'st'))}")
        st = found_in or JobStatus.PENDING
    if st is JobStatus.WAITING and paused:
        st = JobStatus.PAUSED
    opts: dict[str, Any] = {}
    raw_opts = g(b"o")
    if raw_opts:
        try:
            parsed = orjson.loads(raw_opts)
        except orjson.JSONDecodeError:
            damage.append("options are not valid JSON")
        else:
            if isinstance(parsed, dict):
                opts = parsed
            else:
                damage.append("options are not a JSON object")
    policy, bad_opts = resolve_policy(opts, base)
    damage.extend(bad_opts)
    data: Any = None
    if g(b"d") is not None:
        try:
            data = serializer.loads(g(b"d") or b"")
        except Exception as exc:
            damage.append(f"data cannot be decoded ({clip(str(exc), 200)})")
    result: Any = None
    if g(b"r"):
        try:
            result = serializer.loads(g(b"r") or b"", "result")
        except Exception as exc:
            damage.append(f"result cannot be decoded ({clip(str(exc), 200)})")
    progress: Any = None
    if g(b"pg"):
        try:
            progress = orjson.loads(g(b"pg") or b"null")
        except orjson.JSONDecodeError:
            damage.append("progress is not valid JSON")

    values: dict[str, Any] = {
        "id": job_id,
        "name": text(b"n", "name") or "",
        "status": st,
        "data": data,
        "progress": progress,
        "attempts": (made := num(b"a", "attempts") or 0),
        # A job without its own attempts follows the settings of the worker that ran it,
        # which may have allowed more than this reader's: never fewer than were made.
        "max_attempts": max(policy.attempts, made),
        "priority": num(b"p", "priority") or 0,
        "created_at": num(b"ts", "created_at"),
        "started_at": num(b"ps", "started_at"),
        "finished_at": num(b"f", "finished_at"),
        "delayed_until": num(b"due", "delayed_until"),
        "result": result,
        "failed_reason": text(b"e", "failed_reason"),
        "stacktrace": text(b"tb", "stacktrace"),
        "last_error": text(b"le", "last_error"),
        "stalls": num(b"s", "stalls") or 0,
        "options": opts,
    }
    if damage:
        values["damaged"] = "; ".join(damage)
    return values


async def job_id_pages(ctx: Any, size: int) -> AsyncIterator[list[bytes]]:
    """The ids of every job record of a queue (``ctx``: anything with ``keys`` and an
    async ``client()``), walked with ``SCAN``, at most ``size`` at a time: what the
    repairs that walk the records read (``parking.rebuild_parked``,
    ``orphans.find_orphans``). ``SCAN`` may give a record twice, and may miss one added
    meanwhile."""
    client = await ctx.client()
    base = ctx.keys.job("").encode()
    page: list[bytes] = []
    async for key in client.scan_iter(match=base + b"*", count=1000):
        page.append(bytes(key)[len(base) :])
        if len(page) >= size:
            yield page
            page = []
    if page:
        yield page
