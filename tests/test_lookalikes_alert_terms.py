"""Look-alike tenant ids and principals, and a forged alert term.

* A tenant id or principal mixing scripts that look alike (``\\u0430cme``: a Cyrillic
  "\\u0430" next to Latin ``cme``, which reads as ``acme``) was accepted at creation, in
  grants, in ``acting_as`` and in a job's ``tenant_id``: grants, quotas and audit entries
  were shown for a name that looks like another. Now refused there (UTS #39 "moderately
  restrictive": the scripts found and the characters at fault are named, escaped);
  single-script non-Latin names stay allowed. A tenant or grant stored before the rule
  stays readable, listable (flagged ``lookalike``), changeable and removable.
* A forged alert term of 15 digits or fewer written into ``alerts:state`` blocked the
  rule until the leader's real term passed it (for ever, in practice): the state write
  answered ``stale``. Now a stored term above the counter that issues the leader's terms
  (``leader:alerts:term``) is known forged (or from another deployment): it is replaced
  at the next evaluation and reported; a deposed leader is still fenced off.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import QueueFactory, app_module, wait_until
from kitium_queue import AlertManager, ConfigurationError, JobQueue
from kitium_queue.cli import main
from kitium_queue.features.access import AccessControlManager, AccessEntry
from kitium_queue.features.tenancy import TenantRegistry, check_tenant_id
from kitium_queue.features.tenancy import registry as registry_module
from kitium_queue.identity import acting_as, check_principal, script_mix
from kitium_queue.leader import LeaderLease, LeaderService

KEY = "k" * 32
LOOKALIKE = "\u0430cme"  # Cyrillic a + Latin cme: reads as "acme"
FORGED = "999999999999999"  # 15 digits: passes the old shape check


# ------------------------------------------------------------------ the rule
@pytest.mark.parametrize(
    ("text", "scripts", "culprit"),
    [
        (LOOKALIKE, "Cyrillic and Latin", "U+0430 CYRILLIC SMALL LETTER A at position 0"),
        ("p\u0430ypal", "Cyrillic and Latin", "U+0430 CYRILLIC SMALL LETTER A at position 1"),
        ("\u03a9mega-1", "Greek and Latin", "U+03A9 GREEK CAPITAL LETTER OMEGA at position 0"),
        ("\u13aalice", "Cherokee and Latin", "U+13AA CHEROKEE LETTER GO at position 0"),
        ("\u0430\u0431-\u03b1\u03b2\u03b3", "Cyrillic and Greek", "U+0430 CYRILLIC"),
    ],
)
def test_mixed_scripts_are_refused_naming_scripts_and_characters(
    text: str, scripts: str, culprit: str
) -> None:
    for check in (check_tenant_id, check_principal):
        with pytest.raises(ConfigurationError) as info:
            check(text)
        msg = str(info.value)
        assert f"mixes the {scripts} scripts" in msg and culprit in msg, msg
        assert "Spell it in one script" in msg and msg.isascii(), msg
        # Stored before the rule: still accepted as a lookup.
        assert check(text, existing=True) == text


@pytest.mark.parametrize(
    "text",
    [
        "acme",
        "\u0430\u0441\u043c\u0435",  # all Cyrillic
        "\u03b1\u03b2\u03b3-2",  # all Greek
        "\u5f20\u4f1f",  # Han
        "\u65e5\u672c\u30c6\u30ad\u30b9\u30c8\u3072\u3089",  # Han + Katakana + Hiragana
        "\ud55c\uad6d\u6f22\u5b57",  # Hangul + Han
        "svc-\u05e2\u05d1\u05e8\u05d9\u05ea",  # Latin + Hebrew (moderately restrictive)
        "Zo\u00eb",
        "team.eu-1",
    ],
)
def test_single_script_and_allowed_mixtures_are_kept(text: str) -> None:
    assert script_mix(text) is None
    assert check_tenant_id(text) == text and check_principal(text) == text


_POOLS = {
    "Latin": "abcdeopxyz\u00e9",
    "Cyrillic": "\u0430\u0435\u043e\u0440\u0441\u0443\u0445\u0456",
    "Greek": "\u03b1\u03b5\u03bf\u03c1\u03c4\u03bd",
    "Han": "\u65e5\u672c\u4e2d\u6587",
    "Hiragana": "\u3072\u3089\u304c\u306a",
    "Katakana": "\u30ab\u30bf\u30ca",
    "Hangul": "\ud55c\uad6d\uc5b4",
    "Arabic": "\u0639\u0631\u0628",
    "Cherokee": "\u13a0\u13a1\u13a2",
}
_COMMON = "0123456789-_."
_CJK = ({"Han", "Hiragana", "Katakana"}, {"Han", "Hangul"})
_LATIN_MAY_JOIN = {"Han", "Hiragana", "Katakana", "Hangul", "Arabic"}


def _allowed(scripts: set[str]) -> bool:
    """UTS #39 5.2 (moderately restrictive) over the pools above."""
    if len(scripts) <= 1:
        return True
    rest = scripts - {"Latin"}
    if any(rest <= cjk for cjk in _CJK):
        return True
    return "Latin" in scripts and len(rest) == 1 and rest <= _LATIN_MAY_JOIN


_pieces = st.lists(
    st.one_of(
        st.sampled_from(sorted(_POOLS)).flatmap(
            lambda s: st.sampled_from(_POOLS[s]).map(lambda c, s=s: (s, c))
        ),
        st.sampled_from(_COMMON).map(lambda c: ("", c)),
    ),
    min_size=1,
    max_size=24,
)


@settings(max_examples=400, deadline=None)
@given(pieces=_pieces)
def test_fuzz_mixed_scripts(pieces: list[tuple[str, str]]) -> None:
    text = "".join(c for _, c in pieces)
    scripts = {s for s, _ in pieces if s}
    refused = script_mix(text)
    assert (refused is None) == _allowed(scripts), (text, scripts, refused)
    if refused is None:
        assert check_tenant_id(text) == text and check_principal(text) == text
        return
    for check in (check_tenant_id, check_principal):
        with pytest.raises(ConfigurationError) as info:
            check(text)
        msg = str(info.value)
        assert msg.isascii()
        for name in scripts:
            assert name in msg
        # Every character named is the text's at that position, of a script it mixes.
        named = re.findall(r"U\+([0-9A-F]{4,6}) ([A-Z][A-Z0-9 -]*?) at position (\d+)", msg)
        assert named
        for code, name, pos in named:
            assert ord(text[int(pos)]) == int(code, 16)
            assert name == unicodedata.name(text[int(pos)])
        assert check(text, existing=True) == text


# ------------------------------------------------------------------ tenants in Redis
async def _legacy_tenant(reg: TenantRegistry, monkeypatch: pytest.MonkeyPatch, tid: str) -> None:
    """Create ``tid`` as a registry before the script rule did."""
    with monkeypatch.context() as m:
        m.setattr(
            registry_module, "check_tenant_id", lambda v, *a, **k: check_tenant_id(v, existing=True)
        )
        await reg.create_tenant({"tenant_id": tid, "quota": {"max_queue_size": 5}})


@pytest.mark.redis_only
async def test_a_lookalike_tenant_is_refused_but_one_stored_before_stays_reachable(
    make_queue: QueueFactory, redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = make_queue("lk")
    reg = TenantRegistry(q)
    await reg.create_tenant({"tenant_id": "acme"})
    with pytest.raises(ConfigurationError, match="U\\+0430 CYRILLIC SMALL LETTER A at position 0"):
        await reg.create_tenant({"tenant_id": LOOKALIKE})
    assert [c.tenant_id for c in await reg.list_tenants()] == ["acme"]
    # A tenant created before the rule: listed (flagged), read, changed, used, removed.
    await _legacy_tenant(reg, monkeypatch, LOOKALIKE)
    listed = {c.tenant_id: c for c in await reg.list_tenants()}
    assert listed["acme"].lookalike is None
    assert "Cyrillic and Latin" in (listed[LOOKALIKE].lookalike or "")
    assert (await reg.get_tenant_quota(LOOKALIKE)).max_queue_size == 5
    updated = await reg.update_tenant(LOOKALIKE, quota={"max_queue_size": 7})
    assert updated.quota.max_queue_size == 7
    assert (await reg.get_tenant_usage(LOOKALIKE)).queued == 0
    # Its new jobs are refused: a job's tenant_id names a tenant anew.
    with pytest.raises(ConfigurationError, match="mixes the Cyrillic and Latin scripts"):
        await q.add_job("n", {}, tenant_id=LOOKALIKE)
    assert await q.add_job("n", {}, tenant_id="acme")
    assert await reg.remove_tenant(LOOKALIKE) is True
    assert await reg.get_tenant(LOOKALIKE) is None


@pytest.mark.redis_only
async def test_access_control_refuses_lookalikes_and_keeps_stored_ones_revocable(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    acm = AccessControlManager(redis_url, audit_key=KEY, prefix=prefix, principal="root")
    try:
        await acm.grant_access(principal_id="root", queue_pattern="*", role="admin")
        before = len(await acm.query_audit_log())
        with pytest.raises(ConfigurationError, match="U\\+0430 CYRILLIC SMALL LETTER A"):
            await acm.grant_access(principal_id="\u0430lice", queue_pattern="q*", role="viewer")
        with pytest.raises(ConfigurationError, match="mixes the Cyrillic and Latin"):
            await acm.create_tenant({"tenant_id": LOOKALIKE})
        with (
            pytest.raises(ConfigurationError, match="mixes the Cyrillic and Latin"),
            acting_as("r\u043eot"),  # Cyrillic o
        ):
            pass
        with pytest.raises(ConfigurationError, match="mixes"):
            await acm.audit_access("r\u043eot", "app.login", "q1")
        assert len(await acm.query_audit_log()) == before  # nothing written, no denial
        # A grant stored before the rule: listed (flagged), checked, revoked.
        await acm.grants.put(AccessEntry("\u0430lice", "q*", role="viewer"), "root")
        (legacy,) = await acm.list_access("\u0430lice")
        assert "U+0430" in (legacy.lookalike or "")
        assert legacy.to_dict()["lookalike"] == legacy.lookalike
        flagged = [e.principal_id for e in await acm.list_access() if e.lookalike]
        assert flagged == ["\u0430lice"]
        assert await acm.check_access("\u0430lice", "q1", "can_view_job")
        assert await acm.revoke_access("\u0430lice", "q*") is True
        assert await acm.list_access("\u0430lice") == []
        # A legacy tenant is removable through the manager too (authorized, audited).
        await _legacy_tenant(acm.tenants, monkeypatch, LOOKALIKE)
        assert await acm.remove_tenant(LOOKALIKE) is True
    finally:
        await acm.close()


# ------------------------------------------------------------------ the CLI flags them
@pytest.fixture
def app(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[str]:
    source = (
        "from kitium_queue import JobQueue\n"
        "from kitium_queue.features.tenancy import TenantRegistry\n"
        f"queue = JobQueue('lkcli', redis={redis_url!r}, prefix={prefix!r})\n"
        "TenantRegistry.enable(queue)\n"
    )
    with app_module(tmp_path, source, "kq_cli_lookalikes") as module:
        yield f"{module}:queue"


@pytest.mark.redis_only
def test_listings_flag_lookalikes_stored_before_the_rule(
    app: str, redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def fill() -> None:
        q = JobQueue("lkcli", redis=redis_url, prefix=prefix)
        reg = TenantRegistry(q)
        await reg.create_tenant({"tenant_id": "acme"})
        await _legacy_tenant(reg, monkeypatch, LOOKALIKE)
        await q.close()
        acm = AccessControlManager(redis_url, audit_key=KEY, prefix=prefix)
        await acm.grants.put(AccessEntry("\u0430lice", "q*", role="viewer"), "root")
        await acm.grant_access(principal_id="alice", queue_pattern="q*", role="viewer")
        await acm.close()

    asyncio.run(fill())
    runner = CliRunner()
    out = runner.invoke(main, ["tenants", "list", app])
    assert out.exit_code == 0, out.output
    lines = out.output.strip().splitlines()
    assert lines[0].rstrip().endswith("lookalike")
    (flagged,) = [line for line in lines if "LOOKALIKE" in line]
    assert flagged.startswith(LOOKALIKE + "\t") and "U+0430 CYRILLIC SMALL LETTER A" in flagged
    assert any(line.startswith("acme\t") and line.rstrip().endswith("-") for line in lines)
    data = json.loads(runner.invoke(main, ["tenants", "list", app, "--json"]).output)
    marks = {t["tenant_id"]: t["lookalike"] for t in data["tenants"]}
    assert marks["acme"] is None and "Cyrillic and Latin" in marks[LOOKALIKE]
    shown = runner.invoke(main, ["tenants", "show", app, LOOKALIKE])
    assert shown.exit_code == 0 and "LOOKALIKE" in shown.output, shown.output
    base = ["--redis", redis_url, "--prefix", prefix]
    listed = runner.invoke(main, ["access", "list", *base])
    assert listed.exit_code == 0, listed.output
    (row,) = [line for line in listed.output.splitlines() if "LOOKALIKE" in line]
    assert row.startswith("\u0430lice\t") and "U+0430" in row
    grants = json.loads(runner.invoke(main, ["access", "list", "--json", *base]).output)
    assert {g["principal_id"]: bool(g["lookalike"]) for g in grants} == {
        "alice": False,
        "\u0430lice": True,
    }
    checked = runner.invoke(main, ["access", "check", "\u0430lice", "q1", *base])
    assert checked.exit_code == 0 and "can_view_job" in checked.output, checked.output


# ------------------------------------------------------------------ forged alert term
def _alerts(make_queue: QueueFactory, name: str) -> tuple[JobQueue, AlertManager]:
    q = make_queue(name)
    rule = {"name": "backlog", "metric": "queue_depth", "threshold": 1}
    return q, AlertManager(q, [rule], run_service=False)


async def _stored_term(client: aioredis.Redis, q: JobQueue) -> str:
    raw = await client.hget(q.keys.extra("alerts:state"), "backlog")
    assert raw is not None
    return str(raw.decode().split(" ")[2])


@pytest.mark.redis_only
@pytest.mark.parametrize("stored", [FORGED, "7"])
async def test_a_forged_alert_term_no_longer_blocks_the_rule(
    make_queue: QueueFactory,
    redis_client: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
    stored: str,
) -> None:
    """``FORGED``: written by hand. ``"7"``: from another deployment (the term counter
    was reset, the alert state was not): above any term the counter issued."""
    q, m = _alerts(make_queue, f"forged{len(stored)}")
    term = await LeaderLease(q, "alerts").acquire()
    assert term == 1
    await redis_client.hset(q.keys.extra("alerts:state"), "backlog", f"ok 1 {stored} 0")
    await q.add_job("n", {})
    with caplog.at_level(logging.WARNING, logger="kitium_queue"):
        (fired,) = await m.evaluate(term)
    assert (fired.rule, fired.state) == ("backlog", "firing")
    assert await _stored_term(redis_client, q) == "1"
    assert any(stored in r.getMessage() and "term" in r.getMessage() for r in caplog.records)
    # And it clears again: the rule is not blocked either way.
    await q.drain()
    (cleared,) = await m.evaluate(term)
    assert cleared.state == "ok"


@pytest.mark.redis_only
async def test_a_deposed_leader_is_still_fenced_off(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q, m = _alerts(make_queue, "deposed")
    first = LeaderLease(q, "alerts", lease_ms=10_000)
    old = await first.acquire()
    await first.release()
    new = await LeaderLease(q, "alerts").acquire()
    assert old is not None and new is not None and new > old
    await q.add_job("n", {})
    (fired,) = await m.evaluate(new)
    assert fired.state == "firing"
    await q.drain()
    assert await m.evaluate(old) == []  # a real, later term is recorded: stale
    (state,) = await m.states()
    assert state.state == "firing"
    assert await _stored_term(redis_client, q) == str(new)
    # A forged term is dropped by the current leader only: not a way in for a deposed one.
    await redis_client.hset(q.keys.extra("alerts:state"), "backlog", f"firing 1 {FORGED} 1")
    assert await m.evaluate(old) == []
    assert await _stored_term(redis_client, q) == FORGED
    (cleared,) = await m.evaluate(new)
    assert cleared.state == "ok"
    assert await _stored_term(redis_client, q) == str(new)


@pytest.mark.redis_only
async def test_the_leader_service_fires_within_one_round_despite_a_forged_term(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q, m = _alerts(make_queue, "forgedsvc")
    await redis_client.hset(q.keys.extra("alerts:state"), "backlog", f"ok 1 {FORGED} 0")
    await q.add_job("n", {})
    m.interval_ms = 50
    svc = LeaderService("alerts", m._serve, lease_ms=1000)
    await svc.start(q)
    try:
        await wait_until(lambda: m.evaluations >= 1, timeout=10)
        (state,) = await m.states()
        assert state.state == "firing"
        (t,) = await m.history()
        assert (t.rule, t.state) == ("backlog", "firing")
    finally:
        await svc.stop()
