"""The delivery history's bound by count (``history_max``) and by age (``history_ttl_s``),
against a real Redis and real HTTP receivers on loopback.

* Records beyond the newest ``history_max`` of an endpoint are deleted in the
  ``webhooks_done`` step that trims its index: delivered (guaranteed) and failed
  (best-effort) ones alike; the kept ones are exactly the index's, each with its TTL.
* Pending (retry scheduled) and dead (in the webhook DLQ) records are never deleted,
  however far past the bound; once resolved (replayed, retried, delivered) they go back
  in the index under their creation time and are deleted then, being the oldest.
* ``history_ttl_s`` and ``history_max`` from ``WebhookManager(...)`` and from the advanced
  config's ``webhooks`` section; bad values refused with the option named, at
  construction (a TTL above ten years too: milliseconds given as seconds).
* A lowered ``history_max`` drains in bounded steps: a call takes off at most what it
  added plus 1,000 entries in all endpoints together.
* Chaos: a delivery process SIGKILLed twice and Redis SIGKILLed (AOF, fsync always)
  during 1,500 deliveries with ``history_max=50`` (a tenth failing their first attempt):
  every event received, and the index and records consistent in every snapshot taken
  meanwhile and at the end (index within its bound, every final record in the index with
  a TTL, every pending one scheduled, every dead one in the DLQ). The trim runs inside
  the script that writes the result, so no process death can come between the two.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from _redis import RedisServer
from helpers import wait_until
from kitium_queue import ConfigurationError, JobQueue
from kitium_queue.features.advanced import AdvancedQueueConfig
from kitium_queue.features.advanced.sections import WebhooksConfig
from kitium_queue.features.webhooks import (
    WebhookConfig,
    WebhookEvent,
    WebhookManager,
    generate_secret,
)
from kitium_queue.features.webhooks.service import GROUP
from kitium_queue.features.webhooks.settings import (
    HISTORY_MAX,
    HISTORY_MAX_LIMIT,
    HISTORY_TTL_S,
    HISTORY_TTL_S_LIMIT,
)

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chaos.receiver import Receiver, Request  # noqa: E402

pytestmark = pytest.mark.redis_only

LOOPBACK = ["127.0.0.0/8"]
FAST: dict[str, Any] = dict(allow_networks=LOOPBACK, poll_ms=10, lease_ms=5_000)
FINAL = (b"delivered", b"failed")


@pytest.fixture
async def queue(redis_url: str, prefix: str) -> AsyncIterator[JobQueue]:
    q = JobQueue("whb", redis=redis_url, prefix=prefix)
    yield q
    await q.close()


@pytest.fixture
async def ok_receiver() -> AsyncIterator[Receiver]:
    rec = await Receiver().start()
    yield rec
    await rec.stop()


def _fails(r: Request) -> int:
    return 500 if orjson.loads(r.body)["data"].get("fail") else 200


async def _settled(m: WebhookManager) -> bool:
    s = await m.stats()
    return s["outbox_pending"] == 0 and s["outbox_lag"] == 0 and m.local.in_flight == 0


async def _send(
    m: WebhookManager, n: int, start: int = 0, *, each: bool = False, **data: Any
) -> list[str]:
    """Send ``n`` ``ping`` events (ids ``e00000``...) and wait until every result is
    recorded (``each``: after each event, so each is recorded after the one before);
    their ids."""
    ids = []
    for i in range(start, start + n):
        ids.append(await m.send_event(WebhookEvent("ping", {"i": i, **data}, id=f"e{i:05d}")))
        if each or i == start + n - 1:
            await wait_until(lambda: _settled(m), 20, interval=0.01, message="not recorded")
    return ids


# One atomic read (a script): a snapshot even while a delivery process writes.
_SNAPSHOT = """
local out = { redis.call('ZRANGE', KEYS[1], 0, -1), {}, redis.call('ZRANGE', KEYS[2], 0, -1),
  redis.call('ZRANGE', KEYS[3], 0, -1) }
for _, key in ipairs(redis.call('KEYS', ARGV[1])) do
  table.insert(out[2], { key, redis.call('HGET', key, 'st') or '', redis.call('TTL', key) })
end
return out
"""


def _state(r: redis.Redis, q: JobQueue, hook: str) -> dict[str, Any]:
    """Index, records (event id -> (state, TTL)), retries and DLQ (event ids) of
    endpoint ``hook``, read in one atomic step."""
    base = q.keys.extra(f"wh:d:{hook}/")
    glob = base + "*"  # the test prefixes hold no glob character
    keys = [q.keys.extra(f"wh:idx:{hook}"), q.keys.extra("wh:retry"), q.keys.extra("wh:dlq")]
    idx, recs, retry, dlq = r.eval(_SNAPSHOT, 3, *keys, glob)
    mine = f"{hook}/".encode()

    def of_hook(members: list[bytes]) -> set[str]:
        return {m[len(mine) :].decode() for m in members if m.startswith(mine)}

    return {
        "idx": {e.decode() for e in idx},
        "records": {k.decode()[len(base) :]: (st or None, ttl) for k, st, ttl in recs},
        "retry": of_hook(retry),
        "dlq": of_hook(dlq),
    }


def _check_consistent(s: dict[str, Any], history_max: int) -> None:
    """The invariants the bound keeps after every ``webhooks_done`` call."""
    assert len(s["idx"]) <= history_max, f"index of {len(s['idx'])} > {history_max}"
    for eid, (st, ttl) in s["records"].items():
        if st in FINAL:
            assert eid in s["idx"], f"final record {eid} outside the index (unreachable)"
            assert ttl > 0, f"final record {eid} without a TTL"
            assert eid not in s["retry"] and eid not in s["dlq"]
        elif st == b"pending":
            assert eid in s["retry"] and ttl == -1, f"pending {eid} not scheduled"
        elif st == b"dead":
            assert eid in s["dlq"] and ttl == -1, f"dead {eid} not in the DLQ"
        else:
            raise AssertionError(f"record {eid} in state {st!r}")


# ---------------------------------------------------------------------- the count
async def test_records_beyond_history_max_are_deleted(
    queue: JobQueue, ok_receiver: Receiver, redis_url: str
) -> None:
    down = await Receiver(status=lambda r: 500).start()
    m = WebhookManager(queue, history_max=25, history_ttl_s=3_600, **FAST)
    ok = await m.register_webhook(
        WebhookConfig(url=ok_receiver.url, secret=generate_secret(), events=["ping"], id="ok")
    )
    await m.register_webhook(
        WebhookConfig(
            url=down.url,
            secret=generate_secret(),
            events=["ping"],
            id="be",
            delivery_strategy="best-effort",
        )
    )
    await m.service.start(queue)
    r = redis.Redis.from_url(redis_url)
    try:
        ids = await _send(m, 80, each=True)
        assert set(ok_receiver.ids()) == set(ids)
        for hook, state in (("ok", b"delivered"), ("be", b"failed")):
            s = _state(r, queue, hook)
            assert len(s["idx"]) == 25 and set(s["records"]) == s["idx"]
            assert {st for st, _ in s["records"].values()} == {state}
            assert all(3_500 < ttl <= 3_600 for _, ttl in s["records"].values())
            _check_consistent(s, 25)
        # The newest are kept (by the time each record was written, ids sent in order).
        assert _state(r, queue, "ok")["idx"] == set(ids[-25:])
        # Gone by id too: get, retry.
        assert await m.get_delivery_history(ok.id, ids[0]) == []
        assert await m.retry_delivery(ok.id, ids[0]) is False
        assert [x.event_id for x in await m.get_delivery_history(ok.id, limit=100)] == list(
            reversed(ids[-25:])
        )
    finally:
        r.close()
        await m.service.stop()
        await down.stop()


async def test_pending_and_dead_are_never_deleted(queue: JobQueue, redis_url: str) -> None:
    rec = await Receiver(status=_fails).start()
    # Retries an hour out: a failing delivery to "slow" stays pending.
    # (The breaker would fail the good events after the bad ones: it is kept shut.)
    m = WebhookManager(queue, history_max=10, backoff_ms=3_600_000, breaker_threshold=1_000, **FAST)
    for hid, retries in (("dead", 0), ("slow", 5)):
        await m.register_webhook(
            WebhookConfig(
                url=rec.url, secret=generate_secret(), events=["ping"], id=hid, max_retries=retries
            )
        )
    await m.service.start(queue)
    r = redis.Redis.from_url(redis_url)
    try:
        bad = await _send(m, 5, fail=True)
        good = await _send(m, 40, start=100)
        dead, slow = _state(r, queue, "dead"), _state(r, queue, "slow")
        # The bad ones fell off the index. (Which 10 of the good ones stay depends on
        # when their results were recorded: 8 requests at a time, recorded in waves, and
        # a delivery answered late is recorded in a later wave: not asserted.)
        for s in (dead, slow):
            assert len(s["idx"]) == 10 and s["idx"] <= set(good), s["idx"]
        for s, st, where in ((dead, b"dead", "dlq"), (slow, b"pending", "retry")):
            assert {e for e, (x, _) in s["records"].items() if x == st} == set(bad)
            assert set(bad) <= s[where]
            assert len(s["records"]) == 15  # 10 delivered + the 5 unresolved
            _check_consistent(s, 10)
        assert len(await m.list_dlq(webhook_id="dead")) == 5
        # Resolved: delivered, then deleted as the oldest (past the newest 10).
        rec.status = lambda r: 200
        assert await m.replay_dlq(webhook_id="dead") == 5
        for e in bad:
            assert await m.retry_delivery("slow", e)
        await wait_until(lambda: rec.ids().keys() >= set(bad), 20)
        await wait_until(
            lambda: all(len(_state(r, queue, h)["records"]) == 10 for h in ("dead", "slow")),
            20,
        )
        for h in ("dead", "slow"):
            s = _state(r, queue, h)
            assert set(s["records"]) == s["idx"] and len(s["idx"]) == 10
            assert s["idx"] <= set(good), s["idx"]  # the bad ones, resolved, went first
            assert not s["retry"] and not s["dlq"]
            _check_consistent(s, 10)
    finally:
        r.close()
        await m.service.stop()
        await rec.stop()


# ---------------------------------------------------------------------- the options
async def test_ttl_and_count_from_the_advanced_config(
    redis_url: str, prefix: str, ok_receiver: Receiver
) -> None:
    q = JobQueue(
        "whb",
        redis=redis_url,
        prefix=prefix,
        advanced={
            "webhooks": {
                "enabled": True,
                "allow_networks": LOOPBACK,
                "history_max": 7,
                "history_ttl_s": 321,
                "run_service": False,
            }
        },
    )
    r = redis.Redis.from_url(redis_url)
    try:
        m = q.advanced.webhooks
        assert (m.history_max, m.history_ttl_s) == (7, 321)
        shown = q.advanced.config.to_dict()["webhooks"]
        assert (shown["history_max"], shown["history_ttl_s"]) == (7, 321)
        await m.register_webhook(
            WebhookConfig(url=ok_receiver.url, secret=generate_secret(), events=["ping"], id="h")
        )
        await m.service.start(q)
        await _send(m, 15)
        s = _state(r, q, "h")
        assert len(s["records"]) == 7 and all(300 < t <= 321 for _, t in s["records"].values())
        _check_consistent(s, 7)
    finally:
        r.close()
        await m.service.stop()
        await q.close()


async def test_defaults_and_the_top_of_the_ttl_range(
    queue: JobQueue, ok_receiver: Receiver, redis_url: str
) -> None:
    assert (HISTORY_MAX, HISTORY_TTL_S) == (10_000, 7 * 86_400)
    assert (WebhooksConfig().history_max, WebhooksConfig().history_ttl_s) == (
        HISTORY_MAX,
        HISTORY_TTL_S,
    )
    # The largest TTL allowed (ten years) is the one the records get.
    m = WebhookManager(queue, history_ttl_s=HISTORY_TTL_S_LIMIT, **FAST)
    assert m.history_max == HISTORY_MAX
    await m.register_webhook(
        WebhookConfig(url=ok_receiver.url, secret=generate_secret(), events=["ping"], id="h")
    )
    await m.service.start(queue)
    r = redis.Redis.from_url(redis_url)
    try:
        await _send(m, 3)
        ttls = [t for _, t in _state(r, queue, "h")["records"].values()]
        assert len(ttls) == 3 and all(t > HISTORY_TTL_S_LIMIT - 60 for t in ttls)
    finally:
        r.close()
        await m.service.stop()


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("history_max", 0),
        ("history_max", -5),
        ("history_max", True),
        ("history_max", 10.0),
        ("history_max", "100"),
        ("history_max", None),
        ("history_max", HISTORY_MAX_LIMIT + 1),
        ("history_ttl_s", 0),
        ("history_ttl_s", 3600.5),
        ("history_ttl_s", "7d"),
        ("history_ttl_s", HISTORY_TTL_S_LIMIT + 1),
        ("history_ttl_s", 2**51),
    ],
)
def test_bad_values_refused(queue: JobQueue, option: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=f"WebhookManager {option} must be an int from"):
        WebhookManager(queue, **{option: value})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=f"advanced.webhooks.{option} must be an int"):
        AdvancedQueueConfig(webhooks={"enabled": True, option: value})


def test_the_section_and_the_manager_agree_on_the_bounds(queue: JobQueue) -> None:
    for option, top in (("history_max", HISTORY_MAX_LIMIT), ("history_ttl_s", HISTORY_TTL_S_LIMIT)):
        WebhooksConfig(**{option: top})
        WebhookManager(queue, **{option: top}, run_service=False)
        with pytest.raises(ConfigurationError):
            WebhooksConfig(**{option: top + 1})


# ---------------------------------------------------------------------- lowering the bound
def _row(member: str, kind: str, due: int = 0) -> list[Any]:
    """The 13 ``webhooks_done`` fields of a new delivery's result."""
    return [member, kind, 1, due, "[]", 200, "", 3_600, b"{}", "ping", "guaranteed", "", 8]


async def _done(q: JobQueue, rows: list[list[Any]]) -> None:
    flat = [f for row in rows for f in row]
    await q.ctx.run("webhooks_done", (GROUP, 0, *flat))


async def test_a_lowered_history_max_drains_in_bounded_steps(redis_url: str, prefix: str) -> None:
    big = JobQueue("whb", redis=redis_url, prefix=prefix)
    small = JobQueue("whb", redis=redis_url, prefix=prefix)
    WebhookManager(big, history_max=5_000, run_service=False)
    WebhookManager(small, history_max=10, run_service=False)
    r = redis.Redis.from_url(redis_url)
    far = 2**45
    try:
        # 3,000 deliveries to each of a and b; the 5 oldest dead, the next 5 pending.
        for hook in ("a", "b"):
            await _done(big, [_row(f"{hook}/x{i:05d}", "dead") for i in range(5)])
            await _done(big, [_row(f"{hook}/x{i:05d}", "retry", far) for i in range(5, 10)])
            for start in range(10, 3_000, 200):
                await _done(
                    big,
                    [_row(f"{hook}/x{i:05d}", "ok") for i in range(start, min(start + 200, 3_000))],
                )
        idx = {h: small.keys.extra(f"wh:idx:{h}") for h in ("a", "b")}
        assert [r.zcard(idx[h]) for h in "ab"] == [3_000, 3_000]
        # One delivery to each: 2 added, at most 2 + 1,000 entries off in all.
        await _done(small, [_row("a/y000", "ok"), _row("b/y000", "ok")])
        sizes = [r.zcard(idx[h]) for h in "ab"]
        assert sum(sizes) == 6_002 - 1_002 and min(sizes) >= 1_000
        # Each later call: 2 in, 1,002 out (1,000 less excess) until the excess is gone.
        drained = None
        for i in range(1, 13):
            await _done(small, [_row(f"a/y{i:03d}", "ok"), _row(f"b/y{i:03d}", "ok")])
            if drained is None and r.zcard(idx["a"]) == r.zcard(idx["b"]) == 10:
                drained = i
        assert drained == 5  # excess 4,980 after the first call
        for hook in ("a", "b"):
            s = _state(r, small, hook)
            kept = {e for e, (st, _) in s["records"].items() if st not in FINAL}
            assert kept == {f"x{i:05d}" for i in range(10)}  # the dead and pending ones
            assert s["idx"] == {f"y{i:03d}" for i in range(3, 13)}
            assert len(s["records"]) == 20
            _check_consistent(s, 10)
    finally:
        r.close()
        await big.close()
        await small.close()


# ---------------------------------------------------------------------- chaos
_CHILD = """
import asyncio, os, sys
sys.path.insert(0, os.environ["KQ_SRC"])
from kitium_queue import JobQueue
from kitium_queue.features.webhooks import WebhookManager

async def main():
    q = JobQueue("whb", redis=os.environ["KQ_URL"], prefix=os.environ["KQ_PREFIX"])
    m = WebhookManager(q, secrets={"h": os.environ["KQ_SECRET"]}, allow_networks=["127.0.0.0/8"],
                       history_max=50, backoff_ms=20, max_backoff_ms=200, poll_ms=10,
                       claim_idle_ms=300, lease_ms=1000)
    await m.service.start(q)
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def _deliverer(tmp_path: Path, url: str, prefix: str, secret: str) -> subprocess.Popen[bytes]:
    script = tmp_path / "deliverer.py"
    script.write_text(_CHILD)
    env = {
        **os.environ,
        "KQ_SRC": str(ROOT / "src"),
        "KQ_URL": url,
        "KQ_PREFIX": prefix,
        "KQ_SECRET": secret,
    }
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    return proc


async def test_kills_mid_run_leave_index_and_records_consistent(
    tmp_path: Path, prefix: str
) -> None:
    srv = RedisServer("--appendonly", "yes", "--appendfsync", "always").start()
    # Every 7th event fails its first attempt: retries are in flight throughout.
    seen: set[str] = set()

    def status(req: Request) -> int:
        if req.id.endswith("7") and req.id not in seen:
            seen.add(req.id)
            return 503
        return 200

    rec = await Receiver(status=status).start()
    secret = generate_secret()
    q = JobQueue("whb", redis=srv.url, prefix=prefix)
    m = WebhookManager(q, history_max=50, run_service=False, allow_networks=LOOPBACK)
    await m.register_webhook(WebhookConfig(url=rec.url, secret=secret, events=["ping"], id="h"))
    procs = [_deliverer(tmp_path, srv.url, prefix, secret)]
    r = redis.Redis.from_url(srv.url)
    total = 1_500
    try:
        for i in range(total):
            await m.send_event(WebhookEvent("ping", {"i": i}, id=f"e{i:05d}"))
        # While the deliverer works through them: it is SIGKILLed twice (another takes
        # over its unacknowledged entries), then Redis is SIGKILLed (AOF, fsync always)
        # and restarted. Between the kills, snapshots check the invariants.
        kills, checks = [(300, "deliverer"), (700, "deliverer"), (1_000, "redis")], 0
        deadline = time.monotonic() + 60
        while kills and time.monotonic() < deadline:
            got = len(rec.ids())
            if got < kills[0][0]:
                _check_consistent(_state(r, q, "h"), 50)
                checks += 1
                await asyncio.sleep(0.01)
                continue
            assert got < total, "the deliveries ended before the kill"
            if kills.pop(0)[1] == "deliverer":
                procs[-1].send_signal(signal.SIGKILL)
                procs[-1].wait()
                procs.append(_deliverer(tmp_path, srv.url, prefix, secret))
            else:
                srv.kill()
                srv.restart()
                r.close()
                r = redis.Redis.from_url(srv.url)
            _check_consistent(_state(r, q, "h"), 50)
            checks += 1  # (a slow send loop may find the first kill's count already met)
        assert not kills and checks > 0
        want = {f"e{i:05d}" for i in range(total)}
        await wait_until(lambda: rec.ids().keys() >= want, 60, interval=0.05)
        await wait_until(lambda: _settled(m), 30, interval=0.05)
        await wait_until(lambda: not _state(r, q, "h")["retry"], 30, interval=0.05)
        s = _state(r, q, "h")
        _check_consistent(s, 50)
        assert len(s["idx"]) == 50 and set(s["records"]) == s["idx"]
        assert not s["dlq"]
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
        r.close()
        await q.close()
        await rec.stop()
        srv.close()


async def test_a_removed_endpoints_index_expires_and_a_new_registration_keeps_it(
    queue: JobQueue, ok_receiver: Receiver, redis_url: str
) -> None:
    """remove_webhook leaves the endpoint's records to their TTL; its index (up to
    history_max entries, ~1.2 MB at the default) now expires with them, where it stayed
    for good. Registered again under the same id, the index is kept again."""
    m = WebhookManager(queue, history_ttl_s=3600, **FAST)
    config = WebhookConfig(url=ok_receiver.url, secret=generate_secret(), events=["ping"], id="h")
    await m.register_webhook(config)
    await m.service.start(queue)
    r = redis.Redis.from_url(redis_url)
    idx = queue.keys.extra("wh:idx:h")
    try:
        await _send(m, 3)
        assert r.zcard(idx) == 3 and r.ttl(idx) == -1
        assert await m.remove_webhook("h")
        assert 3500 < r.ttl(idx) <= 3600
        await m.register_webhook(config)
        assert r.zcard(idx) == 3 and r.ttl(idx) == -1
    finally:
        r.close()
        await m.service.stop()
