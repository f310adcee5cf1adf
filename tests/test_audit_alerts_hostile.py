"""The audit log and the alerts under hostile data written straight into Redis.

Each test pins one defect found by writing to the keys by hand (an attacker with Redis
write access but not the audit key):

* the audit stream replaced by another type: ``verify`` raised a raw ``WRONGTYPE``
  ``ResponseError`` (the dashboard's Audit page answered 500); now ``verify`` reports
  the loss, and query, append and trim raise ``DamagedKeyError`` saying what to do;
* a last entry whose ``n`` or ``mac`` is not what the writer writes (``inf``,
  ``1e20``, ``0``, ``5_0``, bytes that are not UTF-8...): the append retried 200 times
  and blamed "other writers", or chained a bogus position that verify then misread as
  entries removed at the end; now it is refused (``DamagedKeyError`` naming the entry
  and the repair), nothing written; after the documented repair the chain goes on and
  verify still reports the removal;
* a stream id beyond any clock (20 digits): the append raised a bare ``ValueError``;
  now refused with the repair (XSETID);
* entries with a huge value, a field twice, fields no entry has, bytes that are not
  UTF-8 or missing fields: read whole (unbounded memory), shown as ``authentic`` None
  ("no key") or not flagged at all, and an extra field went unnoticed by verify; now
  values are cut to size on the server, the listing flags what is wrong (``damage``,
  ``authentic`` False, also on the dashboard and the CLI) and verify names it;
* query filters with control characters, lone surrogates or of another type, and
  outcomes that do not exist, silently matched nothing; now refused clearly;
* the CLI listing crashed on an entry id beyond any clock;
* an alert state record with a term written by hand (``inf``, 20 digits) fenced the
  rule off for good; a damaged record showed its garbage as the state and NaN / inf
  as figures (invalid JSON); now replaced, and shown as ``unknown`` / None.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis as redis_sync
import redis.asyncio as aioredis
from click.testing import CliRunner

from helpers import QueueFactory
from kitium_queue import AlertManager, ConfigurationError
from kitium_queue.cli import main
from kitium_queue.dashboard import create_dashboard
from kitium_queue.errors import DamagedKeyError
from kitium_queue.features.audit import AuditLog
from test_dashboard_asgi import MANAGER, TOKENS
from test_dashboard_audit import as_

pytestmark = pytest.mark.redis_only

KEY = secrets.token_hex(32)
FAR = b"9999999999999-0"  # after every entry the tests write


@pytest.fixture
async def log(redis_url: str, prefix: str) -> AsyncIterator[AuditLog]:
    audit = AuditLog(redis_url, key=KEY, prefix=prefix)
    yield audit
    await audit.close()


async def _fill(log: AuditLog, n: int = 3) -> list[str]:
    return [await log.append("u", f"act.{i}", "res", "ok", {"i": i}) for i in range(n)]


async def _last_rewritten(r: aioredis.Redis, log: AuditLog, **changes: bytes) -> None:
    """Replace the last entry by a copy with ``changes`` (at a later id)."""
    [(last_id, f)] = await r.xrevrange(log.stream, count=1)
    await r.xdel(log.stream, last_id)
    await r.xadd(log.stream, {**f, **{k.encode(): v for k, v in changes.items()}}, id=FAR)


# ------------------------------------------------------------------ the stream's type
async def test_a_stream_of_another_type_is_reported_and_refused(
    log: AuditLog, redis_client: aioredis.Redis, make_queue: QueueFactory
) -> None:
    await _fill(log)
    await redis_client.delete(log.stream)
    await redis_client.set(log.stream, "x")
    report = await log.verify()
    assert not report.ok and report.start == "broken"
    assert report.first_problem is not None and report.first_problem.kind == "removed"
    assert "holds a Redis string, not a stream" in report.first_problem.detail
    for attempt in (
        log.query_page(),
        log.append("u", "a", "r"),
        log.trim(max_entries=1, verify_first=False),
    ):
        with pytest.raises(DamagedKeyError, match="holds a Redis string, not a stream") as info:
            await attempt
        assert KEY not in str(info.value) and "RENAME it aside" in str(info.value)
    assert await redis_client.get(log.stream) == b"x"  # nothing written over it
    # The dashboard's page says so instead of answering 500.
    app = create_dashboard(queues=[make_queue("shop")], tokens=TOKENS, refresh_ms=0, access=log)
    c = await as_(app, MANAGER)
    r = await c.get("/audit")
    assert r.status_code == 200 and "not a stream" in r.text


# ------------------------------------------------------------------ appending after damage
@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("n", b"abc", "its position n"),
        ("n", b"1e20", "its position n"),
        ("n", b"inf", "its position n"),
        ("n", b"0", "its position n"),
        ("n", b"-5", "its position n"),
        ("n", b"5_0", "its position n"),
        ("n", b" 3", "its position n"),
        ("n", b"9" * 20, "its position n"),
        ("mac", b"", "its MAC"),
        ("mac", bytes(range(200, 256)), "its MAC"),
        ("mac", b"x" * 64, "its MAC"),
    ],
)
async def test_a_last_entry_that_cannot_be_continued_refuses_the_append(
    log: AuditLog, redis_client: aioredis.Redis, field: str, value: bytes, why: str
) -> None:
    await _fill(log)
    await _last_rewritten(redis_client, log, **{field: value})
    fresh = AuditLog(log.deployment, key=KEY)  # no head remembered: read from Redis
    with pytest.raises(DamagedKeyError, match=f"cannot be continued after {FAR.decode()}: {why}"):
        await fresh.append("u", "after", "r")
    assert await redis_client.xlen(log.stream) == 3  # nothing written
    # The documented repair: remove that entry; the chain goes on from the one before,
    # and verify keeps reporting what happened.
    await redis_client.xdel(log.stream, FAR)
    await fresh.append("u", "after", "r")
    report = await fresh.verify()
    assert not report.ok and [p.kind for p in report.problems] == ["removed"]
    assert report.head is not None and report.head.n == 3


async def test_an_id_beyond_any_clock_refuses_the_append_with_the_repair(
    log: AuditLog, redis_client: aioredis.Redis
) -> None:
    ids = await _fill(log)
    huge = f"{2**64 - 1}-5"
    await redis_client.xadd(log.stream, {"n": "4"}, id=huge)
    fresh = AuditLog(log.deployment, key=KEY)
    with pytest.raises(DamagedKeyError, match=f"after {huge}: its MAC"):
        await fresh.append("u", "a", "r")
    await redis_client.xdel(log.stream, huge)  # the highest id stays the stream's
    with pytest.raises(DamagedKeyError, match=r"beyond any clock.*XSETID"):
        await fresh.append("u", "a", "r")
    await redis_client.execute_command("XSETID", log.stream, ids[-1])
    await fresh.append("u", "a", "r")
    report = await fresh.verify()
    assert report.head is not None and report.head.n == 4
    assert [p.kind for p in report.problems] == ["removed"]  # the counter remembers


# ------------------------------------------------------------------ damaged entries
async def test_damaged_entries_are_read_bounded_flagged_and_named_by_verify(
    log: AuditLog, redis_client: aioredis.Redis, make_queue: QueueFactory
) -> None:
    await _fill(log, 6)
    raw = await redis_client.xrange(log.stream)
    big = b"{" + b"x" * (1 << 20)
    edits: list[tuple[dict[bytes, bytes], str]] = [
        ({b"meta": big}, "field meta is 1048577 bytes (cut to 4200)"),
        ({b"who": b"\xff\xfe\x1b[2J"}, "field who is not UTF-8"),
        ({b"note": b"x"}, "1 fields no entry has"),
    ]
    # The stream rewritten whole (an id once used cannot be added again).
    await redis_client.delete(log.stream)
    await redis_client.xadd(log.stream, raw[0][1], id=raw[0][0])
    for (entry_id, fields), (change, _) in zip(raw[1:4], edits, strict=True):
        await redis_client.xadd(log.stream, {**fields, **change}, id=entry_id)
    # A field twice (XADD keeps both), and an entry with fields missing.
    pairs = [x for kv in raw[4][1].items() for x in kv]
    await redis_client.execute_command("XADD", log.stream, raw[4][0], *pairs, "n", "9")
    await redis_client.xadd(log.stream, {"n": "6", "act": "forged"}, id=raw[5][0])
    report = await log.verify()
    details = [(p.kind, p.entry_id, p.detail) for p in report.problems]
    wanted = [edit for _, edit in edits] + ["field n appears twice"]
    for (kind, entry_id, detail), (rid, _), want in zip(details[:4], raw[1:5], wanted, strict=True):
        assert (kind, entry_id) == ("altered", rid.decode()) and want in detail
    assert details[4][1] == raw[5][0].decode() and "fields prev, who" in details[4][2]
    entries = await log.query(newest_first=False)
    assert [e.authentic for e in entries] == [True, False, False, False, False, False]
    assert "1048577 bytes" in entries[1].damage and len(str(entries[1].metadata)) < 300
    assert entries[2].principal == "\\xff\\xfe\x1b[2J" and "not UTF-8" in entries[2].damage
    assert "field n appears twice" in entries[4].damage
    assert entries[5].damage.startswith("fields prev, who, res, out, meta, kid, mac missing")
    # Without the key the damage still shows.
    keyless = AuditLog(log.deployment)
    listed = await keyless.query(newest_first=False)
    assert [bool(e.damage) for e in listed] == [False, True, True, True, True, True]
    assert listed[5].authentic is None
    app = create_dashboard(queues=[make_queue("shop")], tokens=TOKENS, refresh_ms=0, access=log)
    page = (await (await as_(app, MANAGER)).get("/audit")).text
    assert page.count('class="badge warn damage"') == 5 and "\x1b" not in page


# ------------------------------------------------------------------ filters
@pytest.mark.parametrize(
    ("filters", "needle"),
    [
        ({"principal": "\ud800"}, "principal filter holds a control character"),
        ({"principal": "a\x1b[2J"}, "principal filter holds a control character"),
        ({"principal": 5}, "principal filter must be a str"),
        ({"principal": "p" * 257}, "principal filter must be a str of 1 to 256"),
        ({"action": "queue.\x00*"}, "action filter holds a control character"),
        ({"resource": "\udcff*"}, "resource filter holds a control character"),
        ({"outcome": "bogus"}, "outcome filter must be one of ok, denied, error"),
    ],
)
async def test_filters_that_match_no_entry_by_construction_are_refused(
    log: AuditLog, filters: dict[str, Any], needle: str
) -> None:
    await _fill(log, 1)
    with pytest.raises(ConfigurationError, match=needle):
        await log.query_page(**filters)


@pytest.fixture
def kq(redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("KITIUM_QUEUE_AUDIT_KEY", KEY)

    def run(*args: str) -> Any:
        return CliRunner().invoke(main, [*args, "--redis", redis_url, "--prefix", prefix])

    yield run


def test_the_cli_lists_an_entry_beyond_any_clock(kq: Any, redis_url: str, prefix: str) -> None:
    stream = f"{prefix}:{{!access}}:audit"
    with redis_sync.Redis.from_url(redis_url) as client:
        client.xadd(stream, {"n": "1", "who": "\x1b[31mx"}, id=f"{2**64 - 1}-0")
    out = kq("audit", "query")
    assert out.exit_code == 0 and "Traceback" not in out.output, out.output
    assert str(2**64 - 1) in out.output and "damaged=" in out.output
    assert "\x1b" not in out.output
    rows = json.loads(kq("audit", "query", "--json").output)
    assert rows[0]["authentic"] is False and "missing" in rows[0]["damage"]


# ------------------------------------------------------------------ alerts
def _rule_queue(make_queue: QueueFactory, name: str) -> tuple[Any, AlertManager]:
    q = make_queue(name)
    rule = {"name": "backlog", "metric": "queue_depth", "threshold": 1}
    return q, AlertManager(q, [rule], run_service=False)


@pytest.mark.parametrize("term", ["inf", "9" * 20, "1e300"])
async def test_an_alert_term_written_by_hand_does_not_fence_the_rule_off(
    make_queue: QueueFactory, redis_client: aioredis.Redis, term: str
) -> None:
    q, m = _rule_queue(make_queue, "aterm")
    await redis_client.hset(q.keys.extra("alerts:state"), "backlog", f"firing 1 {term} 5")
    (cleared,) = await m.evaluate(3)  # nothing waits: the firing alert clears
    assert (cleared.rule, cleared.state) == ("backlog", "ok")
    (state,) = await m.states()
    assert (state.state, state.value) == ("ok", 0.0)


@pytest.mark.parametrize(
    ("record", "shown"),
    [
        (b"\xff\xfe 1 1 5", ("unknown", 1, 5.0)),
        (b"firing 1 1 nan", ("firing", 1, None)),
        (b"firing 1_0 1 inf", ("firing", None, None)),
        (b"ok 99999999999999999999 1 -inf", ("ok", None, None)),
    ],
)
async def test_a_damaged_alert_record_shows_no_garbage_state_or_non_finite_figure(
    make_queue: QueueFactory,
    redis_client: aioredis.Redis,
    record: bytes,
    shown: tuple[str, int | None, float | None],
) -> None:
    q, m = _rule_queue(make_queue, "arec")
    await redis_client.hset(q.keys.extra("alerts:state"), "backlog", record)
    (state,) = await m.states()
    assert (state.state, state.since_ms, state.value) == shown
    json.dumps(state.to_dict(), allow_nan=False)
