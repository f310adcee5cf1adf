"""Alert catch-up against an id Redis refuses, and the refusal bound's timer summing up
every window this process counted in (features/alerts, features/audit/refusals.py)."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from helpers import EventLog, backlog_alert_rules, wait_until
from kitium_queue import JobQueue
from kitium_queue.features.access import AccessControlManager
from kitium_queue.features.audit.refusals import FLUSH_BATCH

KEY = secrets.token_hex(32)

_RULES = backlog_alert_rules()


@pytest.mark.redis_only
async def test_an_unreported_id_redis_refuses_does_not_stop_the_alerts(
    redis_url: str, prefix: str
) -> None:
    """alerts:unreported holding an id shaped like a stream id but past 2**64: XREVRANGE
    refused it ("Invalid stream ID"), the catch-up raised at every step before the
    evaluation, and no rule was evaluated again while the member stayed."""
    q = JobQueue("al", redis=redis_url, prefix=prefix, worker={"scheduler": False},
                 advanced=_RULES)  # fmt: skip
    log = EventLog(q, ["alert-fired"])
    q.process("n", lambda job: None)
    try:
        await q.pause()
        await q.add_job("n", {})
        client = await q.client()
        key = q.keys.extra("alerts:unreported")
        await client.zadd(key, {"99999999999999999999-0": 1, "1-99999999999999999999": 2})
        await q.start()
        await wait_until(lambda: log.of("alert-fired"), 10, message="the alert")
        assert await client.zcard(key) == 0  # the ids no writer made are gone
    finally:
        await q.close()


async def test_the_timer_sums_up_every_window_this_process_counted_in(
    backend_url: str, prefix: str
) -> None:
    """More windows ending together than one flush batch (FLUSH_BATCH): the timer
    summed up one batch and forgot the rest (and any window ending while it flushed),
    left in Redis for another process's flush_refusals(), or lost after KEEP_MS."""
    n = FLUSH_BATCH + 50
    acm = AccessControlManager(
        backend_url, prefix=prefix, audit_key=KEY, refusal_burst=1, refusal_window=300
    )
    meta = {"action": "add_job", "permission": "can_add_job"}
    try:
        for i in range(n):
            for _ in range(2):  # one entry, one counted
                await acm.refusals.deny("p", f"q{i}", meta)

        async def summaries() -> int:
            es = await acm.query_audit_log(action="access.denied", limit=10_000)
            return sum(1 for e in es if "suppressed" in e.metadata)

        for _ in range(100):
            if not acm.refusals._held and await summaries() == n:
                break
            await asyncio.sleep(0.1)
        assert await summaries() == n  # before close: by the timer alone
        assert (await acm.verify_audit_log()).ok
    finally:
        await acm.close()
