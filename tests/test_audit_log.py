"""The tamper-evident audit log (issue 17, item 3): appends ordered and race-free across
processes, queries, and verification that names the first entry edited, removed or
inserted; retention that verification accepts; key rotation."""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kitium_queue.errors import ConfigurationError, ConnectionUnavailableError, KitiumQueueError
from kitium_queue.features.audit import AuditHead, AuditLog
from kitium_queue.features.audit.chain import MAX_META_BYTES
from kitium_queue.features.audit.read import parse_time

KEY = secrets.token_hex(32)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
async def log(backend_url: str, prefix: str) -> AsyncIterator[AuditLog]:
    audit = AuditLog(backend_url, key=KEY, prefix=prefix)
    yield audit
    await audit.close()


async def _fill(log: AuditLog, n: int) -> list[str]:
    return [await log.append(f"user{i % 3}", f"act.{i}", f"res-{i}", "ok", {"i": i})
            for i in range(n)]  # fmt: skip


async def _raw(log: AuditLog) -> list[tuple[bytes, dict[bytes, bytes]]]:
    client = await log.deployment.client()
    return list(await client.xrange(log.stream))


async def _rewrite(log: AuditLog, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
    """What an attacker with write access can do to a stream: replace it whole."""
    client = await log.deployment.client()
    await client.delete(log.stream)
    for entry_id, fields in entries:
        await client.xadd(log.stream, fields, id=entry_id)


# ------------------------------------------------------------------ writing and reading
async def test_appends_chain_in_order_and_verify(log: AuditLog) -> None:
    ids = await _fill(log, 5)
    log.record("svc", "queue.pause", "orders", "ok", {"args": {}})
    await log.flush()
    raw = await _raw(log)
    assert [r[0].decode() for r in raw[:5]] == ids
    assert [int(f[b"n"]) for _, f in raw] == [1, 2, 3, 4, 5, 6]
    assert raw[0][1][b"prev"] == b""
    for (_, a), (_, b) in itertools.pairwise(raw):
        assert b[b"prev"] == a[b"mac"]
    report = await log.verify()
    assert report.ok and report.entries == 6 and report.start == "genesis"
    assert report.head is not None and report.head.n == 6


async def test_concurrent_appends_in_one_process_stay_one_chain(log: AuditLog) -> None:
    ids = await asyncio.gather(*(log.append("u", "a", f"r{i}") for i in range(300)))
    assert len(set(ids)) == 300
    report = await log.verify()
    assert report.ok and report.entries == 300


async def test_query_filters(log: AuditLog) -> None:
    await log.append("alice", "queue.pause", "acme-orders")
    await log.append("bob", "queue.retry_job", "acme-billing", "ok", {"args": {"job_id": "7"}})
    await log.append("alice", "access.denied", "globex-orders", "denied")
    first = (await log.query(newest_first=False))[0].at_ms
    assert [e.action for e in await log.query(principal="alice")] == [
        "access.denied", "queue.pause"
    ]  # fmt: skip
    assert [e.principal for e in await log.query(action="queue.*", newest_first=False)] == [
        "alice", "bob"
    ]  # fmt: skip
    assert [e.resource for e in await log.query(resource="acme-*")] == [
        "acme-billing", "acme-orders"
    ]  # fmt: skip
    assert [e.outcome for e in await log.query(outcome="denied")] == ["denied"]
    assert len(await log.query(limit=1)) == 1
    assert len(await log.query(since=first, until=first + 10**9)) == 3
    assert await log.query(until=first - 1) == []
    [bob] = await log.query(principal="bob")
    assert bob.metadata == {"args": {"job_id": "7"}} and bob.authentic is True
    with pytest.raises(ConfigurationError):
        await log.query(limit=0)
    with pytest.raises(ConfigurationError):
        await log.query(action="")


async def test_query_pages_follow_the_cursor_in_either_order(log: AuditLog) -> None:
    ids = await _fill(log, 7)  # principals user0, user1, user2, user0, ...
    for newest_first, order in ((True, ids[::-1]), (False, ids)):
        seen: list[str] = []
        page = await log.query_page(limit=3, newest_first=newest_first)
        while True:
            seen += [e.id for e in page.entries]
            if page.next_cursor is None:
                break
            page = await log.query_page(limit=3, newest_first=newest_first, cursor=page.next_cursor)
        assert seen == order
    # With a filter, a page that stops at max_scan says where to go on.
    page = await log.query_page(principal="user0", max_scan=2)
    assert [e.id for e in page.entries] == [ids[6]] and page.next_cursor == ids[5]
    assert page.scanned == 2
    rest = await log.query_page(principal="user0", cursor=page.next_cursor)
    assert [e.id for e in rest.entries] == [ids[3], ids[0]] and rest.next_cursor is None
    # A cursor outside the time range does not widen it.
    at = (await log.query(newest_first=False))[0].at_ms
    inside = await log.query_page(until=at - 1, cursor=f"{at + 10**6}-0")
    assert inside.entries == []
    for bad in ("x", "1-2-3", "", "9" * 30 + "-0"):
        with pytest.raises(ConfigurationError, match="cursor must be"):
            await log.query_page(cursor=bad)


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("1700000000000", 1_700_000_000_000),
        ("2023-11-14T22:13:20Z", 1_700_000_000_000),
        ("2023-11-14T22:13:20", 1_700_000_000_000),  # UTC without an offset
        ("2023-11-14T23:13:20+01:00", 1_700_000_000_000),
        ("2023-11-14", 1_699_920_000_000),
        ("  ", None),
    ],
)
def test_time_bounds_given_as_text(text: str, ms: int | None) -> None:
    assert parse_time(text, "since") == ms


@pytest.mark.parametrize("text", ["yesterday", "2023-13-01", "1e9", "\x00", "-5", "9" * 40])
def test_time_bounds_that_do_not_parse_are_refused(text: str) -> None:
    with pytest.raises(ConfigurationError, match="since must"):
        parse_time(text, "since")


async def test_the_key_never_reaches_redis(log: AuditLog) -> None:
    await _fill(log, 3)
    client = await log.deployment.client()
    blob = b"".join(
        v for _, f in await client.xrange(log.stream) for v in f.values()
    )  # every stored value
    assert KEY.encode() not in blob
    assert "AuditKeys(current=" in repr(log.keys) and KEY not in repr(log.keys)


async def test_without_the_key_it_reads_but_neither_writes_nor_verifies(
    log: AuditLog, backend_url: str, prefix: str
) -> None:
    await _fill(log, 2)
    reader = AuditLog(backend_url, prefix=prefix)
    try:
        assert [e.authentic for e in await reader.query()] == [None, None]
        with pytest.raises(ConfigurationError, match="without its key"):
            await reader.append("a", "b", "c")
        with pytest.raises(ConfigurationError, match="without its key"):
            await reader.verify()
    finally:
        await reader.close()


# ------------------------------------------------------------------ tamper detection
async def test_an_edited_entry_is_reported_as_altered(log: AuditLog) -> None:
    await _fill(log, 6)
    raw = await _raw(log)
    victim = raw[3][0].decode()
    raw[3][1][b"who"] = b"someone-else"  # rewrite history: the MAC is kept as it was
    await _rewrite(log, raw)
    report = await log.verify()
    assert not report.ok
    assert report.first_problem is not None
    assert (report.first_problem.kind, report.first_problem.entry_id) == ("altered", victim)
    assert len(report.problems) == 1
    [entry] = [e for e in await log.query() if e.id == victim]
    assert entry.authentic is False


async def test_a_deleted_entry_is_reported_at_the_gap(log: AuditLog) -> None:
    ids = await _fill(log, 6)
    client = await log.deployment.client()
    await client.xdel(log.stream, ids[2])
    report = await log.verify()
    assert report.first_problem is not None
    assert report.first_problem.kind == "removed"
    assert report.first_problem.entry_id == ids[3]  # the entry after the gap
    assert "1 entry missing" in report.first_problem.detail


async def test_an_inserted_entry_is_reported_as_inserted(log: AuditLog) -> None:
    ids = []
    for i in range(4):  # a few ms apart, so an id fits between two entries
        ids.append(await log.append("u", "act", f"r{i}"))
        await asyncio.sleep(0.005)
    raw = await _raw(log)
    ms, seq = (int(x) for x in ids[1].split("-"))
    assert ids[2] != f"{ms}-{seq + 1}"
    forged = dict(raw[1][1])
    forged[b"act"] = b"access.grant"
    forged[b"mac"] = secrets.token_hex(32).encode()
    forged_id = f"{ms}-{seq + 1}"
    await _rewrite(log, [*raw[:2], (forged_id.encode(), forged), *raw[2:]])
    report = await log.verify()
    assert report.first_problem is not None
    assert (report.first_problem.kind, report.first_problem.entry_id) == ("inserted", forged_id)
    assert len(report.problems) == 1


async def test_a_forged_entry_at_the_end_is_reported_as_inserted(log: AuditLog) -> None:
    await _fill(log, 3)
    client = await log.deployment.client()
    fields = {
        "n": "4", "prev": "x", "who": "mallory", "act": "access.grant", "res": "*",
        "out": "ok", "meta": "{}", "kid": log.keys.current if log.keys else "",
        "mac": secrets.token_hex(32),
    }  # fmt: skip
    forged_id = await client.xadd(log.stream, fields)
    report = await log.verify()
    assert report.first_problem is not None
    assert report.first_problem.kind == "inserted"
    assert report.first_problem.entry_id == forged_id.decode()


async def test_a_cut_end_is_caught_by_the_counter_and_by_a_checkpoint(
    log: AuditLog, backend_url: str
) -> None:
    ids = await _fill(log, 5)
    checkpoint = (await log.verify()).head
    assert checkpoint is not None and checkpoint.id == ids[-1]
    client = await log.deployment.client()
    await client.xdel(log.stream, ids[-1], ids[-2])
    report = await log.verify()  # Redis counted 5 additions: the last 2 are missing
    assert report.first_problem is not None
    assert report.first_problem.kind == "removed" and report.first_problem.entry_id == ""
    if backend_url.startswith("memory://"):
        return
    # An attacker who also rewinds the stream's counter leaves a consistent chain;
    # only the checkpoint kept outside Redis still sees the cut.
    await client.execute_command("XSETID", log.stream, ids[-3], "ENTRIESADDED", 3)
    assert (await log.verify()).ok
    cut = await log.verify(checkpoint=checkpoint)
    assert cut.first_problem is not None and cut.first_problem.kind == "removed"
    assert "checkpoint saw n=5" in cut.first_problem.detail


async def test_a_checkpoint_whose_entry_was_rewritten_is_reported(log: AuditLog) -> None:
    await _fill(log, 3)
    head = (await log.verify()).head
    assert head is not None
    wrong = AuditHead(head.n, head.id, "0" * 64)
    report = await log.verify(checkpoint=wrong)
    assert report.first_problem is not None and report.first_problem.kind == "altered"


# ------------------------------------------------------------------ retention
async def test_trim_by_size_leaves_a_chain_that_verifies(log: AuditLog) -> None:
    await _fill(log, 10)
    removed = await log.trim(max_entries=4)
    assert removed == 7  # 10 + the retention record - 4 kept (the record included)
    report = await log.verify()
    assert report.ok and report.start == "retention" and report.entries == 4
    [record] = await log.query(action="audit.retention")
    assert record.metadata["first_n"] == 8 and record.metadata["max_entries"] == 4
    assert await log.trim(max_entries=4) == 0  # nothing beyond the limit
    await _fill(log, 2)
    assert await log.trim(max_entries=1) == 6  # only the new record is left
    report = await log.verify()
    assert report.ok and report.entries == 1 and report.start == "retention"


async def test_removing_entries_below_the_retention_point_is_caught(log: AuditLog) -> None:
    await _fill(log, 10)
    await log.trim(max_entries=5)
    raw = await _raw(log)
    client = await log.deployment.client()
    await client.xdel(log.stream, raw[0][0])  # the first kept entry
    report = await log.verify()
    assert report.first_problem is not None
    assert report.first_problem.kind == "removed"
    assert "no retention record accounts for them" in report.first_problem.detail


async def test_trim_by_age_can_remove_everything_and_still_verify(log: AuditLog) -> None:
    await _fill(log, 3)
    await asyncio.sleep(0.01)
    assert await log.trim(max_age=1) == 3
    report = await log.verify()
    assert report.ok and report.entries == 1 and report.start == "retention"
    await log.append("u", "after", "r")
    assert (await log.verify()).ok
    with pytest.raises(ConfigurationError, match="max_age or max_entries"):
        await log.trim()


# ------------------------------------------------------------------ keys
async def test_rotated_keys_verify_with_previous_keys(
    log: AuditLog, backend_url: str, prefix: str
) -> None:
    await _fill(log, 3)
    new_key = secrets.token_bytes(32)
    rotated = AuditLog(backend_url, key=new_key, previous_keys=[KEY], prefix=prefix)
    forgetful = AuditLog(backend_url, key=new_key, prefix=prefix)
    try:
        await rotated.append("u", "after-rotation", "r")
        report = await rotated.verify()
        assert report.ok and report.entries == 4
        kinds = {p.kind for p in (await forgetful.verify()).problems}
        assert kinds == {"unverifiable"}
    finally:
        await rotated.close()
        await forgetful.close()


# ------------------------------------------------------------------ input bounds
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    meta=st.recursive(
        st.one_of(
            st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=50),
        ),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=20,
    )
)  # fmt: skip
def test_library_entries_take_any_metadata_safely(meta: Any) -> None:
    from kitium_queue.features.audit.chain import clean_metadata

    text = clean_metadata({"args": meta}, strict=False)
    assert len(text.encode()) <= MAX_META_BYTES
    assert isinstance(orjson.loads(text), dict)


async def test_odd_text_is_refused_for_the_application_and_made_safe_for_the_library(
    log: AuditLog,
) -> None:
    for bad in ("a\x00b", "x\u202ey", "z\ud800"):
        with pytest.raises(ConfigurationError):
            await log.append("u", bad, "r")
    with pytest.raises(ConfigurationError, match="128"):
        await log.append("u", "a" * 129, "r")
    with pytest.raises(ConfigurationError, match="outcome"):
        await log.append("u", "a", "r", "maybe")
    log.record("u\x00", "queue.x\ud800", "r" * 10_000, "ok", {"k\x1b": "v" * 10_000})
    await log.flush()
    [entry] = await log.query()
    assert "\x00" not in (entry.principal or "") and len(entry.resource) == 512
    assert entry.authentic is True and (await log.verify()).ok


# ------------------------------------------------------------------ across processes
_CHILD = r"""
import asyncio, sys
from kitium_queue.features.audit import AuditLog

async def main(url, prefix, key, who, n):
    log = AuditLog(url, key=key, prefix=prefix)
    await asyncio.gather(*(log.append(who, "append", f"r{i}", "ok", {"i": i}) for i in range(n)))
    await log.close()

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])))
"""


@pytest.mark.redis_only
async def test_appenders_in_several_processes_make_one_chain(redis_url: str, prefix: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, redis_url, prefix, KEY, f"proc{i}", "150"], env=env
        )
        for i in range(4)
    ]
    assert [await asyncio.to_thread(p.wait, 120) for p in procs] == [0] * 4
    log = AuditLog(redis_url, key=KEY, prefix=prefix)
    try:
        report = await log.verify()
        assert report.ok and report.entries == 600
        entries = await log.query(limit=1000, newest_first=False)
        assert [e.n for e in entries] == list(range(1, 601))
        per = {f"proc{i}": sorted(e.metadata["i"] for e in entries if e.principal == f"proc{i}")
               for i in range(4)}  # fmt: skip
        assert all(v == list(range(150)) for v in per.values())
    finally:
        await log.close()


@pytest.mark.redis_only
async def test_entries_recorded_while_redis_is_down_are_written_when_it_returns() -> None:
    from _redis import RedisServer

    srv = RedisServer("--appendonly", "yes", "--appendfsync", "always").start()
    log = AuditLog(srv.url, key=KEY, prefix="down")
    try:
        await log.append("u", "before", "r")
        srv.kill()
        log.record("u", "queue.pause", "orders")  # the subscriber's path: never raises
        log.record("u", "queue.resume", "orders")
        with pytest.raises(ConnectionUnavailableError):  # an awaited append fails to its caller
            await log.append("u", "awaited", "r")
        srv.restart()
        await asyncio.wait_for(log.flush(), 30)
        actions = [e.action for e in await log.query(newest_first=False)]
        assert actions == ["before", "queue.pause", "queue.resume"]
        assert (await log.verify()).ok
    finally:
        await log.close()
        srv.close()


async def test_trim_refuses_a_broken_chain_unless_told(log: AuditLog) -> None:
    ids = await _fill(log, 5)
    client = await log.deployment.client()
    await client.xdel(log.stream, ids[1])
    with pytest.raises(KitiumQueueError, match="trimming would remove the evidence"):
        await log.trim(max_entries=2)
    assert await log.trim(max_entries=2, verify_first=False) == 3
