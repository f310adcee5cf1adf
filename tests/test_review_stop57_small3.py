"""Three small fixes (each test failed before its fix):

* process mode: the job a child process runs carries its run's ``lease_token``, so the
  documented ``record_execution(..., lease_token=job.lease_token)`` of a
  ``mode="process"`` processor records under the run's fence (it raised AttributeError),
  and a token of a run that lost the job is refused;
* ``clear()`` keeps the FIFO groups' settings as it keeps the queue's: a paused group
  stays paused (its new jobs wait for ``resume_group``), per-group settings stay, and
  the groups' counts, turns and lines go;
* ``update`` (a job's log line with ``max_log_lines=0``) UNLINKs the job's log list, so
  a big one is freed in the background, not inside the script call.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis

from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import JobQueue, JobStatus, LeaseLostError
from kitium_queue.features.groups import FIFOQueueManager
from kitium_queue.features.idempotency import IdempotencyManager

pytestmark = pytest.mark.timeout(120)


# ------------------------------------------------------------------ process mode
def _charge_in_child(job: Any) -> Any:
    """A ``mode="process"`` processor following docs/effectively-once.md: its first run
    records its effect with its lease token, then fails (a reply lost); the retry tries
    the first run's token (stale now), then finds the record and skips the effect."""
    return asyncio.run(_charge(job))


async def _charge(job: Any) -> Any:
    url, prefix, key = job.data["url"], job.data["prefix"], job.data["key"]
    q = JobQueue(job.queue_name, redis=url, prefix=prefix)
    idem = IdempotencyManager(q)
    side = f"{prefix}:test-side:{job.id}"
    try:
        client = await q.client()
        old = await client.get(side)
        if old is None:  # the first run
            assert await idem.get_execution_result(key) is None
            await idem.record_execution(
                key, job.id, job.name, {"receipt": "r-1"}, lease_token=job.lease_token
            )
            await client.set(side, job.lease_token)
            raise RuntimeError("the reply of the payment provider was lost")
        refused = ""
        try:
            await idem.record_execution(
                key, job.id, job.name, {"receipt": "r-2"}, lease_token=old.decode()
            )
        except LeaseLostError as exc:
            refused = str(exc)
        done = await idem.get_execution_result(key)
        return {
            "refused": refused,
            "done": None if done is None else done.result,
            "token": job.lease_token,
            "stale": old.decode(),
        }
    finally:
        await q.close()


@pytest.mark.redis_only
async def test_a_child_process_run_records_once_under_its_lease_token(
    redis_url: str, prefix: str
) -> None:
    """Before: ``job.lease_token`` raised AttributeError in the child, so every attempt
    failed and nothing was recorded."""
    factory = QueueFactory(redis_url, prefix)
    try:
        q = factory("pay")
        q.process("charge", _charge_in_child, mode="process")
        key = "pay-order-7"
        data = {"url": redis_url, "prefix": prefix, "key": key}
        jid = await q.add_job("charge", data, attempts=2, backoff=0)
        await q.start()
        info = await wait_for_status(q, jid, JobStatus.COMPLETED, timeout=60)
        got = info.result
        assert isinstance(got["token"], str) and got["token"]
        assert got["stale"] and got["stale"] != got["token"]
        # The first run's token, once the job was handed to the retry, is refused.
        assert "no longer held by this run" in got["refused"]
        assert got["done"] == {"receipt": "r-1"}
        idem = IdempotencyManager(q)
        found = await idem.get_execution_result(key)
        assert found is not None and found.result == {"receipt": "r-1"}
        # The retry's own token is stale too once the job completed.
        with pytest.raises(LeaseLostError, match="no longer held by this run"):
            await idem.record_execution(
                key, jid, "charge", {"receipt": "r-3"}, lease_token=got["token"]
            )
        found = await idem.get_execution_result(key)
        assert found is not None and found.result == {"receipt": "r-1"}
    finally:
        await factory.aclose()


def _child_token(job: Any) -> Any:
    try:
        job.lease_token = "forged"
    except AttributeError:
        return {"token": job.lease_token, "read_only": True}
    return {"token": job.lease_token, "read_only": False}


async def test_a_child_job_lease_token_is_the_runs_and_read_only(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("child-token")
    q.process("t", _child_token, mode="process")
    jid = await q.add_job("t", {})
    await q.start()
    info = await wait_for_status(q, jid, JobStatus.COMPLETED, timeout=60)
    assert info.result["read_only"] is True
    token = info.result["token"]
    assert isinstance(token, str) and token


# ------------------------------------------------------------------ groups and clear()
async def test_clear_keeps_a_paused_group_paused_and_its_settings(
    make_queue: QueueFactory,
) -> None:
    """Before: clear() deleted every ``grp:<g>`` hash, so a group paused to be cleared
    ran its next jobs at once, and its own settings were lost."""
    q = make_queue("gclear")
    fifo = FIFOQueueManager(q)
    ran: list[Any] = []

    @q.process("g")
    async def g(job: Any) -> None:
        ran.append(job.data)

    await fifo.pause_group("acct")
    await fifo.set_group({"group_id": "acct", "group_concurrency": 2, "max_group_size": 50})
    await q.add_job("g", "old-acct", message_group_id="acct")
    await q.add_job("g", "old-other", message_group_id="other")
    assert (await fifo.get_group_stats("other")).size == 1
    await q.clear()

    stats = await fifo.get_group_stats("acct")
    assert stats.paused is True
    assert stats.group_concurrency == 2 and stats.max_group_size == 50
    assert stats.size == 0 and stats.waiting == 0 and stats.held == 0
    other = await fifo.get_group_stats("other")
    assert other.exists is False and other.size in (0, None)
    assert (await fifo.list_groups()).groups == ["acct"]
    client = await q.client()
    assert await client.exists(q.keys.extra("grp-of")) == 0

    held = await q.add_job("g", "new-acct", message_group_id="acct")
    free = await q.add_job("g", "new-other", message_group_id="other")
    await q.start()
    await wait_for_status(q, free, JobStatus.COMPLETED, timeout=30)
    await asyncio.sleep(0.3)  # a claim round or two: the paused group's job must not run
    assert "new-acct" not in ran
    info = await q.get_job_status(held)
    assert info is not None and info.status == JobStatus.PENDING
    await fifo.resume_group("acct")
    await wait_for_status(q, held, JobStatus.COMPLETED, timeout=30)
    assert ran == ["new-other", "new-acct"]
    stats = await fifo.get_group_stats("acct")
    assert stats.size == 0 and stats.completed == 1


# ------------------------------------------------------------------ UNLINK in update.lua
BIG_LOG = 2000  # lines of 500 bytes: a quicklist of ~125 nodes, freed lazily by UNLINK


async def _lazyfree(client: aioredis.Redis) -> tuple[int, int]:
    info = await client.info("memory")
    return int(info["lazyfree_pending_objects"]), int(info["lazyfreed_objects"])


async def _pending_none(client: aioredis.Redis) -> bool:
    return (await _lazyfree(client))[0] == 0


@pytest.mark.redis_only
async def test_a_log_line_with_no_lines_kept_frees_a_big_log_list_in_the_background(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    """Before: ``DEL`` freed the job's log list (kept before ``max_log_lines`` was
    lowered to 0: up to 1,000,000 lines) inside the script call. Now ``UNLINK``."""
    info = await redis_client.info("memory")
    if "lazyfreed_objects" not in info:
        pytest.skip("this Redis does not report lazyfreed_objects (before 7.0)")
    config = await redis_client.config_get("lazyfree-lazy-user-del")
    if config.get("lazyfree-lazy-user-del") == "yes":
        pytest.skip("lazyfree-lazy-user-del: DEL frees in the background too")
    q = make_queue("unlink-update", max_log_lines=0)
    go = asyncio.Event()
    logged = asyncio.Event()

    @q.process("n")
    async def n(job: Any) -> None:
        await go.wait()
        await job.log("one more line")
        logged.set()

    jid = await q.add_job("n", {"x": 1})
    await q.start()
    await wait_for_status(q, jid, JobStatus.ACTIVE, timeout=30)
    client = await q.client()
    key = q.keys.logs(jid)
    await client.rpush(key, *(["x" * 500] * BIG_LOG))
    # Frees an earlier test left pending would be counted during this one.
    await wait_until(lambda: _pending_none(redis_client), 30)
    before = (await _lazyfree(redis_client))[1]
    go.set()
    await asyncio.wait_for(logged.wait(), 30)
    assert await redis_client.exists(key) == 0

    async def freed() -> bool:
        pending, done = await _lazyfree(redis_client)
        return pending == 0 and done > before

    await wait_until(freed, 30, interval=0.02, message="the log list was not freed lazily")
    await wait_for_status(q, jid, JobStatus.COMPLETED, timeout=30)
