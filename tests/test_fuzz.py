"""Hypothesis fuzz suite over the public API's inputs, against a real Redis (issue 19).

Hostile values (tests/_fuzz_strategies.py: lone surrogates, control characters, ANSI
escapes, glob characters, very long strings, huge and non-finite numbers, bools and wrong
types where numbers are expected, 2,000-level deep and 10,000-key wide structures, values
JSON cannot encode) are thrown at:

* producers: ``add_job`` (name, data, every job option, unknown options), ``add_jobs``
  (one bad job among good ones), 20 concurrent ``add_job`` calls coalesced into one
  batch with one bad call among them, numeric ``job_id``\\ s against automatic ids;
* configuration: the ``JobQueue`` constructor (queue name, prefix, ``events_max_len``,
  ``idempotency_ttl``, ``max_payload_bytes``, ``max_log_lines``, ``settings.*``,
  ``worker.*``, ``retry.*``, ``dlq.*``, ``default_job_options``), then a worker runs a job
  on the queue so built;
* queries and admin calls: ``limit`` of ``get_jobs_by_status`` / ``get_dlq_jobs`` /
  ``bulk_retry`` / ``replay_dlq`` / ``promote_delayed`` / ``recover_stalled``, and the job
  id given to ``get_job_status`` / ``get_job_logs`` / ``remove_job`` / ``cancel_job`` /
  ``retry_job``;
* processors: results that cannot be encoded (or are too large), exceptions whose
  message, cause or context hold surrogates or control characters, whose ``__str__``
  raises, raised from async and from plain (threaded) processors; ``RetryLater`` /
  ``RateLimited`` with huge, infinite, NaN or negative delays and hostile reasons; custom
  backoff functions returning bad values or raising; ``job.log()`` /
  ``job.update_progress()`` with bad values; sub-millisecond ``timeout`` values.

Invariants (every one read back from Redis):

* producer side: each call returns or raises a ``KitiumQueueError``; a rejected call
  writes nothing at all (every key of the test's prefix is byte-for-byte as before, the
  id counter and the event stream included); an accepted call changes no existing record
  and no existing state-set member, adds only the ids it returned, each holding the
  name and data it was given, and a ``job_id`` never returns (or overwrites) a job made
  with an automatic id; the next automatic ids never reuse an existing id;
* processor side: one bad job runs among good ones that finish together (so their
  outcomes share one finish batch); every good job completes exactly once (runs counted
  in the processor), the bad job ends in exactly one of the states its outcome allows
  (dead-lettered with a readable reason, completed, or delayed far ahead), and it does
  not run more often than its attempts allow;
* always: every job id is in at most one of wait/active/delayed/completed/failed/dlq, in
  the one its hash's ``st`` names, active jobs carry a lease token, and no job record
  sits in no state set (``state_view`` / ``assert_consistent``, one atomic Lua read).

Run: ``.venv/bin/python -m pytest tests/test_fuzz.py -q`` (about a minute on 2 cores).
Examples per test are set by ``settings(max_examples=...)`` below; shrinking is off for
the processor tests (one wedged worker would make every shrink step wait its timeout),
and the examples of issue 19 always run first (``@example``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, Phase, event, example, given, note, settings
from hypothesis import strategies as st

from _fuzz_strategies import (
    BIG_VALUES,
    GLOB,
    NUMERIC_IDS,
    SURROGATES,
    UNENCODABLE,
    Big,
    data_values,
    durations,
    ids,
    nasty_numbers,
    nasty_text,
    numbers_or_wrong,
    unwrap,
    wrong_types,
)
from helpers import QueueFactory
from kitium_queue import (
    JobQueue,
    JobStatus,
    KitiumQueueError,
    NonRetryableError,
    RateLimited,
    RetryLater,
)
from kitium_queue.keys import QueueKeys

# Property tests: their wall time scales with the machine (several pytest processes share
# two cores); a wedged example still fails on its own settle timeouts, well inside this.
pytestmark = [pytest.mark.redis_only, pytest.mark.timeout(600)]

_HEALTH = [
    HealthCheck.function_scoped_fixture,  # one queue (and worker) per test, on purpose
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.large_base_example,
    HealthCheck.filter_too_much,
]
PRODUCER = settings(max_examples=150, deadline=None, suppress_health_check=_HEALTH, print_blob=True)
CONFIG = settings(max_examples=50, deadline=None, suppress_health_check=_HEALTH, print_blob=True)
# No shrinking: a poisoned outcome can wedge the shared worker, and every shrink step
# would then wait out its settle timeout. The issue's examples run first instead.
PROCESSOR = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=_HEALTH,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    report_multiple_bugs=False,
    print_blob=True,
)

STATE_SETS = ("wait", "active", "delayed", "completed", "failed", "dlq")
ST_OF_SET = {
    "wait": "waiting",
    "active": "active",
    "delayed": "delayed",
    "completed": "completed",
    "failed": "failed",
    "dlq": "dlq",
}
FINAL = ("completed", "failed", "dlq")
FAR_MS = 3000  # a bad job delayed at least this far ahead counts as settled
_ORJSON_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def show(x: Any, limit: int = 200) -> str:
    """An ASCII-only rendering for assertion messages (surrogates stay printable)."""
    if isinstance(x, Big):
        return repr(x)
    try:
        text = ascii(x)
    except Exception as exc:  # a hostile __repr__
        text = f"<unprintable {type(x).__name__}: {type(exc).__name__}>"
    return text if len(text) <= limit else text[:limit] + f"...(+{len(text) - limit})"


def glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


# ==================================================================== reading Redis state

_VIEW_LUA = """
local out = {}
for i = 1, #KEYS do out[i] = redis.call('ZRANGE', KEYS[i], 0, -1) end
local recs = {}
local cursor = '0'
repeat
  local r = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
  cursor = r[1]
  for _, k in ipairs(r[2]) do
    if redis.call('TYPE', k)['ok'] == 'hash' then
      local f = redis.call('HMGET', k, 'st', 'lt')
      recs[#recs + 1] = k
      recs[#recs + 1] = f[1] or ''
      recs[#recs + 1] = f[2] or ''
    end
  end
until cursor == '0'
out[#KEYS + 1] = recs
local t = redis.call('TIME')
out[#KEYS + 2] = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return out
"""


@dataclass
class StateView:
    """One atomic read of a queue: where each id is, and each job record's ``st``."""

    where: dict[str, list[str]]  # job id -> state sets holding it
    records: dict[str, tuple[str, bool]]  # job id -> (st, has a lease token)
    now_ms: int

    def problems(self) -> list[str]:
        out = []
        for jid, sets in sorted(self.where.items()):
            if len(sets) > 1:
                out.append(f"job {show(jid)} is in {len(sets)} state sets at once: {sets}")
            rec = self.records.get(jid)
            if rec is None:
                out.append(f"job {show(jid)} is in {sets} but has no record (hash)")
                continue
            st_, leased = rec
            if st_ not in [ST_OF_SET[s] for s in sets]:
                out.append(f"job {show(jid)} is in {sets} but its record says st={show(st_)}")
            if "active" in sets and not leased:
                out.append(f"job {show(jid)} is active without a lease token")
        for jid, (st_, _) in sorted(self.records.items()):
            if jid not in self.where:
                out.append(f"job record {show(jid)} (st={show(st_)}) is in no state set")
        return out

    def state(self, jid: str) -> str | None:
        rec = self.records.get(jid)
        return rec[0] if rec is not None else None


async def state_view(client: aioredis.Redis, keys: QueueKeys) -> StateView:
    set_keys = [getattr(keys, s) for s in STATE_SETS]
    head = keys.job("")
    raw = await client.eval(_VIEW_LUA, len(set_keys), *set_keys, glob_escape(head) + "*")
    where: dict[str, list[str]] = {}
    for name, members in zip(STATE_SETS, raw[: len(STATE_SETS)], strict=True):
        for m in members:
            where.setdefault(m.decode("utf-8", "surrogateescape"), []).append(name)
    records: dict[str, tuple[str, bool]] = {}
    flat = raw[len(STATE_SETS)]
    cut = len(head.encode("utf-8", "surrogateescape"))
    for i in range(0, len(flat), 3):
        jid = flat[i][cut:].decode("utf-8", "surrogateescape")
        records[jid] = (flat[i + 1].decode("utf-8", "replace"), bool(flat[i + 2]))
    return StateView(where, records, int(raw[-1]))


async def assert_consistent(client: aioredis.Redis, keys: QueueKeys, context: str = "") -> None:
    """Every job id in at most one state set, the one its ``st`` names; active jobs
    leased; no job record outside every state set."""
    problems = (await state_view(client, keys)).problems()
    assert not problems, f"inconsistent queue state {context}: {problems[:8]}"


_DUMP_LUA = """
local out = {}
local cursor = '0'
repeat
  local r = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
  cursor = r[1]
  for _, k in ipairs(r[2]) do
    local t = redis.call('TYPE', k)['ok']
    local v = {}
    if t == 'hash' then v = redis.call('HGETALL', k)
    elseif t == 'zset' then v = redis.call('ZRANGE', k, 0, -1, 'WITHSCORES')
    elseif t == 'string' then v = { redis.call('GET', k) }
    elseif t == 'list' then v = redis.call('LRANGE', k, 0, -1)
    elseif t == 'set' then v = redis.call('SMEMBERS', k)
    elseif t == 'stream' then v = { tostring(redis.call('XLEN', k)) }
    end
    out[#out + 1] = k
    out[#out + 1] = t
    out[#out + 1] = v
  end
until cursor == '0'
return out
"""

Dump = dict[bytes, tuple[str, Any]]


async def dump_keys(client: aioredis.Redis, prefix: str) -> Dump:
    """Every key under ``prefix`` with its whole value (streams: their length)."""
    flat = await client.eval(_DUMP_LUA, 0, glob_escape(prefix) + "*")
    out: Dump = {}
    for i in range(0, len(flat), 3):
        key, kind, raw = flat[i], flat[i + 1].decode(), flat[i + 2]
        value: Any
        if kind == "hash":
            value = dict(zip(raw[::2], raw[1::2], strict=True))
        elif kind == "zset":
            value = {raw[j]: float(raw[j + 1]) for j in range(0, len(raw), 2)}
        elif kind == "string":
            value = raw[0] if raw else None
        elif kind == "set":
            value = sorted(raw)
        elif kind == "stream":
            value = int(raw[0])
        else:
            value = raw
        out[key] = (kind, value)
    return out


def _b(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def dump_changes(before: Dump, after: Dump, *, skip: Iterable[bytes] = ()) -> list[str]:
    """Keys whose value differs (or that appeared / disappeared)."""
    ignored = set(skip)
    out = []
    for k in sorted(set(before) | set(after)):
        if k in ignored or before.get(k) == after.get(k):
            continue
        was = "absent" if k not in before else before[k][0]
        now = "absent" if k not in after else after[k][0]
        out.append(f"{show(k)}: {was} -> {now}")
    return out


def accepted_changes(
    before: Dump,
    after: Dump,
    keys: QueueKeys,
    new_ids: set[str],
    *,
    exempt: Iterable[str] = (),
) -> list[str]:
    """Problems with an accepted producer call: it may add the ids it returned (to wait or
    delayed, with their records), bump counters and append events; nothing else.
    ``exempt``: job ids the call legitimately acted on (their keys are not compared)."""
    volatile = {_b(k) for k in (keys.id, keys.marker, keys.events, keys.lease, keys.limiter)}
    volatile.add(_b(keys.extra("jids")))  # a chosen id's window (ended ones dropped)
    state_keys = {_b(getattr(keys, s)): s for s in STATE_SETS}
    job_head = _b(keys.job(""))
    spared = set(exempt)
    spared_keys = {_b(keys.job(j)) for j in spared} | {_b(keys.logs(j)) for j in spared}
    out: list[str] = []
    for k, (kind, value) in before.items():
        if k in volatile or k in spared_keys:
            continue
        now = after.get(k)
        if k in state_keys:
            members = now[1] if now is not None else {}
            for m, score in value.items():
                if m.decode("utf-8", "surrogateescape") in spared:
                    continue
                if members.get(m) != score:
                    out.append(
                        f"existing job {show(m)} in {state_keys[k]} (score {score}) "
                        f"now has score {members.get(m)}"
                    )
            continue
        if now != (kind, value):
            out.append(f"existing key {show(k)} was changed or deleted")
    for k, (_kind, value) in after.items():
        if k in state_keys:
            old = before.get(k, ("zset", {}))[1]
            for m in set(value) - set(old):
                jid = m.decode("utf-8", "surrogateescape")
                if jid in spared:
                    continue
                if jid not in new_ids:
                    out.append(
                        f"{state_keys[k]} gained job {show(jid)}, not an id the call returned"
                    )
                elif state_keys[k] not in ("wait", "delayed"):
                    out.append(f"new job {show(jid)} went straight to {state_keys[k]}")
        elif k not in before and k.startswith(job_head) and k not in spared_keys:
            jid = k[len(job_head) :].decode("utf-8", "surrogateescape")
            if jid not in new_ids:
                out.append(f"a record was written for id {show(jid)}, not an id the call returned")
    return out


async def wipe(client: aioredis.Redis, prefix: str) -> None:
    batch: list[bytes] = []
    async for k in client.scan_iter(match=glob_escape(prefix) + "*", count=1000):
        batch.append(k)
        if len(batch) >= 500:
            await client.unlink(*batch)
            batch = []
    if batch:
        await client.unlink(*batch)


async def guarded(
    what: str, awaitable: Awaitable[Any], inputs: Any
) -> tuple[Any, Exception | None]:
    """(result, None), or (None, error) for a ``KitiumQueueError``; any other exception
    fails the test naming the call and its inputs."""
    try:
        return await awaitable, None
    except KitiumQueueError as exc:
        return None, exc
    except Exception as exc:
        raise AssertionError(
            f"{what} raised {type(exc).__name__} (not a KitiumQueueError) for "
            f"{show(inputs, 400)}: {show(str(exc), 300)}"
        ) from exc


def build_queue(what: str, fn: Callable[[], JobQueue], inputs: Any) -> JobQueue | None:
    try:
        return fn()
    except KitiumQueueError:
        return None
    except Exception as exc:
        raise AssertionError(
            f"{what} raised {type(exc).__name__} (not a KitiumQueueError) for "
            f"{show(inputs, 400)}: {show(str(exc), 300)}"
        ) from exc


def normalized(data: Any) -> Any:
    """What a value reads back as after a JSON round trip (NaN -> None, int keys -> str)."""
    return orjson.loads(orjson.dumps(data, option=_ORJSON_OPTS))


def encodable(value: Any) -> bool:
    """orjson can write it at all (int keys and NaN allowed, turned into "1" and null)."""
    try:
        orjson.dumps(value, option=_ORJSON_OPTS)
    except (TypeError, ValueError):
        return False
    return True


def lossless(value: Any) -> bool:
    """JSON carries it unchanged: encodable with str keys only, no NaN or infinity."""
    try:
        orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
    except (TypeError, ValueError):
        return False
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            return False
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return True


async def stop_queue(q: JobQueue) -> None:
    """Stop ``q``'s worker within bounded time, even if its pump can no longer flush
    (a wedged worker would otherwise hold ``stop()`` for 30 s), then close ``q``."""
    worker = q.worker
    if worker is not None and worker.running:
        stopping = asyncio.ensure_future(worker.stop(timeout_ms=300))
        done, _ = await asyncio.wait({stopping}, timeout=8)
        if not done:
            for task in list(getattr(worker, "_pumps", ())):
                task.cancel()
            await asyncio.wait({stopping}, timeout=10)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(q.close(), 10)


@pytest.fixture
async def queues(redis_url: str, prefix: str) -> AsyncIterator[QueueFactory]:
    factory = QueueFactory(redis_url, prefix)
    yield factory
    for q in factory.queues:
        await stop_queue(q)


# ==================================================================== producers

JOB_OPTION_NAMES = (
    "attempts",
    "delay",
    "priority",
    "backoff",
    "timeout",
    "remove_on_complete",
    "remove_on_fail",
    "job_id",
    "lifo",
    "jitter",
    "idempotency_key",
    "delivery_guarantee",
    "rate_limit_key",
)


def one_hostile(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Dicts of exactly one of ``fields`` (so that a call with one odd value among sane
    defaults is common), or of any mix of them (mostly refused)."""
    return st.one_of(
        st.sampled_from(sorted(fields)).flatmap(lambda k: st.fixed_dictionaries({k: fields[k]})),
        st.fixed_dictionaries({}, optional=fields),
    )


_plain_names = st.sampled_from(["work", "send-email", "*", "a:b", "job:1", "é日本"])
job_names = st.one_of(
    _plain_names,
    _plain_names,
    nasty_text(),
    st.sampled_from([None, "", 1, b"work", ["work"]]),
)
plain_or_nasty_data = st.one_of(st.just({"a": 1}), st.just(None), data_values())
backoffs = st.one_of(
    numbers_or_wrong(),
    st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(["fixed", "exponential", "custom", "linear", "\ud800", 1]),
            "delay": numbers_or_wrong(),
            "max_delay": st.one_of(st.none(), numbers_or_wrong()),
            "strategy": st.one_of(st.none(), nasty_text(long=False)),
        },
    ),
    st.just({"type": "fixed", "delay": 10, "unknown\x00": 1}),
)
retentions = st.one_of(
    st.booleans(),
    numbers_or_wrong(),
    st.fixed_dictionaries({}, optional={"count": numbers_or_wrong(), "age": numbers_or_wrong()}),
)
HOSTILE_OPTION = {
    "attempts": numbers_or_wrong(),
    "delay": numbers_or_wrong(),
    "priority": numbers_or_wrong(),
    "backoff": backoffs,
    "timeout": numbers_or_wrong(),
    "remove_on_complete": retentions,
    "remove_on_fail": retentions,
    "jitter": numbers_or_wrong(),
    "lifo": st.one_of(st.booleans(), numbers_or_wrong()),
    "job_id": st.one_of(ids(), st.just("s-chosen")),
    "idempotency_key": st.one_of(ids(), st.just("s-key")),
    "delivery_guarantee": st.sampled_from(
        ["at-least-once", "exactly-once", "AT-LEAST-ONCE", "\ud800", 1, None]
    ),
    "rate_limit_key": nasty_text(long=False),
}
VALID_OPTION = {
    "attempts": st.integers(1, 5),
    "priority": st.integers(0, 10),
    "delay": st.sampled_from([0, 3_600_000]),
    "lifo": st.booleans(),
}
#: Any mix of hostile options (mostly refused), or exactly one hostile option among
#: valid ones (so accepted calls with one odd value are common too).
job_options = st.one_of(
    st.fixed_dictionaries({}, optional=HOSTILE_OPTION),
    st.sampled_from(sorted(HOSTILE_OPTION)).flatmap(
        lambda k: st.fixed_dictionaries(
            {k: HOSTILE_OPTION[k]},
            optional={name: value for name, value in VALID_OPTION.items() if name != k},
        )
    ),
)
unknown_options = st.one_of(
    st.just({}),
    st.just({}),
    st.just({}),
    st.dictionaries(
        nasty_text(long=False).filter(lambda k: k not in JOB_OPTION_NAMES),
        numbers_or_wrong(),
        min_size=1,
        max_size=1,
    ),
)


@dataclass
class Spec:
    """One job as a producer asked for it."""

    name: Any
    data: Any
    options: dict[str, Any]

    @property
    def job_id(self) -> Any:
        return self.options.get("job_id")

    @property
    def idem(self) -> Any:
        return self.options.get("idempotency_key")


@dataclass
class Seeded:
    auto: set[str] = field(default_factory=set)  # made without job_id
    chosen: dict[str, str] = field(default_factory=dict)  # job_id -> id
    idem: dict[str, str] = field(default_factory=dict)  # idempotency key -> id


class ProducerBench:
    """A queue with three sentinel jobs, re-made before every example."""

    def __init__(self, q: JobQueue, client: aioredis.Redis, prefix: str) -> None:
        self.q = q
        self.client = client
        self.prefix = prefix

    async def reset(self) -> Seeded:
        await wipe(self.client, self.prefix)
        s = Seeded()
        a = await self.q.add_job("sentinel-a", {"v": 1}, attempts=3, priority=5)
        b = await self.q.add_job("sentinel-b", {"v": [2, "x"]}, delay=3_600_000)
        c = await self.q.add_job(
            "sentinel-c", {"v": 3}, job_id="s-chosen", idempotency_key="s-key", lifo=True
        )
        s.auto |= {a, b}
        s.chosen["s-chosen"] = c
        s.idem["s-key"] = c
        return s

    async def dump(self) -> Dump:
        return await dump_keys(self.client, self.prefix)

    async def verify(
        self,
        seeded: Seeded,
        before: Dump,
        specs: list[Spec],
        got: list[Any],
        err: Exception | None,
        what: str,
        *,
        str_names: bool = False,
    ) -> Dump:
        """Check one producer call (``got``: the ids it returned, in order).
        ``str_names``: the call turns a non-string name into ``str(name)`` (add_jobs)."""
        after = await self.dump()
        keys = self.q.keys
        if err is not None:
            changes = dump_changes(before, after)
            assert not changes, (
                f"{what} was rejected ({type(err).__name__}: {show(str(err))}) but wrote: "
                f"{changes[:6]}"
            )
            return after
        assert len(got) == len(specs), (what, got)
        existed = {
            k[len(_b(keys.job(""))) :].decode("utf-8", "surrogateescape")
            for k in before
            if k.startswith(_b(keys.job("")))
        }
        made_here: dict[Any, str] = {}
        idem_here: dict[Any, str] = {}
        new_ids: set[str] = set()
        for spec, jid in zip(specs, got, strict=True):
            assert isinstance(jid, str) and jid, f"{what} returned {show(jid)} as a job id"
            if jid in existed or jid in new_ids:
                legit = (
                    isinstance(spec.job_id, str)
                    and spec.job_id == jid
                    and (seeded.chosen.get(jid) == jid or made_here.get(jid) == jid)
                ) or (
                    spec.idem is not None
                    and (seeded.idem.get(spec.idem) == jid or idem_here.get(spec.idem) == jid)
                )
                assert legit, (
                    f"{what} returned the existing job {show(jid)} as a duplicate, but it was "
                    f"not made with job_id={show(spec.job_id)} nor idempotency_key="
                    f"{show(spec.idem)} (automatic ids: {sorted(seeded.auto)})"
                )
                continue
            if isinstance(spec.job_id, str):
                assert jid == spec.job_id, (
                    f"{what}: job_id={show(spec.job_id)} came back as id {show(jid)}"
                )
            new_ids.add(jid)
            made_here[spec.job_id] = jid
            if spec.idem is not None:
                idem_here[spec.idem] = jid
        problems = accepted_changes(before, after, keys, new_ids)
        assert not problems, f"{what} disturbed other jobs: {problems[:6]}"
        for spec, jid in zip(specs, got, strict=True):
            if jid not in new_ids:
                continue
            info = await self.q.get_job_status(jid)
            assert info is not None, f"{what} returned {show(jid)} but no record exists"
            want = spec.name
            if str_names and not isinstance(want, str):
                want = str(want or "")
            assert info.name == want, (
                f"job {show(jid)} is named {show(info.name)}, was added as {show(spec.name)}"
            )
            assert info.data == normalized(spec.data), (
                f"job {show(jid)} holds other data than it was added with"
            )
            assert info.status in (JobStatus.WAITING, JobStatus.DELAYED, JobStatus.PAUSED)
        return after

    async def later_adds(self, before: Dump) -> None:
        """Three more automatic ids: fresh ones, and nothing else touched."""
        got = [await self.q.add_job("later", {"n": i}) for i in range(3)]
        after = await self.dump()
        head = _b(self.q.keys.job(""))
        for jid in got:
            assert head + _b(jid) not in before, (
                f"an automatic id reused {show(jid)}, the id of an existing job"
            )
        problems = accepted_changes(before, after, self.q.keys, set(got))
        assert not problems, f"automatic ids after the call disturbed other jobs: {problems[:6]}"
        assert len(set(got)) == 3, got


@pytest.fixture
async def producer(
    queues: QueueFactory, redis_client: aioredis.Redis, prefix: str
) -> ProducerBench:
    return ProducerBench(queues("fzp"), redis_client, prefix)


def _call_add_job(q: JobQueue, spec: Spec, how: str) -> Awaitable[str]:
    if how == "kwargs":
        return q.add_job(spec.name, spec.data, **spec.options)
    return q.add_job(spec.name, spec.data, spec.options)


#: One add_job call: hostile in exactly one part (name, data, options or an unknown
#: option) with the rest plain, or hostile everywhere.
job_calls = st.one_of(
    st.builds(Spec, name=job_names, data=st.just({"a": 1}), options=st.just({})),
    st.builds(Spec, name=st.just("work"), data=data_values(), options=st.just({})),
    st.builds(Spec, name=st.just("work"), data=st.just({"a": 1}), options=job_options),
    st.builds(Spec, name=st.just("work"), data=st.just(None), options=unknown_options),
    st.builds(
        Spec,
        name=job_names,
        data=plain_or_nasty_data,
        options=st.builds(lambda a, b: {**a, **b}, job_options, unknown_options),
    ),
)


def _spec(name: Any, data: Any = None, **options: Any) -> Spec:
    return Spec(name, data, options)


@PRODUCER
@given(spec=job_calls, how=st.sampled_from(["kwargs", "options"]))
# issue 19 item 1: a surrogate in a job name, a job id, an idempotency key, the data
@example(spec=_spec(SURROGATES[3], {"a": 1}), how="kwargs")
@example(spec=_spec("work", {"a": 1}, job_id="r-\udcff.csv"), how="kwargs")
@example(spec=_spec("work", idempotency_key="\ud800"), how="kwargs")
@example(spec=_spec("work", {"f": "r-\udcff.csv"}), how="kwargs")
# item 2: a numeric job_id meets an automatic id (the sentinels took 1-3; this call takes
# sequence number 4 for itself, so "5" is the next automatic id)
@example(spec=_spec("charge", {"amt": 100}, job_id="1", attempts=1), how="kwargs")
@example(spec=_spec("charge", {"amt": 100}, job_id="5", attempts=1), how="kwargs")
# item 3 / root cause (d): huge and non-finite numbers
@example(spec=_spec("work", delay=math.inf), how="kwargs")
@example(spec=_spec("work", timeout=math.inf), how="kwargs")
@example(spec=_spec("work", delay=2**64), how="kwargs")
@example(spec=_spec("work", delay=sys.maxsize), how="kwargs")
@example(spec=_spec("work", jitter=10**30), how="kwargs")
@example(spec=_spec("work", backoff=math.inf), how="kwargs")
@example(spec=_spec("work", BIG_VALUES[2]), how="kwargs")
@example(spec=Spec("work", None, {"\ud800": 1}), how="options")
async def test_add_job_fuzz(producer: ProducerBench, spec: Spec, how: str) -> None:
    spec = Spec(
        unwrap(spec.name), unwrap(spec.data), {k: unwrap(v) for k, v in spec.options.items()}
    )
    seeded = await producer.reset()
    before = await producer.dump()
    jid, err = await guarded("add_job", _call_add_job(producer.q, spec, how), spec)
    note(f"add_job -> {show(jid)} / {type(err).__name__ if err else None}")
    event(f"add_job: {type(err).__name__ if err else 'accepted'}")
    after = await producer.verify(seeded, before, [spec], [jid], err, "add_job")
    await producer.later_adds(after)
    await assert_consistent(producer.client, producer.q.keys, "after add_job")


job_specs = job_calls
good_specs = st.builds(
    Spec,
    name=st.just("good"),
    data=st.integers(0, 100).map(lambda i: {"i": i}),
    options=st.sampled_from(
        [{}, {"priority": 3}, {"delay": 3_600_000}, {"lifo": True}, {"attempts": 2}]
    ),
)


@PRODUCER
@given(
    bad=job_specs,
    before_n=st.integers(0, 3),
    after_n=st.integers(0, 3),
    goods=st.lists(good_specs, min_size=6, max_size=6),
    form=st.sampled_from(["tuple", "dict"]),
)
@example(
    bad=Spec(SURROGATES[3], {"a": 1}, {}),
    before_n=2,
    after_n=2,
    goods=[Spec("good", {"i": i}, {}) for i in range(6)],
    form="tuple",
)
@example(
    bad=Spec("charge", {"a": 1}, {"job_id": "6"}),
    before_n=0,
    after_n=3,
    goods=[Spec("good", {"i": i}, {}) for i in range(6)],
    form="dict",
)
async def test_add_jobs_one_bad_among_good(
    producer: ProducerBench,
    bad: Spec,
    before_n: int,
    after_n: int,
    goods: list[Spec],
    form: str,
) -> None:
    bad = Spec(unwrap(bad.name), unwrap(bad.data), {k: unwrap(v) for k, v in bad.options.items()})
    specs = [*goods[:before_n], bad, *goods[before_n : before_n + after_n]]
    items: list[Any] = [
        (s.name, s.data, s.options)
        if form == "tuple"
        else {"name": s.name, "data": s.data, "options": s.options}
        for s in specs
    ]
    seeded = await producer.reset()
    before = await producer.dump()
    got, err = await guarded("add_jobs", producer.q.add_jobs(items), items)
    event(f"add_jobs: {type(err).__name__ if err else 'accepted'}")
    after = await producer.verify(
        seeded, before, specs, list(got or [None] * len(specs)), err, "add_jobs", str_names=True
    )
    await producer.later_adds(after)
    await assert_consistent(producer.client, producer.q.keys, "after add_jobs")


@PRODUCER
@given(bad=job_specs, position=st.integers(0, 20))
@example(bad=Spec(SURROGATES[3], {"a": 1}, {}), position=7)  # issue 19 item 1
@example(bad=Spec("x", {"a": 1}, {"idempotency_key": "\ud800"}), position=3)
@example(bad=Spec("x", {"a": 1}, {"job_id": "7"}), position=1)  # item 2, inside a batch
@example(bad=Spec("x", {"a": 1}, {"delay": math.inf}), position=2)
async def test_concurrent_add_job_one_bad(
    producer: ProducerBench, bad: Spec, position: int
) -> None:
    """20 good ``add_job`` calls issued together are coalesced into one enqueue batch;
    a bad call among them fails alone (or succeeds), never the others."""
    bad = Spec(unwrap(bad.name), unwrap(bad.data), {k: unwrap(v) for k, v in bad.options.items()})
    specs = [Spec("good", {"i": i}, {}) for i in range(20)]
    specs.insert(position, bad)
    seeded = await producer.reset()
    before = await producer.dump()
    results = await asyncio.gather(
        *(producer.q.add_job(s.name, s.data, **s.options) for s in specs),
        return_exceptions=True,
    )
    for i, (spec, r) in enumerate(zip(specs, results, strict=True)):
        if i == position:
            if isinstance(r, BaseException) and not isinstance(r, KitiumQueueError):
                raise AssertionError(
                    f"the bad add_job raised {type(r).__name__}, not a KitiumQueueError, for "
                    f"{show(spec)}: {show(str(r))}"
                ) from r
        elif isinstance(r, BaseException):
            raise AssertionError(
                f"a good add_job issued together with a bad one ({show(bad)}) failed with "
                f"{type(r).__name__}: {show(str(r))}"
            ) from r
    event(f"bad add_job: {type(results[position]).__name__}")
    ok = [(s, r) for s, r in zip(specs, results, strict=True) if not isinstance(r, BaseException)]
    after = await producer.verify(
        seeded, before, [s for s, _ in ok], [r for _, r in ok], None, "concurrent add_job"
    )
    await producer.later_adds(after)
    await assert_consistent(producer.client, producer.q.keys, "after concurrent add_job")


@PRODUCER
@given(
    ops=st.lists(
        st.one_of(st.just(None), st.sampled_from(NUMERIC_IDS), st.integers(0, 12).map(str)),
        min_size=1,
        max_size=12,
    )
)
# The sentinels took sequence numbers 1-3: a chosen id consumes the next one too.
@example(ops=["5", None])  # issue 19 item 2: the automatic id 5 overwrites chosen "5"
@example(ops=[None, "4"])  # item 2, the other order: "4" returns the automatic job 4
async def test_numeric_job_ids_never_meet_automatic_ids(
    producer: ProducerBench, ops: list[str | None]
) -> None:
    """Interleaved automatic ids (None) and numeric chosen ids: every job keeps its own
    record, and a chosen id never returns a job that was made with an automatic id."""
    seeded = await producer.reset()
    made: dict[str, tuple[str, Any]] = {}  # id -> (name, data) it was made with
    auto: set[str] = set(seeded.auto)
    chosen: dict[str, str] = dict(seeded.chosen)
    for n, op in enumerate(ops):
        name, data = f"op{n}", {"n": n}
        if op is None:
            jid = await producer.q.add_job(name, data)
            assert jid not in made and jid not in chosen.values() and jid not in auto, (
                f"automatic id {jid} was already taken (ops {ops[: n + 1]})"
            )
            auto.add(jid)
            made[jid] = (name, data)
            continue
        jid, err = await guarded("add_job", producer.q.add_job(name, data, job_id=op), op)
        if err is not None:
            continue
        assert jid not in auto, (
            f"add_job(job_id={op!r}) returned {jid}, a job made with an automatic id "
            f"(ops {ops[: n + 1]})"
        )
        if op in chosen:
            assert jid == chosen[op]
            continue
        chosen[op] = jid
        made[jid] = (name, data)
    for jid, (name, data) in made.items():
        info = await producer.q.get_job_status(jid)
        assert info is not None, f"job {jid} is gone (ops {ops})"
        assert (info.name, info.data) == (name, data), (
            f"job {jid} was overwritten: holds {info.name} {info.data}, made as {name} {data} "
            f"(ops {ops})"
        )
    await assert_consistent(producer.client, producer.q.keys, "after numeric job ids")


# ==================================================================== configuration

settings_dicts = st.one_of(
    one_hostile(
        {
            "lock_duration": numbers_or_wrong(),
            "lock_renew_time": numbers_or_wrong(),
            "max_stalled_count": numbers_or_wrong(),
            "max_stalled_interval": numbers_or_wrong(),
        }
    ),
    wrong_types(),
)
worker_dicts = st.one_of(
    one_hostile(
        {
            "concurrency": numbers_or_wrong(),
            "shutdown_timeout": numbers_or_wrong(),
            "limiter": st.one_of(
                st.none(),
                wrong_types(),
                st.fixed_dictionaries(
                    {"max": numbers_or_wrong()}, optional={"duration": numbers_or_wrong()}
                ),
            ),
            "scheduler": st.one_of(st.booleans(), wrong_types()),
        }
    ),
    wrong_types(),
)
retry_dicts = one_hostile(
    {
        "max_attempts": numbers_or_wrong(),
        "backoff_type": st.sampled_from(["fixed", "exponential", "custom", "\ud800", None]),
        "backoff_delay": numbers_or_wrong(),
        "max_backoff_delay": st.one_of(st.none(), numbers_or_wrong()),
    }
)
_small_numbers = st.one_of(nasty_numbers(), st.integers(0, 100))
queue_configs = one_hostile(
    {
        "events_max_len": st.one_of(_small_numbers, numbers_or_wrong()),
        "idempotency_ttl": numbers_or_wrong(),
        "max_payload_bytes": numbers_or_wrong(),
        "max_log_lines": st.one_of(_small_numbers, numbers_or_wrong()),
        "settings": settings_dicts,
        "worker": worker_dicts,
        "retry": retry_dicts,
        "dlq": one_hostile(
            {
                "enabled": st.one_of(st.booleans(), wrong_types()),
                "queue_name": nasty_text(long=False),
            }
        ),
        "prefix_suffix": nasty_text(long=False),
        "default_job_options": st.one_of(job_options, wrong_types()),
    }
)


async def _sentinel(client: aioredis.Redis, keys: QueueKeys, jid: str, idem: str) -> Any:
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.job(jid))
    for s in STATE_SETS:
        pipe.zscore(getattr(keys, s), jid)
    pipe.get(keys.idempotency(idem))
    return await pipe.execute()


@CONFIG
@given(cfg=queue_configs)
@example(cfg={"max_log_lines": 0})  # issue 19 item 10
@example(cfg={"events_max_len": -1})  # item 10: orphan job records
@example(cfg={"idempotency_ttl": 1e17})  # item 10
@example(cfg={"idempotency_ttl": math.inf})
@example(cfg={"max_payload_bytes": math.inf})
@example(cfg={"max_payload_bytes": math.nan})
@example(cfg={"events_max_len": 2**64})
@example(cfg={"settings": {"lock_duration": math.inf}})
@example(cfg={"settings": {"max_stalled_count": "2"}})
@example(cfg={"worker": {"concurrency": True}})
@example(cfg={"worker": {"limiter": {"max": 1, "duration": math.inf}}})
@example(cfg={"retry": {"max_attempts": 2, "backoff_delay": math.inf}})
@example(cfg={"prefix_suffix": "\ud800"})
@example(cfg={"default_job_options": {"timeout": 0.4}})
async def test_queue_settings_fuzz(
    redis_client: aioredis.Redis, redis_url: str, prefix: str, cfg: dict[str, Any]
) -> None:
    """A queue built from hostile settings is refused with a KitiumQueueError, or works:
    a job added to it runs to completion (logging a line and reporting progress) on a
    worker that uses those settings (unless ``default_job_options`` may legitimately hold
    it back), with no orphan records; a sentinel job of the same queue name is untouched."""
    name = f"cfg{time.monotonic_ns()}"
    base = JobQueue(name, redis=redis_url, prefix=prefix)
    q: JobQueue | None = None
    try:
        idem = f"sentinel-{name}"
        sentinel = await base.add_job("sentinel", {"s": 1}, delay=3_600_000, idempotency_key=idem)
        before = await _sentinel(redis_client, base.keys, sentinel, idem)
        config = {k: unwrap(v) for k, v in cfg.items() if k != "prefix_suffix"}
        config.setdefault("redis", redis_url)
        config["prefix"] = prefix + str(unwrap(cfg.get("prefix_suffix", "")))
        q = build_queue("JobQueue(...)", lambda: JobQueue(name, **config), cfg)
        event(f"JobQueue(...): {'refused' if q is None else 'built'}")
        if q is None:
            return
        runs: Counter[str] = Counter()
        side_errors: list[BaseException | None] = []

        async def work(job: Any) -> dict[str, int]:
            runs[job.id] += 1
            calls: tuple[Callable[[], Awaitable[None]], ...] = (
                lambda: job.log("line\tone"),
                lambda: job.update_progress(50),
            )
            for call in calls:
                try:
                    await call()
                    side_errors.append(None)
                except Exception as exc:  # recorded and checked below
                    side_errors.append(exc)
            return {"ok": 1}

        q.process("work", work)
        jid, err = await guarded(
            "add_job on the configured queue",
            q.add_job("work", {"i": 1}, idempotency_key=f"k-{name}"),
            cfg,
        )
        if err is not None:
            return
        _, err = await guarded("worker start", q.start(), cfg)
        if err is None and "default_job_options" not in cfg:
            view = await _wait_state(redis_client, q.keys, jid, FINAL, 8.0)
            reason = await redis_client.hget(q.keys.job(jid), "e")
            assert view.state(jid) == "completed", (
                f"a job on a queue built with {show(cfg)} ended {view.state(jid)}: {show(reason)}"
            )
            assert runs[jid] == 1, f"the job ran {runs[jid]} times"
            bad = [e for e in side_errors if e is not None]
            assert not bad, (
                f"job.log / update_progress failed on a queue built with {show(cfg)}: "
                f"{[f'{type(e).__name__}: {show(str(e))}' for e in bad]}"
            )
        await stop_queue(q)
        await assert_consistent(redis_client, q.keys, f"of a queue built with {show(cfg)}")
        after = await _sentinel(redis_client, base.keys, sentinel, idem)
        assert after == before, f"the sentinel job changed: {show(before)} -> {show(after)}"
    finally:
        if q is not None:
            await stop_queue(q)
        await base.close()


async def _wait_state(
    client: aioredis.Redis, keys: QueueKeys, jid: str, states: Iterable[str], timeout: float
) -> StateView:
    wanted = set(states)
    deadline = time.monotonic() + timeout
    while True:
        view = await state_view(client, keys)
        if view.state(jid) in wanted or time.monotonic() > deadline:
            return view
        await asyncio.sleep(0.01)


@CONFIG
@given(name=st.one_of(nasty_text(), st.sampled_from(GLOB), wrong_types()))
@example(name="t*")  # issue 19 item 6
@example(name="\ud800")
@example(name="q\x00")
async def test_queue_name_fuzz(
    redis_client: aioredis.Redis, redis_url: str, prefix: str, name: Any
) -> None:
    """A hostile queue name is refused with a KitiumQueueError, or the queue works on its
    own keys: a job round-trips, and clearing the queue leaves a neighbour untouched."""
    neighbour = JobQueue("tax-refunds", redis=redis_url, prefix=prefix)
    q: JobQueue | None = None
    try:
        nid = await neighbour.add_job("refund", {"amt": 5})
        before = await dump_keys(redis_client, neighbour.keys.base)
        q = build_queue(
            "JobQueue(name)", lambda: JobQueue(unwrap(name), redis=redis_url, prefix=prefix), name
        )
        if q is None:
            return
        jid, err = await guarded("add_job on the named queue", q.add_job("x", {"a": 1}), name)
        if err is None:
            info = await q.get_job_status(jid)
            assert info is not None and info.name == "x" and info.data == {"a": 1}
            await assert_consistent(redis_client, q.keys, f"of queue {show(name)}")
            await guarded("clear()", q.clear(), name)
        after = await dump_keys(redis_client, neighbour.keys.base)
        assert not dump_changes(before, after, skip=[_b(neighbour.keys.marker)]), (
            f"queue {show(name)} changed its neighbour's keys"
        )
        assert (await neighbour.get_job_status(nid)) is not None
    finally:
        if q is not None:
            await stop_queue(q)
        await neighbour.close()


# ==================================================================== queries and admin calls

limits = st.one_of(nasty_numbers(), wrong_types(), st.integers(-2, 6))


def _cap(limit: Any) -> float | None:
    """The most jobs a call given ``limit`` may return or move (None: no bound known)."""
    if isinstance(limit, bool):
        return int(limit)
    if isinstance(limit, int):
        return max(0, limit)
    if isinstance(limit, float) and math.isfinite(limit):
        return max(0, math.floor(limit))
    if isinstance(limit, float) and limit == math.inf:
        return math.inf
    return None


class StatesBench:
    """A paused queue holding jobs in every resting state, re-made for each example:
    3 completed, 3 dead-lettered, 3 waiting, 2 delayed an hour ahead."""

    def __init__(self, q: JobQueue, client: aioredis.Redis, prefix: str) -> None:
        self.q = q
        self.client = client
        self.prefix = prefix

        async def ok(job: Any) -> dict[str, Any]:
            await job.log(f"log of {job.id}")
            return {"id": job.id}

        async def dead(job: Any) -> None:
            raise NonRetryableError(f"dead {job.id}")

        q.process("ok", ok)
        q.process("dead", dead)

    async def reset(self) -> dict[str, list[str]]:
        q = self.q
        if q.worker is None:
            await q.start()
        await wipe(self.client, self.prefix)
        done = await q.add_jobs([("ok", {"i": i}) for i in range(3)])
        dead = await q.add_jobs([("dead", {"i": i}) for i in range(3)])
        deadline = time.monotonic() + 30  # a loaded machine
        while True:
            view = await state_view(self.client, q.keys)
            if all(view.state(j) == "completed" for j in done) and all(
                view.state(j) == "dlq" for j in dead
            ):
                break
            assert time.monotonic() < deadline, f"seed jobs did not settle: {view.records}"
            await asyncio.sleep(0.01)
        await q.pause()
        waiting = await q.add_jobs([("ok", {"w": i}) for i in range(3)])
        delayed = await q.add_jobs([("ok", {"d": i}, {"delay": 3_600_000}) for i in range(2)])
        return {"completed": done, "dlq": dead, "waiting": waiting, "delayed": delayed}

    async def dump(self) -> Dump:
        """The queue's keys without the running worker's registry (``workers`` and its
        ``worker:<id>`` record): ``reset`` wipes them and the worker's heartbeat writes
        them back on its own clock, whatever call is under test."""
        registry = _b(self.q.keys.workers)
        record_head = _b(self.q.keys.worker(""))
        dumped = await dump_keys(self.client, self.prefix)
        return {
            k: v for k, v in dumped.items() if k != registry and not k.startswith(record_head)
        }


@pytest.fixture
async def states(queues: QueueFactory, redis_client: aioredis.Redis, prefix: str) -> StatesBench:
    return StatesBench(
        queues(
            "fzs",
            worker={"concurrency": 4, "scheduler": False},
            default_job_options={"remove_on_complete": False},
        ),
        redis_client,
        prefix,
    )


query_ops = st.one_of(
    st.tuples(
        st.just("get_jobs_by_status"),
        st.sampled_from(
            [
                "waiting",
                "delayed",
                "completed",
                "dlq",
                "failed",
                "active",
                "paused",
                "prioritized",
                "\ud800",
                1,
                None,
            ]
        ),
        limits,
    ),
    st.tuples(st.just("get_dlq_jobs"), st.none(), limits),
    st.tuples(
        st.just("bulk_retry"),
        st.sampled_from(["failed", "dlq", "completed", "waiting", "\x1b[0m"]),
        limits,
    ),
    st.tuples(st.just("replay_dlq"), st.none(), limits),
    st.tuples(st.just("promote_delayed"), st.none(), limits),
    st.tuples(st.just("recover_stalled"), st.none(), limits),
)
_SET_OF = {
    "waiting": "wait",
    "paused": "wait",
    "delayed": "delayed",
    "completed": "completed",
    "dlq": "dlq",
    "failed": "failed",
    "active": "active",
}


@PRODUCER
@given(op=query_ops)
@example(op=("get_jobs_by_status", "completed", 0))  # issue 19 item 13
@example(op=("get_jobs_by_status", "waiting", -1))  # item 13
@example(op=("get_dlq_jobs", None, -5))
@example(op=("get_jobs_by_status", "completed", 0.4))
@example(op=("bulk_retry", "dlq", 0))
@example(op=("replay_dlq", None, -1))
@example(op=("promote_delayed", None, math.inf))
@example(op=("promote_delayed", None, 10**30))
@example(op=("recover_stalled", None, math.nan))
async def test_query_limits_fuzz(states: StatesBench, op: tuple[str, Any, Any]) -> None:
    """A ``limit`` never returns or moves more jobs than it allows (0 or less: none);
    hostile limits give a KitiumQueueError; read-only calls write nothing."""
    name, status, limit = op
    seeded = await states.reset()
    before = await states.dump()
    q = states.q
    if name == "get_jobs_by_status":
        call: Awaitable[Any] = q.get_jobs_by_status(status, limit)
    elif name == "get_dlq_jobs":
        call = q.get_dlq_jobs(limit)
    elif name == "bulk_retry":
        call = q.bulk_retry(status, limit)
    elif name == "replay_dlq":
        call = q.replay_dlq(limit)
    elif name == "promote_delayed":
        call = q.promote_delayed(limit)
    else:
        call = q.recover_stalled(limit)
    out, err = await guarded(name, call, op)
    event(f"{name}: {type(err).__name__ if err else 'ok'}")
    after = await states.dump()
    cap = _cap(limit)
    view = await state_view(states.client, q.keys)
    assert not view.problems(), view.problems()[:6]
    if err is not None or name in ("get_jobs_by_status", "get_dlq_jobs", "recover_stalled"):
        # A read (or a refused call, or a recover with nothing stalled) writes nothing.
        changes = dump_changes(before, after, skip=[_b(q.keys.marker)])
        assert not changes, f"{name}{show(op[1:])} changed {changes[:6]}"
    if err is not None:
        return
    if name in ("get_jobs_by_status", "get_dlq_jobs"):
        st_ = "dlq" if name == "get_dlq_jobs" else str(JobStatus(status).value)
        if cap is not None:
            assert len(out) <= cap, (
                f"{name}({show(op[1:])}) returned {len(out)} jobs, limit allows {cap}"
            )
        expected = set(seeded.get("waiting" if st_ == "paused" else st_, []))
        got = [i.id for i in out]
        assert len(set(got)) == len(got) and set(got) <= expected, (name, op, got, expected)
    elif name in ("bulk_retry", "replay_dlq"):
        source = "dlq" if name == "replay_dlq" else str(status)
        assert isinstance(out, int) and out >= 0, out
        if cap is not None:
            assert out <= cap, f"{name}{show(op[1:])} moved {out} jobs, limit allows {cap}"
        if source in ("failed", "dlq", "completed"):
            moved = [j for j in seeded.get(source, []) if view.state(j) == "waiting"]
            assert len(moved) == out, f"{name} says {out} moved, {len(moved)} are waiting again"
        else:
            assert out == 0, f"{name}({show(status)}) moved {out} jobs"
    elif name == "promote_delayed":
        assert out == 0, f"promote_delayed moved {out} jobs, none was due"
        assert all(view.state(j) == "delayed" for j in seeded["delayed"])
    else:
        assert out == ([], []), out


job_id_ops = st.sampled_from(
    ["get_job_status", "get_job_logs", "remove_job", "cancel_job", "retry_job"]
)
hostile_ids = st.one_of(
    ids(),
    st.sampled_from(
        ["*", "?", "[0-9]", "1*", "job:1", "../1", "1\x00", " 1", "1 ", "1\n", "{fzs}", "logs:1"]
    ),
)


@PRODUCER
@given(
    op=job_id_ops,
    jid=hostile_ids,
    start=st.one_of(st.just(0), limits),
    end=st.one_of(st.just(-1), limits),
)
@example(op="remove_job", jid="*", start=0, end=-1)
@example(op="cancel_job", jid="[0-9]", start=0, end=-1)
@example(op="get_job_status", jid="\ud800", start=0, end=-1)
@example(op="get_job_logs", jid="1", start=math.inf, end=-1)
@example(op="retry_job", jid="r-\udcff.csv", start=0, end=-1)
async def test_job_id_calls_fuzz(
    states: StatesBench, op: str, jid: Any, start: Any, end: Any
) -> None:
    """Calls naming a job act on that job alone: a hostile id (glob, control characters,
    surrogates, an id with extra bytes) names no other job, and every other job's keys
    and set memberships stay exactly as they were."""
    jid = unwrap(jid)
    seeded = await states.reset()
    all_ids = {j for ids_ in seeded.values() for j in ids_}
    before = await states.dump()
    q = states.q
    call: Awaitable[Any] = (
        q.get_job_logs(jid, start, end) if op == "get_job_logs" else getattr(q, op)(jid)
    )
    out, err = await guarded(op, call, (jid, start, end))
    after = await states.dump()
    # An int names the job of that number (the id is formatted into the key).
    as_id = str(jid) if isinstance(jid, (str, int)) and not isinstance(jid, bool) else None
    target = {as_id} if as_id in all_ids else set()
    problems = accepted_changes(before, after, q.keys, set(), exempt=target)
    assert not problems, f"{op}({show(jid)}) touched other jobs: {problems[:6]}"
    await assert_consistent(states.client, q.keys, f"after {op}({show(jid)})")
    if target or err is not None:
        return
    # No job of that id: nothing to act on.
    assert not dump_changes(before, after, skip=[_b(q.keys.events), _b(q.keys.marker)]), (
        f"{op}({show(jid)}) named no job but changed {dump_changes(before, after)[:6]}"
    )
    if op == "get_job_status":
        assert out is None, f"get_job_status({show(jid)}) returned job {show(out.id)}"
    elif op == "get_job_logs":
        assert out == [], f"get_job_logs({show(jid)}) returned lines {show(out)}"
    elif op == "remove_job":
        assert out is False, out


# ==================================================================== processors

N_GOOD = 5


class Gate:
    """Holds the first run of each job of a case until all of them have started (or
    2 s passed), so that their outcomes are flushed in the same finish batch."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.arrived = 0
        self.lock = threading.Lock()
        self.event = threading.Event()

    def arrive(self) -> None:
        with self.lock:
            self.arrived += 1
            if self.arrived >= self.expected:
                self.event.set()

    async def wait_async(self) -> None:
        self.arrive()
        deadline = time.monotonic() + 2.0
        while not self.event.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.002)

    def wait_sync(self) -> None:
        self.arrive()
        self.event.wait(2.0)


@dataclass(frozen=True)
class ExcSpec:
    """An exception to raise: its class, message, and optional cause and context."""

    cls: str
    message: Any
    cause: Any = None
    context: Any = None

    def build(self) -> BaseException:
        msg = unwrap(self.message)
        exc: BaseException
        if self.cls == "str-raises":
            exc = _StrRaises(msg)
        elif self.cls == "str-not-str":
            exc = _StrNotStr(msg)
        elif self.cls == "NonRetryableError":
            exc = NonRetryableError(msg)
        elif self.cls == "KeyError":
            exc = KeyError(msg)
        elif self.cls == "ValueError":
            exc = ValueError(msg)
        elif self.cls == "UnicodeDecodeError":
            exc = UnicodeDecodeError(
                "utf-8", b"\xff" + str(msg).encode("utf-8", "replace"), 0, 1, "invalid start byte"
            )
        elif self.cls.startswith("class:"):
            try:
                exc = type(self.cls[6:], (RuntimeError,), {})(msg)
            except (ValueError, TypeError, UnicodeError):
                exc = RuntimeError(msg)
        elif self.cls == "args":
            exc = RuntimeError(msg, b"\xff\xfe", 2**64, {"k": "\ud800"})
        else:
            exc = RuntimeError(msg)
        if self.cause is not None:
            exc.__cause__ = RuntimeError(unwrap(self.cause))
            exc.__suppress_context__ = True
        if self.context is not None:
            exc.__context__ = ValueError(unwrap(self.context))
        return exc


class _StrRaises(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ failed on purpose \ud800")


class _StrNotStr(Exception):
    def __str__(self) -> str:
        return 42  # type: ignore[return-value]


exc_specs = st.builds(
    ExcSpec,
    cls=st.sampled_from(
        [
            "RuntimeError",
            "NonRetryableError",
            "KeyError",
            "UnicodeDecodeError",
            "str-raises",
            "str-not-str",
            "args",
            "class:E\nforged",
            "class:E\x1b[31m",
            "class:E*?[",
            "class:E\ud800",
        ]
    ),
    message=st.one_of(nasty_text(), st.sampled_from([None, 0, b"\xff"])),
    cause=st.one_of(st.none(), nasty_text()),
    context=st.one_of(st.none(), nasty_text()),
)
ISSUE_EXC = ExcSpec(
    "ValueError", "upload failed", cause=f"cannot open {SURROGATES[3]}"
)  # issue 19 item 1, verbatim


class Behaviour:
    """What the bad job's processor does. ``kind``: 'async' or 'thread'."""

    kind = "async"
    max_runs = 1

    def options(self, bench: ProcessorBench, case: str) -> dict[str, Any]:
        return {}

    def act(self, job: Any, case: Case, bench: ProcessorBench) -> Any:
        raise NotImplementedError

    async def act_async(self, job: Any, case: Case, bench: ProcessorBench) -> Any:
        return self.act(job, case, bench)

    def allowed(self, bench: ProcessorBench) -> set[str]:
        """States the bad job may end in ('delayed' = delayed at least FAR_MS ahead)."""
        raise NotImplementedError

    async def verify(self, bench: ProcessorBench, jid: str, case: Case, state: str) -> None:
        return None


@dataclass(frozen=True)
class Returns(Behaviour):
    value: Any
    kind: str = "async"

    def act(self, job: Any, case: Case, bench: ProcessorBench) -> Any:
        return unwrap(self.value)

    def allowed(self, bench: ProcessorBench) -> set[str]:
        """Completed when JSON carries it unchanged (and it fits), dead-lettered when JSON
        cannot carry it at all or it is too large; either for values JSON would change
        (NaN, int keys): refusing them and storing them as null / "1" are both sound."""
        v = unwrap(self.value)
        if not encodable(v):
            return {"dlq"}
        if len(orjson.dumps(v, option=_ORJSON_OPTS)) > bench.q.max_payload_bytes:
            return {"dlq"}
        return {"completed"} if lossless(v) else {"completed", "dlq"}

    async def verify(self, bench: ProcessorBench, jid: str, case: Case, state: str) -> None:
        if state == "completed":
            info = await bench.q.get_job_status(jid)
            assert info is not None and info.result == normalized(unwrap(self.value)), (
                "the stored result differs from the returned value"
            )


@dataclass(frozen=True)
class Raises(Behaviour):
    exc: ExcSpec
    kind: str = "async"
    max_runs = 2  # attempts=2

    def options(self, bench: ProcessorBench, case: str) -> dict[str, Any]:
        return {"attempts": 2, "backoff": {"type": "fixed", "delay": 5}}

    def act(self, job: Any, case: Case, bench: ProcessorBench) -> Any:
        raise self.exc.build()

    def allowed(self, bench: ProcessorBench) -> set[str]:
        return {"dlq"}

    async def verify(self, bench: ProcessorBench, jid: str, case: Case, state: str) -> None:
        msg = unwrap(self.exc.message)
        reason = await bench.reason(jid)
        if (
            self.exc.cls in ("RuntimeError", "NonRetryableError")
            and isinstance(msg, str)
            and msg.isascii()
            and msg.isprintable()
            and 0 < len(msg) < 200
        ):
            assert msg in reason, f"the reason {show(reason)} lost the message {show(msg)}"


@dataclass(frozen=True)
class Defers(Behaviour):
    """Raise RetryLater / RateLimited on the first run only; complete afterwards."""

    cls: str
    delay: Any
    reason: Any = "later"
    scope: str = "auto"
    max_runs = 2

    def act(self, job: Any, case: Case, bench: ProcessorBench) -> Any:
        if case.bad_runs == 1:
            delay, reason = unwrap(self.delay), unwrap(self.reason)
            if self.cls == "RateLimited":
                raise RateLimited(delay, reason, scope=self.scope)
            raise RetryLater(delay, reason)
        return {"done": True}

    def allowed(self, bench: ProcessorBench) -> set[str]:
        return {"completed", "delayed"}


@dataclass(frozen=True)
class BadBackoff(Behaviour):
    """Always raise; a custom backoff returns ``value`` (or raises ``raises``)."""

    value: Any
    raises: ExcSpec | None = None
    max_delay: Any = None
    max_runs = 2

    def options(self, bench: ProcessorBench, case: str) -> dict[str, Any]:
        def strategy(attempts: int, error: BaseException, job: Any) -> Any:
            if self.raises is not None:
                raise self.raises.build()
            return unwrap(self.value)

        bench.q.register_backoff(f"bo-{case}", strategy)
        backoff: dict[str, Any] = {"type": "custom", "strategy": f"bo-{case}"}
        if self.max_delay is not None:
            backoff["max_delay"] = self.max_delay
        return {"attempts": 2, "backoff": backoff}

    def act(self, job: Any, case: Case, bench: ProcessorBench) -> Any:
        raise RuntimeError(f"job {job.id} fails every time")

    def allowed(self, bench: ProcessorBench) -> set[str]:
        return {"dlq", "delayed"}


@dataclass(frozen=True)
class LogsProgress(Behaviour):
    """Call ``job.log`` / ``job.update_progress`` with hostile values, then complete.
    Each call must return or raise a KitiumQueueError."""

    calls: tuple[tuple[str, Any], ...]
    kind: str = "async"

    async def act_async(self, job: Any, case: Case, bench: ProcessorBench) -> Any:
        for what, value in self.calls:
            fn = job.log if what == "log" else job.update_progress
            try:
                await fn(unwrap(value))
                case.errors.append(None)
            except Exception as exc:  # checked in verify()
                case.errors.append(exc)
        return {"done": True}

    def act(self, job: Any, case: Case, bench: ProcessorBench) -> Any:
        for what, value in self.calls:
            fn = job.log_sync if what == "log" else job.update_progress_sync
            try:
                fn(unwrap(value))
                case.errors.append(None)
            except Exception as exc:  # checked in verify()
                case.errors.append(exc)
        return {"done": True}

    def allowed(self, bench: ProcessorBench) -> set[str]:
        return {"completed"}

    async def verify(self, bench: ProcessorBench, jid: str, case: Case, state: str) -> None:
        bad = [e for e in case.errors if e is not None and not isinstance(e, KitiumQueueError)]
        assert not bad, (
            f"job.log / update_progress raised non-library errors: "
            f"{[f'{type(e).__name__}: {show(str(e))}' for e in bad][:3]}"
        )
        lines, err = await guarded("get_job_logs", bench.q.get_job_logs(jid), jid)
        assert err is None and all(isinstance(x, str) for x in lines), lines
        _, err = await guarded("get_job_status", bench.q.get_job_status(jid), jid)
        assert err is None


@dataclass
class Case:
    behaviour: Behaviour
    gate: Gate
    errors: list[BaseException | None] = field(default_factory=list)
    bad_runs: int = 0


class ProcessorBench:
    """One queue and one worker (12 slots, lease 4 s) for every example of a test. A
    finish batch that Redis keeps refusing shows as good jobs that never complete (the
    settle wait fails), or that run again once their leases expire."""

    def __init__(self, q: JobQueue, client: aioredis.Redis) -> None:
        self.q = q
        self.client = client
        self.runs: Counter[str] = Counter()
        self.cases: dict[str, Case] = {}
        self.seq = 0
        q.process("good", self._good)
        q.process("bad", self._bad)
        q.process("bad-sync", self._bad_sync)

    async def _good(self, job: Any) -> dict[str, Any]:
        self.runs[job.id] += 1
        if self.runs[job.id] == 1:
            await self.cases[job.data["case"]].gate.wait_async()
        return {"i": job.data["i"]}

    async def _bad(self, job: Any) -> Any:
        case = self.cases[job.data["case"]]
        self.runs[job.id] += 1
        case.bad_runs += 1
        if case.bad_runs == 1:
            await case.gate.wait_async()
        return await case.behaviour.act_async(job, case, self)

    def _bad_sync(self, job: Any) -> Any:
        case = self.cases[job.data["case"]]
        self.runs[job.id] += 1
        case.bad_runs += 1
        if case.bad_runs == 1:
            case.gate.wait_sync()
        return case.behaviour.act(job, case, self)

    async def reason(self, jid: str) -> str:
        raw = await self.client.hget(self.q.keys.job(jid), "e")
        assert raw, f"job {jid} ended without a reason"
        try:
            return raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        except UnicodeDecodeError as exc:
            raise AssertionError(f"the reason of job {jid} is not valid UTF-8: {raw!r}") from exc

    async def run_case(self, behaviour: Behaviour) -> None:
        q = self.q
        if q.worker is None:
            await q.start()
        self.seq += 1
        cid = f"c{self.seq}"
        case = Case(behaviour, Gate(N_GOOD + 1))
        self.cases[cid] = case
        try:
            bad_id, err = await guarded(
                "add_job (bad job)",
                q.add_job(
                    "bad-sync" if behaviour.kind == "thread" else "bad",
                    {"case": cid},
                    **behaviour.options(self, cid),
                ),
                behaviour,
            )
            if bad_id is None:
                note(f"the bad job was refused: {type(err).__name__}: {show(str(err))}")
                case.gate = Gate(N_GOOD)
            good = await q.add_jobs([("good", {"case": cid, "i": i}) for i in range(N_GOOD)])
            await self._settle(good, bad_id, behaviour)
            await self._check(good, bad_id, case)
        finally:
            holds = [k async for k in self.client.scan_iter(match=glob_escape(q.keys.hold()) + "*")]
            if holds:
                await self.client.unlink(*holds)

    async def _settle(self, good: list[str], bad_id: str | None, b: Behaviour) -> None:
        deadline = time.monotonic() + 10
        view = await state_view(self.client, self.q.keys)
        while time.monotonic() < deadline:
            view = await state_view(self.client, self.q.keys)
            due = await self.client.hget(self.q.keys.job(bad_id), "due") if bad_id else None
            bad_state = view.state(bad_id) if bad_id else "completed"
            bad_done = bad_state in FINAL or (
                bad_state == "delayed" and due is not None and float(due) - view.now_ms > FAR_MS
            )
            if bad_done and all(view.state(g) == "completed" for g in good):
                return
            await asyncio.sleep(0.01)
        states = Counter(view.state(g) for g in good)
        raise AssertionError(
            f"not settled within 10 s with a bad job doing {show(b, 300)}: good jobs "
            f"{dict(states)}, runs {[self.runs[g] for g in good]}; bad job "
            f"{view.state(bad_id) if bad_id else None} after "
            f"{self.runs[bad_id] if bad_id else 0} run(s)"
        )

    async def _check(self, good: list[str], bad_id: str | None, case: Case) -> None:
        b = case.behaviour
        view = await state_view(self.client, self.q.keys)
        assert not view.problems(), view.problems()[:8]
        reruns = {g: self.runs[g] for g in good if self.runs[g] != 1}
        assert not reruns, f"good jobs ran more than once next to {show(b, 300)}: {reruns}"
        for g, info in zip(
            good, await asyncio.gather(*map(self.q.get_job_status, good)), strict=True
        ):
            assert info is not None and info.status is JobStatus.COMPLETED
            assert info.result == {"i": good.index(g)}, (g, info.result)
        if bad_id is None:
            return
        state = view.state(bad_id)
        assert state is not None
        event(f"bad job: {state}")
        assert state in b.allowed(self), (
            f"the bad job ended {state}, expected one of {sorted(b.allowed(self))} "
            f"for {show(b, 300)}"
        )
        assert view.where.get(bad_id) == [{"waiting": "wait"}.get(state, state)], view.where
        assert case.bad_runs <= b.max_runs, (
            f"the bad job ran {case.bad_runs} times (at most {b.max_runs} allowed)"
        )
        if state in ("dlq", "failed"):
            await self.reason(bad_id)
        await b.verify(self, bad_id, case, state)


@pytest.fixture
async def bench(queues: QueueFactory, redis_client: aioredis.Redis) -> ProcessorBench:
    q = queues(
        "fzw",
        settings={
            "lock_duration": 4000,
            "lock_renew_time": 1000,
            "max_stalled_interval": 500,
            "max_stalled_count": 1,
        },
        worker={"concurrency": 12, "shutdown_timeout": 300, "scheduler": False},
        retry={"max_attempts": 2, "backoff_type": "fixed", "backoff_delay": 5},
        default_job_options={"remove_on_complete": False},
    )
    return ProcessorBench(q, redis_client)


async def _final_liveness(bench: ProcessorBench) -> None:
    """After every example the same worker still completes a plain job."""
    jid = await bench.q.add_job("good", {"case": "live", "i": 0})
    bench.cases["live"] = Case(Returns(None), Gate(1))
    view = await _wait_state(bench.client, bench.q.keys, jid, FINAL, 10)
    assert view.state(jid) == "completed", f"the worker no longer completes jobs: {view.state(jid)}"


@PROCESSOR
@given(exc=exc_specs, kind=st.sampled_from(["async", "thread"]))
@example(exc=ISSUE_EXC, kind="async")  # issue 19 item 1: surrogate in the cause
# ... and in the message itself
@example(exc=ExcSpec("RuntimeError", f"cannot open {SURROGATES[3]}"), kind="async")
@example(exc=ExcSpec("RuntimeError", "x", context="\ud800"), kind="thread")
@example(exc=ExcSpec("NonRetryableError", "\udcff"), kind="async")
@example(exc=ExcSpec("str-raises", "boom"), kind="async")
@example(exc=ExcSpec("RuntimeError", "a\nb\tc\x1b[31m\x00"), kind="thread")
async def test_processor_exceptions_fuzz(bench: ProcessorBench, exc: ExcSpec, kind: str) -> None:
    await bench.run_case(Raises(exc, kind))


@pytest.mark.timeout(180)
@PROCESSOR
@given(value=data_values(), kind=st.sampled_from(["async", "thread"]))
@example(value=UNENCODABLE[6], kind="async")  # a surrogate string as the result
@example(value=UNENCODABLE[3], kind="async")  # 2**64
@example(value=BIG_VALUES[2], kind="async")  # 2,000 levels deep
@example(value=BIG_VALUES[6], kind="thread")  # above max_payload_bytes
@example(value=Big("NaN", math.nan), kind="async")
async def test_processor_results_fuzz(bench: ProcessorBench, value: Any, kind: str) -> None:
    await bench.run_case(Returns(value, kind))


delays = st.one_of(durations(), st.sampled_from([None, "abc", "10"]))


@PROCESSOR
@given(
    cls=st.sampled_from(["RetryLater", "RateLimited"]),
    delay=delays,
    reason=st.one_of(st.just("later"), nasty_text()),
    scope=st.sampled_from(["auto", "queue", "job"]),
)
@example(cls="RateLimited", delay=sys.maxsize, reason="later", scope="auto")  # item 3
@example(cls="RetryLater", delay=sys.maxsize, reason="later", scope="auto")  # item 3
@example(cls="RateLimited", delay=1e17, reason="later", scope="queue")  # item 3
@example(cls="RetryLater", delay=2**64, reason="later", scope="auto")
@example(cls="RetryLater", delay=math.inf, reason="later", scope="auto")
@example(cls="RetryLater", delay=math.nan, reason="later", scope="auto")
@example(cls="RetryLater", delay=10, reason="\ud800", scope="auto")  # surrogate reason
@example(cls="RateLimited", delay=10, reason="a\nb\x1b[0m", scope="job")
async def test_processor_retry_later_fuzz(
    bench: ProcessorBench, cls: str, delay: Any, reason: Any, scope: str
) -> None:
    await bench.run_case(Defers(cls, delay, reason, scope))
    await _final_liveness(bench)


@PROCESSOR
@given(
    value=st.one_of(durations(), wrong_types()),
    raises=st.one_of(st.none(), exc_specs),
    max_delay=st.sampled_from([None, 1000, 10**30]),
)
@example(value=10**30, raises=None, max_delay=10**30)  # huge backoff
@example(value=sys.maxsize, raises=None, max_delay=10**30)
@example(value=math.inf, raises=None, max_delay=None)
@example(value=math.nan, raises=None, max_delay=None)
@example(value=-1, raises=None, max_delay=None)
@example(value="abc", raises=None, max_delay=None)
@example(value=None, raises=ExcSpec("RuntimeError", "\ud800"), max_delay=None)
async def test_processor_backoff_fuzz(
    bench: ProcessorBench, value: Any, raises: ExcSpec | None, max_delay: Any
) -> None:
    await bench.run_case(BadBackoff(value, raises, max_delay))


log_calls = st.lists(
    st.one_of(
        st.tuples(st.just("log"), st.one_of(nasty_text(), st.sampled_from([None, 0, b"\xff"]))),
        st.tuples(st.just("progress"), data_values()),
    ),
    min_size=1,
    max_size=4,
).map(tuple)


@PROCESSOR
@given(calls=log_calls, kind=st.sampled_from(["async", "thread"]))
@example(calls=(("log", SURROGATES[3]),), kind="async")
@example(calls=(("log", "a\nb\x1b[2J\x00"), ("log", Big("100k x", "x" * 100_000))), kind="thread")
@example(calls=(("progress", "\ud800"),), kind="async")
@example(calls=(("progress", BIG_VALUES[3]),), kind="async")  # 2,000 levels deep
@example(calls=(("progress", UNENCODABLE[0]),), kind="thread")  # a set
@example(calls=(("progress", math.inf),), kind="async")
async def test_processor_log_and_progress_fuzz(
    bench: ProcessorBench, calls: tuple[tuple[str, Any], ...], kind: str
) -> None:
    await bench.run_case(LogsProgress(calls, kind))


@pytest.fixture
async def hang_queue(queues: QueueFactory) -> JobQueue:
    q = queues(
        "fzt",
        worker={"concurrency": 2, "shutdown_timeout": 300, "scheduler": False},
        settings={"lock_duration": 1000, "lock_renew_time": 300},
    )

    async def hang(job: Any) -> None:
        await asyncio.Event().wait()

    q.process("hang", hang)
    await q.start()
    return q


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=_HEALTH,
    phases=(Phase.explicit, Phase.generate),
    report_multiple_bugs=False,
)
@given(
    timeout=st.sampled_from(
        [
            0.4,
            0.49,
            0.5,
            0.6,
            1,
            1.4,
            2,
            1e-9,
            5e-324,
            25,
            timedelta(microseconds=400),
            timedelta(microseconds=1),
        ]
    )
)
@example(timeout=0.4)  # issue 19 root cause (d): must not round to "no limit"
async def test_small_timeouts_never_mean_no_limit(
    hang_queue: JobQueue, redis_client: aioredis.Redis, timeout: Any
) -> None:
    """A positive ``timeout`` below 1 ms is refused or enforced; it is never read as
    0 = no limit."""
    q = hang_queue
    jid, _ = await guarded(
        "add_job(timeout=...)", q.add_job("hang", {}, timeout=timeout, attempts=1), timeout
    )
    if jid is None:
        return
    try:
        view = await _wait_state(redis_client, q.keys, jid, FINAL, 5)
        assert view.state(jid) == "dlq", (
            f"a job with timeout={show(timeout)} still runs after 5 s (state "
            f"{view.state(jid)}): the timeout was read as 'no limit'"
        )
    finally:
        with contextlib.suppress(KitiumQueueError):
            await q.cancel_job(jid)
