"""The dashboard's tenants, encryption and regions pages (``dashboard/views_tenancy.py``),
through the ASGI app against the real Redis: each lists what its CLI view lists, pages
the tenants in bounded pages, shows damaged records as damaged (200, never a 500),
escapes hostile text (HTML, ``<script>``, bidi marks, control characters), answers 404
on a queue without the feature as every feature page does, lets a viewer read, refuses
a request without a session, and passes the queue's read guards."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner

from helpers import QueueFactory, app_module
from kitium_queue import JobQueue, PermissionDeniedError
from kitium_queue.cli import main
from kitium_queue.dashboard import create_dashboard
from kitium_queue.dashboard.views_tenancy import MAX_TENANTS_PAGE
from kitium_queue.errors import ConfigurationError
from kitium_queue.features.access.model import Permission, read_permission
from kitium_queue.features.encryption import EncryptionManager, KeyConfig, generate_key
from kitium_queue.features.regions import GlobalQueueManager
from kitium_queue.features.tenancy import TenantRegistry
from kitium_queue.features.tenancy import keys as tk
from kitium_queue.guards import ReadCall
from test_dashboard_asgi import TOKENS, VIEWER, client_for, signed_in

pytestmark = pytest.mark.redis_only

HOSTILE = "<script>alert(1)</script>\u202e<b>x</b>"
LOOKALIKE = "\u0430cme"  # Cyrillic a + Latin cme: reads as "acme"
REGIONS = ("us-east-1", "eu-west-1", "ap-southeast-1")


def rows_of(html: str, attr: str) -> dict[str, str]:
    """``data-<attr>`` value (unescaped) -> the row's HTML."""
    out = {}
    for m in re.finditer(rf'<tr data-{attr}="([^"]*)"[^>]*>(.*?)</tr>', html, re.S):
        out[unescape(m.group(1))] = m.group(2)
    return out


def assert_escaped(html: str) -> None:
    """No hostile text reaches the page raw."""
    assert "<script>alert" not in html and "<b>x</b>" not in html
    assert "\u202e" not in html and "\x1b" not in html


async def cli(*args: str) -> str:
    """Run ``kitium-queue`` (its own event loop, in a thread); its output."""
    out = await asyncio.to_thread(CliRunner().invoke, main, list(args))
    assert out.exit_code == 0, out.output
    return out.output


# ---------------------------------------------------------------------------- tenants
@pytest.fixture
def tenant_app(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[str]:
    source = (
        "from kitium_queue import JobQueue\n"
        "from kitium_queue.features.tenancy import TenantRegistry\n"
        f"queue = JobQueue('tq', redis={redis_url!r}, prefix={prefix!r})\n"
        "TenantRegistry.enable(queue)\n"
    )
    with app_module(tmp_path, source, "kq_dash_tenants") as module:
        yield f"{module}:queue"


async def _legacy(redis_client: aioredis.Redis, prefix: str, tid: str, **cfg: Any) -> None:
    """A registry entry written as a registry did before the script rule."""
    body = {"tenant_id": tid, "name": "", "quota": {}, "allowed_regions": [], "weight": 1.0}
    await redis_client.hset(tk.registry(prefix), tid, orjson.dumps({**body, **cfg, "version": 1}))


async def test_the_tenants_page_lists_what_the_cli_lists(
    make_queue: QueueFactory, redis_client: aioredis.Redis, prefix: str, tenant_app: str
) -> None:
    q = make_queue("tq")
    reg = TenantRegistry(q)
    await reg.create_tenant(
        {
            "tenant_id": "acme",
            "name": "ACME",
            "weight": 2,
            "allowed_regions": ["eu-west-1"],
            "quota": {"max_queue_size": 10, "max_concurrency": 1, "rate_limit": 5},
        }
    )
    # A new name may not hold a format character (U+202E): one stored before is shown.
    key = tk.registry(prefix)
    body = orjson.loads(await redis_client.hget(key, "acme"))
    await redis_client.hset(key, "acme", orjson.dumps({**body, "name": HOSTILE}))
    await reg.create_tenant({"tenant_id": "beta"})
    await reg.create_tenant({"tenant_id": "gone"})
    await reg.remove_tenant("gone")  # a tombstone: listed by neither
    await _legacy(redis_client, prefix, LOOKALIKE)
    await q.add_jobs([("n", {}, {"tenant_id": "acme"}) for _ in range(3)])
    app = create_dashboard(queues=[q], tokens=TOKENS, refresh_ms=0)
    c = await signed_in(app, VIEWER)
    r = await c.get("/q/tq/tenants")
    assert r.status_code == 200, r.text
    assert_escaped(r.text)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;\\u202e&lt;b&gt;x&lt;/b&gt;" in r.text
    rows = rows_of(r.text, "tenant")
    listed = json.loads(await cli("tenants", "list", tenant_app, "--json"))["tenants"]
    assert set(rows) == {t["tenant_id"] for t in listed} == {"acme", "beta", LOOKALIKE}
    cells = {k: re.findall(r"<td[^>]*>(.*?)</td>", v, re.S) for k, v in rows.items()}
    for t in listed:
        row = cells[t["tenant_id"]]
        quota = t["quota"]
        rl = quota["rate_limit"]
        assert row[2:6] == [
            f"{t['weight']:g}",
            str(quota["max_queue_size"] or "-"),
            str(quota["max_concurrency"] or "-"),
            "-" if rl is None else f"{rl['max']}/{rl['duration']}ms",
        ]
        usage = t["usage"]  # one queue: this queue's usage is the CLI's total
        assert row[7:13] == [
            str(usage[k]) for k in ("queued", "active", "held", "rate_used", "completed", "failed")
        ]
        assert ("lookalike" in row[13]) == (t["lookalike"] is not None)
    assert cells["acme"][6] == "eu-west-1" and cells["beta"][6] == "any"
    assert cells["acme"][7] == "3"
    assert "Cyrillic and Latin" in cells[LOOKALIKE][13]
    # The tenants tab is on the queue's pages.
    assert 'href="/q/tq/tenants"' in (await c.get("/q/tq")).text


async def test_damaged_tenant_entries_show_as_damaged(
    make_queue: QueueFactory, redis_client: aioredis.Redis, prefix: str
) -> None:
    q = make_queue("tq")
    reg = TenantRegistry(q)
    await reg.create_tenant({"tenant_id": "ok"})
    key = tk.registry(prefix)
    await redis_client.hset(key, "broken", b"{not json")
    await redis_client.hset(key, "other", orjson.dumps({"tenant_id": "ok", "version": 1}))
    await redis_client.hset(key, "<script>alert(1)</script>\x1b\u202e", b"{}")
    app = create_dashboard(queues=[q], tokens=TOKENS, refresh_ms=0)
    c = await signed_in(app, VIEWER)
    r = await c.get("/q/tq/tenants")
    assert r.status_code == 200, r.text
    assert_escaped(r.text)
    rows = rows_of(r.text, "tenant")
    assert "damaged" not in rows["ok"] and "<td>0</td>" not in rows["ok"]
    assert "st-damaged" in rows["broken"] and "st-damaged" in rows["other"]
    assert "another tenant" in rows["other"]
    (hostile,) = [k for k in rows if k.startswith("<script>")]
    assert hostile == "<script>alert(1)</script>\\x1b\\u202e"  # escaped, then shown
    assert "st-damaged" in rows[hostile] and "no tenant id" in rows[hostile]
    # A tenant's count of unfinished jobs that is not a count: flagged beside queued.
    assert "data-count-damaged" not in rows["ok"]
    await redis_client.hset(tk.tenant(q.keys, "ok"), "n", "garbage")
    rows = rows_of((await c.get("/q/tq/tenants")).text, "tenant")
    assert 'data-count-damaged="1"' in rows["ok"] and "tenants sync" in rows["ok"]
    # The registry itself of another type: said, 200, no row.
    await redis_client.delete(key)
    await redis_client.set(key, "x")
    r = await c.get("/q/tq/tenants")
    assert r.status_code == 200 and "another Redis type" in r.text
    assert rows_of(r.text, "tenant") == {}


async def _walk(c: Any, limit: int) -> tuple[list[str], int]:
    """Every tenant id of every page (in order), and the pages walked."""
    seen: list[str] = []
    url: str | None = f"/q/tq/tenants?limit={limit}"
    pages = 0
    while url is not None:
        r = await c.get(url)
        assert r.status_code == 200, r.text
        rows = rows_of(r.text, "tenant")
        assert len(rows) <= min(limit, MAX_TENANTS_PAGE)
        seen += rows
        pages += 1
        m = re.search(r'id="tenants-next" href="([^"]+)"', r.text)
        url = unescape(m.group(1)) if m else None
        assert pages < 100
    return seen, pages


async def test_tenants_come_in_bounded_pages(
    make_queue: QueueFactory, redis_client: aioredis.Redis, prefix: str
) -> None:
    q = make_queue("tq")
    TenantRegistry(q)
    ids = [f"t{i:04d}" for i in range(5)]
    for tid in ids:
        await _legacy(redis_client, prefix, tid)
    app = create_dashboard(queues=[q], tokens=TOKENS, refresh_ms=0)
    c = await signed_in(app, VIEWER)
    # A small registry (one HSCAN reply holds it all): pages of 2 within that reply.
    seen, pages = await _walk(c, 2)
    assert sorted(seen) == ids and len(seen) == 5 and pages == 3
    # A large one: every tenant exactly once, no page above its bound.
    more = [f"u{i:04d}" for i in range(600)]
    pipe = redis_client.pipeline(transaction=False)
    for tid in more:
        body = {"tenant_id": tid, "quota": {}, "weight": 1.0, "version": 1}
        pipe.hset(tk.registry(prefix), tid, orjson.dumps(body))
    await pipe.execute()
    seen, pages = await _walk(c, 50)
    assert sorted(seen) == sorted(ids + more) and pages >= 600 // 50
    seen, _ = await _walk(c, 10**9)  # asks for more than a page may hold
    assert sorted(seen) == sorted(ids + more)
    r = await c.get("/q/tq/tenants?limit=100000")
    assert len(rows_of(r.text, "tenant")) == MAX_TENANTS_PAGE
    # A cursor the page did not make: said, and the first page shown.
    for bad in ("x", "1", "-1.0", "9" * 50 + ".1", "\u0661.0", f"{2**64}.0"):
        r = await c.get("/q/tq/tenants", params={"cursor": bad})
        assert r.status_code == 200 and "not one this page made" in r.text, bad
        assert len(rows_of(r.text, "tenant")) == 50


async def test_a_page_of_tenants_reads_their_usage_in_a_bounded_number_of_round_trips(
    make_queue: QueueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page read each tenant's usage with its own script call: a page of 50 tenants
    made more than 50 round trips to Redis. They are now read in one pipeline."""
    from redis.asyncio.connection import AbstractConnection

    q = make_queue("tq")
    reg = TenantRegistry(q)
    ids = [f"t{i:03d}" for i in range(60)]
    for tid in ids:
        await reg.create_tenant({"tenant_id": tid})
    # Tenant i has i % 4 jobs waiting: each row must show its own tenant's count.
    await q.add_jobs([("n", {}, {"tenant_id": t}) for i, t in enumerate(ids) for _ in range(i % 4)])
    app = create_dashboard(queues=[q], tokens=TOKENS, refresh_ms=0)
    c = await signed_in(app, VIEWER)
    trips = 0
    send = AbstractConnection.send_packed_command

    async def counted(conn: Any, command: Any, check_health: bool = True) -> None:
        nonlocal trips
        trips += 1
        await send(conn, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)
    for _ in range(2):  # the first may send the script's source once more
        trips = 0
        r = await c.get("/q/tq/tenants?limit=50")
        page_trips = trips
        assert r.status_code == 200, r.text
        rows = rows_of(r.text, "tenant")
        assert len(rows) == 50
        cells = {k: re.findall(r"<td[^>]*>(.*?)</td>", v, re.S) for k, v in rows.items()}
        assert {tid: row[7] for tid, row in cells.items()} == {
            tid: str(int(tid[1:]) % 4) for tid in rows
        }
        assert 1 <= page_trips <= 12, page_trips


# ---------------------------------------------------------------------------- encryption
async def test_the_encryption_page_shows_key_ids_and_rotation_never_keys(
    tmp_path: Path,
    redis_url: str,
    prefix: str,
    redis_client: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    k1, k2 = generate_key(), generate_key()
    monkeypatch.setenv("KQ_DASH_K1", k1)
    monkeypatch.setenv("KQ_DASH_K2", k2)
    source = (
        "from kitium_queue import JobQueue\n"
        "from kitium_queue.features.encryption import EncryptionManager, KeyConfig\n"
        f"queue = JobQueue('eq', redis={redis_url!r}, prefix={prefix!r})\n"
        "enc = EncryptionManager(queue, keys=[KeyConfig.from_env('KQ_DASH_K1', 'k1'),\n"
        "    KeyConfig.from_env('KQ_DASH_K2', 'k2')], rotation_grace_ms=0)\n"
    )
    q = JobQueue("eq", redis=redis_url, prefix=prefix)
    try:
        enc = EncryptionManager(
            q,
            keys=[KeyConfig("k1", k1), KeyConfig("k2", k2)],
            rotation_grace_ms=0,
            run_rotation=False,
        )
        await enc.initialize()
        for i in range(5):
            await q.add_job("pay", {"card": "4111", "i": i}, encrypted=True)
        app = create_dashboard(queues=[q], tokens=TOKENS, refresh_ms=0)
        c = await signed_in(app, VIEWER)
        r = await c.get("/q/eq/encryption")
        assert r.status_code == 200, r.text
        keys = rows_of(r.text, "key")
        assert set(keys) == {"k1", "k2"}
        assert "active" in keys["k1"] and "decrypt-only" in keys["k2"]
        assert "none yet" in r.text  # no rotation yet
        await enc.rotate_key("k1", "k2")
        await enc.run_rotation()
        r = await c.get("/q/eq/encryption")
        keys = rows_of(r.text, "key")
        assert "active" in keys["k2"] and "decrypt-only" in keys["k1"]
        assert 'value="100.0"' in r.text and "st-done" in r.text
        with app_module(tmp_path, source, "kq_dash_enc") as module:
            shown = json.loads(await cli("encryption", "status", f"{module}:queue", "--json"))
        assert set(keys) == set(shown["key_ids"]) and shown["current_key_id"] == "k2"
        assert f"<code>{shown['current_key_id']}</code>" in r.text
        assert f"{shown['reencrypted']}</dd>" in r.text and shown["reencrypted"] >= 5
        for secret in (k1, k2, "4111"):
            assert secret not in r.text  # never key material, never a payload
        # Damaged records: said, 200, escaped.
        await redis_client.hset(q.keys.extra("enc:keys"), "<script>alert(1)</script>", 1)
        await redis_client.hset(
            q.keys.extra("enc:rotation"), mapping={"state": HOSTILE, "problems": HOSTILE}
        )
        r = await c.get("/q/eq/encryption")
        assert r.status_code == 200 and 'id="encryption-damaged"' in r.text
        assert "not key ids" in r.text and "not a rotation record" in r.text
        assert_escaped(r.text)
        assert "&lt;b&gt;x&lt;/b&gt;" in r.text  # the problems, escaped
        await redis_client.delete(q.keys.extra("enc:keys"))
        await redis_client.set(q.keys.extra("enc:keys"), "x")
        r = await c.get("/q/eq/encryption")
        assert r.status_code == 200 and "holds another type" in r.text
    finally:
        await q.close()


# ---------------------------------------------------------------------------- regions
def _region_config(redis_url: str, prefix: str) -> dict[str, Any]:
    base = redis_url.rsplit("/", 1)[0]
    return {
        "name": "gq",
        "regions": [
            {"region": n, "redis": f"{base}/{i + 7}", "is_primary": i == 0, "priority": i or 9}
            for i, n in enumerate(REGIONS)
        ],
        "queue_options": {"prefix": prefix},
        "background": False,
    }


async def test_the_regions_page_lists_what_the_cli_lists(
    tmp_path: Path, redis_url: str, prefix: str
) -> None:
    cfg = _region_config(redis_url, prefix)
    m = GlobalQueueManager()
    await m.initialize(cfg)
    try:
        jid = await m.add_job("n", {"secret": "not shown"})
        await m.replicate_job(jid, [REGIONS[1], REGIONS[2]])
        lane = m.region(REGIONS[0]).lane
        # The whole manager holds a "gq" per region: refused, saying what to give.
        with pytest.raises(ConfigurationError, match="one dashboard per region"):
            create_dashboard(queues=[m], tokens=TOKENS, refresh_ms=0)
        home = m.region(REGIONS[0]).home
        app = create_dashboard(queues=[lane, home], tokens=TOKENS, refresh_ms=0)
        c = await signed_in(app, VIEWER)
        r = await c.get("/q/gq/regions")
        assert r.status_code == 200, r.text
        # The region's own queue ("gq/<region>") is served under its ~ spelling.
        assert home.name == f"gq/{REGIONS[0]}"
        assert (await c.get(f"/q/gq~{REGIONS[0]}")).status_code == 200
        rows = rows_of(r.text, "region")
        source = (
            "from kitium_queue.features.regions import GlobalQueueManager\n"
            f"regions = GlobalQueueManager({cfg!r})\n"
        )
        with app_module(tmp_path, source, "kq_dash_regions") as module:
            shown = json.loads(await cli("regions", "status", f"{module}:regions", "--json"))
        assert list(rows) == [x["region"] for x in shown["regions"]] == list(REGIONS)
        for x in shown["regions"]:
            cells = re.findall(r"<td[^>]*>(.*?)</td>", rows[x["region"]], re.S)
            assert cells[1] == x["role"]
            assert cells[2].startswith("healthy") == x["healthy"]
            assert cells[3] == str(x["epoch"])
            assert cells[14] == "ok"
        assert f'<dd id="primary">{shown["primary"]}</dd>' in r.text
        assert "primary" in rows[REGIONS[0]] and "not shown" not in r.text
        assert 'href="/q/gq/regions"' in (await c.get("/q/gq")).text

        # Damaged records: a secondary's fields written by hand, another's key of
        # another type. Both shown as damaged, escaped, with a 200.
        third = await m.region(REGIONS[2]).lane.client()
        await third.hset(
            m.region(REGIONS[2]).lane.keys.extra("rg"),
            mapping={"primary": HOSTILE + "\x1b", "lease": "soon"},
        )
        second = m.region(REGIONS[1]).lane
        client = await second.client()
        await client.delete(second.keys.extra("rg"))
        await client.set(second.keys.extra("rg"), "x")
        r = await c.get("/q/gq/regions")
        assert r.status_code == 200, r.text
        assert_escaped(r.text)
        rows = rows_of(r.text, "region")
        assert "st-damaged" in rows[REGIONS[2]] and "lease is not an integer" in rows[REGIONS[2]]
        assert "is no configured region" in rows[REGIONS[2]]
        assert "st-damaged" in rows[REGIONS[1]] and "another Redis type" in rows[REGIONS[1]]
        assert "down" in rows[REGIONS[1]]  # its record cannot be read: not healthy
        assert "st-damaged" not in rows[REGIONS[0]]
    finally:
        await m.close()


# ---------------------------------------------------------------------------- access
async def test_without_the_feature_each_page_is_the_404_of_other_feature_pages(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("plain")
    app = create_dashboard(queues=[q], tokens=TOKENS, refresh_ms=0)
    c = await signed_in(app, VIEWER)
    other = await c.get("/q/plain/webhooks")
    assert other.status_code == 404
    shape = re.sub(r'<p class="flash bad" role="alert" id="error">.*?</p>', "", other.text)
    for page in ("tenants", "encryption", "regions"):
        r = await c.get(f"/q/plain/{page}")
        assert r.status_code == 404, page
        assert re.sub(r'<p class="flash bad" role="alert" id="error">.*?</p>', "", r.text) == shape
        assert "not" in re.search(r'id="error">(.*?)</p>', r.text).group(1)  # type: ignore[union-attr]
        assert (await c.get(f"/q/nope/{page}")).status_code == 404
        assert f'href="/q/plain/{page}"' not in r.text  # no tab either


async def test_a_viewer_reads_through_the_read_guards_and_no_session_is_refused(
    make_queue: QueueFactory, redis_url: str, prefix: str
) -> None:
    assert read_permission("list_tenants") is Permission.VIEW_JOB
    assert read_permission("region_status") is Permission.VIEW_JOB
    q = make_queue("tq")
    TenantRegistry(q)
    EncryptionManager(q, keys=[KeyConfig("k1", generate_key())], run_rotation=False)
    m = GlobalQueueManager()
    await m.initialize(_region_config(redis_url, prefix))
    lane = m.region(REGIONS[0]).lane
    seen: list[ReadCall] = []
    refuse: set[str] = set()

    def guard(call: ReadCall) -> None:
        seen.append(call)
        if call.query in refuse:
            raise PermissionDeniedError(f"{call.principal} may not {call.query}")

    q.queries.add_guard(guard)
    lane.queries.add_guard(guard)
    try:
        app = create_dashboard(queues=[q, lane], tokens=TOKENS, refresh_ms=0)
        anon = client_for(app)
        for path in ("/q/tq/tenants", "/q/tq/encryption", "/q/gq/regions"):
            r = await anon.get(path)
            assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")
            r = await anon.get(path, headers={"authorization": "Bearer " + "x" * 40})
            assert r.status_code == 303
        assert seen == []  # nothing was read for them
        c = await signed_in(app, VIEWER)
        for path in ("/q/tq/tenants", "/q/tq/encryption", "/q/gq/regions"):
            assert (await c.get(path)).status_code == 200, path
        reads = {(x.queue, x.query, x.principal) for x in seen}
        assert ("tq", "list_tenants", "vera@example.com") in reads
        assert ("tq", "rotation_status", "vera@example.com") in reads
        assert ("gq", "region_status", "vera@example.com") in reads
        refuse |= {"list_tenants", "rotation_status", "region_status"}
        for path in ("/q/tq/tenants", "/q/tq/encryption", "/q/gq/regions"):
            r = await c.get(path)
            assert r.status_code == 403 and "may not" in r.text, path
    finally:
        await m.close()
