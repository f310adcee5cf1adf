"""Hostile and malformed HTTP input to the dashboard (a review's findings, each
reproduced before it was fixed): no request makes it answer 500, a bad value is refused
or ignored with a message that says why, the sign-in limit also covers bearer tokens,
a dashboard that hides job data does not match jobs by it, and what it prints cannot
carry control characters."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from helpers import QueueFactory
from kitium_queue import ConfigurationError, FIFOQueueManager, JobNotFoundError, JobQueue
from kitium_queue.dashboard import SECURITY_HEADERS, create_dashboard, pages
from kitium_queue.features.access import AccessControlManager
from kitium_queue.features.audit.verify import AuditHead
from test_dashboard_asgi import MANAGER, OPERATOR, TOKENS, VIEWER, client_for, csrf_of


@pytest.fixture
def shop(make_queue: QueueFactory) -> JobQueue:
    q = make_queue("shop")
    FIFOQueueManager(q)
    return q


@pytest.fixture
async def dash(shop: JobQueue) -> AsyncIterator[Any]:
    yield create_dashboard(queues=[shop], tokens=TOKENS, refresh_ms=0)


async def signed(app: Any, token: str) -> tuple[httpx.AsyncClient, str]:
    """A client signed in with ``token`` and its CSRF token."""
    c = client_for(app)
    r = await c.post("/login", data={"token": token, "next": "/"})
    assert r.status_code == 303, r.text
    return c, csrf_of((await c.get("/q/shop")).text)


FORM = {"content-type": "application/x-www-form-urlencoded"}


# ---------------------------------------------------------------------- no 500s
async def test_a_form_with_too_many_fields_is_refused_not_a_crash(dash: Any) -> None:
    c = client_for(dash)
    r = await c.post("/login", content=b"&" * 16384, headers=FORM)
    assert r.status_code == 401 and "unknown token" in r.text
    manager, csrf = await signed(dash, MANAGER)
    body = f"csrf={csrf}" + "&" * 20_000  # 20,001 fields in 20 kB
    r = await manager.post("/q/shop/action/pause", content=body, headers=FORM)
    assert r.status_code == 403 and "too large" in r.text


@pytest.mark.parametrize("origin", ["http://[::1", "http://[bad]", "http://dash:99999999999"])
async def test_a_malformed_origin_is_another_site(dash: Any, origin: str) -> None:
    c = client_for(dash)
    r = await c.post("/login", data={"token": OPERATOR, "next": "/"}, headers={"origin": origin})
    assert r.status_code == 403 and "cross-site" in r.text


async def test_a_next_that_is_not_a_url_or_leaves_the_dashboard_goes_home(
    dash: Any, shop: JobQueue
) -> None:
    c = client_for(dash)
    r = await c.get("/login?next=//%5Bx")
    assert r.status_code == 200 and 'name="next" value="/"' in r.text
    for nxt in ("//[x", "/../admin", "/q/../../admin", "/q/%2e%2e/%2E%2E/admin", "/./x"):
        c = client_for(dash)
        r = await c.post("/login", data={"token": OPERATOR, "next": nxt})
        assert r.status_code == 303 and r.headers["location"] == "/", nxt
    manager, csrf = await signed(dash, MANAGER)
    r = await manager.post("/q/shop/action/pause", data={"csrf": csrf, "next": "//[x"})
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert (await shop.get_stats()).is_paused
    r = await c.post("/login", data={"token": OPERATOR, "next": "/q/shop?state=failed"})
    assert r.headers["location"] == "/q/shop?state=failed"  # a path inside is kept


async def test_a_planted_flash_cookie_is_ignored(dash: Any) -> None:
    c = client_for(dash)
    for raw in ("kqd_flash=\xe9.x", "kqd_flash=\xe9\xe9.1hello", "kqd_flash=.", "kqd_flash=a.b"):
        r = await c.get("/login", headers=[(b"cookie", raw.encode("latin-1"))])
        assert r.status_code == 200, raw
        assert "hello" not in r.text


async def test_a_server_error_page_carries_the_security_headers(
    dash: Any, shop: JobQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected")

    monkeypatch.setattr(pages, "overview_row", broken)
    transport = httpx.ASGITransport(app=dash, client=("127.0.0.1", 1), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://dash") as c:
        await c.post("/login", data={"token": VIEWER, "next": "/"})
        r = await c.get("/")
    assert r.status_code == 500 and "injected" not in r.text
    for name, value in SECURITY_HEADERS.items():
        assert r.headers.get(name) == value, name


# ---------------------------------------------------------------------- sign-in limit
async def test_wrong_bearer_tokens_count_against_the_sign_in_limit(dash: Any) -> None:
    c = client_for(dash, host="10.0.0.9")
    codes = [
        (await c.get("/api/stats", headers={"authorization": f"Bearer {'x' * 40}"})).status_code
        for _ in range(25)
    ]
    assert codes[:20] == [401] * 20 and set(codes[20:]) == {429}
    r = await c.get("/api/stats", headers={"authorization": f"Bearer {VIEWER}"})
    assert r.status_code == 429  # blocked for a minute, the right token too
    r = await c.post("/login", data={"token": VIEWER, "next": "/"})
    assert r.status_code == 429  # one limit for both ways in
    other = client_for(dash, host="10.0.0.10")
    r = await other.get("/api/stats", headers={"authorization": f"Bearer {VIEWER}"})
    assert r.status_code == 200


# ---------------------------------------------------------------------- actions
async def test_hidden_data_is_not_matched_by_a_replay(make_queue: QueueFactory) -> None:
    q = make_queue("shop")
    app = create_dashboard(queues=[q], tokens=TOKENS, refresh_ms=0, show_payloads=False)
    await q.add_job("charge", {"card": "4111"})
    manager, csrf = await signed(app, MANAGER)
    for form in ({"field": "card", "value": "4111"}, {"field": "card"}, {"value": "4111"}):
        r = await manager.post("/q/shop/action/replay-dlq", data={"csrf": csrf, **form})
        assert r.status_code == 400 and "hides job data" in r.text, form
    r = await manager.post("/q/shop/action/replay-dlq", data={"csrf": csrf, "field": ""})
    assert r.status_code == 200 and "Replay 0 dead-lettered job(s)?" in r.text


async def test_a_value_without_its_field_is_refused(dash: Any) -> None:
    manager, csrf = await signed(dash, MANAGER)
    r = await manager.post("/q/shop/action/replay-dlq", data={"csrf": csrf, "value": "x"})
    assert r.status_code == 400 and "needs the data field" in r.text


async def test_bulk_remove_counts_only_the_jobs_that_existed(dash: Any, shop: JobQueue) -> None:
    real = await shop.add_job("a", job_id="real-1")
    manager, csrf = await signed(dash, MANAGER)
    form = {"csrf": csrf, "ids": [real, "ghost-1", "ghost-2"], "confirm": "yes"}
    r = await manager.post("/q/shop/action/bulk-remove", data=form)
    assert r.status_code == 303
    page = (await manager.get(r.headers["location"])).text
    assert "1 of 3 job(s) done; 2 did not exist (ghost-1, ghost-2)" in page
    assert await shop.get_job_status(real) is None


async def test_an_id_with_a_nul_keeps_its_whole_message(dash: Any, shop: JobQueue) -> None:
    with pytest.raises(JobNotFoundError, match=r"job 'a\\x00b' does not exist"):
        await shop.retry_job("a\x00b")
    with pytest.raises(JobNotFoundError, match=r"job 'a\\x00b' does not exist"):
        await shop.promote_job("a\x00b")
    manager, csrf = await signed(dash, MANAGER)
    r = await manager.post("/q/shop/action/retry", data={"csrf": csrf, "job_id": "a\x00b"})
    assert r.status_code == 400 and "does not exist" in r.text


async def test_a_right_csrf_token_from_another_site_is_refused_as_cross_site(dash: Any) -> None:
    manager, csrf = await signed(dash, MANAGER)
    evil = {"origin": "https://evil.example"}
    r = await manager.post("/q/shop/action/pause", data={"csrf": csrf}, headers=evil)
    assert r.status_code == 403 and "cross-site" in r.text and "CSRF" not in r.text
    r = await manager.post("/logout", data={"csrf": csrf}, headers=evil)
    assert r.status_code == 403 and "cross-site" in r.text
    cookie = manager.cookies["kqd_session"]
    r = await manager.post("/logout", data={"csrf": csrf})
    assert r.status_code == 303
    replayed = client_for(dash)  # the cookie, kept by someone after the sign-out
    r = await replayed.get("/api/stats", headers={"cookie": f"kqd_session={cookie}"})
    assert r.status_code == 401


# ---------------------------------------------------------------------- pages
async def test_a_bad_groups_cursor_shows_the_first_page_with_why(dash: Any) -> None:
    viewer, _ = await signed(dash, VIEWER)
    r = await viewer.get("/q/shop/groups?cursor=x")
    assert r.status_code == 200 and 'class="flash bad"' in r.text and 'id="groups"' in r.text


async def test_control_characters_from_the_request_are_printed_escaped(dash: Any) -> None:
    viewer, _ = await signed(dash, VIEWER)
    r = await viewer.get("/q/shop?id=a%1b%5B31m%00z")
    assert r.status_code == 200
    assert "\x1b" not in r.text and "\x00" not in r.text
    assert "a\\x1b[31m\\x00z" in r.text
    # C1 controls and bidirectional overrides too: "exe.txt" must not read as "txt.exe".
    r = await viewer.get("/q/shop?id=report%E2%80%AEtxt.exe%C2%9B")
    assert r.status_code == 200
    assert "\u202e" not in r.text and "\x9b" not in r.text
    assert "report\\u202etxt.exe\\x9b" in r.text


# ---------------------------------------------------------------------- audit
@pytest.fixture
async def acm(backend_url: str, prefix: str) -> AsyncIterator[AccessControlManager]:
    manager = AccessControlManager(backend_url, prefix=prefix, audit_key=secrets.token_hex(32))
    yield manager
    await manager.close()


async def test_audit_cursors_at_the_ends_of_the_stream(
    shop: JobQueue, acm: AccessControlManager
) -> None:
    await acm.audit_access("alice", "export", "shop")
    log = acm.audit
    assert (await log.query_page(cursor="0-0")).entries == []
    assert len((await log.query_page(cursor="0-0", newest_first=False)).entries) == 1
    app = create_dashboard(queues=[shop], tokens=TOKENS, refresh_ms=0, access=acm)
    manager, _ = await signed(app, MANAGER)
    r = await manager.get("/audit?cursor=0-0")
    assert r.status_code == 200
    r = await manager.get("/audit?cursor=99999999999999999999-0")
    assert r.status_code == 200 and "cursor must be" in r.text


def test_a_checkpoint_must_name_a_stream_id_and_a_mac() -> None:
    good = AuditHead.parse(f"3:1700000000000-0:{'ab' * 32}")
    assert good.n == 3 and good.id == "1700000000000-0"
    for text in ("1:2:3", f"1:abc:{'ab' * 32}", "1:1-0:zz", "x:1-0:" + "ab" * 32, "1:1-0"):
        with pytest.raises(ConfigurationError, match="N:ID:MAC"):
            AuditHead.parse(text)


async def test_a_sign_out_ends_the_session_in_every_process_serving_the_queues(
    shop: JobQueue, make_queue: QueueFactory
) -> None:
    # Two processes behind one load balancer: the same secret and queues, no shared memory.
    secret = secrets.token_bytes(32)
    other_q = make_queue("shop")  # another JobQueue object on the same queue
    assert other_q is not shop
    one = create_dashboard(queues=[shop], tokens=TOKENS, refresh_ms=0, secret=secret)
    two = create_dashboard(queues=[other_q], tokens=TOKENS, refresh_ms=0, secret=secret)
    c, csrf = await signed(one, MANAGER)
    cookie = c.cookies["kqd_session"]
    kept = {"cookie": f"kqd_session={cookie}"}
    assert (await client_for(two).get("/api/stats", headers=kept)).status_code == 200
    assert (await c.post("/logout", data={"csrf": csrf})).status_code == 303
    assert (await client_for(two).get("/api/stats", headers=kept)).status_code == 401
    assert (await client_for(one).get("/api/stats", headers=kept)).status_code == 401
    # The record ends with the session: it expires, it is not kept for ever.
    client = await shop.client()
    keys = [k async for k in client.scan_iter(match=shop.keys.extra("dash:out:*"))]
    assert len(keys) == 1 and 0 < await client.ttl(keys[0]) <= 12 * 3600
    # A new sign-in works on both.
    c2, _ = await signed(two, MANAGER)
    assert (await c2.get("/api/stats")).status_code == 200
