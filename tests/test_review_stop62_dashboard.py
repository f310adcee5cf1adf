"""Dashboard defects found by walking through it as a new user, each reproduced against
a real Redis: buttons that acted on another id when an id held a bidirectional mark or
a C1 control, a throughput figure that counted failures twice and measured a sample of
unrelated events, bulk confirmations without a count or ids and limits above the
documented ones, failed actions shown as successes, and a search by hidden data that
answered as if every job matched."""

from __future__ import annotations

import asyncio
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import FIFOQueueManager, JobQueue, JobStatus, NonRetryableError
from kitium_queue.dashboard import create_dashboard, data
from test_dashboard_asgi import ADMIN, MANAGER, OPERATOR, TOKENS
from test_dashboard_hostile import signed

pytestmark = pytest.mark.redis_only

# Ids that read as other text when shown as they are: a right-to-left override, a
# left-to-right mark, an isolate, NEL and CSI (C1 controls).
BIDI_GROUP = "acct\u202egnp"
BIDI_JOB = "job\u202etxt"
CSI_JOB = "c1\x9b31m"
HIDDEN = ("\u202e", "\u200e", "\u2066", "\x85", "\x9b")


class _Page(HTMLParser):
    """A page as a browser reads it: its forms (action, fields, buttons) and its text."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[dict[str, Any]] = []
        self.text: list[str] = []
        self._form: dict[str, Any] | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._form = {"action": a.get("action", ""), "fields": [], "buttons": []}
            self.forms.append(self._form)
        elif tag == "input" and self._form is not None and "name" in a:
            if a.get("type") == "hidden":
                self._form["fields"].append((a["name"], a.get("value", "")))
            elif a.get("type") == "checkbox":
                self._form.setdefault("checkboxes", []).append(a.get("value", ""))
        elif tag == "button" and self._form is not None:
            self._form["buttons"].append(a.get("data-action", ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None

    def handle_data(self, text: str) -> None:
        self.text.append(text)

    def form(self, action: str, **fields: str) -> dict[str, Any]:
        """The form of button ``action`` whose hidden fields include ``fields``."""
        for f in self.forms:
            if f["action"].endswith(f"/action/{action}") and all(
                (k, v) in f["fields"] for k, v in fields.items()
            ):
                return f
        found = [(f["action"], f["fields"]) for f in self.forms]
        raise AssertionError(f"no {action} form with {fields!r}; forms: {found!r}")


def shown_text(html: str) -> str:
    return "".join(_Page(html).text)


def as_data(fields: list[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in fields:
        out.setdefault(k, []).append(v)
    return out


async def press(client: httpx.AsyncClient, form: dict[str, Any]) -> httpx.Response:
    """Submit ``form`` as a browser would: its hidden fields, as the page holds them."""
    return await client.post(form["action"], data=as_data(form["fields"]))


async def finish(queue: JobQueue, ok: int, fail: int, *, ids: list[str] | None = None) -> None:
    """``ok`` jobs completed and ``fail`` failed for good (dead-lettered) by a worker;
    ``ids``: the failing jobs' ids."""

    async def run(job: Any) -> str:
        if job.data.get("fail"):
            raise NonRetryableError("bad input")
        return "done"

    queue.process("w", run)
    await queue.start(concurrency=8)
    fail_ids = ids or [None] * fail
    jobs: list[Any] = [("w", {"fail": True}, {"job_id": i} if i else {}) for i in fail_ids]
    jobs += [("w", {}) for _ in range(ok)]
    await queue.add_jobs(jobs)

    async def done() -> bool:
        s = await queue.get_stats()
        return s.completed == ok and s.dlq == len(fail_ids)

    await wait_until(done, 30)
    assert queue.worker is not None
    await queue.worker.stop()


@pytest.fixture
def shop(make_queue: QueueFactory) -> JobQueue:
    q = make_queue("shop")
    FIFOQueueManager(q)
    return q


@pytest.fixture
def dash(shop: JobQueue) -> Any:
    return create_dashboard(queues=[shop], tokens=TOKENS, refresh_ms=0)


# ---------------------------------------------------------------------- 1. the right id
async def test_a_group_whose_id_holds_a_bidi_override_is_the_one_paused(
    dash: Any, shop: JobQueue
) -> None:
    await shop.add_job("post", {}, message_group_id=BIDI_GROUP)
    await shop.add_job("post", {}, message_group_id="plain")
    manager, _ = await signed(dash, MANAGER)
    html = (await manager.get("/q/shop/groups")).text
    assert "acct\\u202egnp" in shown_text(html)  # shown escaped
    assert not any(c in shown_text(html) for c in HIDDEN)
    r = await press(manager, _Page(html).form("pause-group", group_id=BIDI_GROUP))
    assert r.status_code == 303
    fifo = FIFOQueueManager.for_queue(shop)
    assert (await fifo.get_group_stats(BIDI_GROUP)).paused
    assert not (await fifo.get_group_stats("acct\\u202egnp")).paused
    assert not (await fifo.get_group_stats("plain")).paused
    assert "acct\\u202egnp" not in (await fifo.list_groups()).groups


async def test_retry_and_remove_act_on_a_job_whose_id_holds_hidden_characters(
    dash: Any, shop: JobQueue
) -> None:
    await finish(shop, 0, 2, ids=[BIDI_JOB, CSI_JOB])
    operator, _ = await signed(dash, OPERATOR)
    for jid, shown in ((BIDI_JOB, "job\\u202etxt"), (CSI_JOB, "c1\\x9b31m")):
        path = "/q/shop/jobs/" + quote(jid, safe="")
        html = (await operator.get(path)).text
        text = shown_text(html)
        assert shown in text and not any(c in text for c in HIDDEN), jid
        page = _Page(html)
        retry = page.form("retry", job_id=jid)
        # The form comes back to the job's own address, percent-encoded.
        assert ("next", path) in retry["fields"], retry["fields"]
        r = await press(operator, retry)
        assert r.status_code == 303 and r.headers["location"] == path
        assert (await shop.get_job_status(jid)).status is JobStatus.WAITING
        back = await operator.get(r.headers["location"])
        assert back.status_code == 200 and f"{jid} is waiting again" not in back.text
        assert "is waiting again" in shown_text(back.text)
        r = await press(operator, _Page(back.text).form("remove", job_id=jid))
        assert r.status_code == 303, r.text[:300]
        assert await shop.get_job_status(jid) is None
    # The bulk checkboxes carry the real ids too.
    other = "bulk\u2066x\x85y\u200e"
    await shop.add_job("w", {}, job_id=other)
    html = (await operator.get("/q/shop?state=waiting")).text
    bulk = next(f for f in _Page(html).forms if f["action"].endswith("/action/bulk-retry"))
    assert bulk.get("checkboxes") == [other]
    form = [*bulk["fields"], ("ids", other), ("confirm", "yes")]
    r = await operator.post("/q/shop/action/bulk-remove", data=as_data(form))
    assert r.status_code == 303 and await shop.get_job_status(other) is None


# ---------------------------------------------------------------------- 2. throughput
async def test_throughput_counts_each_finished_job_once_from_the_whole_window(
    dash: Any, shop: JobQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A window of 100 s holds every job of this test however slow the machine: the rate
    # is then exactly what the test finished, over 100 s.
    monkeypatch.setattr(data, "RATE_WINDOW_MS", 100_000)
    await finish(shop, 390, 10)  # 1,200+ events: added, started, completed, failed, dlq
    rate = await data.throughput(shop)
    assert rate is not None
    assert (rate.completed, rate.failed) == (3.9, 0.1)  # 390 and 10 over 100 s
    manager, _ = await signed(dash, MANAGER)
    stats = (await manager.get("/api/stats")).json()["queues"][0]
    assert stats["rate"] == {"completed": 3.9, "failed": 0.1}


async def test_throughput_of_a_trimmed_stream_is_over_the_time_it_covers(
    make_queue: QueueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data, "RATE_WINDOW_MS", 100_000)
    q = make_queue("small", events_max_len=100)
    await finish(q, 200, 0)
    client = await q.client()
    rows = await client.xrange(q.keys.events)
    assert len(rows) < 600  # 200 jobs wrote 600 events: the stream was trimmed
    done = sum(1 for _, f in rows if f[b"e"] == b"job-completed")
    rate = await data.throughput(q)
    assert rate is not None
    now_s, now_us = await client.time()
    span = int(now_s) * 1000 + int(now_us) // 1000 - int(rows[0][0].split(b"-")[0])
    # What the stream holds, over at most the time it covers (read after the rate was):
    # not over the whole 100 s window, which the stream no longer holds.
    assert rate.completed >= round(done * 1000 / span, 2) > round(done * 1000 / 100_000, 2)


# ---------------------------------------------------------------------- 3. confirmations
async def test_retry_all_and_drain_confirm_with_the_count_and_the_first_ids(
    dash: Any, shop: JobQueue
) -> None:
    dead = [f"dead-{i}" for i in range(3)]
    await finish(shop, 2, 3, ids=dead)
    manager, csrf = await signed(dash, ADMIN)  # drain needs an admin
    html = (await manager.get("/q/shop?state=dlq")).text
    r = await press(manager, _Page(html).form("bulk-retry", state="dlq"))
    assert r.status_code == 200 and "Retry 3 dlq job(s)" in r.text, r.text[-2000:]
    for jid in dead:
        assert f"<code>{jid}</code>" in r.text
    assert (await shop.get_stats()).dlq == 3  # asked first
    confirm = _Page(r.text).form("bulk-retry", confirm="yes", state="dlq")
    assert (await press(manager, confirm)).status_code == 303
    assert (await shop.get_stats()).waiting == 3
    # Drain: how many have not started, and which.
    await shop.add_job("w", {}, job_id="later-1", delay=60_000)
    r = await manager.post("/q/shop/action/drain", data={"csrf": csrf})
    assert r.status_code == 200
    assert "Remove 4 job(s) of queue shop that have not started" in r.text
    for jid in [*dead, "later-1"]:
        assert f"<code>{jid}</code>" in r.text
    assert (await shop.get_stats()).waiting == 3


async def test_retry_all_is_for_failed_jobs_and_its_limit_is_the_documented_one(
    dash: Any, shop: JobQueue
) -> None:
    await finish(shop, 2, 0)
    manager, csrf = await signed(dash, MANAGER)
    html = (await manager.get("/q/shop?state=completed")).text
    posts = [f for f in _Page(html).forms if "/action/" in f["action"]]
    assert not [f for f in posts if ("state", "completed") in f["fields"]]
    form = {"csrf": csrf, "state": "completed", "confirm": "yes"}
    r = await manager.post("/q/shop/action/bulk-retry", data=form)
    assert r.status_code == 400 and "select the jobs to retry" in r.text
    assert (await shop.get_stats()).completed == 2
    for action, extra in (("bulk-retry", {"state": "dlq"}), ("replay-dlq", {})):
        for confirm in ("", "yes"):
            form = {"csrf": csrf, "limit": "10000", "confirm": confirm, **extra}
            r = await manager.post(f"/q/shop/action/{action}", data=form)
            assert r.status_code == 400 and "from 1 to 1000" in r.text, (action, confirm)


# ---------------------------------------------------------------------- 4. failures
async def test_an_action_that_did_nothing_is_an_error_not_a_success(
    dash: Any, shop: JobQueue
) -> None:
    waiting = await shop.add_job("w", {})
    manager, csrf = await signed(dash, MANAGER)
    for action, form, said in (
        ("remove", {"job_id": "ghost"}, "job ghost did not exist"),
        ("promote", {"job_id": waiting}, f"job {waiting} is not delayed"),
        ("pause-schedule", {"schedule_id": "nope"}, "schedule nope does not exist"),
        ("remove-schedule", {"schedule_id": "nope"}, "schedule nope does not exist"),
        ("bulk-remove", {"ids": "ghost", "confirm": "yes"}, "0 of 1 job(s) done"),
    ):
        r = await manager.post(f"/q/shop/action/{action}", data={"csrf": csrf, **form})
        assert r.status_code == 400, (action, r.status_code)
        assert 'class="flash bad"' in r.text and said in r.text, action
        assert "Not done" in r.text
    # Removing a running job names the dashboard's Cancel button, not the API call.
    release = asyncio.Event()

    async def slow(job: Any) -> None:
        await release.wait()

    shop.process("slow", slow)
    await shop.start(concurrency=1)
    jid = await shop.add_job("slow", {})
    await wait_for_status(shop, jid, "active")
    r = await manager.post("/q/shop/action/remove", data={"csrf": csrf, "job_id": jid})
    assert r.status_code == 400 and "Cancel button" in r.text and "cancel_job()" not in r.text
    release.set()
    assert shop.worker is not None
    await shop.worker.stop()


# ---------------------------------------------------------------------- 5. hidden data
async def test_a_search_by_hidden_data_is_refused_with_a_note(make_queue: QueueFactory) -> None:
    q = make_queue("shop")
    app = create_dashboard(queues=[q], tokens=TOKENS, refresh_ms=0, show_payloads=False)
    await q.add_job("charge", {"card": "1234"}, delay=60_000)
    viewer, _ = await signed(app, MANAGER)
    r = await viewer.get("/q/shop?state=delayed&field=card&value=4111")
    assert r.status_code == 200
    assert 'id="data-search-off"' in r.text and "Search by data field is off" in r.text
    assert 'id="search-info"' not in r.text  # no "n match(es)" as if it searched
    r = await viewer.get("/q/shop?state=delayed&name=charge&field=card&value=4111")
    assert 'id="data-search-off"' in r.text and "1 match(es)" in r.text
    r = await viewer.get("/q/shop?state=delayed")
    assert 'id="data-search-off"' not in r.text


async def test_cancel_of_a_finished_job_is_an_error_not_a_success(
    dash: Any, shop: JobQueue
) -> None:
    async def quick(job: Any) -> None:
        return None

    shop.process("quick", quick)
    await shop.start(concurrency=1)
    jid = await shop.add_job("quick", {})
    await wait_for_status(shop, jid, "completed")
    manager, csrf = await signed(dash, MANAGER)
    r = await manager.post("/q/shop/action/cancel", data={"csrf": csrf, "job_id": jid})
    assert r.status_code == 400, r.status_code
    assert 'class="flash bad"' in r.text and "had already finished" in r.text
    assert shop.worker is not None
    await shop.worker.stop()


async def test_replaying_dead_deliveries_confirms_with_the_count_and_the_first_ones(
    make_queue: QueueFactory,
) -> None:
    from kitium_queue.features.webhooks import WebhookConfig, WebhookManager, generate_secret

    q = make_queue("hooks")
    mgr = WebhookManager(q, allow_networks=["127.0.0.0/8"], backoff_ms=10, poll_ms=10)
    await mgr.register_webhook(
        WebhookConfig(
            url="http://127.0.0.1:9/hook",  # nothing listens: each delivery fails
            secret=generate_secret(),
            id="orders-hook",
            events=["job-completed"],
            max_retries=0,
            timeout_ms=500,
        )
    )

    async def quick(job: Any) -> None:
        return None

    q.process("quick", quick)
    await q.start(concurrency=2)
    try:
        for _ in range(3):
            await q.add_job("quick", {})
        await wait_until(lambda: _count(mgr.list_dlq(), 3), 20)
        dead = await mgr.list_dlq()
        app = create_dashboard(queues=[q], tokens=TOKENS, refresh_ms=0)
        manager, csrf = await signed(app, MANAGER)
        r = await manager.post("/q/hooks/action/replay-webhooks", data={"csrf": csrf})
        assert r.status_code == 200
        assert "Replay 3 dead-lettered deliveries, the oldest first?" in r.text, r.text[-1500:]
        for d in dead:
            assert d.event_id in r.text
        assert len(await mgr.list_dlq()) == 3  # asked first: nothing replayed yet
    finally:
        await q.close()


async def _count(listed: Any, n: int) -> bool:
    return len(await listed) >= n


def test_a_mark_can_put_back_a_c1_control_only() -> None:
    # Even with the process's nonce (never shown), a mark cannot write '<' or '"' into
    # a page: only U+0080-U+009F, the characters exact() marks.
    from kitium_queue.dashboard import render

    nonce = render._NONCE
    forged = "".join(f"\ufdd0{c:02x}{nonce}\ufdd1" for c in (0x3C, 0x22, 0x26, 0x9B))
    back = render._MARK.sub(lambda m: chr(int(m.group(1), 16)), forged)
    assert "<" not in back and '"' not in back and "&" not in back
    assert back.endswith("\x9b") and back.count("\ufdd0") == 3
