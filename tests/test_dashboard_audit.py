"""The dashboard with an audit log (``create_dashboard(access=...)``), as a plain ASGI
application: the Audit page (who may see it, filters, paging, escaping), "verify
chain" (admins, CSRF, the first broken entry), the dashboard's actions and refusals in
the log, and a protected queue where the dashboard role and the grants both apply."""

from __future__ import annotations

import html
import re
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import QueueFactory
from kitium_queue import ConfigurationError, FIFOQueueManager, JobQueue, acting_as
from kitium_queue.dashboard import create_dashboard
from kitium_queue.dashboard.audit import AuditFilter
from kitium_queue.features.access import AccessControlManager
from kitium_queue.features.audit import AuditLog
from test_dashboard_asgi import ADMIN, MANAGER, OPERATOR, TOKENS, VIEWER, client_for, csrf_of

KEY = secrets.token_hex(32)


@pytest.fixture
async def acm(backend_url: str, prefix: str) -> AsyncIterator[AccessControlManager]:
    manager = AccessControlManager(backend_url, prefix=prefix, audit_key=KEY)
    yield manager
    await manager.close()


@pytest.fixture
def shop(make_queue: QueueFactory) -> JobQueue:
    q = make_queue("shop")
    FIFOQueueManager(q)
    return q


async def as_(app: Any, token: str) -> httpx.AsyncClient:
    c = client_for(app)
    r = await c.post("/login", data={"token": token, "next": "/"})
    assert r.status_code == 303, r.text
    return c


def rows(page: str) -> list[dict[str, str]]:
    """The entries listed on an audit page (cell text, unescaped)."""
    out = []
    for m in re.finditer(r'<tr data-id="([^"]+)">(.*?)</tr>', page, re.S):
        cells = dict(
            re.findall(r'<td class="(\w+)[^"]*"[^>]*>(?:<[^>]+>)*(.*?)(?:</\w+>)*</td>', m[2])
        )
        cells["id"] = m[1]
        out.append({k: html.unescape(v) for k, v in cells.items()})
    return out


# ---------------------------------------------------------------------- configuration
async def test_access_takes_a_manager_or_an_audit_log(shop: JobQueue) -> None:
    with pytest.raises(ConfigurationError, match="access= takes an AccessControlManager"):
        create_dashboard(queues=[shop], tokens=TOKENS, access="redis://x")
    plain = create_dashboard(queues=[shop], tokens=TOKENS, refresh_ms=0)
    c = await as_(plain, ADMIN)
    assert 'id="audit-link"' not in (await c.get("/")).text
    r = await c.get("/audit")
    assert r.status_code == 404 and "no audit log" in r.text


# ---------------------------------------------------------------------- who sees it
async def test_managers_and_admins_see_the_page_and_refusals_are_audited(
    shop: JobQueue, acm: AccessControlManager
) -> None:
    app = create_dashboard(queues=[shop], tokens=TOKENS, refresh_ms=0, access=acm)
    await acm.audit_access("alice", "export", "shop")
    manager = await as_(app, MANAGER)
    page = (await manager.get("/")).text
    assert 'id="audit-link"' in page
    r = await manager.get("/audit")
    assert r.status_code == 200 and [e["action"] for e in rows(r.text)] == ["export"]
    assert 'id="verify-chain"' not in r.text  # verifying is an admin's
    admin = await as_(app, ADMIN)
    assert 'id="verify-chain"' in (await admin.get("/audit")).text
    for token, who, role in (
        (VIEWER, "vera@example.com", "viewer"),
        (OPERATOR, "olivia@example.com", "operator"),
    ):
        c = await as_(app, token)
        assert 'id="audit-link"' not in (await c.get("/")).text
        r = await c.get("/audit")
        assert r.status_code == 403 and "Refused" in r.text
        assert f"{who} ({role}) may not view-audit: it needs the manager role" in r.text
        assert "export" not in r.text
    # A manager's crafted verify is refused too, after the CSRF check.
    csrf = csrf_of((await manager.get("/audit")).text)
    assert (await manager.post("/audit/verify", data={})).status_code == 403
    r = await manager.post("/audit/verify", data={"csrf": csrf})
    assert r.status_code == 403 and "needs the admin role" in r.text
    await acm.audit.flush()
    denied = await acm.query_audit_log(action="access.denied", newest_first=False)
    assert [(e.principal, e.resource, e.metadata["action"]) for e in denied] == [
        ("vera@example.com", "audit", "view-audit"),
        ("olivia@example.com", "audit", "view-audit"),
        ("max@example.com", "audit", "verify-audit"),
    ]
    assert all(e.metadata["via"] == "dashboard" and e.outcome == "denied" for e in denied)
    assert denied[0].metadata["needs_role"] == "manager"


# ---------------------------------------------------------------------- filters, pages
async def test_filters_paging_and_escaping(shop: JobQueue, acm: AccessControlManager) -> None:
    app = create_dashboard(queues=[shop], tokens=TOKENS, refresh_ms=0, access=acm)
    ids = [
        await acm.audit_access("alice@acme.com", "export", f"acme-{i}", {"i": i}) for i in range(5)
    ]
    for i in range(2):
        await acm.audit_access("bob", "login", "globex", {"i": i}, outcome="denied")
    hostile = "<script>alert(1)</script>"
    await acm.audit_access(
        "mallory<b>", "note", hostile, {"x": '<img src=x onerror="alert(2)">', "q": "\"'&"}
    )
    c = await as_(app, MANAGER)

    async def listed(**params: str) -> list[dict[str, str]]:
        r = await c.get("/audit", params=params)
        assert r.status_code == 200, r.text
        return rows(r.text)

    everything = await listed()
    assert [e["principal"] for e in everything] == [
        "mallory<b>",
        "bob",
        "bob",
        *["alice@acme.com"] * 5,
    ]
    assert [int(e["n"]) for e in everything] == list(range(8, 0, -1))  # newest first
    alice = await listed(principal="alice@acme.com")
    assert [e["id"] for e in alice] == ids[::-1]
    assert [e["resource"] for e in await listed(resource="acme-[3-4]")] == ["acme-4", "acme-3"]
    assert len(await listed(action="exp*")) == 5
    assert [e["principal"] for e in await listed(outcome="denied")] == ["bob", "bob"]
    assert await listed(principal="alice@acme.com", outcome="denied") == []
    # Time range: ms since the epoch or ISO-8601 (UTC), inclusive.
    newest = int(ids[-1].split("-")[0])
    assert len(await listed(since=str(newest + 10_000))) == 0
    assert len(await listed(until="2001-01-01T00:00")) == 0
    assert len(await listed(since="2001-01-01T00:00Z", principal="bob")) == 2
    assert len(await listed(until=str(newest + 10_000), action="export")) == 5
    r = await c.get("/audit", params={"since": "yesterday"})
    assert "must be ms since the epoch or an ISO-8601 time" in r.text and rows(r.text) == []
    # Paging: two per page, by the link the page gives.
    seen: list[str] = []
    r = await c.get("/audit", params={"principal": "alice@acme.com", "limit": "2"})
    while True:
        got = rows(r.text)
        assert len(got) <= 2
        seen += [e["id"] for e in got]
        link = re.search(r'id="older" href="([^"]+)"', r.text)
        if link is None:
            break
        r = await c.get(html.unescape(link[1]))
    assert seen == ids[::-1]
    r = await c.get("/audit", params={"cursor": "not-an-id"})
    assert "cursor must be" in r.text
    # Escaping: what the log holds is shown as text, never as markup.
    page = (await c.get("/audit", params={"action": "note"})).text
    assert hostile not in page and "<img src=x" not in page and "mallory<b>" not in page
    assert html.escape(hostile) in page
    [note] = rows(page)
    assert note["resource"] == hostile and note["principal"] == "mallory<b>"
    assert '<img src=x onerror=\\"alert(2)\\">' in note["metadata"]


# ---------------------------------------------------------------------- verify
async def test_an_admin_verifies_the_chain_and_sees_the_first_broken_entry(
    shop: JobQueue, acm: AccessControlManager
) -> None:
    app = create_dashboard(queues=[shop], tokens=TOKENS, refresh_ms=0, access=acm)
    ids = [await acm.audit_access("alice", "export", "shop", {"i": i}) for i in range(4)]
    c = await as_(app, ADMIN)
    csrf = csrf_of((await c.get("/audit")).text)
    # Without the CSRF token (or from another site): refused, nothing verified.
    assert (await c.post("/audit/verify", data={"csrf": "x" * 32})).status_code == 403
    r = await c.post(
        "/audit/verify", data={"csrf": csrf}, headers={"origin": "https://evil.example"}
    )
    assert r.status_code == 403
    r = await c.post("/audit/verify", data={"csrf": csrf})
    assert r.status_code == 200 and 'data-ok="yes"' in r.text
    assert "Chain intact: 4 entries checked (start: genesis)" in r.text
    head = re.search(r'<code id="head">([^<]+)</code>', r.text)
    assert head and head[1].startswith(f"4:{ids[-1]}:")
    r = await c.post("/audit/verify", data={"csrf": csrf, "checkpoint": "x:y"})
    assert "N:ID:MAC" in r.text and 'id="report"' not in r.text
    # Someone removes an entry in the middle of the log.
    client = await acm.deployment.client()
    assert await client.xdel(acm.audit.stream, ids[1]) == 1
    r = await c.post("/audit/verify", data={"csrf": csrf, "checkpoint": head[1]})
    assert 'data-ok="no"' in r.text and "Chain BROKEN" in r.text
    first = re.search(r'<code id="first-entry">([^<]+)</code>', r.text)
    assert first and first[1] == ids[2]  # reported at the entry after the gap
    assert re.search(r'<span class="badge warn">removed</span>', r.text)
    await acm.audit.flush()
    runs = await acm.query_audit_log(action="audit.verify", newest_first=False)
    assert [(e.principal, e.metadata["intact"]) for e in runs] == [
        ("ada@example.com", True),
        ("ada@example.com", False),
    ]
    assert runs[1].metadata["first_problem"]["entry_id"] == ids[2]
    assert runs[1].metadata["checkpoint"] is True


async def test_a_log_without_its_key_is_shown_but_not_verified(
    shop: JobQueue, acm: AccessControlManager, backend_url: str, prefix: str
) -> None:
    await acm.audit_access("alice", "export", "shop")
    keyless = AuditLog(backend_url, prefix=prefix)
    try:
        app = create_dashboard(queues=[shop], tokens=TOKENS, refresh_ms=0, access=keyless)
        c = await as_(app, ADMIN)
        r = await c.get("/audit")
        assert [e["authentic"] for e in rows(r.text)] == ["-"]
        assert "holds no audit key" in r.text and 'id="verify-chain"' not in r.text
        r = await c.post("/audit/verify", data={"csrf": csrf_of(r.text)})
        assert "cannot be verified without its key" in r.text
    finally:
        await keyless.close()


# ---------------------------------------------------------------------- actions recorded
async def test_the_dashboards_actions_are_recorded_in_the_log(
    shop: JobQueue, backend_url: str, prefix: str
) -> None:
    log = AuditLog(backend_url, prefix=prefix, key=KEY)
    try:
        app = create_dashboard(queues=[shop], tokens=TOKENS, refresh_ms=0, access=log)
        c = await as_(app, MANAGER)
        csrf = csrf_of((await c.get("/q/shop")).text)
        assert (await c.post("/q/shop/action/pause", data={"csrf": csrf})).status_code == 303
        viewer = await as_(app, VIEWER)
        vcsrf = csrf_of((await viewer.get("/q/shop")).text)
        r = await viewer.post("/q/shop/action/resume", data={"csrf": vcsrf})
        assert r.status_code == 403
        await log.flush()
        got = await log.query(newest_first=False)
        assert [(e.action, e.principal, e.resource, e.outcome) for e in got] == [
            ("queue.pause", "max@example.com", "shop", "ok"),
            ("access.denied", "vera@example.com", "shop", "denied"),
        ]
        assert got[1].metadata == {
            "action": "resume", "role": "viewer", "needs_role": "manager", "via": "dashboard",
        }  # fmt: skip
        assert (await log.verify()).ok
    finally:
        await log.close()


# ---------------------------------------------------------------------- grants apply too
async def test_on_a_protected_queue_the_role_and_the_grants_both_apply(
    shop: JobQueue, acm: AccessControlManager
) -> None:
    await acm.grant_access(principal_id="ada@example.com", queue_pattern="*", role="admin")
    await acm.grant_access(principal_id="max@example.com", queue_pattern="shop", role="viewer")
    await acm.grant_access(principal_id="olivia@example.com", queue_pattern="shop", role="operator")
    acm.protect(shop)
    app = create_dashboard(queues=[shop], tokens=TOKENS, refresh_ms=0, access=acm)

    async def denials() -> list[Any]:
        await acm.audit.flush()
        return await acm.query_audit_log(action="access.denied", newest_first=False)

    # vera: a viewer token, but no grant at all.
    vera = await as_(app, VIEWER)
    r = await vera.get("/q/shop")
    assert r.status_code == 403 and '<h1 id="heading">Refused</h1>' in r.text
    assert "principal &#39;vera@example.com&#39; was refused get_stats" in r.text
    assert "needs can_view_job" in r.text
    r = await vera.get("/q/shop/groups")
    assert r.status_code == 403 and "refused list_groups" in r.text
    before = len(await denials())
    assert [e.metadata["action"] for e in await denials()] == ["get_stats", "list_groups"]
    # The overview asks instead of trying: the row says why, nothing is refused.
    r = await vera.get("/")
    assert r.status_code == 200 and "vera@example.com may not view queue shop" in r.text
    api = await client_for(app).get("/api/stats", headers={"authorization": f"Bearer {VIEWER}"})
    assert api.status_code == 200 and "may not view queue shop" in api.json()["queues"][0]["error"]
    api = await client_for(app).get(
        "/api/q/shop/explain/1", headers={"authorization": f"Bearer {VIEWER}"}
    )
    assert api.status_code == 403 and "refused explain" in api.json()["error"]
    assert len(await denials()) == before + 1  # the explain attempt only

    # max: the manager role, but only a viewer's grant: reads yes, pausing no.
    mx = await as_(app, MANAGER)
    r = await mx.get("/q/shop")
    assert r.status_code == 200
    r = await mx.post("/q/shop/action/pause", data={"csrf": csrf_of(r.text)})
    assert r.status_code == 403 and "refused: principal" in r.text and "can_control_queue" in r.text
    with acting_as("ada@example.com"):
        assert not (await shop.get_stats()).is_paused
    # olivia: operator grant, operator role: the role refuses first (audited too).
    ol = await as_(app, OPERATOR)
    r = await ol.post(
        "/q/shop/action/pause", data={"csrf": csrf_of((await ol.get("/q/shop")).text)}
    )
    assert r.status_code == 403 and "needs the manager role" in r.text
    # ada: admin role, admin grant.
    ad = await as_(app, ADMIN)
    r = await ad.post(
        "/q/shop/action/pause", data={"csrf": csrf_of((await ad.get("/q/shop")).text)}
    )
    assert r.status_code == 303
    with acting_as("ada@example.com"):
        assert (await shop.get_stats()).is_paused
    with_principal = [(e.principal, e.metadata["action"]) for e in (await denials())[before + 1 :]]
    assert with_principal == [("max@example.com", "pause"), ("olivia@example.com", "pause")]
    done = await acm.query_audit_log(action="queue.pause")
    assert [e.principal for e in done] == ["ada@example.com"]
    assert (await acm.verify_audit_log()).ok


# ---------------------------------------------------------------------- hostile input
_FILTER_TEXT = st.text(
    alphabet=st.sampled_from(list("ab9-:TZ+*?[]!\\ \x00\t\x1b\u202e\ud800é<>&\"'")), max_size=80
)


@settings(max_examples=300, deadline=None)
@given(values=st.fixed_dictionaries({k: _FILTER_TEXT for k in AuditFilter.__slots__}))
def test_any_filter_parses_or_is_refused_clearly(values: dict[str, str]) -> None:
    flt = AuditFilter.of(values)
    assert all(len(getattr(flt, k)) <= 512 for k in AuditFilter.__slots__)
    assert flt.outcome in ("", "ok", "denied", "error")
    try:
        args = flt.query_args()
    except ConfigurationError as exc:
        assert "must be ms since the epoch" in str(exc) or "before 1970" in str(exc)
        return
    assert all(isinstance(v, (str, int)) for v in args.values())


@pytest.mark.parametrize(
    "query",
    [
        "principal=%00%1b%5B31m&action=%5B&resource=%5B%21",
        "since=99999999999999999999&until=-1",
        "since=%ED%A0%80&action=" + "a" * 5000,
        "outcome=%3Cscript%3E&limit=99999999&cursor=" + "9" * 200,
        "action=*%3F%5B%5D*&resource=**********************************&limit=0",
        "until=9999-12-31T23:59:59%2B14:00&since=0001-01-01",
    ],
)
async def test_hostile_query_strings_get_a_page_never_an_error(
    shop: JobQueue, acm: AccessControlManager, query: str
) -> None:
    await acm.audit_access("alice", "export", "shop")
    app = create_dashboard(queues=[shop], tokens=TOKENS, refresh_ms=0, access=acm)
    c = await as_(app, MANAGER)
    r = await c.get("/audit?" + query)
    assert r.status_code == 200
    assert "<script>" not in r.text and "\x1b" not in r.text
