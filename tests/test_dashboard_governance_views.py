"""The dashboard's compliance page (subjects, retention, a subject's jobs looked up by
POST, the erase-subject action), its results page (effectively-once results by key,
redacted or hidden as job pages show payloads) and its access page (grants, admins
only, look-alike principals flagged), through the ASGI app on a real Redis.

A subject id is personal data: these tests assert it never reaches a URL, a log record
or an audit entry, whatever the dashboard did with it."""

from __future__ import annotations

import asyncio
import html
import json
import logging
import re
import secrets
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from markupsafe import escape

from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import DeliveryGuarantee, IdempotencyManager, JobQueue, acting_as
from kitium_queue.cli import main
from kitium_queue.context import redacted_views
from kitium_queue.dashboard import create_dashboard
from kitium_queue.features.access import AccessControlManager, AccessEntry
from kitium_queue.features.audit import AuditLog
from kitium_queue.features.compliance import ComplianceManager, subject_digest
from test_dashboard_asgi import (
    ADMIN,
    MANAGER,
    OPERATOR,
    TOKENS,
    VIEWER,
    client_for,
    csrf_of,
    signed_in,
)

pytestmark = pytest.mark.redis_only

KEY = secrets.token_hex(32)
HOSTILE = "<script>alert('k')</script>&amp;\"x"
#: Personal data, hostile too: it must come back escaped, and nowhere else.
SUBJECT = "ann.lee+<b>x</b>@example.com"
OTHER = "bob@example.com"
EO = {"delivery_guarantee": DeliveryGuarantee.EXACTLY_ONCE}


@pytest.fixture
async def acm(backend_url: str, prefix: str) -> AsyncIterator[AccessControlManager]:
    manager = AccessControlManager(backend_url, prefix=prefix, audit_key=KEY)
    yield manager
    await manager.close()


async def _subjects(make_queue: QueueFactory) -> tuple[JobQueue, ComplianceManager, JobQueue]:
    """Queue 'shop' with compliance (a 30-day period on completed jobs, a redacted
    field): three jobs of SUBJECT (one with a hostile id), one of OTHER. Queue 'plain'
    has no compliance."""
    q = make_queue("shop")
    mgr = ComplianceManager(
        q, retention={"completed": timedelta(days=30)}, redact_fields=["email"], run_service=False
    )
    for jid in ("s1", "s2", f"<img src=x onerror=alert(1)>{HOSTILE}"):
        await q.add_job("mail", {"email": SUBJECT}, subject_id=SUBJECT, job_id=jid)
    await q.add_job("mail", {"email": OTHER}, subject_id=OTHER, job_id="o1")
    return q, mgr, make_queue("plain")


def _urls(page: str) -> list[str]:
    """Every URL a page holds (links, form targets), unescaped."""
    return [html.unescape(u) for u in re.findall(r'(?:href|action)="([^"]*)"', page)]


def _ids(page: str) -> list[str]:
    part = page.split('id="subject-jobs"', 1)[1].split("</ul>", 1)[0]
    return [html.unescape(i) for i in re.findall(r"<code>(.*?)</code>", part)]


def _assert_nowhere(subject: str, urls: list[str], caplog: pytest.LogCaptureFixture) -> None:
    """The subject id is in no URL and no log record (message or arguments)."""
    forms = {subject, quote(subject), quote(subject, safe=""), quote(subject).replace("%20", "+")}
    for url in urls:
        assert not any(f in url for f in forms), url
    for rec in caplog.records:
        text = rec.getMessage() + repr(rec.args) + repr(rec.__dict__.get("extra", ""))
        assert subject not in text and subject_digest(subject) not in text, text


async def _entries(audit: AuditLog) -> list[Any]:
    await audit.flush()
    return await audit.query(newest_first=False)


# ---------------------------------------------------------------------- compliance
async def test_the_compliance_page_shows_what_the_cli_reads_and_keeps_the_subject_private(
    make_queue: QueueFactory, acm: AccessControlManager, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    q, mgr, _ = await _subjects(make_queue)
    app = create_dashboard(queues=[q, make_queue("plain")], tokens=TOKENS, access=acm)
    c = await signed_in(app, VIEWER)
    urls: list[str] = []
    # The tab is there for the queue with compliance, not for the other.
    assert 'href="/q/shop/compliance"' in (await c.get("/q/shop")).text
    assert "/compliance" not in (await c.get("/q/plain")).text
    r = await c.get("/q/plain/compliance")
    assert r.status_code == 404 and "not enabled" in r.text

    r = await c.get("/q/shop/compliance")
    assert r.status_code == 200, r.text
    count = re.search(r'id="subject-count">(\d+)<', r.text)
    assert count and int(count[1]) == await mgr.subject_count() == 2
    # The retention rules as `compliance retention` prints them (Retention.to_dict).
    rules = mgr.retention.to_dict()["states"]
    assert rules == {"completed": {"count": None, "age_ms": None, "period_ms": 30 * 86_400_000}}
    row = r.text.split('<tr data-state="completed">', 1)[1].split("</tr>", 1)[0]
    assert "30 d (2592000000 ms)" in row
    assert "<code>email</code>" in r.text  # the redacted field
    urls += _urls(r.text)

    # The look-up is a POST with the session's CSRF token.
    csrf = csrf_of(r.text)
    assert (await c.post("/q/shop/compliance", data={"subject_id": SUBJECT})).status_code == 403
    r = await c.post("/q/shop/compliance", data={"csrf": csrf, "subject_id": SUBJECT})
    assert r.status_code == 200, r.text
    listed = sorted(await mgr.subject_jobs(SUBJECT))
    assert _ids(r.text) == listed and len(listed) == 3
    assert re.search(r'id="subject-jobs-count"><span class="num">3</span>', r.text)
    assert f'href="/q/shop/jobs/{quote("s1", safe="")}"' in r.text
    # Hostile values (the subject, a job id) come back escaped, never as markup.
    assert "<script>" not in r.text and "<img" not in r.text and "<b>x</b>" not in r.text
    assert f'value="{escape(SUBJECT)}"' in r.text
    assert 'data-action="erase-subject"' not in r.text  # a viewer may not erase
    urls += _urls(r.text)
    # Paged: two at a time, the next page asked for by POST too.
    r = await c.post("/q/shop/compliance", data={"csrf": csrf, "subject_id": SUBJECT, "limit": "2"})
    assert _ids(r.text) == listed[:2] and 'id="next-jobs"' in r.text
    urls += _urls(r.text)
    r = await c.post(
        "/q/shop/compliance",
        data={"csrf": csrf, "subject_id": SUBJECT, "limit": "2", "offset": "2"},
    )
    assert _ids(r.text) == listed[2:] and 'id="next-jobs"' not in r.text
    assert 'id="prev-jobs"' in r.text
    urls += _urls(r.text)
    # A subject without jobs, and an id that is no subject id: said, never echoed.
    r = await c.post("/q/shop/compliance", data={"csrf": csrf, "subject_id": "nobody"})
    assert _ids(r.text) == [] and re.search(r'id="subject-jobs-count"><span class="num">0<', r.text)
    bad = SUBJECT + "\n"
    r = await c.post("/q/shop/compliance", data={"csrf": csrf, "subject_id": bad})
    err = r.text.split('id="lookup-error">', 1)[1].split("</p>", 1)[0]
    assert "personal data" in err and "ann.lee" not in err
    _assert_nowhere(SUBJECT, urls, caplog)
    for e in await _entries(acm.audit):
        assert SUBJECT not in json.dumps(e.to_dict(), default=str)


async def test_erase_subject_needs_a_manager_a_confirmation_and_csrf_and_is_audited(
    make_queue: QueueFactory, acm: AccessControlManager, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    q, mgr, _ = await _subjects(make_queue)
    app = create_dashboard(queues=[q], tokens=TOKENS, access=acm)
    urls: list[str] = []
    fields = {"subject_id": SUBJECT, "next": "/q/shop/compliance"}
    for token in (VIEWER, OPERATOR):
        c = await signed_in(app, token)
        csrf = csrf_of((await c.get("/q/shop/compliance")).text)
        r = await c.post("/q/shop/action/erase-subject", data={**fields, "csrf": csrf})
        assert r.status_code == 403 and "needs the manager role" in r.text
        r = await c.post(
            "/q/shop/action/erase-subject", data={**fields, "csrf": csrf, "confirm": "yes"}
        )
        assert r.status_code == 403
    assert len(await mgr.subject_jobs(SUBJECT)) == 3  # nothing erased

    m = await signed_in(app, MANAGER)
    page = await m.post(
        "/q/shop/compliance",
        data={"csrf": csrf_of((await m.get("/q/shop/compliance")).text), "subject_id": SUBJECT},
    )
    assert 'data-action="erase-subject"' in page.text  # offered, with the subject hidden
    urls += _urls(page.text)
    csrf = csrf_of(page.text)
    # Without the CSRF token (or with a wrong one): refused before anything runs.
    assert (await m.post("/q/shop/action/erase-subject", data=fields)).status_code == 403
    r = await m.post(
        "/q/shop/action/erase-subject", data={**fields, "csrf": "x" * 32, "confirm": "yes"}
    )
    assert r.status_code == 403
    # First the count, on the confirmation page.
    r = await m.post("/q/shop/action/erase-subject", data={**fields, "csrf": csrf})
    assert r.status_code == 200 and 'id="confirm"' in r.text
    summary = html.unescape(r.text.split('id="summary">', 1)[1].split("</p>", 1)[0])
    assert "3 job(s) are indexed under it" in summary
    assert subject_digest(SUBJECT)[:16] in summary and SUBJECT not in summary
    assert "s1" in r.text and "<img" not in r.text
    assert len(await mgr.subject_jobs(SUBJECT)) == 3
    urls += _urls(r.text)
    # Confirmed: erased through the admin choke point, back to the compliance page.
    r = await m.post(
        "/q/shop/action/erase-subject", data={**fields, "csrf": csrf, "confirm": "yes"}
    )
    assert r.status_code == 303 and r.headers["location"] == "/q/shop/compliance"
    urls.append(r.headers["location"])
    page = await m.get("/q/shop/compliance")
    assert "erased 3 job(s) of subject" in html.unescape(page.text)
    assert await mgr.subject_jobs(SUBJECT) == []
    assert await q.get_job_status("s1") is None and await q.get_job_status("o1") is not None
    assert re.search(r'id="subject-count">1<', page.text)  # OTHER is left

    entries = await _entries(acm.audit)
    erased = [e for e in entries if e.action == "queue.erase_subject"]
    assert [(e.principal, e.resource, e.outcome) for e in erased] == [
        ("max@example.com", "shop", "ok")
    ]
    assert erased[0].metadata["args"] == {"subject_digest": subject_digest(SUBJECT)}
    denied = [e for e in entries if e.action == "access.denied"]
    assert [(e.principal, e.metadata["action"]) for e in denied] == [
        ("vera@example.com", "erase-subject"),
        ("vera@example.com", "erase-subject"),
        ("olivia@example.com", "erase-subject"),
        ("olivia@example.com", "erase-subject"),
    ]
    for e in entries:
        assert SUBJECT not in json.dumps(e.to_dict(), default=str)
    _assert_nowhere(SUBJECT, urls, caplog)


# ---------------------------------------------------------------------- results
async def _results_queue(make_queue: QueueFactory) -> tuple[JobQueue, str, str]:
    """Queue 'pay' with effectively-once and a redacted field 'card': one job whose
    result is kept under its (hostile) key after retention removed the job, one job
    still kept. Returns the two keys."""
    q = make_queue("pay", worker={"concurrency": 2})
    IdempotencyManager(q)
    ComplianceManager(q, redact_fields=["card"], run_service=False)

    @q.process("charge")
    async def charge(job: Any) -> dict[str, Any]:
        return {"charged": job.data["amount"], "card": "4111-1111-SECRET", "note": HOSTILE}

    stored_key = f"order-{HOSTILE}"
    gone = await q.add_job(
        "charge", {"amount": 5}, idempotency_key=stored_key, remove_on_complete=True, **EO
    )
    kept = await q.add_job("charge", {"amount": 7}, idempotency_key="order-2", **EO)
    await q.start()
    await wait_for_status(q, kept, "completed")
    idem = IdempotencyManager.for_queue(q)
    await wait_until(lambda: idem.get_result(stored_key), 5)
    assert await q.get_job_status(gone) is None
    await q.worker.stop()
    return q, stored_key, "order-2"


async def test_the_results_page_shows_what_the_cli_reads_redacted_as_job_pages(
    make_queue: QueueFactory,
) -> None:
    q, stored_key, kept_key = await _results_queue(make_queue)
    app = create_dashboard(queues=[q, make_queue("plain")], tokens=TOKENS, refresh_ms=0)
    c = await signed_in(app, VIEWER)
    assert 'href="/q/pay/results"' in (await c.get("/q/pay")).text
    assert "/results" not in (await c.get("/q/plain")).text
    assert (await c.get("/q/plain/results")).status_code == 404
    r = await c.get("/q/pay/results")
    assert r.status_code == 200 and "window <code>ttl</code>" in r.text

    idem = IdempotencyManager.for_queue(q)
    for key, source in ((stored_key, "stored"), (kept_key, "job")):
        with redacted_views():  # what `kitium-queue result` reads (the CLI redacts too)
            cli = await idem.get_execution_result(key)
        assert cli is not None and cli.source == source
        r = await c.get("/q/pay/results", params={"key": key})
        assert r.status_code == 200, r.text
        assert "<script>" not in r.text
        text = html.unescape(r.text)
        assert f'id="result-source">{source}<' in text
        assert f'id="result-name">{cli.job_name}<' in text
        assert f'id="result-key">{key}<' in text and cli.job_id in text
        result = html.unescape(r.text.split('id="result">', 1)[1].split("</pre>", 1)[0])
        assert '"charged"' in result and HOSTILE.split('"')[0] in result
        # The redacted field is masked as on the job's page, wherever the result was
        # read from (the job's record, or kept under its key after the job was gone).
        assert "SECRET" not in r.text, source
    # The kept job links to its page; the removed one does not.
    r = await c.get("/q/pay/results", params={"key": kept_key})
    found = await idem.get_execution_result(kept_key)
    assert found is not None
    job = await q.get_job_detail(found.job_id)
    assert job is not None
    assert f'href="/q/pay/jobs/{quote(job.id, safe="")}"' in r.text
    page = await c.get(f"/q/pay/jobs/{quote(job.id, safe='')}")
    assert "SECRET" not in page.text  # as the job page shows it
    # Nothing under a key: said, with the key escaped.
    r = await c.get("/q/pay/results", params={"key": f"nope-{HOSTILE}"})
    assert 'id="no-result"' in r.text and "<script>" not in r.text
    assert (await c.get("/q/pay/results", params={"key": "x" * 600})).status_code == 200

    # A dashboard that hides payloads hides the result too (the rest is shown).
    hidden = create_dashboard(queues=[q], tokens=TOKENS, refresh_ms=0, show_payloads=False)
    c = await signed_in(hidden, VIEWER)
    for key in (stored_key, kept_key):
        r = await c.get("/q/pay/results", params={"key": key})
        assert r.status_code == 200 and 'id="result-source"' in r.text
        assert "does not show payloads" in r.text
        assert "charged" not in r.text and "SECRET" not in r.text


# ---------------------------------------------------------------------- access grants
async def test_the_access_page_lists_grants_for_admins_only_with_lookalikes_flagged(
    make_queue: QueueFactory, acm: AccessControlManager, backend_url: str, prefix: str
) -> None:
    await acm.grant_access(principal_id="root", queue_pattern="*", role="admin")
    await acm.grant_access(principal_id="alice@acme.com", queue_pattern="acme-*", role="operator")
    await acm.grant_access(
        principal_id="alice@acme.com", queue_pattern="shop", permissions=["can_view_job"]
    )
    # Stored before the script rule (grant_access refuses it now): listed, flagged.
    await acm.grants.put(AccessEntry("\u0430lice", "q*", role="viewer"), f"by-{HOSTILE}")
    q = make_queue("shop")
    app = create_dashboard(queues=[q], tokens=TOKENS, refresh_ms=0, access=acm)
    for token, who, role in (
        (VIEWER, "vera@example.com", "viewer"),
        (OPERATOR, "olivia@example.com", "operator"),
        (MANAGER, "max@example.com", "manager"),
    ):
        c = await signed_in(app, token)
        r = await c.get("/access")
        assert r.status_code == 403 and "Refused" in r.text
        assert f"{who} ({role}) may not view-access: it needs the admin role" in r.text
        assert "alice@acme.com" not in r.text
        assert 'id="access-link"' not in (await c.get("/")).text  # no link to it either
    await acm.audit.flush()
    denied = await acm.query_audit_log(action="access.denied", newest_first=False)
    assert [
        (e.principal, e.resource, e.metadata["action"], e.metadata["needs_role"]) for e in denied
    ] == [
        ("vera@example.com", "access", "view-access", "admin"),
        ("olivia@example.com", "access", "view-access", "admin"),
        ("max@example.com", "access", "view-access", "admin"),
    ]

    admin = await signed_in(app, ADMIN)
    assert 'href="/access" id="access-link"' in (await admin.get("/")).text
    r = await admin.get("/access")
    assert r.status_code == 200, r.text
    assert 'class="audit-link here" href="/access"' in r.text
    assert "<script>" not in r.text
    cli = ["access", "list", "--json", "--redis", backend_url, "--prefix", prefix]
    out = await asyncio.to_thread(CliRunner().invoke, main, cli)
    assert out.exit_code == 0, out.output
    listed = json.loads(out.output)
    assert listed == [e.to_dict() for e in await acm.list_access()]
    rows = _grant_rows(r.text)
    assert [(g["principal"], g["pattern"], g["role"], g["lookalike"]) for g in rows] == [
        (e["principal_id"], e["queue_pattern"], e["role"] or "-", bool(e["lookalike"]))
        for e in listed
    ]
    assert [g["principal"] for g in rows if g["lookalike"]] == ["\u0430lice"]
    flagged = next(g for g in rows if g["lookalike"])
    assert "Cyrillic and Latin" in flagged["cells"][7] and flagged["cells"][5] == f"by-{HOSTILE}"
    for g, e in zip(rows, listed, strict=True):  # permissions, what they allow, who
        assert g["cells"][3:6] == [
            ", ".join(e["permissions"]) or "-",
            ", ".join(e["effective"]),
            e["granted_by"] or "-",
        ]
    assert next(g for g in rows if g["pattern"] == "shop")["cells"][3] == "can_view_job"
    # Paged: two grants a page, every grant once, in order.
    seen: list[tuple[str, str]] = []
    url: str | None = "/access?limit=2"
    while url:
        r = await admin.get(url)
        page = _grant_rows(r.text)
        assert 0 < len(page) <= 2
        seen += [(g["principal"], g["pattern"]) for g in page]
        m = re.search(r'id="grants-next" href="([^"]+)"', r.text)
        url = html.unescape(m[1]) if m else None
    assert seen == [(e["principal_id"], e["queue_pattern"]) for e in listed]
    # One principal's grants (`access list --principal`).
    r = await admin.get("/access", params={"principal": "alice@acme.com"})
    assert [g["pattern"] for g in _grant_rows(r.text)] == ["acme-*", "shop"]
    r = await admin.get("/access", params={"principal": " bad"})
    assert r.status_code == 200 and 'id="access-error"' in r.text

    # Without an AccessControlManager there is no such page.
    for access in (None, AuditLog(backend_url, prefix=prefix, key=KEY)):
        other = create_dashboard(queues=[q], tokens=TOKENS, refresh_ms=0, access=access)
        r = await (await signed_in(other, ADMIN)).get("/access")
        assert r.status_code == 404 and "no access control" in r.text


def _grant_rows(page: str) -> list[dict[str, Any]]:
    """The grants an access page lists (cell texts, unescaped)."""
    table = page.split('id="grants"', 1)[1].split("</table>", 1)[0]
    out = []
    for m in re.finditer(r'<tr data-principal="([^"]*)">(.*?)</tr>', table, re.S):
        cells = [
            html.unescape(re.sub(r"<[^>]+>", "", c)).strip()
            for c in re.findall(r"<td[^>]*>(.*?)</td>", m[2], re.S)
        ]
        out.append(
            {
                "principal": html.unescape(m[1]),
                "pattern": cells[1],
                "role": cells[2],
                "lookalike": 'data-lookalike="1"' in m[2],
                "cells": cells,
            }
        )
    return out


async def test_signed_out_requests_and_bearer_reads_never_carry_a_subject(
    make_queue: QueueFactory,
) -> None:
    q, mgr, _ = await _subjects(make_queue)
    app = create_dashboard(queues=[q], tokens=TOKENS, refresh_ms=0)
    # Signed out: sent to sign in, the target being the page's path only.
    r = await client_for(app).post("/q/shop/compliance", data={"subject_id": SUBJECT})
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/q/shop/compliance"
    # A bearer token reads pages but has no CSRF token: it cannot look a subject up.
    c = client_for(app)
    bearer = {"authorization": f"Bearer {VIEWER}"}
    assert (await c.get("/q/shop/compliance", headers=bearer)).status_code == 200
    r = await c.post("/q/shop/compliance", data={"subject_id": SUBJECT}, headers=bearer)
    assert r.status_code == 403 and SUBJECT not in r.text
    assert len(await mgr.subject_jobs(SUBJECT)) == 3


async def test_on_a_protected_queue_the_grants_decide_and_refusals_name_no_subject(
    make_queue: QueueFactory, acm: AccessControlManager, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    q, mgr, _ = await _subjects(make_queue)
    await acm.grant_access(principal_id="max@example.com", queue_pattern="shop", role="manager")
    await acm.grant_access(principal_id="ada@example.com", queue_pattern="shop", role="viewer")
    acm.protect(q)

    async def jobs() -> list[str]:  # read as a principal the grants let read
        with acting_as("max@example.com"):
            return await mgr.subject_jobs(SUBJECT)

    app = create_dashboard(queues=[q], tokens=TOKENS, refresh_ms=0, access=acm)
    # The admin's dashboard role allows erasing; their grant (viewer) does not.
    ad = await signed_in(app, ADMIN)
    csrf = csrf_of((await ad.get("/q/shop/compliance")).text)
    r = await ad.post("/q/shop/compliance", data={"csrf": csrf, "subject_id": SUBJECT})
    assert _ids(r.text) == sorted(await jobs())  # a read: allowed
    data = {"csrf": csrf, "subject_id": SUBJECT, "confirm": "yes"}
    r = await ad.post("/q/shop/action/erase-subject", data=data)
    assert r.status_code == 403 and "can_manage_queue" in r.text
    assert len(await jobs()) == 3
    # A principal without any grant on the queue reads nothing of it.
    op = await signed_in(app, OPERATOR)
    assert (await op.get("/q/shop/compliance")).status_code == 403
    # The manager's grant gives can_view_job but not can_manage_queue either.
    mg = await signed_in(app, MANAGER)
    csrf = csrf_of((await mg.get("/q/shop/compliance")).text)
    r = await mg.post("/q/shop/action/erase-subject", data={**data, "csrf": csrf})
    assert r.status_code == 403 and len(await jobs()) == 3
    entries = await _entries(acm.audit)
    denied = [e for e in entries if e.action == "access.denied"]
    assert {(e.principal, e.metadata.get("permission")) for e in denied} >= {
        ("ada@example.com", "can_manage_queue"),
        ("olivia@example.com", "can_view_job"),
        ("max@example.com", "can_manage_queue"),
    }
    for e in entries:
        assert SUBJECT not in json.dumps(e.to_dict(), default=str)
    _assert_nowhere(SUBJECT, [], caplog)
