"""Hostile and malformed input to the dashboard's newer pages (parked, alerts, tenants,
encryption, regions, server, compliance, results, access) and their two actions
(``rebuild-parked``, ``erase-subject``), through the ASGI app on a real Redis, and the
pages in a real headless Chromium (a review's findings, each reproduced before it was
fixed): no query string, form or damaged record makes a page answer 500, nothing is
echoed unescaped, the actions keep CSRF, same-origin, roles, the confirmation and a
safe ``next``, and a queue name with every allowed punctuation works everywhere."""

from __future__ import annotations

import html
import math
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import QueueFactory
from kitium_queue import AlertManager, IdempotencyManager, JobQueue
from kitium_queue.dashboard import create_dashboard
from kitium_queue.dashboard.render import queue_segment
from kitium_queue.features.access import AccessControlManager
from kitium_queue.features.compliance import ComplianceManager
from kitium_queue.features.encryption import EncryptionManager, KeyConfig, generate_key
from kitium_queue.features.tenancy import TenantRegistry
from kitium_queue.parking import parked_count
from test_dashboard_asgi import ADMIN, MANAGER, OPERATOR, TOKENS, VIEWER, csrf_of
from test_parking import T0, Engine

pytestmark = pytest.mark.redis_only

SUBJECT = "ann@example.com"
KEY = generate_key()
#: A queue name with every punctuation a queue name may hold.
NAME = "a/b.c:d#e+f-g_h"
SEG = queue_segment(NAME)
#: The new pages of a queue (regions: tests/test_dashboard_tenancy_views.py and below).
PAGES = ("parked", "alerts", "tenants", "encryption", "server", "compliance", "results")
FORM = {"content-type": "application/x-www-form-urlencoded"}


async def _everything(make_queue: QueueFactory, name: str = NAME) -> JobQueue:
    """Queue ``name`` with every feature the new pages show: two jobs parked behind a
    concurrency key (w0 holds it), an alert rule that fired, a tenant with a job,
    encryption, compliance (s1 is SUBJECT's), effectively-once."""
    q = make_queue(name)
    q.set_concurrency_limit("*", 1)
    reg = TenantRegistry(q)
    enc = EncryptionManager(q, keys=[KeyConfig("k1", KEY)], run_rotation=False)
    ComplianceManager(q, run_service=False)
    IdempotencyManager(q)
    alerts = AlertManager(
        q, [{"name": "backlog", "metric": "queue_depth", "threshold": 2}], run_service=False
    )
    e = Engine(q)
    await e.add(T0, "w0", concurrency_key="k")
    await e.claim(T0)
    for i in (1, 2):
        await e.add(T0, f"p{i}", concurrency_key="k")
    await q.add_job("mail", {"a": 1}, subject_id=SUBJECT, job_id="s1")
    await reg.create_tenant({"tenant_id": "acme"})
    await q.add_jobs([("t", {}, {"tenant_id": "acme"}) for _ in range(2)])
    await alerts.evaluate(1)
    await enc.initialize()
    return q


def _client(app: Any) -> httpx.AsyncClient:
    """A client that gets a 500 as a response (the app's exceptions not raised)."""
    transport = httpx.ASGITransport(
        app=app, client=("127.0.0.1", 40000), raise_app_exceptions=False
    )
    return httpx.AsyncClient(transport=transport, base_url="http://dash")


async def signed(app: Any, token: str) -> httpx.AsyncClient:
    c = _client(app)
    r = await c.post("/login", data={"token": token, "next": "/"})
    assert r.status_code == 303, r.text
    return c


async def raw(
    app: Any, c: httpx.AsyncClient, method: str, path: str, query: bytes, body: bytes = b""
) -> tuple[int, str]:
    """``method path?query`` with the query string as it is (bytes no client library
    sends: not UTF-8, not percent-encoded), with ``c``'s cookies; (status, body)."""
    cookie = "; ".join(f"{k}={v}" for k, v in c.cookies.items()).encode()
    headers = [(b"host", b"dash"), (b"cookie", cookie)]
    if method == "POST":
        headers.append((b"content-type", FORM["content-type"].encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(path),
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query,
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("dash", 80),
    }
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    try:
        await app(scope, receive, send)
    except Exception as exc:  # what a server would turn into a 500
        return 500, repr(exc)
    text = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], text.decode("utf-8")


def assert_clean(status: int, text: str, what: object) -> None:
    """Not a server error, no traceback, nothing hostile printed as it is."""
    assert status != 500 and status < 600, (what, status, text[-500:])
    assert "Traceback" not in text and "<script>alert" not in text, what
    assert "\x1b" not in text and "\u202e" not in text and "\x00" not in text, what


# ---------------------------------------------------------------------- query strings
_TEXT = st.lists(
    st.sampled_from(
        [*"09-+.eE/~%*?[]\\ a<>&\"'", "\x00", "\x1b", "\u202e", "\u0661", "é", "\ud800", "nan"]
    ),
    max_size=40,
).map("".join)
_NUMBERISH = st.sampled_from(
    [
        "",
        "-1",
        "0",
        "1e400",
        "nan",
        "inf",
        "-inf",
        "9" * 30,
        "0x10",
        "1.5",
        " 7",
        "+3",
        "\u0661",
        "1.",
        "9" * 40 + ".1",
        f"{2**64}.0",
        "1.99999999999999999999",
    ]
)
_HOSTILE = st.one_of(
    _TEXT,
    _NUMBERISH,
    st.sampled_from(
        [
            "<script>alert(1)</script>",
            "..%2F..%2Fx",
            "%2F",
            "../../x",
            "/./.",
            "a" * 5000,
            "cc:k",
            "cc:<b>x</b>\u202e",
            "s1",
        ]
    ),
)
_KEYS = st.sampled_from(
    ["blocker", "limit", "offset", "cursor", "memory", "samples", "key", "principal", "x"]
)
#: Pieces of raw query strings: percent-escapes, bytes that are not UTF-8, separators.
_RAW_BYTES = st.lists(
    st.sampled_from([b"%ff", b"\xff", b"\xc3", b"%ED%A0%80", b"&", b"=", b"%00", b";", b"+"]),
    max_size=6,
).map(b"".join)


@pytest.fixture
async def acm(backend_url: str, prefix: str) -> AsyncIterator[AccessControlManager]:
    manager = AccessControlManager(backend_url, prefix=prefix, audit_key=secrets.token_hex(32))
    await manager.grant_access(principal_id="root@example.com", queue_pattern="*", role="admin")
    yield manager
    await manager.close()


@pytest.fixture
async def app(make_queue: QueueFactory, acm: AccessControlManager) -> Any:
    q = await _everything(make_queue)
    return create_dashboard(queues=[q], tokens=TOKENS, refresh_ms=0, access=acm)


FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(
    page=st.sampled_from([*PAGES, "access"]),
    params=st.lists(st.tuples(_KEYS, _HOSTILE), max_size=6),
    junk=_RAW_BYTES,
)
async def test_any_query_string_gets_a_page_never_an_error(
    app: Any, page: str, params: list[tuple[str, str]], junk: bytes
) -> None:
    c = await signed(app, ADMIN)
    path = "/access" if page == "access" else f"/q/{SEG}/{page}"
    query = "&".join(f"{quote(k)}={quote(v.encode('utf-8', 'surrogatepass'))}" for k, v in params)
    r = await c.get(f"{path}?{query}")
    assert_clean(r.status_code, r.text, (page, params))
    assert r.status_code == 200, (page, params, r.text[-500:])
    assert len(r.content) < 2_000_000  # bounded: no value makes the page unbounded
    status, text = await raw(app, c, "GET", path, query.encode() + b"&" + junk)
    assert_clean(status, text, (page, query, junk))
    assert status == 200, (page, query, junk)


@pytest.mark.parametrize("page", [*PAGES, "access"])
async def test_a_query_string_that_is_not_utf8_gets_the_page(app: Any, page: str) -> None:
    # Every page rendered its own address (the "next" of its action forms) through
    # Request.url, which decodes the query string as UTF-8: a 500 on any such byte.
    c = await signed(app, ADMIN)
    path = "/access" if page == "access" else f"/q/{SEG}/{page}"
    status, text = await raw(app, c, "GET", path, b"x=\xff\xfe&limit=\xc3")
    assert status == 200, text[-500:]
    # The address is kept with those bytes percent-encoded (escaped in the page).
    if page == "parked":
        assert '?x=%FF%FE&amp;limit=%C3"' in text
    # A signed-out request is sent to sign in (its address kept the same way).
    status, _ = await raw(app, _client(app), "GET", path, b"x=\xff")
    assert status == 303
    # An action's redirect sets its flash cookie (secure or not, read from the scope).
    body = f"csrf={csrf_of(text)}&next=/q/{SEG}/parked".encode()
    status, text = await raw(app, c, "POST", f"/q/{SEG}/action/pause", b"\xff", body)
    assert status == 303, text[-500:]


# ---------------------------------------------------------------------- damaged records
DAMAGE = ("string", "huge", "list", "hash", "zset", "stream", "json", "bytes", "number")


async def _damage(client: Any, key: bytes, kind: str, was: bytes) -> None:
    """Overwrite ``key`` with another type (``string`` ... ``stream``), or keep its
    type and make its contents junk (``json``, ``bytes``, ``number``)."""
    junk = {"json": b'{"a":', "bytes": b"\xff\xfe<b>x\x1b", "number": b"nan"}.get(kind)
    if junk is not None:
        if was == b"hash":
            fields = await client.hkeys(key)
            await client.hset(key, mapping={f: junk for f in fields} or {junk: junk})
        elif was == b"zset":
            members = await client.zrange(key, 0, -1)
            await client.zadd(key, {m: float("inf") for m in members} or {junk: 1})
            await client.zadd(key, {junk: -1})
        elif was == b"string":
            await client.set(key, junk)
        elif was == b"set":
            await client.sadd(key, junk)
        elif was == b"stream":
            await client.xadd(key, {b"\xff": junk, b"rule": junk, b"state": junk})
        return
    await client.delete(key)
    if kind == "string":
        await client.set(key, b"\xff\xfe<script>alert(1)</script>")
    elif kind == "huge":
        await client.set(key, b"x" * 1_000_000)
    elif kind == "list":
        await client.rpush(key, b"\xff", b"<b>")
    elif kind == "hash":
        await client.hset(key, mapping={b"\xff": b"\xff", b"w": b"nan", b"n": b"inf"})
    elif kind == "zset":
        await client.zadd(key, {b"\xff<b>": float("inf"), b"x": -1})
    elif kind == "stream":
        await client.xadd(key, {b"\xff": b"\xff"})


async def test_damaged_records_in_the_keys_the_pages_read_never_fail_a_page(
    make_queue: QueueFactory,
) -> None:
    q = await _everything(make_queue)
    app = create_dashboard(queues=[q], tokens=TOKENS, refresh_ms=0)
    c = await signed(app, VIEWER)
    client = await q.client()
    # Every key of the queue and of the deployment (tenants), and the keys read that
    # are empty now.
    keys = sorted([k async for k in client.scan_iter(match=f"{q.keys.prefix}*", count=1000)])
    for suffix in ("alerts:state", "alerts:log", "enc:rotation", "slot-errors"):
        if q.keys.extra(suffix).encode() not in keys:
            keys.append(q.keys.extra(suffix).encode())
    csrf = csrf_of((await c.get(f"/q/{SEG}/compliance")).text)
    reads = [("GET", f"/q/{SEG}/{p}", None) for p in PAGES] + [
        ("GET", f"/q/{SEG}/parked?blocker=cc%3Ak", None),
        ("GET", f"/q/{SEG}/results?key=s1", None),
        ("POST", f"/q/{SEG}/compliance", {"csrf": csrf, "subject_id": SUBJECT}),
    ]
    failed = []
    for key in keys:
        was = await client.type(key)
        dump = await client.dump(key)
        for kind in DAMAGE:
            await _damage(client, key, kind, was)
            for method, path, data in reads:
                r = await c.request(method, path, data=data)
                try:
                    assert_clean(r.status_code, r.text, None)
                    assert r.status_code == 200
                except AssertionError:
                    failed.append((key, kind, path, r.status_code))
            await client.delete(key)
            if dump is not None:
                await client.restore(key, 0, dump)
    assert failed == []


async def test_a_count_or_value_that_is_no_number_is_named_on_the_page(
    make_queue: QueueFactory,
) -> None:
    q = await _everything(make_queue)
    app = create_dashboard(queues=[q], tokens=TOKENS, refresh_ms=0)
    c = await signed(app, VIEWER)
    client = await q.client()
    # The parked index with a count of inf (ZADD by hand): park_stats cannot read it.
    await client.zadd(q.keys.parked_index, {"cc:k": float("inf")})
    r = await c.get(f"/q/{SEG}/parked")
    assert r.status_code == 200, r.text[-300:]
    errors = html.unescape(r.text.split('id="slot-errors"', 1)[1].split("</section>", 1)[0])
    assert q.keys.parked_index in errors and "no whole number" in errors
    assert "rebuild_parked" in errors
    # The creation time of the job at the head of wait written as "nan" (or inf): the
    # probe skips it, so the rules' values are still read and the page shows them.
    for bad in ("nan", "inf", "-5"):
        await client.hset(q.keys.job("s1"), "ts", bad)
        values = await AlertManager.of(q).values()  # type: ignore[union-attr]
        assert all(math.isfinite(v) for v in values.values()), (bad, values)
        r = await c.get(f"/q/{SEG}/alerts")
        assert r.status_code == 200, r.text[-300:]
        assert 'id="values-error"' not in r.text
        assert '<tr data-rule="backlog">' in r.text


# ---------------------------------------------------------------------- the two actions
ACTIONS_FIELDS = {"rebuild-parked": {"blocker": "cc:k"}, "erase-subject": {"subject_id": SUBJECT}}


async def _state(q: JobQueue) -> tuple[int, Any]:
    return await parked_count(q), await q.get_job_status("s1")


@pytest.mark.parametrize("action", list(ACTIONS_FIELDS))
async def test_the_new_actions_keep_csrf_origin_roles_confirmation_and_a_safe_next(
    make_queue: QueueFactory, action: str
) -> None:
    q = await _everything(make_queue)
    app = create_dashboard(queues=[q], tokens=TOKENS, refresh_ms=0)
    url = f"/q/{SEG}/action/{action}"
    fields = ACTIONS_FIELDS[action]
    client = await q.client()
    await client.delete(q.keys.parked("cc:k"))  # something for rebuild-parked to repair
    before = await _state(q)
    for token in (VIEWER, OPERATOR):  # the role refuses, confirmed or not
        c = await signed(app, token)
        csrf = csrf_of((await c.get(f"/q/{SEG}/parked")).text)
        for confirm in ("", "yes"):
            r = await c.post(url, data={"csrf": csrf, "confirm": confirm, **fields})
            assert r.status_code == 403 and "needs the manager role" in r.text
    m = await signed(app, MANAGER)
    csrf = csrf_of((await m.get(f"/q/{SEG}/parked")).text)
    evil = {"origin": "https://evil.example"}
    for data, headers in (
        ({**fields, "confirm": "yes"}, {}),  # no CSRF token
        ({**fields, "confirm": "yes", "csrf": "x" * 32}, {}),  # a wrong one
        ({**fields, "confirm": "yes", "csrf": csrf}, evil),  # the right one, from elsewhere
    ):
        r = await m.post(url, data=data, headers=headers)
        assert r.status_code == 403
    r = await m.post(url, content=f"csrf={csrf}&confirm=yes".encode(), headers={})
    assert r.status_code == 403  # not urlencoded: no form
    assert await _state(q) == before
    # Unconfirmed: the confirmation page, nothing done; an off-site next is never its
    # Cancel link, nor where the confirmed form leads.
    for nxt in ("https://evil.example/", "//evil.example", "/\\evil.example", "/%2e%2e/x"):
        r = await m.post(url, data={"csrf": csrf, "next": nxt, **fields})
        assert r.status_code == 200 and 'id="confirm"' in r.text
        assert re.search(r'<a href="/" class="btn">Cancel</a>', r.text), nxt
        assert f'action="/q/{SEG}/action/{action}"' in r.text
        assert await _state(q) == before
    r = await m.post(url, data={"csrf": csrf, "next": "//evil.example", "confirm": "yes", **fields})
    assert r.status_code == 303 and r.headers["location"] == "/"
    after = await _state(q)
    assert after != before
    # Submitted twice (a double click, a reload): the second does nothing more.
    back = f"/q/{SEG}/parked"
    r = await m.post(url, data={"csrf": csrf, "next": back, "confirm": "yes", **fields})
    assert r.status_code == 303 and r.headers["location"] == back
    assert await _state(q) == after
    page = html.unescape((await m.get(back)).text)
    assert re.search(r"put back \(0 sent on to wait\), 0 set\(s\) rebuilt|erased 0 job\(s\)", page)


@FUZZ
@given(
    action=st.sampled_from(["rebuild-parked", "erase-subject", "lookup"]),
    fields=st.lists(
        st.tuples(
            st.sampled_from(["blocker", "subject_id", "limit", "offset", "next", "confirm"]),
            _HOSTILE,
        ),
        max_size=6,
    ),
)
async def test_any_form_of_the_new_actions_gets_an_answer_never_an_error(
    app: Any, action: str, fields: list[tuple[str, str]]
) -> None:
    c = await signed(app, MANAGER)
    csrf = csrf_of((await c.get(f"/q/{SEG}/compliance")).text)
    url = f"/q/{SEG}/compliance" if action == "lookup" else f"/q/{SEG}/action/{action}"
    body = "&".join(
        f"{quote(k)}={quote(v.encode('utf-8', 'surrogatepass'))}"
        for k, v in [("csrf", csrf), *fields]
    )
    r = await c.post(url, content=body.encode(), headers=FORM)
    assert_clean(r.status_code, r.text, (action, fields))
    assert r.status_code in (200, 303, 400), (action, fields, r.text[-300:])
    if r.status_code == 303:
        assert r.headers["location"].startswith("/") and not r.headers["location"].startswith("//")


# ---------------------------------------------------------------------- in a browser
APP_SOURCE = """
from kitium_queue import AlertManager, IdempotencyManager, JobQueue
from kitium_queue.features.compliance import ComplianceManager
from kitium_queue.features.encryption import EncryptionManager, KeyConfig
from kitium_queue.features.tenancy import TenantRegistry

queue = JobQueue({name!r}, redis={redis!r}, prefix={prefix!r})
queue.set_concurrency_limit("*", 1)
TenantRegistry(queue)
EncryptionManager(queue, keys=[KeyConfig("k1", {key!r})], run_rotation=False)
ComplianceManager(queue, run_service=False)
IdempotencyManager(queue)
AlertManager(
    queue, [{{"name": "backlog", "metric": "queue_depth", "threshold": 2}}], run_service=False
)
"""


async def test_the_new_pages_in_a_browser_load_clean_and_their_tabs_and_forms_work(
    make_queue: QueueFactory, tmp_path: Path, redis_url: str, prefix: str
) -> None:
    e2e = pytest.importorskip("test_dashboard_e2e")  # skipped there without chromium
    import subprocess
    import sys
    import time
    import urllib.request

    from _redis import free_port
    from helpers import app_module

    await _everything(make_queue)
    source = APP_SOURCE.format(name=NAME, redis=redis_url, prefix=prefix, key=KEY)
    port = free_port()
    with (
        app_module(tmp_path, source, "kq_dash_new_pages") as mod,
        open(tmp_path / "dashboard.log", "wb") as log,
    ):
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "kitium_queue.cli", "dashboard", f"{mod}:queue"),
                *("--port", str(port), "--refresh-ms", "0"),
                *("--token", f"{MANAGER}:max@example.com:manager"),
            ],
            cwd=tmp_path,
            env={**e2e.os.environ, "PYTHONPATH": str(e2e.ROOT / "src")},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            server = e2e.Server(f"http://127.0.0.1:{port}", proc)
            deadline = time.monotonic() + 20
            while True:
                try:
                    with urllib.request.urlopen(server.url + "/login", timeout=1):
                        break
                except OSError:
                    assert proc.poll() is None and time.monotonic() < deadline, (
                        tmp_path / "dashboard.log"
                    ).read_text(errors="replace")[-2000:]
                    time.sleep(0.1)
            async with e2e.async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=e2e.CHROMIUM, headless=True)
                try:
                    await _browse(e2e, browser, server)
                finally:
                    await browser.close()
        finally:
            proc.terminate()
            proc.wait(timeout=10)


async def _browse(e2e: Any, browser: Any, server: Any) -> None:
    page = await e2e.signed_in(browser, server, MANAGER)
    problems: list[str] = []
    page.on(
        "console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None
    )
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    await page.goto(f"{server.url}/q/{SEG}")
    tabs = await page.locator("nav.sub a").all_inner_texts()
    assert {"Parked", "Alerts", "Tenants", "Encryption", "Server", "Compliance", "Results"} <= set(
        tabs
    ), tabs
    for tab in ("Parked", "Alerts", "Tenants", "Encryption", "Server", "Compliance", "Results"):
        async with page.expect_navigation():
            await page.click(f"nav.sub a:text-is('{tab}')")
        assert page.url == f"{server.url}/q/{SEG}/{tab.lower()}"
        assert await page.locator("nav.sub a.here").inner_text() == tab
        assert NAME in await page.inner_text("h1")
        await e2e.shot(page, f"new-page-{tab.lower()}")
    # Parked: a blocker's link, then the repair with its dry run first.
    await page.goto(f"{server.url}/q/{SEG}/parked")
    async with page.expect_navigation():
        await page.click("#blockers tbody a")
    assert await page.locator("#parked-ids li code").all_inner_texts() == ["p1", "p2"]
    assert "blocker=cc%3Ak" in page.url
    async with page.expect_navigation():
        await page.click("button[data-action=rebuild-parked]")
    assert "A dry run finds" in await page.inner_text("#summary")
    async with page.expect_navigation():
        await page.click("#confirm")
    assert "parked sets rebuilt" in await page.inner_text(".flash.ok")
    assert unquote(page.url).startswith(f"{server.url}/q/{unquote(SEG)}/parked?blocker=cc")
    # Compliance: the look-up (a POST), its job link, then erase with its count first.
    await page.goto(f"{server.url}/q/{SEG}/compliance")
    await page.fill("#subject-form input[name=subject_id]", SUBJECT)
    async with page.expect_navigation():
        await page.click("#subject-form button[type=submit]")
    assert SUBJECT not in page.url
    assert await page.locator("#subject-jobs code").all_inner_texts() == ["s1"]
    async with page.expect_navigation():
        await page.click("button[data-action=erase-subject]")
    assert "1 job(s) are indexed under it" in await page.inner_text("#summary")
    async with page.expect_navigation():
        await page.click("#confirm")
    assert "erased 1 job(s)" in await page.inner_text(".flash.ok")
    # Results and Server: their GET forms.
    await page.goto(f"{server.url}/q/{SEG}/results")
    await page.fill("#result-form input[name=key]", "nope")
    async with page.expect_navigation():
        await page.click("#result-form button[type=submit]")
    assert await page.locator("#no-result").count() == 1
    await page.goto(f"{server.url}/q/{SEG}/server")
    async with page.expect_navigation():
        await page.click("#measure")
    assert await page.locator("#memory-states tr[data-state]").count() > 0
    assert problems == []
