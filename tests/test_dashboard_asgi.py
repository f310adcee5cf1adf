"""The dashboard as a plain ASGI application (httpx's ASGI transport, no server): every
route, the session and CSRF rules, the role of every action, the security headers,
escaping and redaction, mounting under a path, and the audit trail through the admin
choke point (who did what)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from helpers import QueueFactory, wait_for_status
from kitium_queue import (
    CircuitBreakerManager,
    ConfigurationError,
    EncryptionManager,
    FIFOQueueManager,
    JobChainManager,
    JobQueue,
    JobStatus,
    KeyConfig,
    WorkflowStep,
)
from kitium_queue.dashboard import ACTIONS, SECURITY_HEADERS, DashboardToken, create_dashboard
from kitium_queue.hooks import AdminCall

ADMIN = "ad-" + "a" * 29
MANAGER = "mg-" + "m" * 29
OPERATOR = "op-" + "o" * 29
VIEWER = "vw-" + "v" * 29
TOKENS = [
    DashboardToken(ADMIN, "ada@example.com", "admin"),
    f"{MANAGER}:max@example.com:manager",
    f"{OPERATOR}:olivia@example.com:operator",
    f"{VIEWER}:vera@example.com:viewer",
]


class Calls:
    """An ``admin`` subscriber: what passed the choke point, and for whom."""

    def __init__(self) -> None:
        self.calls: list[AdminCall] = []

    def admin(self, call: AdminCall) -> None:
        self.calls.append(call)


@pytest.fixture
async def shop(make_queue: QueueFactory) -> JobQueue:
    q = make_queue("shop")
    FIFOQueueManager(q)
    JobChainManager(q, events=False)
    CircuitBreakerManager(q, events=False)
    return q


def client_for(
    app: Any, *, host: str = "127.0.0.1", base: str = "http://dash"
) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(host, 40000))
    return httpx.AsyncClient(transport=transport, base_url=base, follow_redirects=False)


async def signed_in(app: Any, token: str, **kw: Any) -> httpx.AsyncClient:
    c = client_for(app, **kw)
    r = await c.post("/login", data={"token": token, "next": "/"})
    assert r.status_code == 303, r.text
    return c


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "no CSRF field on the page"
    return m.group(1)


@pytest.fixture
async def dash(shop: JobQueue) -> AsyncIterator[Any]:
    yield create_dashboard(queues=[shop], tokens=TOKENS, refresh_ms=0)


# ---------------------------------------------------------------------- configuration
def test_it_refuses_to_start_without_tokens(backend_url: str) -> None:
    q = JobQueue("cfg", redis=backend_url)
    with pytest.raises(ConfigurationError, match="needs tokens"):
        create_dashboard(queues=[q])
    with pytest.raises(ConfigurationError, match="16 to 512"):
        create_dashboard(queues=[q], tokens=["short:p:viewer"])
    with pytest.raises(ConfigurationError, match="unknown dashboard role"):
        create_dashboard(queues=[q], tokens=[f"{VIEWER}:p:boss"])
    with pytest.raises(ConfigurationError, match="TOKEN:PRINCIPAL:ROLE"):
        create_dashboard(queues=[q], tokens=[VIEWER])
    with pytest.raises(ConfigurationError, match="twice"):
        create_dashboard(queues=[q], tokens=[f"{VIEWER}:a:viewer", f"{VIEWER}:b:admin"])
    with pytest.raises(ConfigurationError, match="principal"):
        create_dashboard(queues=[q], tokens=[f"{VIEWER}:bad\nname:viewer"])
    with pytest.raises(ConfigurationError, match="two queues"):
        create_dashboard(queues=[q, JobQueue("cfg", redis=backend_url)], tokens=TOKENS)
    with pytest.raises(ConfigurationError, match="refresh_ms"):
        create_dashboard(queues=[q], tokens=TOKENS, refresh_ms=5)
    assert "vw-" not in repr(DashboardToken(VIEWER, "vera"))  # never the secret


# ---------------------------------------------------------------------- sessions
async def test_sign_in_sessions_and_bearer_reads(dash: Any) -> None:
    c = client_for(dash)
    r = await c.get("/q/shop?state=failed")
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/q/shop%3Fstate%3Dfailed"
    assert (await c.get("/api/stats")).status_code == 401
    r = await c.get("/login?next=//evil.example/x")
    assert 'value="/"' in r.text  # an outside target is never kept
    r = await c.post("/login", data={"token": "x" * 40, "next": "/"})
    assert r.status_code == 401 and "unknown token" in r.text
    r = await c.post("/login", data={"token": OPERATOR, "next": "https://evil.example/"})
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and OPERATOR not in cookie
    assert (await c.get("/")).status_code == 200
    # A forged or tampered cookie is no session.
    c2 = client_for(dash)
    c2.cookies.set("kqd_session", c.cookies["kqd_session"][:-2] + "xx")
    assert (await c2.get("/")).status_code == 303
    # Bearer tokens read the JSON API.
    r = await client_for(dash).get("/api/stats", headers={"authorization": f"Bearer {VIEWER}"})
    assert r.status_code == 200 and r.json()["queues"][0]["name"] == "shop"
    # Sign out needs the CSRF token too.
    page = (await c.get("/")).text
    assert (await c.post("/logout", data={})).status_code == 403
    r = await c.post("/logout", data={"csrf": csrf_of(page)})
    assert r.status_code == 303 and 'kqd_session=""' in r.headers["set-cookie"]


async def test_failed_sign_ins_are_limited(dash: Any) -> None:
    c = client_for(dash, host="10.0.0.9")
    for _ in range(20):
        assert (await c.post("/login", data={"token": "y" * 40})).status_code == 401
    assert (await c.post("/login", data={"token": OPERATOR})).status_code == 429
    # Another client is not affected.
    assert (await client_for(dash).post("/login", data={"token": OPERATOR})).status_code == 303


async def test_insecure_local_serves_loopback_clients_only(shop: JobQueue) -> None:
    app = create_dashboard(queues=[shop], insecure_local=True)
    r = await client_for(app, base="http://localhost").get("/")
    assert r.status_code == 200 and "local" in r.text and "admin" in r.text
    assert (await client_for(app, host="192.0.2.7").get("/")).status_code == 403


# ---------------------------------------------------------------------- every page
async def test_every_page_renders_with_security_headers(dash: Any, shop: JobQueue) -> None:
    jid = await shop.add_job("charge", {"order": 1}, message_group_id="g1")
    await shop.add_job("charge", {"order": 2}, delay=60_000)
    chains = JobChainManager.for_queue(shop)
    await chains.execute_workflow(
        "wf-1", [WorkflowStep("a", "step", {}), WorkflowStep("b", "step", {}, depends_on=["a"])]
    )
    await CircuitBreakerManager.for_queue(shop).create_breaker({"id": "pay", "job_name": "x"})
    await shop.schedule_every("tick", {}, 60_000, schedule_id="every-minute")
    c = await signed_in(dash, VIEWER)
    pages = [
        "/",
        "/api/stats",
        f"/api/q/shop/explain/{jid}",
        "/q/shop",
        *(f"/q/shop?state={s}" for s in ("active", "delayed", "pending", "completed", "failed")),
        "/q/shop?state=dlq",
        f"/q/shop/jobs/{jid}",
        "/q/shop/schedules",
        "/q/shop/workflows",
        "/q/shop/workflows/wf-1",
        "/q/shop/groups",
        "/q/shop/breakers",
        "/q/shop/workers",
        "/static/dashboard.css",
        "/static/dashboard.js",
    ]
    for path in pages:
        r = await c.get(path)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
        for name, value in SECURITY_HEADERS.items():
            if name == "cache-control" and path.startswith("/static/"):
                value = "no-cache"  # static files may be kept, revalidated
            assert r.headers.get(name) == value, (path, name)
    csp = SECURITY_HEADERS["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    html = (await c.get("/q/shop/workflows/wf-1")).text
    assert '<svg id="wf-graph"' in html and 'data-step="b"' in html
    assert "every-minute" in (await c.get("/q/shop/schedules")).text
    assert 'data-breaker="pay"' in (await c.get("/q/shop/breakers")).text
    assert 'data-group="g1"' in (await c.get("/q/shop/groups")).text
    for path, code in [
        ("/q/nope", 404),
        ("/q/shop/jobs/nope", 404),
        ("/q/shop/workflows/nope", 404),
        ("/q/shop/webhooks", 404),  # not enabled on this queue
        ("/static/../app.py", 404),
        ("/static/x.js", 404),
        ("/api/q/shop/explain/nope", 404),
    ]:
        assert (await c.get(path)).status_code == code, path


async def test_paging_and_search(dash: Any, shop: JobQueue) -> None:
    ids = [await shop.add_job("mail" if i % 2 else "sms", {"user": {"id": i}}) for i in range(7)]
    c = await signed_in(dash, VIEWER)
    r = await c.get("/q/shop?state=waiting&limit=3")
    assert re.findall(r'name="ids" value="([^"]+)"', r.text) == ids[:3]
    cursor = re.search(r'id="next" href="[^"]*cursor=([^"]+)"', r.text)
    assert cursor
    r = await c.get(f"/q/shop?state=waiting&limit=3&cursor={cursor.group(1)}")
    assert re.findall(r'name="ids" value="([^"]+)"', r.text) == ids[3:6]
    r = await c.get("/q/shop?state=waiting&name=mail")
    assert re.findall(r'name="ids" value="([^"]+)"', r.text) == ids[1::2]
    r = await c.get("/q/shop?state=waiting&field=user.id&value=4")
    assert re.findall(r'name="ids" value="([^"]+)"', r.text) == [ids[4]]
    r = await c.get(f"/q/shop?id={ids[5]}")
    assert r.status_code == 303 and r.headers["location"].endswith(f"/jobs/{ids[5]}")
    r = await c.get("/q/shop?id=missing")
    assert "No job missing" in r.text
    r = await c.get("/q/shop?state=waiting&cursor=garbage")
    assert r.status_code == 200 and "cursor must be" in r.text
    # Bounded inputs: long values are cut, not refused or echoed whole.
    r = await c.get("/q/shop?state=waiting&name=" + "x" * 10_000)
    assert r.status_code == 200 and "x" * 201 not in r.text


# ---------------------------------------------------------------------- actions
@pytest.mark.parametrize("action", sorted(ACTIONS))
async def test_a_viewer_is_refused_every_action(dash: Any, shop: JobQueue, action: str) -> None:
    calls = Calls()
    shop.subscribe(calls)
    c = await signed_in(dash, VIEWER)
    token = csrf_of((await c.get("/q/shop")).text)
    r = await c.post(
        f"/q/shop/action/{action}", data={"csrf": token, "job_id": "1", "confirm": "yes"}
    )
    assert r.status_code == 403 and "vera@example.com (viewer) may not" in r.text
    assert calls.calls == []


async def test_roles_decide_and_every_action_is_recorded_with_its_principal(
    dash: Any, shop: JobQueue
) -> None:
    calls = Calls()
    shop.subscribe(calls)
    shop.process("charge", lambda job: 1 / 0)
    await shop.start(concurrency=1)
    jid = await shop.add_job("charge", {}, attempts=1)
    await wait_for_status(shop, jid, "dlq")
    await shop.worker.stop()
    op = await signed_in(dash, OPERATOR)
    token = csrf_of((await op.get(f"/q/shop/jobs/{jid}")).text)
    r = await op.post(
        "/q/shop/action/retry", data={"csrf": token, "job_id": jid, "next": f"/q/shop/jobs/{jid}"}
    )
    assert r.status_code == 303 and r.headers["location"] == f"/q/shop/jobs/{jid}"
    page = await op.get(r.headers["location"])
    assert "is waiting again" in page.text  # the flash message
    assert (await shop.get_job_status(jid)).status is JobStatus.WAITING
    # The operator may not pause; the manager may.
    r = await op.post("/q/shop/action/pause", data={"csrf": token})
    assert r.status_code == 403 and "needs the manager role" in r.text
    mg = await signed_in(dash, MANAGER)
    mtoken = csrf_of((await mg.get("/q/shop")).text)
    assert (await mg.post("/q/shop/action/pause", data={"csrf": mtoken})).status_code == 303
    assert (await shop.get_stats()).is_paused
    # A manager may not drain; an admin may (after confirming).
    assert (await mg.post("/q/shop/action/drain", data={"csrf": mtoken})).status_code == 403
    ad = await signed_in(dash, ADMIN)
    atoken = csrf_of((await ad.get("/q/shop")).text)
    r = await ad.post("/q/shop/action/drain", data={"csrf": atoken})
    assert r.status_code == 200 and "Please confirm" in r.text
    assert (await shop.get_stats()).waiting == 1
    r = await ad.post("/q/shop/action/drain", data={"csrf": atoken, "confirm": "yes"})
    assert r.status_code == 303 and (await shop.get_stats()).waiting == 0
    assert [(a.command, a.principal) for a in calls.calls] == [
        ("retry_job", "olivia@example.com"),
        ("pause", "max@example.com"),
        ("drain", "ada@example.com"),
    ]


async def test_csrf_origin_and_body_rules(dash: Any, shop: JobQueue) -> None:
    c = await signed_in(dash, MANAGER)
    token = csrf_of((await c.get("/q/shop")).text)
    for data, headers in [
        ({}, {}),
        ({"csrf": "wrong"}, {}),
        ({"csrf": token}, {"origin": "https://evil.example"}),
    ]:
        r = await c.post("/q/shop/action/pause", data=data, headers=headers)
        assert r.status_code == 403, data
    r = await c.post(
        "/q/shop/action/pause",
        content=b'{"csrf": "x"}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 403
    r = await c.post("/q/shop/action/pause", data={"csrf": token, "pad": "x" * 70_000})
    assert r.status_code == 403
    assert not (await shop.get_stats()).is_paused
    # Another session's token is no good either.
    other = await signed_in(dash, MANAGER)
    other_token = csrf_of((await other.get("/q/shop")).text)
    assert other_token != token
    assert (await c.post("/q/shop/action/pause", data={"csrf": other_token})).status_code == 403
    r = await c.post(
        "/q/shop/action/pause", data={"csrf": token}, headers={"origin": "http://dash"}
    )
    assert r.status_code == 303 and (await shop.get_stats()).is_paused


async def test_bulk_actions_ask_first(dash: Any, shop: JobQueue) -> None:
    ids = [await shop.add_job("x", {}) for _ in range(3)]
    c = await signed_in(dash, OPERATOR)
    token = csrf_of((await c.get("/q/shop")).text)
    data = {"csrf": token, "ids": ids[:2], "next": "/q/shop"}
    r = await c.post("/q/shop/action/bulk-remove", data=data)
    assert r.status_code == 200 and "Remove 2 job(s)?" in r.text
    assert (await shop.get_stats()).waiting == 3
    r = await c.post("/q/shop/action/bulk-remove", data={**data, "confirm": "yes"})
    assert r.status_code == 303
    assert [j.id for j in await shop.get_jobs_by_status("waiting")] == [ids[2]]
    r = await c.post(
        "/q/shop/action/bulk-remove", data={"csrf": token, "ids": [str(i) for i in range(501)]}
    )
    assert r.status_code == 400 and "at most 500" in r.text


async def test_group_breaker_schedule_and_promote_actions(dash: Any, shop: JobQueue) -> None:
    calls = Calls()
    shop.subscribe(calls)
    await shop.add_job("x", {}, message_group_id="g7")
    delayed = await shop.add_job("x", {}, delay=60_000)
    await CircuitBreakerManager.for_queue(shop).create_breaker({"id": "pay", "job_name": "y"})
    await shop.schedule_every("tick", {}, 60_000, schedule_id="s1")
    calls.calls.clear()
    c = await signed_in(dash, MANAGER)
    token = csrf_of((await c.get("/q/shop")).text)
    for action, data in [
        ("pause-group", {"group_id": "g7"}),
        ("resume-group", {"group_id": "g7"}),
        ("open-breaker", {"breaker_id": "pay"}),
        ("reset-breaker", {"breaker_id": "pay"}),
        ("pause-schedule", {"schedule_id": "s1"}),
        ("resume-schedule", {"schedule_id": "s1"}),
        ("promote", {"job_id": delayed}),
        ("remove-schedule", {"schedule_id": "s1"}),
    ]:
        r = await c.post(f"/q/shop/action/{action}", data={"csrf": token, **data})
        assert r.status_code == 303, (action, r.text[:300])
    assert [a.command for a in calls.calls] == [
        "pause_group",
        "resume_group",
        "open_breaker",
        "reset_breaker",
        "pause_schedule",
        "resume_schedule",
        "promote_job",
        "remove_schedule",
    ]
    assert {a.principal for a in calls.calls} == {"max@example.com"}
    assert (await shop.get_job_status(delayed)).status is JobStatus.WAITING
    r = await c.post("/q/shop/action/nope", data={"csrf": token})
    assert r.status_code == 404


# ---------------------------------------------------------------------- what is shown
async def test_job_data_is_escaped(dash: Any, shop: JobQueue) -> None:
    jid = await shop.add_job("x", {"html": "<script>alert(1)</script>", "q": "\"'&"})
    c = await signed_in(dash, VIEWER)
    html = (await c.get(f"/q/shop/jobs/{jid}")).text
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html.replace('<script src="/static/dashboard.js" defer></script>', "")


async def test_payloads_hidden_or_redacted(shop: JobQueue, make_queue: QueueFactory) -> None:
    jid = await shop.add_job("x", {"secret": "s3cr3t-value"})
    hidden = create_dashboard(queues=[shop], tokens=TOKENS, show_payloads=False)
    c = await signed_in(hidden, VIEWER)
    html = (await c.get(f"/q/shop/jobs/{jid}")).text
    assert "s3cr3t-value" not in html and "does not show payloads" in html
    r = await c.get("/q/shop?state=waiting&field=secret&value=s3cr3t-value")
    assert jid in r.text  # the data filter is ignored: no search by hidden data
    # Encrypted payloads are redacted on the dashboard, and the queue itself is untouched.
    enc = make_queue("vault")
    EncryptionManager(enc, keys=[KeyConfig("k1", bytes(range(32)))], encrypt_all=True)
    eid = await enc.add_job("x", {"card": "4111-1111"})
    app = create_dashboard(queues=[enc], tokens=TOKENS)
    c = await signed_in(app, ADMIN)
    html = (await c.get(f"/q/vault/jobs/{eid}")).text
    assert "4111-1111" not in html and "&lt;encrypted key=k1" in html
    assert (await enc.get_job_status(eid)).data == {"card": "4111-1111"}


async def test_mounted_under_a_path(shop: JobQueue) -> None:
    inner = create_dashboard(queues=[shop], tokens=TOKENS)
    outer = Starlette(routes=[Mount("/ops/queues", inner)])
    c = client_for(outer)
    r = await c.get("/ops/queues/q/shop")
    assert r.status_code == 303 and r.headers["location"].startswith("/ops/queues/login?next=")
    r = await c.post("/ops/queues/login", data={"token": VIEWER, "next": "/ops/queues/q/shop"})
    assert r.status_code == 303 and r.headers["location"] == "/ops/queues/q/shop"
    html = (await c.get("/ops/queues/q/shop")).text
    assert 'href="/ops/queues/static/dashboard.css"' in html
    assert 'action="/ops/queues/q/shop/action/pause"' in html
    assert (await c.get("/ops/queues/static/dashboard.js")).status_code == 200


# ---------------------------------------------------------------------- hostile input
NASTY = [
    "",
    "%ED%A0%80",  # a lone surrogate, percent-encoded
    "%00%01%1b[31m",
    "*?[]\\{}",
    "x" * 5000,
    "99999999999999999999999999",
    "-1",
    "\u00b2",  # a digit Python's int() refuses
    "nan",
    "%2F..%2F..%2Fetc%2Fpasswd",
    "<script>alert(1)</script>",
]


async def test_hostile_query_and_form_values_never_break_a_page(dash: Any, shop: JobQueue) -> None:
    await shop.add_job("x", {"a": 1})
    c = await signed_in(dash, ADMIN)
    token = csrf_of((await c.get("/q/shop")).text)
    for v in NASTY:
        for path in (
            f"/q/shop?state={v}&limit={v}&cursor={v}&offset={v}",
            f"/q/shop?state=waiting&id={v}",
            f"/q/shop?state=dlq&name={v}&error={v}&field={v}&value={v}",
            f"/q/shop/jobs/{v or 'x'}",
            f"/api/q/shop/explain/{v or 'x'}",
            f"/q/shop/workflows/{v or 'x'}",
            f"/q/shop/groups?cursor={v}",
            f"/q/{v or 'x'}",
            f"/login?next={v}",
        ):
            r = await c.get(path)
            assert r.status_code < 500, (path, r.status_code)
            if r.headers.get("content-type", "").startswith("text/html"):
                assert "<script>alert(1)</script>" not in r.text, path
        for action in sorted(ACTIONS):
            fields = {
                k: v
                for k in (
                    "job_id",
                    "group_id",
                    "schedule_id",
                    "breaker_id",
                    "webhook_id",
                    "event_id",
                    "state",
                    "limit",
                    "name",
                    "error",
                    "field",
                    "value",
                    "ids",
                )
            }
            r = await c.post(
                f"/q/shop/action/{action}", data={"csrf": token, "confirm": "yes", **fields}
            )
            assert r.status_code < 500, (action, v, r.status_code, r.text[:200])
            assert "<script>alert(1)</script>" not in r.text
    assert isinstance((await shop.get_stats()).waiting, int)  # the queue is still whole


async def test_the_webhooks_page(make_queue: QueueFactory) -> None:
    from kitium_queue.features.webhooks import WebhookConfig, WebhookManager, generate_secret

    q = make_queue("hooks")
    mgr = WebhookManager(q, allow_networks=["127.0.0.0/8"], run_service=False)
    hook = await mgr.register_webhook(
        WebhookConfig(
            url="http://127.0.0.1:9/hook?token=s3cr3t",
            secret=generate_secret(),
            id="orders-hook",
            description="<b>orders</b>",
        )
    )
    app = create_dashboard(queues=[q], tokens=TOKENS)
    c = await signed_in(app, VIEWER)
    r = await c.get("/q/hooks/webhooks")
    assert r.status_code == 200 and 'data-webhook="orders-hook"' in r.text
    assert "s3cr3t" not in r.text  # the URL is shown with its secrets redacted
    assert hook.id in r.text and "No deliveries yet" in r.text


async def test_a_queue_with_a_slash_in_its_name_is_served_on_every_page(
    make_queue: QueueFactory,
) -> None:
    """Queue names may hold ``/`` (a global queue's ``<name>/<region>``): its links write
    it as ``~`` (``%2F`` is decoded before routing and would split the path), and every
    page and action reached from them serves that queue."""
    q = make_queue("eu/orders")
    FIFOQueueManager(q)
    CircuitBreakerManager(q, events=False)
    calls = Calls()
    q.subscribe(calls)
    jid = await q.add_job("charge", {"order": 1}, message_group_id="g1")
    app = create_dashboard(queues=[q], tokens=TOKENS, refresh_ms=0)
    c = await signed_in(app, MANAGER)
    home = (await c.get("/")).text
    assert 'href="/q/eu~orders"' in home and "%2F" not in home
    page = (await c.get("/q/eu~orders")).text
    links = sorted(set(re.findall(r'href="(/q/[^"?#]+)', page)))
    assert "/q/eu~orders/groups" in links and "/q/eu~orders/breakers" in links
    assert f"/q/eu~orders/jobs/{jid}" in links
    for path in [*links, f"/api/q/eu~orders/explain/{jid}"]:
        r = await c.get(path)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
    r = await c.post("/q/eu~orders/action/pause", data={"csrf": csrf_of(page)})
    assert r.status_code == 303 and (await q.get_stats()).is_paused
    assert [(a.command, a.queue) for a in calls.calls] == [("pause", "eu/orders")]
    # The old spelling (a slash, encoded or not) matches no route: 404, never another queue.
    assert (await c.get("/q/eu%2Forders")).status_code == 404
