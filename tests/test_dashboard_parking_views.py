"""The dashboard's parked-jobs page (blockers, the ids behind one, flow control, slot
errors), its "Rebuild parked sets" action (roles, dry run on the confirm page, the
repair, audit, CSRF) and its alerts page, through the ASGI app on a real Redis.

Jobs are parked with the engine's scripts on an explicit clock (``test_parking.Engine``):
a concurrency key at its cap of 1 holds the jobs behind it."""

from __future__ import annotations

import html
import re
import secrets

import pytest
import redis.asyncio as aioredis
from markupsafe import escape

from helpers import QueueFactory
from kitium_queue import AlertManager, JobQueue, JobStatus
from kitium_queue.dashboard import create_dashboard
from kitium_queue.features.audit import AuditLog
from kitium_queue.parking import park_stats, parked_by_blocker, parked_count, parked_in
from test_dashboard_asgi import MANAGER, OPERATOR, TOKENS, VIEWER, client_for, csrf_of, signed_in
from test_parking import T0, Engine

pytestmark = pytest.mark.redis_only

HOSTILE = "<script>alert('k')</script>&amp;\"x"


async def _capped(make_queue: QueueFactory, name: str = "shop") -> tuple[JobQueue, Engine, str]:
    """Every concurrency key capped at 1; key 'k' held by w0 with p1..p3 parked behind
    it, the hostile key held by h0 with h1 parked. Returns w0's lease token."""
    q = make_queue(name)
    q.set_concurrency_limit("*", 1)
    e = Engine(q)
    await e.add(T0, "w0", concurrency_key="k")
    await e.add(T0, "h0", concurrency_key=HOSTILE)
    _, _, got, token = await e.claim(T0)
    assert sorted(got) == ["h0", "w0"]
    for i in (1, 2, 3):
        await e.add(T0, f"p{i}", concurrency_key="k")
    await e.add(T0, "h1", concurrency_key=HOSTILE)
    return q, e, token


def _ids(page: str) -> list[str]:
    """The ids listed behind the chosen blocker (unescaped)."""
    part = page.split('id="parked-ids"', 1)[1].split("</section>", 1)[0]
    return [
        html.unescape(i) for i in re.findall(r"<li><a href=\"[^\"]+\"><code>(.*?)</code>", part)
    ]


def _blockers(page: str) -> list[tuple[str, int]]:
    rows = re.findall(r'<tr data-blocker="([^"]*)">.*?<td class="num">(\d+)</td>', page, re.S)
    return [(html.unescape(b), int(n)) for b, n in rows]


async def _snapshot(q: JobQueue) -> dict[bytes, bytes | None]:
    client = await q.client()
    keys = sorted([k async for k in client.scan_iter(match=f"{q.keys.base}*", count=1000)])
    return {k: await client.dump(k) for k in keys}


# ---------------------------------------------------------------------- the parked page
async def test_the_parked_page_lists_blockers_and_ids_as_parking_reads_them(
    make_queue: QueueFactory,
) -> None:
    q, _, _ = await _capped(make_queue)
    plain = make_queue("plain")  # no feature parks jobs on it
    app = create_dashboard(queues=[q, plain], tokens=TOKENS, refresh_ms=0)
    c = await signed_in(app, VIEWER)
    # The tab is there for the queue that parks jobs, not for the other.
    assert 'href="/q/shop/parked"' in (await c.get("/q/shop")).text
    assert "/parked" not in (await c.get("/q/plain")).text
    assert (await c.get("/q/plain/parked")).status_code == 404

    r = await c.get("/q/shop/parked")
    assert r.status_code == 200, r.text
    assert _blockers(r.text) == list((await parked_by_blocker(q)).items())
    assert _blockers(r.text) == [("cc:k", 3), (f"cc:{HOSTILE}", 1)]
    stats = await park_stats(q)
    assert f"{stats.total} job(s) parked behind {stats.blockers} blocker(s)" in r.text
    # The largest blocker's ids are shown first, each linking to its job's page.
    assert _ids(r.text) == await parked_in(q, "cc:k") == ["p1", "p2", "p3"]
    assert 'href="/q/shop/jobs/p1"' in r.text
    # Paged: two at a time, with a link on to the rest.
    r = await c.get("/q/shop/parked?blocker=cc%3Ak&limit=2")
    assert _ids(r.text) == await parked_in(q, "cc:k", 2) == ["p1", "p2"]
    assert 'id="next-ids"' in r.text and "offset=2" in r.text
    r = await c.get("/q/shop/parked?blocker=cc%3Ak&limit=2&offset=2")
    assert _ids(r.text) == await parked_in(q, "cc:k", 2, 2) == ["p3"]
    assert 'id="next-ids"' not in r.text
    # Flow control: the declaration, and the key's counter at its cap.
    assert "concurrency cap" in r.text and "<code>*</code>" in r.text
    counters = r.text.split('id="flow-counters"', 1)[1]
    assert re.search(r"<code>k</code></td><td>1 running</td>\s*<td>1 running <span", counters)
    # A viewer sees no repair button.
    assert 'data-action="rebuild-parked"' not in r.text


async def test_hostile_blocker_names_and_ids_come_out_escaped(make_queue: QueueFactory) -> None:
    q, e, _ = await _capped(make_queue)
    await e.add(T0, f"<img src=x onerror=alert(1)>{HOSTILE}", concurrency_key=HOSTILE)
    app = create_dashboard(queues=[q], tokens=TOKENS, refresh_ms=0)
    c = await signed_in(app, VIEWER)
    blocker = f"cc:{HOSTILE}"
    r = await c.get("/q/shop/parked")
    assert r.status_code == 200
    assert "<script>" not in r.text and "<img" not in r.text
    assert (blocker, 2) in _blockers(r.text)  # read back from the escaped attribute
    assert f"<code>{escape(blocker)}</code>" in r.text
    r = await c.get("/q/shop/parked", params={"blocker": blocker})
    assert r.status_code == 200 and "<script>" not in r.text
    assert _ids(r.text) == await parked_in(q, blocker)
    assert _ids(r.text) == ["h1", f"<img src=x onerror=alert(1)>{HOSTILE}"]
    assert "<img" not in r.text and "&lt;img src=x onerror=alert(1)&gt;" in r.text
    # A blocker name too long for any key is refused, not looked up.
    r = await c.get("/q/shop/parked", params={"blocker": "cc:" + "x" * 700})
    assert r.status_code == 200 and "at most 600 characters" in r.text


async def test_a_damaged_parked_set_and_index_show_as_damaged(make_queue: QueueFactory) -> None:
    q, e, token = await _capped(make_queue)
    client = await q.client()
    key = q.keys.parked("cc:k")
    await client.delete(key)
    await client.set(key, "x")  # by hand: another type
    app = create_dashboard(queues=[q], tokens=TOKENS, refresh_ms=0)
    c = await signed_in(app, VIEWER)
    r = await c.get("/q/shop/parked")
    assert r.status_code == 200, r.text
    row = r.text.split('<tr data-blocker="cc:k">', 1)[1].split("</tr>", 1)[0]
    assert "damaged" in row and str(escape(key)) in row and "holds a string" in row
    # Its ids cannot be read: the page says which key and how to repair it.
    err = r.text.split('id="ids-error"', 1)[1].split("</p>", 1)[0]
    assert str(escape(key)) in err and "rebuild_parked" in err
    # Once a script met it (w0's release), slot-errors records it, with the repair.
    await e.complete(T0 + 1, "w0", token)
    r = await c.get("/q/shop/parked")
    assert r.status_code == 200
    errors = r.text.split('id="slot-errors"', 1)[1].split("</section>", 1)[0]
    assert str(escape(key)) in errors and "damaged" in errors
    assert "kitium-queue parked rebuild" in errors
    # The index itself damaged: the page still answers, naming it.
    await client.delete(q.keys.parked_index)
    await client.hset(q.keys.parked_index, "x", "y")
    r = await c.get("/q/shop/parked")
    assert r.status_code == 200, r.text
    errors = r.text.split('id="slot-errors"', 1)[1].split("</section>", 1)[0]
    assert str(escape(q.keys.parked_index)) in errors and "read failed" in errors
    assert "No parked jobs." in r.text  # nothing can be listed from it
    # A set deleted by hand: its jobs are stranded, and the row says so.
    await client.delete(q.keys.parked_index)
    await client.zadd(q.keys.parked_index, {"cc:gone": 2})
    r = await c.get("/q/shop/parked")
    row = r.text.split('<tr data-blocker="cc:gone">', 1)[1].split("</tr>", 1)[0]
    assert "missing" in row and "stranded" in row
    # Every other key the page reads, overwritten too: still a page, naming the damage.
    from kitium_queue.features.flowcontrol import concurrency_key, concurrency_owners_key

    q.set_concurrency_limit("k", 1)  # an exact pattern: its counter is always read
    for k in (
        q.keys.meta,
        q.keys.park_timers,
        q.keys.slot_errors,
        q.keys.active,
        concurrency_owners_key(q.keys),
        concurrency_key(q.keys, "k"),
    ):
        await client.delete(k)
        await client.set(k, "x")
    r = await c.get("/q/shop/parked")
    assert r.status_code == 200, r.text
    errors = r.text.split('id="slot-errors"', 1)[1].split("</section>", 1)[0]
    for k in (q.keys.meta, q.keys.park_timers, q.keys.slot_errors):
        assert str(escape(k)) in errors
    flow = r.text.split('id="flow-control"', 1)[1]
    assert flow.count("damaged") == 3  # running now, the owners, key k's counter
    assert re.search(
        r"<code>k</code></td><td>1 running</td>\s*<td><span class=\"badge warn\">damaged", flow
    )


# ---------------------------------------------------------------------- the repair
async def test_rebuild_roles_dry_run_repair_audit_and_csrf(
    make_queue: QueueFactory, backend_url: str, prefix: str
) -> None:
    q, e, token = await _capped(make_queue)
    client: aioredis.Redis = await q.client()
    await client.delete(q.keys.parked("cc:k"))  # by hand: p1..p3 stranded
    await e.complete(T0 + 1, "w0", token)  # the release frees nothing
    assert await parked_count(q) == 4
    log = AuditLog(backend_url, prefix=prefix, key=secrets.token_hex(32))
    try:
        app = create_dashboard(queues=[q], tokens=TOKENS, refresh_ms=0, access=log)
        before = await _snapshot(q)
        # Viewers and operators are refused before anything runs.
        for tok in (VIEWER, OPERATOR):
            c = await signed_in(app, tok)
            csrf = csrf_of((await c.get("/q/shop/parked")).text)
            r = await c.post("/q/shop/action/rebuild-parked", data={"csrf": csrf})
            assert r.status_code == 403 and "needs the manager role" in r.text
            r = await c.post("/q/shop/action/rebuild-parked", data={"csrf": csrf, "confirm": "yes"})
            assert r.status_code == 403
        assert await _snapshot(q) == before
        # A manager: the button, then CSRF is required.
        mgr = await signed_in(app, MANAGER)
        page = (await mgr.get("/q/shop/parked")).text
        assert 'data-action="rebuild-parked"' in page
        r = await mgr.post("/q/shop/action/rebuild-parked", data={"confirm": "yes"})
        assert r.status_code == 403 and "CSRF" in r.text
        r = await mgr.post(
            "/q/shop/action/rebuild-parked", data={"csrf": "x" * 32, "confirm": "yes"}
        )
        assert r.status_code == 403
        assert await _snapshot(q) == before
        # First the dry run's report on the confirm page: nothing written.
        csrf = csrf_of(page)
        r = await mgr.post(
            "/q/shop/action/rebuild-parked", data={"csrf": csrf, "next": "/q/shop/parked"}
        )
        assert r.status_code == 200 and 'id="confirm"' in r.text
        summary = html.unescape(r.text.split('id="summary">', 1)[1].split("</p>", 1)[0])
        assert "3 of 4 parked job(s) to be put back (3 sent on to wait)" in summary, summary
        assert "<code>blocker cc:k</code>" in r.text
        assert await _snapshot(q) == before
        assert await parked_count(q) == 4
        # Confirmed: the repair runs and its result is flashed.
        fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', r.text))
        assert fields["confirm"] == "yes" and fields["next"] == "/q/shop/parked"
        r = await mgr.post("/q/shop/action/rebuild-parked", data=fields)
        assert r.status_code == 303 and r.headers["location"] == "/q/shop/parked"
        r = await mgr.get("/q/shop/parked")
        flash = html.unescape(r.text.split('role="status">', 1)[1].split("</div>", 1)[0])
        assert "parked sets rebuilt: 3 of 4 parked job(s) put back (3 sent on to wait)" in flash
        # The stranded jobs are back in wait (the key's slot is free since w0 finished);
        # claim's admission runs one and parks the others behind the key again.
        assert await parked_count(q) == 1  # h1 only, behind the hostile key
        for jid in ("p1", "p2", "p3"):
            assert await e.status(jid) is JobStatus.WAITING
        _, _, got, _ = await e.claim(T0 + 2)
        assert got == ["p1"]
        assert await parked_in(q, "cc:k") == ["p2", "p3"]
        assert await e.status("p2") is JobStatus.PENDING
        # Both calls passed the admin choke point and are in the audit log, by whom.
        await log.flush()
        done = await log.query(action="queue.rebuild_parked", newest_first=False)
        assert [(x.principal, x.resource, x.outcome) for x in done] == [
            ("max@example.com", "shop", "ok"),
            ("max@example.com", "shop", "ok"),
        ]
        assert [x.metadata["args"]["dry_run"] for x in done] == [True, False]
        denied = await log.query(action="access.denied", newest_first=False)
        assert [x.metadata["action"] for x in denied] == ["rebuild-parked"] * 4
    finally:
        await log.close()


async def test_rebuild_of_one_damaged_set_from_its_row(make_queue: QueueFactory) -> None:
    q, e, token = await _capped(make_queue)
    client = await q.client()
    key = q.keys.parked("cc:k")
    await client.delete(key)
    await client.hset(key, "x", "y")
    app = create_dashboard(queues=[q], tokens=TOKENS, refresh_ms=0)
    mgr = await signed_in(app, MANAGER)
    page = (await mgr.get("/q/shop/parked")).text
    row = page.split('<tr data-blocker="cc:k">', 1)[1].split("</tr>", 1)[0]
    assert 'name="blocker" value="cc:k"' in row
    data = {"csrf": csrf_of(page), "blocker": "cc:k", "next": "/q/shop/parked"}
    r = await mgr.post("/q/shop/action/rebuild-parked", data=data)
    assert "<code>blocker cc:k</code>" in r.text and str(escape(f"damaged key {key}")) in r.text
    r = await mgr.post("/q/shop/action/rebuild-parked", data={**data, "confirm": "yes"})
    assert r.status_code == 303
    # The hash is gone; its jobs went on to wait through the rebuilt set.
    assert await client.type(key) == b"none"
    assert [await e.status(j) for j in ("p1", "p2", "p3")] == [JobStatus.WAITING] * 3
    # w0 still holds the key: back in wait, the admission parks them behind it again.
    _, _, got, _ = await e.claim(T0 + 1)
    assert got == []
    assert await parked_in(q, "cc:k") == ["p1", "p2", "p3"]
    assert await parked_in(q, f"cc:{HOSTILE}") == ["h1"]  # another blocker: untouched
    await e.complete(T0 + 2, "w0", token)
    assert (await e.claim(T0 + 3))[2] == ["p1"]


# ---------------------------------------------------------------------- the alerts page
async def test_the_alerts_page_shows_a_fired_rule_and_damage(make_queue: QueueFactory) -> None:
    q = make_queue("shop")
    bare = make_queue("bare")
    rules = [
        {"name": "backlog", "metric": "queue_depth", "threshold": 2, "clear_below": 1},
        {"name": "dead", "metric": "dlq_growth", "threshold": 5},
    ]
    m = AlertManager(q, rules, run_service=False)
    app = create_dashboard(queues=[q, bare], tokens=TOKENS, refresh_ms=0)
    c = await signed_in(app, VIEWER)
    assert (await c.get("/q/bare/alerts")).status_code == 404
    assert "/alerts" not in (await c.get("/q/bare")).text
    assert 'href="/q/shop/alerts"' in (await c.get("/q/shop")).text
    r = await c.get("/q/shop/alerts")
    assert r.status_code == 200 and "No changes recorded." in r.text
    for _ in range(3):
        await q.add_job("n", {})
    (fired,) = await m.evaluate(1)
    assert fired.state == "firing"
    (state,) = [s for s in await m.states() if s.rule == "backlog"]
    r = await c.get("/q/shop/alerts")
    assert r.status_code == 200
    row = r.text.split('<tr data-rule="backlog">', 1)[1].split("</tr>", 1)[0]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
    assert cells[2:5] == ["2", "1.0", "3.0"]  # threshold, clears below, value now
    assert "firing" in cells[5] and cells[6] != "-" and state.since_ms is not None
    assert cells[7] == "firing at 3"
    other = r.text.split('<tr data-rule="dead">', 1)[1].split("</tr>", 1)[0]
    assert "clear" in other and "over 60000 ms" in other
    history = r.text.split('id="alert-history"', 1)[1]
    assert "<code>backlog</code></td><td>firing</td><td>queue_depth</td>" in history
    # The states' key overwritten by hand: shown as damaged, never a 500.
    client = await q.client()
    await client.delete(q.keys.extra("alerts:state"))
    await client.set(q.keys.extra("alerts:state"), "x")
    await client.delete(q.keys.extra("alerts:log"))
    await client.hset(q.keys.extra("alerts:log"), "x", "<b>y</b>")
    r = await c.get("/q/shop/alerts")
    assert r.status_code == 200, r.text
    row = r.text.split('<tr data-rule="backlog">', 1)[1].split("</tr>", 1)[0]
    assert "damaged" in row
    for suffix, found in (("alerts:state", "string"), ("alerts:log", "hash")):
        assert f'data-damaged="{escape(q.keys.extra(suffix))}"' in r.text
        assert f"holds a {found}" in r.text
    assert "No changes recorded." in r.text


async def test_reads_need_the_view_grant_on_a_protected_queue(
    make_queue: QueueFactory, backend_url: str, prefix: str
) -> None:
    from kitium_queue.features.access import AccessControlManager

    q, _, _ = await _capped(make_queue)
    AlertManager(
        q, [{"name": "backlog", "metric": "queue_depth", "threshold": 2}], run_service=False
    )
    acm = AccessControlManager(backend_url, prefix=prefix, audit_key=secrets.token_hex(32))
    try:
        await acm.grant_access(principal_id="max@example.com", queue_pattern="shop", role="viewer")
        acm.protect(q)
        app = create_dashboard(queues=[q], tokens=TOKENS, refresh_ms=0, access=acm)
        vera = await signed_in(app, VIEWER)  # a viewer token, but no grant
        # (blocker= empty: no ids asked for, only the counts and flow control)
        for path in ("/q/shop/parked", "/q/shop/parked?blocker=", "/q/shop/alerts"):
            r = await vera.get(path)
            assert r.status_code == 403 and "needs can_view_job" in r.text, path
            assert "cc:k" not in r.text
        mx = await signed_in(app, MANAGER)  # the manager role, a viewer's grant
        assert (await mx.get("/q/shop/alerts")).status_code == 200
        page = await mx.get("/q/shop/parked")
        assert page.status_code == 200 and "cc:k" in page.text
        before = await _snapshot(q)
        r = await mx.post("/q/shop/action/rebuild-parked", data={"csrf": csrf_of(page.text)})
        assert r.status_code == 403 and "can_manage_queue" in r.text
        assert await _snapshot(q) == before
    finally:
        await acm.close()


async def test_a_signed_out_client_is_sent_to_sign_in(make_queue: QueueFactory) -> None:
    q, _, _ = await _capped(make_queue)
    app = create_dashboard(queues=[q], tokens=TOKENS, refresh_ms=0)
    c = client_for(app)
    for path in ("/q/shop/parked", "/q/shop/alerts"):
        r = await c.get(path)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")
    r = await c.post("/q/shop/action/rebuild-parked", data={"confirm": "yes"})
    assert r.status_code == 303 and await parked_count(q) == 4
