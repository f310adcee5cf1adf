"""The dashboard end to end, in a real headless Chromium (Debian's ``chromium`` driven by
Playwright with ``executable_path``; no browser is downloaded).

Each test starts ``kitium-queue dashboard`` as its own process on a free port, with an
app module whose queues have groups, workflows, breakers and flow control enabled, and
drives the pages as a person would: sign in, look, click, confirm. The situations
behind the pages (failed jobs, dead letters, a group's turn, an open breaker, ...) are
made for real in Redis by this process, with its own queue objects of the same names.

Screenshots go to ``artefacts/dashboard/`` (kept out of git); two of them are in the
README (docs/img/).

``scripts/test`` installs Chromium when it is missing and sets ``KQ_REQUIRE_BROWSER=1``,
which turns a missing browser into a failure; elsewhere these tests are skipped with
the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from _redis import free_port
from helpers import app_module, wait_for_status, wait_until
from kitium_queue import (
    CircuitBreakerManager,
    FIFOQueueManager,
    JobChainManager,
    JobQueue,
    JobStatus,
)
from kitium_queue.features.access import AccessControlManager

# One event loop for the module's tests: they share one Chromium (``chromium``).
pytestmark = [pytest.mark.redis_only, pytest.mark.asyncio(loop_scope="module")]

ROOT = Path(__file__).resolve().parent.parent
ARTEFACTS = ROOT / "artefacts" / "dashboard"
ADMIN = "ad-" + "a" * 29
OPERATOR = "op-" + "o" * 29
MANAGER = "mg-" + "m" * 29
VIEWER = "vw-" + "v" * 29


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


CHROMIUM = chromium_path()
if CHROMIUM is None:
    if os.environ.get("KQ_REQUIRE_BROWSER") == "1":
        raise RuntimeError("chromium is not installed: scripts/test installs it (apt-get)")
    pytest.skip("chromium is not installed (scripts/test installs it)", allow_module_level=True)
try:
    from playwright.async_api import Page, async_playwright
except ImportError:
    if os.environ.get("KQ_REQUIRE_BROWSER") == "1":
        raise
    pytest.skip("playwright is not installed (the dev extra has it)", allow_module_level=True)


APP_SOURCE = """
from kitium_queue import JobQueue, FIFOQueueManager, JobChainManager, CircuitBreakerManager

def build(name, redis, prefix):
    q = JobQueue(name, redis=redis, prefix=prefix, dlq={{"enabled": name != "mail"}})
    FIFOQueueManager(q)
    JobChainManager(q, events=False)
    CircuitBreakerManager(q, events=False)
    q.set_concurrency_limit("tenant-*", 1)
    q.set_rate_limit("api", max=1, duration=600_000)
    return q

shop = build("shop", {redis!r}, {prefix!r})
mail = build("mail", {redis!r}, {prefix!r})
"""


def build(name: str, redis: str, prefix: str) -> JobQueue:
    """The same queue the dashboard's app module builds (features and limits alike)."""
    q = JobQueue(name, redis=redis, prefix=prefix, dlq={"enabled": name != "mail"})
    FIFOQueueManager(q)
    JobChainManager(q, events=False)
    CircuitBreakerManager(q, events=False)
    q.set_concurrency_limit("tenant-*", 1)
    q.set_rate_limit("api", max=1, duration=600_000)
    return q


class Server:
    """``kitium-queue dashboard`` running as a process."""

    def __init__(self, url: str, proc: subprocess.Popen[bytes]) -> None:
        self.url = url
        self.proc = proc


@contextlib.contextmanager
def serve(
    tmp_path: Path, redis_url: str, prefix: str, *args: str, env: dict[str, str] | None = None
) -> Iterator[Server]:
    """``kitium-queue dashboard`` of the app module's queues with ``args``, until the
    block ends."""
    port = free_port()
    with (
        app_module(tmp_path, APP_SOURCE.format(redis=redis_url, prefix=prefix)) as mod,
        open(tmp_path / "dashboard.log", "wb") as logfile,
    ):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kitium_queue.cli",
                "dashboard",
                f"{mod}:shop",
                f"{mod}:mail",
                "--port",
                str(port),
                "--refresh-ms",
                "1000",
                *args,
            ],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})},
            stdout=logfile,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(url + "/login", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.wait(timeout=5)
                log = (tmp_path / "dashboard.log").read_text(errors="replace")
                raise AssertionError(f"dashboard did not start: {log[-2000:]}")
            time.sleep(0.1)
        try:
            yield Server(url, proc)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def server(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[Server]:
    with serve(
        tmp_path,
        redis_url,
        prefix,
        "--token",
        f"{OPERATOR}:olivia@example.com:operator",
        "--token",
        f"{MANAGER}:max@example.com:manager",
        "--token",
        f"{VIEWER}:vera@example.com:viewer",
    ) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def queues(redis_url: str, prefix: str) -> AsyncIterator[dict[str, JobQueue]]:
    made = {n: build(n, redis_url, prefix) for n in ("shop", "mail")}
    yield made
    for q in made.values():
        if q.worker is not None and q.worker.running:
            await q.worker.stop(timeout_ms=500)
        await q.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chromium() -> AsyncIterator[Any]:
    """One headless Chromium for the module (starting one takes a second or two)."""
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield b
        finally:
            await b.close()


@pytest_asyncio.fixture(loop_scope="module")
async def browser(chromium: Any) -> AsyncIterator[Any]:
    """The module's Chromium; each test signs in in browser contexts of its own (no
    cookie or page is shared), closed when the test ends."""
    yield chromium
    for ctx in list(chromium.contexts):
        await ctx.close()


async def signed_in(browser: Any, server: Server, token: str) -> Page:
    ctx = await browser.new_context(viewport={"width": 1360, "height": 860})
    page = await ctx.new_page()
    page.on("dialog", lambda d: pytest.fail(f"a dialog opened: {d.message}"))
    await page.goto(server.url + "/")
    assert "/login" in page.url
    await page.fill("input[name=token]", token)
    await page.click("button[type=submit]")
    await page.wait_for_url(server.url + "/")
    return page


async def shot(page: Page, name: str) -> None:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTEFACTS / f"{name}.png"), full_page=True)


async def reasons(page: Page) -> dict[str, str]:
    items = await page.query_selector_all("li.reason")
    return {await i.get_attribute("data-code") or "": await i.inner_text() for i in items}


# ---------------------------------------------------------------------- the tests
async def test_viewing_queues_and_jobs(browser: Any, server: Server, queues: dict) -> None:
    shop = queues["shop"]
    ids = [await shop.add_job("charge", {"order": i, "amount": 10 * i}) for i in range(3)]
    await shop.add_job("charge", {"order": 9}, delay=3_600_000)
    done: list[str] = []
    mail = queues["mail"]
    mail.process("welcome", lambda job: done.append(job.id))
    await mail.start(concurrency=2)
    for i in range(5):
        await mail.add_job("welcome", {"user": i})
    await wait_until(lambda: len(done) == 5)
    page = await signed_in(browser, server, OPERATOR)
    row = page.locator("#queues tr", has_text="shop")
    assert await row.locator("[data-k=waiting]").inner_text() == "3"
    assert await row.locator("[data-k=delayed]").inner_text() == "1"

    # The live chart and counts refresh from /api/stats while jobs keep flowing.
    async def produce() -> None:
        for i in range(120):
            await mail.add_job("welcome", {"user": 100 + i})
            await asyncio.sleep(0.02 + 0.004 * (i % 25))

    flow = asyncio.create_task(produce())
    mail_row = page.locator("#queues tr", has_text="mail")
    # (Polled from here: the page's CSP forbids the eval that wait_for_function uses.)
    spark = page.locator("svg.spark[data-q=mail] polyline.done")

    async def plotted() -> bool:
        return len((await spark.get_attribute("points") or "").split()) >= 6

    await wait_until(plotted, timeout=15)
    assert float(await mail_row.locator("[data-k=rate]").inner_text()) > 0
    await flow
    await wait_until(lambda: len(done) == 125, timeout=10)
    cell = mail_row.locator("[data-k=completed]")

    async def counted() -> bool:
        return await cell.inner_text() == "125"

    await wait_until(counted, timeout=5)
    await shot(page, "overview")
    await page.click("#queues a:text-is('shop')")
    await page.wait_for_selector("#jobs")
    listed = await page.locator("#jobs tbody tr td:nth-child(2)").all_inner_texts()
    assert listed == ids
    await page.click(f"#jobs a:text-is('{ids[1]}')")
    await page.wait_for_selector("#job-id")
    assert await page.inner_text("#job-id") == ids[1]
    assert '"amount": 10' in await page.inner_text("#data")
    # Search by a data field, then by id.
    await page.goto(f"{server.url}/q/shop?state=waiting&field=order&value=2")
    assert await page.locator("#jobs tbody tr td:nth-child(2)").all_inner_texts() == [ids[2]]
    await page.goto(f"{server.url}/q/shop?id={ids[0]}")
    assert await page.inner_text("#job-id") == ids[0]


async def test_retrying_a_failed_job(browser: Any, server: Server, queues: dict) -> None:
    mail = queues["mail"]
    calls: list[str] = []

    def flaky(job: Any) -> str:
        calls.append(job.id)
        if len(calls) == 1:
            raise RuntimeError("smtp timeout")
        return "sent"

    mail.process("welcome", flaky)
    await mail.start(concurrency=1)
    jid = await mail.add_job("welcome", {"user": 1}, attempts=1)
    await wait_for_status(mail, jid, "failed")
    page = await signed_in(browser, server, OPERATOR)
    await page.goto(f"{server.url}/q/mail?state=failed")
    await page.click(f"#jobs a:text-is('{jid}')")
    assert "smtp timeout" in await page.inner_text("#error")
    assert "RuntimeError" in await page.inner_text("#traceback")
    await page.click("button[data-action=retry]")
    await page.wait_for_selector(".flash.ok")
    assert "waiting again" in await page.inner_text(".flash.ok")
    await wait_for_status(mail, jid, "completed")
    assert calls == [jid, jid]


async def test_replaying_the_dlq_by_filter(browser: Any, server: Server, queues: dict) -> None:
    shop = queues["shop"]

    def fail(job: Any) -> None:
        raise RuntimeError(job.data["why"])

    shop.process("charge", fail)
    await shop.start(concurrency=2)
    timeouts = [
        await shop.add_job("charge", {"why": "gateway timeout"}, attempts=1) for _ in range(3)
    ]
    others = [await shop.add_job("charge", {"why": "card declined"}, attempts=1) for _ in range(2)]
    for jid in timeouts + others:
        await wait_for_status(shop, jid, "dlq")
    await shop.worker.stop()
    page = await signed_in(browser, server, MANAGER)
    await page.goto(f"{server.url}/q/shop?state=dlq")
    await page.click("#replay summary")
    await page.fill("#replay input[name=error]", "timeout")
    await page.click("#replay button[data-action=replay-dlq]")
    await page.wait_for_selector("#summary")
    assert "Replay 3 dead-lettered job(s)" in await page.inner_text("#summary")
    assert sorted(await page.locator("ul.ids code").all_inner_texts()) == sorted(timeouts)
    await shot(page, "replay-confirm")
    await page.click("#confirm")
    await page.wait_for_selector(".flash.ok")
    assert "3 of 3" in await page.inner_text(".flash.ok")
    for jid in timeouts:
        assert (await shop.get_job_status(jid)).status is JobStatus.WAITING
    for jid in others:
        assert (await shop.get_job_status(jid)).status is JobStatus.DLQ


async def test_pausing_a_group(browser: Any, server: Server, queues: dict) -> None:
    shop = queues["shop"]
    await shop.add_job("ship", {}, message_group_id="customer-7")
    await shop.add_job("ship", {}, message_group_id="customer-8")
    page = await signed_in(browser, server, MANAGER)
    await page.goto(f"{server.url}/q/shop/groups")
    row = page.locator("tr[data-group='customer-7']")
    await row.locator("button[data-action=pause-group]").click()
    await page.wait_for_selector(".flash.ok")
    assert "group customer-7 paused" in await page.inner_text(".flash.ok")
    assert await page.locator("tr[data-group='customer-7'] .badge").inner_text() == "paused"
    stats = await FIFOQueueManager.for_queue(shop).get_group_stats("customer-7")
    assert stats.paused
    assert not (await FIFOQueueManager.for_queue(shop).get_group_stats("customer-8")).paused


async def test_why_is_this_job_not_running(browser: Any, server: Server, queues: dict) -> None:
    """Every reason, each on the job page of a job held back by it."""
    shop, mail = queues["shop"], queues["mail"]
    gate = asyncio.Event()

    async def hold(job: Any) -> str:
        await gate.wait()
        return "ok"

    # mail: no worker at all; a delayed job; a paused queue.
    delayed = await mail.add_job("welcome", {}, delay=3_600_000)
    # shop: a worker with processors for some names only.
    for name in ("g", "slow", "cap", "api", "charge"):
        shop.process(name, hold)
    await shop.start(concurrency=8)
    # The worker claims it and fails it (no processor); a long backoff keeps it retrying
    # (delayed, not started) rather than dead-lettered before the page is read.
    orphan = await shop.add_job(
        "nobody-runs-me", {}, attempts=3, backoff={"type": "fixed", "delay": 3_600_000}
    )
    holder = await shop.add_job("g", {}, message_group_id="cust-1")
    await wait_for_status(shop, holder, "active")
    turn = await shop.add_job("g", {}, message_group_id="cust-1")
    await wait_for_status(shop, turn, "pending")
    await FIFOQueueManager.for_queue(shop).pause_group("cust-2")
    paused_group = await shop.add_job("g", {}, message_group_id="cust-2")
    parent = await shop.add_job("slow", {}, delay=3_600_000)
    child = await shop.add_job("slow", {"step": "child"}, depends_on=[parent])
    breakers = CircuitBreakerManager.for_queue(shop)
    await breakers.create_breaker({"id": "payments", "job_name": "charge", "timeout": 600_000})
    await breakers.force_open("payments", reason="upstream 503")
    held = await shop.add_job("charge", {})
    await wait_for_status(shop, held, "pending")
    first_cap = await shop.add_job("cap", {}, concurrency_key="tenant-9")
    await wait_for_status(shop, first_cap, "active")
    capped = await shop.add_job("cap", {}, concurrency_key="tenant-9")
    await wait_for_status(shop, capped, "pending")
    first_api = await shop.add_job("api", {}, rate_limit_key="api")
    await wait_for_status(shop, first_api, "active")
    limited = await shop.add_job("api", {}, rate_limit_key="api")
    running = await shop.add_job("slow", {})
    await wait_for_status(shop, running, "active")

    page = await signed_in(browser, server, VIEWER)

    async def why(queue: str, jid: str) -> dict[str, str]:
        await page.goto(f"{server.url}/q/{queue}/jobs/{jid}")
        await page.wait_for_selector("#why")
        return await reasons(page)

    got = await why("mail", delayed)
    assert "delayed until" in got["delayed"] and "no live worker" in got["no-worker"]
    got = await why("shop", orphan)
    assert "no live worker has a processor for 'nobody-runs-me'" in got["no-worker"]
    got = await why("shop", turn)
    assert holder in got["group-turn"] and shop.worker.id in got["group-turn"]
    await shot(page, "why-group-turn")
    assert "group 'cust-2' is paused" in (await why("shop", paused_group))["group-paused"]
    got = await why("shop", child)
    assert parent in got["dependencies"] and "delayed" in got["dependencies"]
    got = await why("shop", held)
    assert (
        "'payments' is open (upstream 503)" in got["breaker-open"] and "UTC" in got["breaker-open"]
    )
    got = await why("shop", capped)
    assert "'tenant-9' is at its cap: 1 of 1" in got["concurrency-cap"]
    assert first_cap in got["concurrency-cap"]
    got = await why("shop", limited)
    assert "rate-limit key 'api'" in got["rate-limit"] and "window is full" in got["rate-limit"]
    got = await why("shop", running)
    assert f"held by worker {shop.worker.id} until" in got["lease-held"]
    # A paused queue: said for its waiting jobs.
    await mail.pause()
    waiting = await mail.add_job("welcome", {})
    got = await why("mail", waiting)
    assert "queue 'mail' is paused" in got["queue-paused"]
    # The job list links to the answer.
    await page.goto(f"{server.url}/q/shop?state=pending")
    assert await page.locator("a.why").count() >= 4
    gate.set()


async def test_a_viewer_is_refused_an_action(browser: Any, server: Server, queues: dict) -> None:
    mail = queues["mail"]
    mail.process("welcome", lambda job: 1 / 0)
    await mail.start(concurrency=1)
    jid = await mail.add_job("welcome", {}, attempts=1)
    await wait_for_status(mail, jid, "failed")
    await mail.worker.stop()
    page = await signed_in(browser, server, VIEWER)
    await page.goto(f"{server.url}/q/mail/jobs/{jid}")
    button = page.locator("button[data-action=retry]")
    assert await button.is_disabled()
    # A crafted request (the button enabled by hand) is refused by the server.
    await button.evaluate("b => { b.disabled = false; }")
    await button.click()
    await page.wait_for_selector("#error")
    assert "vera@example.com (viewer) may not retry" in await page.inner_text("#error")
    assert (await mail.get_job_status(jid)).status is JobStatus.FAILED


async def test_xss_in_job_data_is_inert(browser: Any, server: Server, queues: dict) -> None:
    shop = queues["shop"]
    payload = {
        "note": "<script>window.__xss = 1</script>",
        "img": '<img src=x onerror="window.__xss = 2">',
        "<b>key</b>": "\"'><svg onload=window.__xss=3>",
    }
    jid = await shop.add_job("charge", payload)
    page = await signed_in(browser, server, OPERATOR)
    await page.goto(f"{server.url}/q/shop/jobs/{jid}")
    text = await page.inner_text("#data")
    assert "<script>window.__xss = 1</script>" in text
    assert '<img src=x onerror=\\"window.__xss = 2\\">' in text  # as JSON shows it
    assert await page.evaluate("window.__xss") is None
    assert await page.locator("#data img, #data script, #data svg, #data b").count() == 0
    await page.goto(
        f"{server.url}/q/shop?state=waiting&field=note&value=<script>window.__xss = 1</script>"
    )
    assert await page.evaluate("window.__xss") is None
    assert await page.locator("#jobs tbody tr td:nth-child(2)").all_inner_texts() == [jid]


async def test_a_missing_csrf_token_is_refused(browser: Any, server: Server, queues: dict) -> None:
    shop = queues["shop"]
    page = await signed_in(browser, server, MANAGER)
    await page.goto(f"{server.url}/q/shop")
    form = page.locator("form:has(button[data-action=pause])")
    await form.locator("input[name=csrf]").evaluate("i => i.remove()")
    await form.locator("button").click()
    assert "missing or wrong CSRF token" in await page.inner_text("body")
    assert not (await shop.get_stats()).is_paused
    # With the token the same button works.
    await page.goto(f"{server.url}/q/shop")
    await page.click("button[data-action=pause]")
    await page.wait_for_selector("#paused")
    assert (await shop.get_stats()).is_paused


async def test_the_audit_page_filters_and_verifies_the_chain(
    browser: Any, tmp_path: Path, redis_url: str, prefix: str
) -> None:
    """``--access``: the grants apply on top of the roles, a refusal lands in the audit
    log, an admin finds it with the filters and verifies the chain, before and after
    an entry is removed behind the log's back."""
    key = secrets.token_hex(32)
    acm = AccessControlManager(redis_url, prefix=prefix, audit_key=key)
    try:
        await acm.grant_access(principal_id="ada@example.com", queue_pattern="*", role="admin")
        await acm.grant_access(principal_id="max@example.com", queue_pattern="shop", role="viewer")
        with serve(
            tmp_path,
            redis_url,
            prefix,
            "--access",
            "--token",
            f"{ADMIN}:ada@example.com:admin",
            "--token",
            f"{MANAGER}:max@example.com:manager",
            env={"KITIUM_QUEUE_AUDIT_KEY": key},
        ) as srv:
            # max: a manager's role, a viewer's grant: the grant refuses the pause.
            page = await signed_in(browser, srv, MANAGER)
            await page.goto(f"{srv.url}/q/shop")
            await page.click("button[data-action=pause]")
            await page.wait_for_selector("#error")
            assert "can_control_queue" in await page.inner_text("#error")
            assert await page.inner_text("#heading") == "Refused"
            # ada finds the refusal on the Audit page.
            page = await signed_in(browser, srv, ADMIN)
            async with page.expect_navigation():
                await page.click("#audit-link")
            assert await page.locator("#audit tbody tr[data-id]").count() >= 3
            await page.fill("#audit-filter input[name=principal]", "max@example.com")
            await page.select_option("#audit-filter select[name=outcome]", "denied")
            async with page.expect_navigation():
                await page.click("#audit-filter button[type=submit]")
            found = page.locator("#audit tbody tr[data-id]")
            assert await found.count() == 1
            assert await found.locator("td.action").inner_text() == "access.denied"
            assert await found.locator("td.resource").inner_text() == "shop"
            assert '"action":"pause"' in await found.locator("td.metadata").inner_text()
            assert await found.locator("td.authentic").inner_text() == "yes"
            await shot(page, "audit")
            async with page.expect_navigation():
                await page.click("#verify-chain")
            assert "Chain intact" in await page.inner_text("#verdict")
            # An entry disappears from the stream: the next verification names the gap.
            entries = await acm.query_audit_log(newest_first=False)
            client = await acm.deployment.client()
            assert await client.xdel(acm.audit.stream, entries[1].id) == 1
            async with page.expect_navigation():
                await page.click("#verify-chain")
            assert await page.get_attribute("#report", "data-ok") == "no"
            assert "Chain BROKEN" in await page.inner_text("#verdict")
            assert await page.inner_text("#first-entry") == entries[2].id
            await shot(page, "audit-broken")
    finally:
        await acm.close()
