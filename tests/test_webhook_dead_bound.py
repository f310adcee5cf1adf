"""The webhook DLQ's bound: ``dead_max`` dead deliveries per endpoint and ``dead_ttl_s``,
against a real Redis and real HTTP receivers on loopback.

* Past ``dead_max``, an endpoint's oldest dead deliveries leave the DLQ (``wh:dlq`` and
  the endpoint's own list ``wh:dlq:<w>``) and their records are deleted, in the same
  ``webhooks_done`` step that dead-letters a newer one; other endpoints keep theirs.
  Past ``dead_ttl_s`` they go in any step that records results. Each drop is counted
  (``wh:dlq-dropped``, ``stats()["dead_dropped"]``, the CLI), and the delivering process
  says so in one WARNING per endpoint, without payloads.
* ``None`` is no bound; bad values are refused at construction with the option named.
* The kept ones replay; a dropped one is gone (``retry_delivery`` is False).
* The DLQ of one endpoint is listed from its own list, a page at a time (Python, CLI,
  dashboard): a busy endpoint's older entries no longer hide another's.
* The DLQ of a release before the per-endpoint lists is listed per endpoint once a
  delivery service starts, and counts against the bound from then on.
* Chaos: a delivery process SIGKILLed and Redis SIGKILLed (AOF, fsync always) while an
  endpoint answering 500 fills the DLQ past ``dead_max``: in every snapshot and at the end
  both lists hold the same entries, within the bound, and every dead record is listed,
  every entry has its dead record.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from click.testing import CliRunner

import kitium_queue
from _redis import RedisServer
from helpers import app_module, wait_until
from kitium_queue import ConfigurationError, JobQueue
from kitium_queue.cli import main
from kitium_queue.dashboard import DashboardToken, create_dashboard
from kitium_queue.features.advanced import AdvancedQueueConfig
from kitium_queue.features.advanced.sections import WebhooksConfig
from kitium_queue.features.webhooks import (
    WebhookConfig,
    WebhookEvent,
    WebhookManager,
    generate_secret,
)
from kitium_queue.features.webhooks.service import GROUP
from kitium_queue.features.webhooks.settings import DEAD_MAX, DEAD_MAX_LIMIT, DEAD_TTL_S

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chaos.receiver import Receiver  # noqa: E402

pytestmark = pytest.mark.redis_only

LOOPBACK = ["127.0.0.0/8"]
# Fast retries, the breaker kept shut (its refusals would only slow the test down).
FAST: dict[str, Any] = dict(
    allow_networks=LOOPBACK, poll_ms=10, backoff_ms=1, max_backoff_ms=5, breaker_threshold=10**6
)
PAYLOAD = "payload-7f3a9c"  # in every body: never in a log line


@pytest.fixture
async def queue(redis_url: str, prefix: str) -> AsyncIterator[JobQueue]:
    q = JobQueue("whd", redis=redis_url, prefix=prefix)
    yield q
    await q.close()


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def _row(member: str, kind: str = "dead") -> list[Any]:
    """The 13 ``webhooks_done`` fields of a new delivery's result."""
    body = orjson.dumps({"type": "ping", "data": {"s": PAYLOAD}})
    return [member, kind, 1, 0, "[]", 500, "HTTP 500", 3_600, body, "ping", "guaranteed", "", 0]


async def _done(q: JobQueue, *rows: list[Any]) -> dict[str, int]:
    """Record ``rows`` in one ``webhooks_done`` call; the drops it reports."""
    got = await q.ctx.run("webhooks_done", (GROUP, 0, *(f for row in rows for f in row)))
    flat = got[3]
    return {w.decode(): int(n) for w, n in zip(flat[::2], flat[1::2], strict=True)}


# One atomic read (a script): a snapshot even while a delivery process writes.
_SNAPSHOT = """
local out = { redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES'),
  redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES'), {}, redis.call('ZRANGE', KEYS[3], 0, -1),
  redis.call('HGET', KEYS[4], ARGV[2]) or '0', redis.call('ZRANGE', KEYS[5], 0, -1) }
for _, key in ipairs(redis.call('KEYS', ARGV[1])) do
  table.insert(out[3], { key, redis.call('HGET', key, 'st') or '' })
end
return out
"""


def _state(r: redis.Redis, q: JobQueue, hook: str) -> dict[str, Any]:
    """Endpoint ``hook``'s entries in ``wh:dlq`` and in its own list (event id -> time),
    its records (event id -> state), retries, drops and history index, in one step."""
    x = q.keys.extra
    base = x(f"wh:d:{hook}/")
    keys = [
        x("wh:dlq"),
        x(f"wh:dlq:{hook}"),
        x("wh:retry"),
        x("wh:dlq-dropped"),
        x(f"wh:idx:{hook}"),
    ]
    every, mine, recs, retry, dropped, idx = r.eval(_SNAPSHOT, 5, *keys, base + "*", hook)
    tag = f"{hook}/".encode()

    def pairs(flat: list[bytes]) -> dict[str, bytes]:
        return {m.decode(): s for m, s in zip(flat[::2], flat[1::2], strict=True)}

    return {
        "all": {m[len(tag) :]: s for m, s in pairs(every).items() if m.encode().startswith(tag)},
        "mine": pairs(mine),
        "records": {k.decode()[len(base) :]: st for k, st in recs},
        "retry": {m.decode()[len(tag) :] for m in retry if m.startswith(tag)},
        "dropped": int(dropped),
        "idx": {e.decode() for e in idx},
    }


def _consistent(s: dict[str, Any], dead_max: int | None) -> None:
    """What the bound keeps after every script step."""
    assert s["all"] == s["mine"], "wh:dlq and the endpoint's own list differ"
    assert dead_max is None or len(s["mine"]) <= dead_max, f"{len(s['mine'])} > {dead_max}"
    dead = {e for e, st in s["records"].items() if st == b"dead"}
    assert dead - set(s["mine"]) == set(), "a dead record outside the DLQ"
    assert set(s["mine"]) - dead == set(), "a DLQ entry without its dead record"
    pending = {e for e, st in s["records"].items() if st == b"pending"}
    assert pending <= s["retry"], "a pending record not scheduled"


# ---------------------------------------------------------------------- the count
async def test_past_dead_max_the_oldest_leave_with_their_records(
    queue: JobQueue, r: redis.Redis
) -> None:
    m = WebhookManager(queue, dead_max=5, run_service=False)
    drops: dict[str, int] = {}
    for i in range(12):  # one call each: a's dead-lettered one after the other
        for w, n in (await _done(queue, _row(f"a/e{i:02d}"))).items():
            drops[w] = drops.get(w, 0) + n
    await _done(queue, *(_row(f"b/e{i:02d}") for i in range(3)))
    await _done(queue, _row("a/ok1", "ok"))  # a delivered one: no drop, nothing changes
    assert drops == {"a": 7}
    a, b = _state(r, queue, "a"), _state(r, queue, "b")
    assert set(a["mine"]) == {f"e{i:02d}" for i in range(7, 12)}
    assert set(a["records"]) == {*a["mine"], "ok1"}  # the 7 dropped records are deleted
    assert a["idx"] & {f"e{i:02d}" for i in range(7)} == set()  # and out of the history
    assert set(b["mine"]) == {"e00", "e01", "e02"} and b["dropped"] == 0
    assert a["dropped"] == 7
    _consistent(a, 5)
    _consistent(b, 5)
    st = await m.stats()
    assert (st["dlq"], st["dead_dropped"]) == (8, 7)
    assert [d.event_id for d in await m.list_dlq(webhook_id="a")] == [
        f"e{i:02d}" for i in range(7, 12)
    ]


async def test_a_lowered_dead_max_drains_in_bounded_steps(
    redis_url: str, prefix: str, r: redis.Redis
) -> None:
    big = JobQueue("whd", redis=redis_url, prefix=prefix)
    small = JobQueue("whd", redis=redis_url, prefix=prefix)
    WebhookManager(big, dead_max=None, run_service=False)
    WebhookManager(small, dead_max=10, run_service=False)
    try:
        for start in range(0, 2_500, 500):
            await _done(big, *(_row(f"a/x{i:05d}") for i in range(start, start + 500)))
        assert r.zcard(big.keys.extra("wh:dlq:a")) == 2_500  # None: no bound
        # Each call takes off what it dead-lettered plus at most 1,000.
        assert await _done(small, _row("a/y0")) == {"a": 1_001}
        assert await _done(small, _row("a/y1")) == {"a": 1_001}
        assert await _done(small, _row("a/y2")) == {"a": 491}
        s = _state(r, small, "a")
        assert len(s["mine"]) == 10 and s["dropped"] == 2_493
        assert {"y0", "y1", "y2"} <= set(s["mine"])
        _consistent(s, 10)
    finally:
        await big.close()
        await small.close()


# ---------------------------------------------------------------------- the age
async def test_past_dead_ttl_s_they_leave_in_any_step(queue: JobQueue, r: redis.Redis) -> None:
    m = WebhookManager(queue, dead_ttl_s=1, run_service=False)
    assert m.dead_max == DEAD_MAX
    await _done(queue, *(_row(f"a/old{i}") for i in range(3)))
    await _done(queue, _row("b/new"))
    await asyncio.sleep(0.6)
    await _done(queue, _row("b/k0"), _row("b/k1"))
    await asyncio.sleep(0.5)
    # A step that dead-letters nothing drops by age too (a quiet endpoint's dead ones).
    assert await _done(queue, _row("c/fine", "ok")) == {"a": 3, "b": 1}
    a, b = _state(r, queue, "a"), _state(r, queue, "b")
    assert a["mine"] == {} and a["records"] == {} and a["dropped"] == 3
    assert set(b["mine"]) == {"k0", "k1"} and b["dropped"] == 1
    assert set(b["records"]) == {"k0", "k1"}
    for s in (a, b):
        _consistent(s, None)
    assert (await m.stats())["dead_dropped"] == 4


# ---------------------------------------------------------------------- the options
@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("dead_max", 0),
        ("dead_max", -1),
        ("dead_max", True),
        ("dead_max", 10.0),
        ("dead_max", math.nan),
        ("dead_max", math.inf),
        ("dead_max", "100"),
        ("dead_max", DEAD_MAX_LIMIT + 1),
        ("dead_max", 2**64),
        ("dead_ttl_s", 0),
        ("dead_ttl_s", -5),
        ("dead_ttl_s", False),
        ("dead_ttl_s", 3600.5),
        ("dead_ttl_s", math.nan),
        ("dead_ttl_s", "7d"),
        ("dead_ttl_s", 315_360_001),  # above ten years: milliseconds given as seconds
    ],
)
def test_bad_values_refused(queue: JobQueue, option: str, value: Any) -> None:
    with pytest.raises(
        ConfigurationError,
        match=rf"WebhookManager {option} must be an int from 1 to [0-9,]+ \(or None: no bound\)",
    ):
        WebhookManager(queue, **{option: value})


def test_defaults_and_no_bound(queue: JobQueue) -> None:
    assert (DEAD_MAX, DEAD_TTL_S) == (10_000, None)
    m = WebhookManager(queue, run_service=False)
    assert (m.dead_max, m.dead_ttl_s) == (10_000, None)
    top = WebhookManager(queue, dead_max=DEAD_MAX_LIMIT, dead_ttl_s=315_360_000, run_service=False)
    assert (top.dead_max, top.dead_ttl_s) == (DEAD_MAX_LIMIT, 315_360_000)
    none = WebhookManager(queue, dead_max=None, dead_ttl_s=None, run_service=False)
    assert (none.dead_max, none.dead_ttl_s) == (None, None)


# ---------------------------------------------------------------------- end to end
async def test_a_failing_endpoint_keeps_dead_max_warns_once_and_the_kept_replay(
    queue: JobQueue, r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    rec = await Receiver(status=lambda req: 500).start()
    m = WebhookManager(queue, dead_max=8, **FAST)
    hook = await m.register_webhook(
        WebhookConfig(
            url=rec.url, secret=generate_secret(), events=["ping"], id="down", max_retries=1
        )
    )
    await m.service.start(queue)
    try:
        with caplog.at_level(logging.WARNING, logger="kitium_queue.features.webhooks"):
            sent = [
                await m.send_event(WebhookEvent("ping", {"i": i, "s": PAYLOAD}, id=f"e{i:03d}"))
                for i in range(30)
            ]

            async def settled() -> bool:
                st = await m.stats()
                return st["dlq"] + st["dead_dropped"] == 30 and st["retry_scheduled"] == 0

            await wait_until(settled, 30, interval=0.02)
        st = await m.stats()
        assert (st["dlq"], st["dead_dropped"]) == (8, 22)
        s = _state(r, queue, "down")
        _consistent(s, 8)
        said = [x.getMessage() for x in caplog.records if "past its bound" in x.getMessage()]
        assert len(said) == 1 and "endpoint down" in said[0] and "dead_max=8" in said[0]
        assert not any(PAYLOAD in x.getMessage() for x in caplog.records)
        kept = set(s["mine"])
        dropped = sorted(set(sent) - kept)
        assert len(kept) == 8 and len(dropped) == 22
        # The endpoint is back: the kept ones replay, a dropped one is gone.
        rec.status = lambda req: 200
        assert await m.retry_delivery(hook.id, dropped[0]) is False
        assert await m.replay_dlq(webhook_id=hook.id) == 8
        await wait_until(lambda: set(rec.ids()) == kept, 20, interval=0.02)
        await wait_until(lambda: not _state(r, queue, "down")["mine"], 10, interval=0.02)
        assert rec.ids().keys().isdisjoint(dropped)
        assert (await m.stats())["dead_dropped"] == 22
    finally:
        await m.service.stop()
        await rec.stop()


# ---------------------------------------------------------------------- the readers
def _app_source(url: str, prefix: str) -> str:
    """An application module for the CLI: the queue ``whd``."""
    head = "from kitium_queue import JobQueue\n"
    return head + f"queue = JobQueue('whd', redis={url!r}, prefix={prefix!r})\n"


def _fill(url: str, prefix: str) -> None:
    """300 dead deliveries to ``busy``, then 60 to ``quiet``; dead_max=400 drops none."""

    async def go() -> None:
        q = JobQueue("whd", redis=url, prefix=prefix)
        WebhookManager(q, dead_max=400, run_service=False)
        await _done(q, *(_row(f"busy/b{i:03d}") for i in range(300)))
        await _done(q, *(_row(f"quiet/q{i:03d}") for i in range(60)))
        await q.close()

    asyncio.run(go())


def test_dead_deliveries_are_listed_a_page_at_a_time(
    tmp_path: Path, redis_url: str, prefix: str
) -> None:
    _fill(redis_url, prefix)
    source = _app_source(redis_url, prefix)

    async def python_and_dashboard() -> None:
        q = JobQueue("whd", redis=redis_url, prefix=prefix)
        m = WebhookManager(q, run_service=False)
        # One endpoint's page comes from its own list: busy's 300 older ones hid it.
        pages = [await m.list_dlq(25, webhook_id="quiet", offset=o) for o in (0, 25, 50)]
        assert [len(p) for p in pages] == [25, 25, 10]
        assert [d.event_id for p in pages for d in p] == [f"q{i:03d}" for i in range(60)]
        every = await m.list_dlq(100, offset=290)
        assert [d.event_id for d in every][:10] == [f"b{i:03d}" for i in range(290, 300)]
        assert len(every) == 70
        await _done(q, _row("quiet/ok", "ok"))
        viewer = "vw-" + "v" * 29
        app = create_dashboard(queues=[q], tokens=[DashboardToken(viewer, "v@x.org", "viewer")])
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://dash") as c:
            assert (await c.post("/login", data={"token": viewer, "next": "/"})).status_code == 303
            first = (await c.get("/q/whd/webhooks")).text
            assert 'id="dead-next"' in first and "offset=50" in first
            last = (await c.get("/q/whd/webhooks?offset=350")).text
            assert "q050" in last and "q059" in last and "b299" not in last
            assert 'id="dead-next"' not in last and 'id="dead-prev"' in last
            assert "0 dropped by the DLQ" in last
        await q.close()

    asyncio.run(python_and_dashboard())
    with app_module(tmp_path, source, "kq_whd") as module:
        runner = CliRunner()
        out = runner.invoke(
            main,
            [
                "webhooks",
                "dlq",
                f"{module}:queue",
                "--webhook",
                "quiet",
                "-n",
                "7",
                "--offset",
                "56",
            ],
        )
        assert out.exit_code == 0, out.output
        lines = out.output.splitlines()
        assert [x.split("\t")[1] for x in lines[:4]] == ["q056", "q057", "q058", "q059"]
        assert lines[4:] == ["dropped by the DLQ's bound (dead_max, dead_ttl_s): 0"]
        full = runner.invoke(main, ["webhooks", "dlq", f"{module}:queue", "-n", "5"]).output
        assert "more: --offset 5" in full


def test_the_cli_shows_the_dropped_count(tmp_path: Path, redis_url: str, prefix: str) -> None:
    async def go() -> None:
        q = JobQueue("whd", redis=redis_url, prefix=prefix)
        WebhookManager(q, dead_max=3, run_service=False)
        await _done(q, *(_row(f"a/e{i}") for i in range(5)))
        await _done(q, *(_row(f"b/e{i}") for i in range(4)))
        await q.close()

    asyncio.run(go())
    source = _app_source(redis_url, prefix)
    with app_module(tmp_path, source, "kq_whd") as module:
        runner = CliRunner()
        app = f"{module}:queue"
        every = runner.invoke(main, ["webhooks", "dlq", app]).output
        assert every.splitlines()[-1] == "dropped by the DLQ's bound (dead_max, dead_ttl_s): 3"
        one = runner.invoke(main, ["webhooks", "dlq", app, "--webhook", "a"]).output
        assert one.splitlines()[-1].endswith(": 2")


# ---------------------------------------------------------------------- an earlier release
async def test_the_dlq_of_an_earlier_release_is_listed_per_endpoint(
    queue: JobQueue, r: redis.Redis
) -> None:
    """Dead deliveries written to wh:dlq alone (as a release without the per-endpoint
    lists did) are listed in their endpoint's list once a delivery service starts, then
    count against dead_max."""
    x = queue.keys.extra
    now = int(time.time() * 1000)
    for i in range(12):
        key = x(f"wh:d:old/e{i:02d}")
        r.hset(key, mapping={"b": b"{}", "ty": "ping", "st": "dead", "a": 1, "c": now, "h": "[]"})
        r.zadd(x("wh:dlq"), {f"old/e{i:02d}": now - 1_000 + i})
    m = WebhookManager(queue, dead_max=10, **FAST)
    assert await m.list_dlq(webhook_id="old") == []
    await m.service.start(queue)
    try:
        await wait_until(lambda: r.exists(x("wh:dlq-v")), 10)
        assert len(await m.list_dlq(webhook_id="old")) == 12
        _consistent(_state(r, queue, "old"), None)
        assert await _done(queue, _row("old/new")) == {"old": 3}
        s = _state(r, queue, "old")
        assert set(s["mine"]) == {*(f"e{i:02d}" for i in range(3, 12)), "new"}
        _consistent(s, 10)
    finally:
        await m.service.stop()


# ---------------------------------------------------------------------- chaos
_CHILD = """
import asyncio, os, sys
sys.path.insert(0, os.environ["KQ_SRC"])
from kitium_queue import JobQueue
from kitium_queue.features.webhooks import WebhookManager

async def main():
    q = JobQueue("whd", redis=os.environ["KQ_URL"], prefix=os.environ["KQ_PREFIX"])
    m = WebhookManager(q, secrets={"h": os.environ["KQ_SECRET"]}, allow_networks=["127.0.0.0/8"],
                       dead_max=30, backoff_ms=20, max_backoff_ms=50, poll_ms=10,
                       breaker_threshold=10**6, claim_idle_ms=300, lease_ms=1000)
    await m.service.start(q)
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def _deliverer(tmp_path: Path, url: str, prefix: str, secret: str) -> subprocess.Popen[bytes]:
    script = tmp_path / "deliverer.py"
    script.write_text(_CHILD)
    src = str(Path(kitium_queue.__file__).resolve().parents[1])  # the code under test
    env = {**os.environ, "KQ_SRC": src, "KQ_URL": url, "KQ_PREFIX": prefix}
    env["KQ_SECRET"] = secret
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    return proc


async def test_kills_mid_run_leave_the_dlq_and_its_records_consistent(
    tmp_path: Path, prefix: str
) -> None:
    srv = RedisServer("--appendonly", "yes", "--appendfsync", "always").start()
    rec = await Receiver(status=lambda req: 500).start()
    secret = generate_secret()
    q = JobQueue("whd", redis=srv.url, prefix=prefix)
    m = WebhookManager(q, dead_max=30, run_service=False, allow_networks=LOOPBACK)
    await m.register_webhook(
        WebhookConfig(url=rec.url, secret=secret, events=["ping"], id="h", max_retries=1)
    )
    procs = [_deliverer(tmp_path, srv.url, prefix, secret)]
    r = redis.Redis.from_url(srv.url)
    total = 800
    try:
        for i in range(total):
            await m.send_event(WebhookEvent("ping", {"i": i}, id=f"e{i:04d}"))
        # Each event fails twice (max_retries=1) and is dead-lettered past dead_max: the
        # deliverer is SIGKILLed twice (another takes over), then Redis (AOF, fsync always).
        kills, checks = [(400, "deliverer"), (800, "deliverer"), (1_100, "redis")], 0
        deadline = time.monotonic() + 60
        while kills and time.monotonic() < deadline:
            attempts = len(rec.requests)
            if attempts < kills[0][0]:
                _consistent(_state(r, q, "h"), 30)
                checks += 1
                await asyncio.sleep(0.01)
                continue
            assert attempts < 2 * total, "the deliveries ended before the kill"
            if kills.pop(0)[1] == "deliverer":
                procs[-1].send_signal(signal.SIGKILL)
                procs[-1].wait()
                procs.append(_deliverer(tmp_path, srv.url, prefix, secret))
            else:
                srv.kill()
                srv.restart()
                r.close()
                r = redis.Redis.from_url(srv.url)
            _consistent(_state(r, q, "h"), 30)
            checks += 1
        assert not kills and checks > 0

        def over() -> bool:
            s = _state(r, q, "h")
            return s["dropped"] + len(s["mine"]) >= total and not s["retry"]

        await wait_until(over, 60, interval=0.05)
        s = _state(r, q, "h")
        _consistent(s, 30)
        assert len(s["mine"]) == 30 and set(s["records"]) == set(s["mine"])
        # Each event was tried; each dead one is kept or counted (a result recorded
        # again after the Redis restart may be dead-lettered and counted twice).
        assert set(rec.ids(ok_only=False)) == {f"e{i:04d}" for i in range(total)}
        assert total - 30 <= s["dropped"] <= total
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
        r.close()
        await q.close()
        await rec.stop()
        srv.close()


async def test_the_bound_from_the_advanced_config(redis_url: str, prefix: str) -> None:
    assert (WebhooksConfig().dead_max, WebhooksConfig().dead_ttl_s) == (DEAD_MAX, DEAD_TTL_S)
    q = JobQueue(
        "whd",
        redis=redis_url,
        prefix=prefix,
        advanced={
            "webhooks": {"enabled": True, "run_service": False, "dead_max": 4, "dead_ttl_s": 60}
        },
    )
    try:
        m = q.advanced.webhooks
        assert (m.dead_max, m.dead_ttl_s) == (4, 60)
        shown = q.advanced.config.to_dict()["webhooks"]
        assert (shown["dead_max"], shown["dead_ttl_s"]) == (4, 60)
        assert await _done(q, *(_row(f"a/e{i}") for i in range(6))) == {"a": 2}
        none = AdvancedQueueConfig(webhooks={"enabled": True, "dead_max": None})
        assert none.webhooks.dead_max is None
        for option, value in (("dead_max", 0), ("dead_max", True), ("dead_ttl_s", 1.5)):
            with pytest.raises(ConfigurationError, match=f"advanced.webhooks.{option}"):
                AdvancedQueueConfig(webhooks={"enabled": True, option: value})
    finally:
        await q.close()
