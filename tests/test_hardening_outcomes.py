"""One job's outcome never costs another job its own (issue 19: items 1 and 3, root
causes (b) and (c)).

* Text a worker records for a job (error reasons, tracebacks with their causes, retry and
  defer reasons, log lines) is encoded by ``limits.wire_text`` when the outcome is built:
  lone surrogates, control characters, huge texts and exceptions whose ``__str__`` fails
  end that job with a readable reason and never break the batch.
* Delays (``RateLimited``, ``RetryLater``, backoff strategies) are clamped to
  ``MAX_DELAY_MS`` in Python, and ``finish.lua`` / ``extend.lua`` check and clamp their
  arguments before their first write.
* A finish call Redis refuses is split: each outcome is sent alone; an outcome refused
  alone becomes a recorded final failure of its job; a refusal of the whole server keeps
  the outcomes for later.

Every test reads the state back from Redis (sets, job hashes, the event stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections import Counter
from importlib import resources
from typing import Any

import pytest

from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import JobQueue, JobStatus, RateLimited, RetryLater, ScriptArgumentError
from kitium_queue.limits import MAX_DELAY_MS as MAX_DELAY
from kitium_queue.limits import (
    MAX_ERROR_CHARS,
    MAX_TRACEBACK_CHARS,
    clamp_delay_ms,
    safe_text,
    wire_text,
)

# A file name as os.listdir returns it for a name that is not UTF-8.
NAME = b"r-\xff.csv".decode("utf-8", "surrogateescape")
# ... and as it reads once recorded.
ESCAPED = "r-\\udcff.csv"
SETS = ("wait", "active", "delayed", "completed", "failed", "dlq")
T0 = 1_700_000_000_000


# ================================================================ helpers


async def _sets_of(q: JobQueue, job_id: str) -> list[str]:
    """The queue sets holding ``job_id``."""
    client = await q.client()
    return [s for s in SETS if await client.zscore(getattr(q.keys, s), job_id) is not None]


async def _stream(q: JobQueue, job_id: str) -> list[dict[str, str]]:
    client = await q.client()
    out = []
    for _, raw in await client.xrange(q.keys.events):
        entry = {k.decode(): v.decode("utf-8", "replace") for k, v in raw.items()}
        if entry.get("id") == job_id:
            out.append(entry)
    return out


async def _redis_ms(q: JobQueue) -> int:
    secs, micros = await (await q.client()).time()
    return int(secs) * 1000 + int(micros) // 1000


async def _all_done(q: JobQueue, ids: list[str], status: JobStatus) -> bool:
    for jid in ids:
        info = await q.get_job_status(jid)
        if info is None or info.status is not status:
            return False
    return True


def _finish_source() -> str:
    return resources.files("kitium_queue").joinpath("lua/finish.lua").read_text("utf-8")


def _inject(queue: JobQueue, hook: str) -> None:
    """Run the Lua ``hook`` in ``finish`` after its argument checks, before its first
    write, in a loop over the call's outcomes (``id``, ``kind``, ``payload`` in scope):
    a way to make Redis refuse calls that carry a given outcome."""
    source = _finish_source()
    anchor = "\nlocal res = {}\n"
    assert source.count(anchor) == 1
    loop = (
        "\nfor hb = 5, #ARGV, 9 do\n"
        "  local id, kind, payload = ARGV[hb], ARGV[hb + 2], ARGV[hb + 3]\n"
        f"  {hook}\n"
        "end\n"
    )
    queue.scripts.add_fragment("finish", source.replace(anchor, loop + anchor))


class _Gate:
    """Jobs call ``await gate.arrive()``; all return once ``n`` have arrived, so their
    outcomes are built in the same loop turn and share one finish call."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.arrived = 0
        self.open = asyncio.Event()

    async def arrive(self) -> None:
        self.arrived += 1
        if self.arrived >= self.n:
            self.open.set()
        # Bounded: if not all jobs start, they go on alone (the state asserts still hold).
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.open.wait(), 5)


# ================================================================ limits helpers


def test_wire_text_never_raises_and_keeps_text_readable() -> None:
    assert wire_text(f"cannot open {NAME}", 100) == f"cannot open {ESCAPED}".encode()
    assert wire_text("tab\tnew\nline\x00nul", 100) == b"tab\tnew\nline\x00nul"
    huge = wire_text("x" * 1_000_000 + NAME, MAX_ERROR_CHARS)
    assert len(huge) <= MAX_ERROR_CHARS and b"truncated" in huge
    # Lone high surrogates, pairs of surrogates and non-BMP text.
    assert wire_text("\ud800\udc00 \U0001f600", 10) == b"\\ud800\\udc00 \xf0\x9f\x98\x80"


def test_safe_text_of_exceptions_whose_str_fails() -> None:
    class Raises(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no text")

    class NotStr(Exception):
        def __str__(self) -> Any:
            return 42

    assert safe_text(Raises()) == "<unprintable Raises>"
    assert safe_text(NotStr()) == "<unprintable NotStr>"
    assert wire_text(Raises(), 50) == b"<unprintable Raises>"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (250, 250),
        (-5, 0),
        (0.9, 0),
        (1.9, 1),
        (float("nan"), 0),
        (float("-inf"), 0),
        (float("inf"), MAX_DELAY),
        (1e300, MAX_DELAY),
        (2**70, MAX_DELAY),
        (sys.maxsize, MAX_DELAY),
        (MAX_DELAY + 1, MAX_DELAY),
        (True, 1),
    ],
)
def test_clamp_delay_ms(value: Any, expected: int) -> None:
    assert clamp_delay_ms(value) == expected
    assert RetryLater(value).delay_ms == expected
    assert RateLimited(value).delay_ms == expected


def test_clamp_delay_ms_refuses_what_is_not_a_number() -> None:
    for bad in (None, "soon", [1]):
        with pytest.raises((TypeError, ValueError)):
            clamp_delay_ms(bad)
    assert MAX_DELAY == 315_360_000_000 and float(MAX_DELAY) == MAX_DELAY


# ================================================================ item 1: unencodable text


async def test_surrogate_in_a_cause_fails_only_its_job(make_queue: QueueFactory) -> None:
    """The issue's reproduction, with three workers: the bad job ends in the DLQ with a
    readable reason and traceback; every good job of the same batches completes once."""
    runs: Counter[str] = Counter()
    gate = _Gate(13)

    async def bad(job: Any) -> None:
        runs[job.id] += 1
        await gate.arrive()
        n = NAME
        try:
            raise RuntimeError(f"cannot open {n}")
        except RuntimeError as e:
            raise ValueError("upload failed") from e

    async def good(job: Any) -> Any:
        runs[job.id] += 1
        await gate.arrive()
        return job.data

    queues = [make_queue("uploads", worker={"concurrency": 5}) for _ in range(3)]
    for q in queues:
        q.process("bad", bad)
        q.process("good", good)
    q = queues[0]
    good_ids = [await q.add_job("good", i) for i in range(6)]
    bad_id = await q.add_job("bad", attempts=2, backoff={"type": "fixed", "delay": 10})
    good_ids += [await q.add_job("good", i) for i in range(6, 12)]
    for w in queues:
        await w.start()

    info = await wait_for_status(q, bad_id, JobStatus.DLQ, timeout=10)
    await wait_until(lambda: _all_done(q, good_ids, JobStatus.COMPLETED), 10)

    assert info.failed_reason == "ValueError: upload failed"
    assert info.stacktrace is not None
    assert f"RuntimeError: cannot open {ESCAPED}" in info.stacktrace
    assert "ValueError: upload failed" in info.stacktrace
    assert info.attempts == 2 and runs[bad_id] == 2
    retried = [e for e in await _stream(q, bad_id) if e["e"] == "job-retrying"]
    assert [e["reason"] for e in retried] == ["ValueError: upload failed"]
    assert await _sets_of(q, bad_id) == ["dlq"]
    for i, jid in enumerate(good_ids):
        done = await q.get_job_status(jid)
        assert done is not None and done.result == i
        assert runs[jid] == 1, (jid, runs[jid])
        assert await _sets_of(q, jid) == ["completed"]


class _Raises(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


class _NotStr(Exception):
    def __str__(self) -> Any:
        return 42


async def test_unencodable_and_unprintable_texts_fail_only_their_job(
    make_queue: QueueFactory,
) -> None:
    """A surrogate in the message itself, in a log line and in a defer reason; exceptions
    whose __str__ raises or returns a non-string; a huge message with control characters;
    an exception type with a tab in its name; a RetryLater whose delay was replaced
    by a non-number. Each ends its own job readably; good jobs of the batch complete."""
    q = make_queue("texts", worker={"concurrency": 16})
    runs: Counter[str] = Counter()
    gate = _Gate(14)
    weird_type = type("Err\tTab", (Exception,), {})  # no surrogates allowed in a type name

    @q.process("*")
    async def run(job: Any) -> Any:
        runs[job.id] += 1
        await gate.arrive()
        kind = job.name
        if kind == "message":
            await job.log(f"reading {NAME}")
            raise RuntimeError(f"cannot open {NAME}")
        if kind == "defer" and runs[job.id] == 1:
            raise RetryLater(10, f"busy {NAME}")
        if kind == "raises":
            raise _Raises()
        if kind == "notstr":
            raise _NotStr()
        if kind == "huge":
            raise RuntimeError("line1\nline2\tcol\x1b[31m" + "x" * 2_000_000 + NAME)
        if kind == "typename":
            raise weird_type("boom")
        if kind == "mutated":
            signal = RetryLater(10)
            signal.delay_ms = "soon"  # type: ignore[assignment]
            raise signal
        return job.data

    bad = {
        name: await q.add_job(name, attempts=1, timeout=2000)
        for name in ("message", "raises", "notstr", "huge", "typename", "mutated")
    }
    deferred = await q.add_job("defer")
    good = [await q.add_job("good", i) for i in range(7)]
    await q.start()

    for jid in bad.values():
        await wait_for_status(q, jid, JobStatus.DLQ, timeout=10)
    await wait_until(lambda: _all_done(q, [*good, deferred], JobStatus.COMPLETED), 10)

    async def reason(name: str) -> str:
        info = await q.get_job_status(bad[name])
        assert info is not None and info.failed_reason is not None
        assert await _sets_of(q, bad[name]) == ["dlq"]
        return info.failed_reason

    assert await reason("message") == f"RuntimeError: cannot open {ESCAPED}"
    assert await q.get_job_logs(bad["message"]) == [f"reading {ESCAPED}"]
    assert await reason("raises") == "_Raises: <unprintable _Raises>"
    assert await reason("notstr") == "_NotStr: <unprintable _NotStr>"
    huge = await reason("huge")
    assert huge.startswith("RuntimeError: line1\nline2\tcol\x1b[31mxxx")
    assert len(huge) <= MAX_ERROR_CHARS and "truncated" in huge
    huge_info = await q.get_job_status(bad["huge"])
    assert huge_info is not None and huge_info.stacktrace is not None
    assert len(huge_info.stacktrace) <= MAX_TRACEBACK_CHARS
    assert await reason("typename") == "Err\tTab: boom"
    assert "invalid delay_ms" in await reason("mutated")

    delayed = [e for e in await _stream(q, deferred) if e["e"] == "job-delayed"]
    assert [e["reason"] for e in delayed] == [f"busy {ESCAPED}"]
    for jid in good:
        assert runs[jid] == 1 and await _sets_of(q, jid) == ["completed"]
    assert all(runs[jid] == 1 for jid in bad.values())
    assert runs[deferred] == 2


# ================================================================ item 3: huge delays


async def test_huge_delays_are_clamped_per_job(make_queue: QueueFactory) -> None:
    """RateLimited(sys.maxsize), RetryLater(1e300), an exponential backoff of ten years
    plus jitter, and a backoff strategy returning inf, alongside nine good jobs in the same
    batch: the good jobs complete once, each odd job is deferred by exactly MAX_DELAY_MS
    and sits in exactly one set."""
    # Queue default: exponential backoff from ten years on, uncapped, so a retry's delay
    # (plus jitter) goes past MAX_DELAY_MS and only the worker's clamp bounds it.
    q = make_queue(
        "delays",
        worker={"concurrency": 16},
        retry={"backoff_delay": MAX_DELAY, "max_backoff_delay": None},
    )
    q.register_backoff("inf", lambda attempts, err, job: float("inf"))
    runs: Counter[str] = Counter()
    gate = _Gate(13)

    @q.process("*")
    async def run(job: Any) -> Any:
        runs[job.id] += 1
        await gate.arrive()
        if job.name == "limited":
            raise RateLimited(sys.maxsize)
        if job.name == "later":
            raise RetryLater(1e300)
        if job.name in ("expo", "inf"):
            raise ValueError("flaky")
        return job.data

    before = await _redis_ms(q)
    good = [await q.add_job("good", i) for i in range(5)]
    limited = await q.add_job("limited")
    later = await q.add_job("later")
    expo = await q.add_job("expo", attempts=2, jitter=5000)
    inf = await q.add_job(
        "inf", attempts=2, backoff={"type": "custom", "strategy": "inf", "max_delay": MAX_DELAY}
    )
    good += [await q.add_job("good", i) for i in range(5, 9)]
    await q.start()

    await wait_until(lambda: _all_done(q, good, JobStatus.COMPLETED), 10)
    odd = {limited: "job-delayed", later: "job-delayed", expo: "job-retrying", inf: "job-retrying"}
    for jid in odd:
        await wait_for_status(q, jid, JobStatus.DELAYED, timeout=10)
    after = await _redis_ms(q)

    for i, jid in enumerate(good):
        info = await q.get_job_status(jid)
        assert info is not None and info.result == i and runs[jid] == 1
        assert await _sets_of(q, jid) == ["completed"]
    for jid, event in odd.items():
        info = await q.get_job_status(jid)
        assert info is not None and info.delayed_until is not None
        assert before + MAX_DELAY <= info.delayed_until <= after + MAX_DELAY
        delays = [e["delay"] for e in await _stream(q, jid) if e["e"] == event]
        assert delays == [str(MAX_DELAY)], (jid, delays)
        assert await _sets_of(q, jid) == ["delayed"]
        assert runs[jid] == 1
    # RateLimited holds the queue, for at most the clamped delay.
    pttl = await (await q.client()).pttl(q.keys.hold())
    assert MAX_DELAY - (after - before) - 60_000 <= pttl <= MAX_DELAY


# ================================================================ root cause (b): scripts


class _Script:
    """Runs the queue's scripts directly with an explicit clock."""

    def __init__(self, queue: JobQueue, client: Any) -> None:
        self.queue = queue
        self.client = client

    async def __call__(self, name: str, now: int, *args: Any) -> Any:
        argv = [self.queue.keys.base, str(now), "10000", *args]
        return await self.queue.scripts.call(self.client, name, self.queue.keys.all, argv)

    async def claim(self, now: int, n: int) -> tuple[list[str], str]:
        reply = await self("claim", now, n, 60_000, 0, 0, 2, "1", "w1", 1000)
        token = reply[2]
        return [e[0].decode() for e in reply[5:]], (
            token.decode() if isinstance(token, bytes) else str(token)
        )

    async def snapshot(self) -> dict[str, Any]:
        """Every key of the queue with its type and content."""
        c = self.client
        out: dict[str, Any] = {}
        async for key in c.scan_iter(match=self.queue.keys.base + "*"):
            kind = (await c.type(key)).decode()
            if kind == "hash":
                value: Any = await c.hgetall(key)
            elif kind == "zset":
                value = await c.zrange(key, 0, -1, withscores=True)
            elif kind == "stream":
                value = [e[0] for e in await c.xrange(key)]
            elif kind == "list":
                value = await c.lrange(key, 0, -1)
            else:
                value = await c.get(key)
            out[key.decode()] = (kind, value)
        return out


@pytest.fixture
async def script(make_queue: QueueFactory) -> Any:
    q = make_queue("scripts")
    return _Script(q, await q.client())


def _outcome(
    jid: str,
    token: str,
    kind: str = "C",
    delay: Any = 0,
    keep: Any = -1,
    age: Any = -1,
    meta: str = "",
    payload: str = "1",
) -> list[Any]:
    return [jid, token, kind, payload, "", delay, keep, age, meta]


async def test_finish_refuses_a_malformed_outcome_before_any_write(script: _Script) -> None:
    q = script.queue
    ids = [await q.add_job("a", i) for i in range(3)]
    claimed, token = await script.claim(T0, 3)
    assert sorted(claimed) == sorted(ids)
    before = await script.snapshot()
    good = _outcome(ids[0], token)
    last = _outcome(ids[2], token, "R", 10)
    malformed = [
        _outcome(ids[1], token, "X"),  # unknown kind
        _outcome(ids[1], token, "R", "soon"),  # delay not a number
        _outcome(ids[1], token, "R", "nan"),
        _outcome(ids[1], token, "C", 0, "many"),  # keep count not a number
        _outcome(ids[1], token, "C", 0, -1, "nan"),  # keep age
        _outcome(ids[1], token)[:8],  # a field missing
    ]
    for bad in malformed:
        with pytest.raises(ScriptArgumentError, match=r"^finish: .*nothing was written"):
            await script("finish", T0 + 1, "1", *good, *bad, *last)
        # Not even the outcome before the malformed one was written.
        assert await script.snapshot() == before, bad

    # The same outcomes, well formed, are recorded.
    statuses = await script("finish", T0 + 1, "1", *good, *_outcome(ids[1], token), *last)
    assert statuses == [b"ok", b"ok", b"ok"]


async def test_finish_clamps_numbers_so_no_command_is_refused(script: _Script) -> None:
    q = script.queue
    ids = [await q.add_job("a", i) for i in range(4)]
    _, token = await script.claim(T0, 4)
    now = T0 + 1
    statuses = await script(
        "finish",
        now,
        "1",
        *_outcome(ids[0], token, "D", "1e300", meta="hold"),  # a float SET PX would refuse
        *_outcome(ids[1], token, "R", "inf"),
        *_outcome(ids[2], token, "C", 0, "1e400", "-7"),
        *_outcome(ids[3], token, "D", "-5"),
    )
    assert statuses == [b"ok"] * 4
    c = script.client
    for jid in ids[:2]:
        assert await c.zscore(q.keys.delayed, jid) == now + MAX_DELAY
        assert await c.hget(q.keys.job(jid), "due") == str(now + MAX_DELAY).encode()
    assert 0 < await c.pttl(q.keys.hold()) <= MAX_DELAY
    assert await c.zscore(q.keys.completed, ids[2]) is not None
    assert await c.zscore(q.keys.wait, ids[3]) is not None
    assert await c.zcard(q.keys.active) == 0
    events = await _stream(q, ids[1])
    assert [e["delay"] for e in events if e["e"] == "job-retrying"] == [str(MAX_DELAY)]


async def test_finish_reports_a_damaged_record_and_records_the_others(
    script: _Script,
) -> None:
    q = script.queue
    ids = [await q.add_job("a", i) for i in range(3)]
    _, token = await script.claim(T0, 3)
    c = script.client
    await c.delete(q.keys.job(ids[1]))
    await c.set(q.keys.job(ids[1]), "not a hash")
    args = [field for jid in ids for field in _outcome(jid, token)]
    statuses = await script("finish", T0 + 1, "1", *args)
    assert statuses == [b"ok", b"damaged", b"ok"]
    for jid in (ids[0], ids[2]):
        assert await c.zscore(q.keys.completed, jid) is not None
    assert await c.get(q.keys.job(ids[1])) == b"not a hash"


async def test_extend_checks_its_arguments_before_any_write(script: _Script) -> None:
    q = script.queue
    ids = [await q.add_job("a", i) for i in range(2)]
    _, token = await script.claim(T0, 2)
    before = await script.snapshot()
    for duration, pairs in (
        ("nan", [ids[0], token]),
        ("-1", [ids[0], token]),
        ("soon", [ids[0], token]),
        ("1000", [ids[0], token, ids[1]]),
    ):
        with pytest.raises(ScriptArgumentError, match=r"^extend: "):
            await script("extend", T0 + 1, duration, *pairs)
        assert await script.snapshot() == before
    # A huge duration is clamped: the deadline stays an exact integer.
    lost, cancelled, _gone = await script("extend", T0 + 1, "1e300", ids[0], token, ids[1], token)
    assert lost == [] and cancelled == []
    assert await script.client.zscore(q.keys.active, ids[0]) == T0 + 1 + MAX_DELAY


# ================================================================ root cause (c): split


def _messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


async def test_a_refused_outcome_is_sent_alone_then_recorded_as_a_failure(
    make_queue: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis refuses every call carrying one job's outcome: the others of its call are
    recorded once each (sent alone), and that job ends with a recorded final failure
    saying why, instead of being re-run."""
    caplog.set_level(logging.WARNING, logger="kitium_queue.worker")
    q = make_queue("split", worker={"concurrency": 10})
    _inject(
        q,
        "if kind == 'C' and string.find(payload, 'POISON', 1, true) then "
        "error('injected failure') end",
    )
    runs: Counter[str] = Counter()
    gate = _Gate(10)

    @q.process("job")
    async def job(j: Any) -> Any:
        runs[j.id] += 1
        await gate.arrive()
        return "POISON" if j.data == "poison" else j.data

    good = [await q.add_job("job", f"ok-{i}") for i in range(4)]
    bad = await q.add_job("job", "poison", attempts=3)
    good += [await q.add_job("job", f"ok-{i}") for i in range(4, 9)]
    await q.start()

    info = await wait_for_status(q, bad, JobStatus.DLQ, timeout=10)
    await wait_until(lambda: _all_done(q, good, JobStatus.COMPLETED), 10)

    assert info.failed_reason is not None
    assert info.failed_reason.startswith("outcome could not be recorded (kind C): ")
    assert "injected failure" in info.failed_reason
    assert "POISON" not in info.failed_reason  # the outcome's content is not repeated
    assert runs[bad] == 1 and info.attempts == 1
    assert await _sets_of(q, bad) == ["dlq"]
    for i, jid in enumerate(good):
        done = await q.get_job_status(jid)
        assert done is not None and done.result == f"ok-{i}"
        assert runs[jid] == 1 and await _sets_of(q, jid) == ["completed"]
    split = _messages(caplog, "sending each alone")
    assert split, "the shared finish call was never split"
    assert len(_messages(caplog, "recording a final failure instead")) == 1
    assert q.worker._held() == 0


async def test_an_outcome_refused_even_as_a_failure_is_left_to_recovery(
    make_queue: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """If Redis refuses the job's final failure too, the worker logs it once and lets go:
    no endless retries, the others are recorded, the job stays leased for recovery."""
    caplog.set_level(logging.WARNING, logger="kitium_queue.worker")
    q = make_queue("split2", worker={"concurrency": 6})
    runs: Counter[str] = Counter()
    gate = _Gate(6)

    @q.process("job")
    async def job(j: Any) -> Any:
        runs[j.id] += 1
        await gate.arrive()
        return j.data

    ids = [await q.add_job("job", i) for i in range(6)]
    bad = ids[2]
    _inject(q, f"if id == '{bad}' then error('injected failure') end")
    await q.start()

    await wait_until(lambda: _all_done(q, ids[:2] + ids[3:], JobStatus.COMPLETED), 10)
    await wait_until(lambda: _messages(caplog, "refused even the final failure"), 10)
    assert q.worker._held() == 0
    assert len(_messages(caplog, "refused even the final failure")) == 1
    assert len(_messages(caplog, "recording a final failure instead")) == 1
    info = await q.get_job_status(bad)
    assert info is not None and info.status is JobStatus.ACTIVE
    assert await _sets_of(q, bad) == ["active"]
    assert all(runs[jid] == 1 for jid in ids)
    for jid in ids[:2] + ids[3:]:
        assert await _sets_of(q, jid) == ["completed"]


async def test_a_refusal_of_the_whole_server_keeps_the_outcomes(
    make_queue: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Out of memory is about the server, not the call: the outcomes are not split nor
    turned into failures, but kept and recorded as they were once Redis accepts them."""
    caplog.set_level(logging.WARNING, logger="kitium_queue")
    q = make_queue("oom", worker={"concurrency": 5})
    _inject(
        q,
        "if redis.call('INCR', PREFIX .. 'test-oom') <= 2 then return "
        "redis.error_reply('OOM command not allowed when used memory > maxmemory') end",
    )
    runs: Counter[str] = Counter()
    gate = _Gate(5)

    @q.process("job")
    async def job(j: Any) -> Any:
        runs[j.id] += 1
        await gate.arrive()
        return j.data

    ids = [await q.add_job("job", i) for i in range(5)]
    await q.start()
    await wait_until(lambda: _all_done(q, ids, JobStatus.COMPLETED), 10)
    for i, jid in enumerate(ids):
        info = await q.get_job_status(jid)
        assert info is not None and info.result == i and runs[jid] == 1
        assert await _sets_of(q, jid) == ["completed"]
    # Reported once as the server's refusal (serverinfo.WriteRefusals), not per call.
    assert len(_messages(caplog, "Workers hold their outcomes and retry")) == 1
    assert not _messages(caplog, "sending each alone")
    assert not _messages(caplog, "recording a final failure instead")
