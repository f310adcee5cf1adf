"""Repairing parked sets overwritten or deleted outside kitium-queue (``rebuild_parked``).

The defect, reproduced on a real Redis before the repair existed: a blocker's set
(``parked:<blocker>``) overwritten with another type, or deleted, left the jobs it held
``pending`` for ever -- claim and enqueue skipped the set (and recorded it in
slot-errors), the blocker's release unparked nothing, and nothing rebuilt the set, so
the jobs never ran (``test_a_deleted_set_strands_its_jobs_until_rebuilt`` shows both
halves). ``parking.rebuild_parked`` (``lua/park_rebuild.lua``) gives them back from
their records; these tests run it on the engine with an explicit clock, through a
worker end to end, through the CLI, and while a worker drains with sets being damaged.
Also reproduced and fixed: on the memory:// backend, parking behind a damaged set failed
the enqueue with a Lua error (``park_call`` read the error reply as a string).
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections import Counter
from typing import Any

import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner

from helpers import QueueFactory, app_module, wait_until
from kitium_queue import JobQueue, JobStatus
from kitium_queue.cli import main
from kitium_queue.errors import DamagedKeyError
from kitium_queue.features.groups import FIFOQueueManager
from kitium_queue.features.workflows import JobChainManager
from kitium_queue.hooks import AdminCall, Subscriber
from kitium_queue.parking import (
    ParkRepair,
    park_stats,
    parked_count,
    parked_in,
    rebuild_parked,
    slot_errors,
)
from test_parking import T0, Engine

pytestmark = pytest.mark.redis_only

BAND = 2**36
HALF = 2**35


def wait_score(priority: int, seq: int) -> int:
    """A job's score in wait (lua/lib_jobs.lua wait_score)."""
    return (65535 - priority) * BAND + HALF + seq


async def _damage(client: aioredis.Redis, key: str, how: str) -> None:
    await client.delete(key)
    if how == "string":
        await client.set(key, "x")
    elif how == "hash":
        await client.hset(key, "x", "y")


async def _state(q: JobQueue, job_id: str) -> tuple[str | None, str | None, list[str]]:
    """A job's st and pk fields and the state sets it is listed in."""
    client = await q.client()
    st, pk = await client.hmget(q.keys.job(job_id), "st", "pk")
    sets = [
        s
        for s in ("wait", "active", "delayed", "completed", "failed", "dlq")
        if await client.zscore(getattr(q.keys, s), job_id) is not None
    ]
    return (st.decode() if st else None), (pk.decode() if pk else None), sets


async def _set(q: JobQueue, blocker: str) -> list[tuple[str, int]]:
    client = await q.client()
    rows = await client.zrange(q.keys.parked(blocker), 0, -1, withscores=True)
    return [(m.decode(), int(s)) for m, s in rows]


async def _snapshot(client: aioredis.Redis, prefix: str) -> dict[bytes, bytes | None]:
    keys = sorted([k async for k in client.scan_iter(match=f"{prefix}*", count=1000)])
    return {k: await client.dump(k) for k in keys}


async def _capped(make_queue: QueueFactory, name: str) -> tuple[JobQueue, Engine, str]:
    """A queue whose key 'k' (cap 1) is held by w0, with p1 (priority 5) and p2 parked
    behind it; returns the lease token of w0."""
    q = make_queue(name)
    q.set_concurrency_limit("k", 1)
    e = Engine(q)
    await e.add(T0, "w0", concurrency_key="k")
    _, _, got, token = await e.claim(T0)
    assert got == ["w0"]
    await e.add(T0, "p1", concurrency_key="k", priority=5)
    await e.add(T0, "p2", concurrency_key="k")
    assert [m for m, _ in await _set(q, "cc:k")] == ["p1", "p2"]
    return q, e, token


# ------------------------------------------------------------------ the defect


async def test_a_deleted_set_strands_its_jobs_until_rebuilt(make_queue: QueueFactory) -> None:
    q, e, token = await _capped(make_queue, "strand")
    client = await q.client()
    await client.delete(q.keys.parked("cc:k"))
    # The blocker's release finds nothing to unpark: p1 and p2 are pending, in no set.
    await e.complete(T0 + 1, "w0", token)
    assert (await e.claim(T0 + 2))[2] == []
    assert await _state(q, "p1") == ("pending", "cc:k", [])
    assert (await e.claim(T0 + 60_000))[2] == []  # for ever: no timer, no release
    result = await rebuild_parked(q)
    assert isinstance(result, ParkRepair)
    assert (result.pending, result.restored, result.released, result.skipped) == (2, 2, 2, 0)
    assert result.sets_rebuilt == 1 and result.blockers == ("cc:k",)
    assert result.damaged_replaced == 0 and result.total_before == 2 and result.total_after == 0
    # Back to wait through unpark: claim's admission runs p1 (the cap is free) and parks
    # p2 behind the key again, which p1's completion releases.
    _, _, got, t1 = await e.claim(T0 + 3)
    assert got == ["p1"]
    assert await _state(q, "p2") == ("pending", "cc:k", [])
    assert await parked_count(q) == 1
    await e.complete(T0 + 4, "p1", t1)
    assert (await e.claim(T0 + 5))[2] == ["p2"]


async def test_a_set_of_another_type_is_replaced_and_reported(make_queue: QueueFactory) -> None:
    q, e, token = await _capped(make_queue, "wrongtype")
    client = await q.client()
    key = q.keys.parked("cc:k")
    await _damage(client, key, "hash")
    await e.add(T0, "p3", concurrency_key="k")  # cannot be parked: stays in wait
    report = (await slot_errors(q))[f"damaged:{key}"]
    assert "rebuild_parked" in report and "kitium-queue parked rebuild" in report, report
    result = await rebuild_parked(q, release=False)
    assert result.damaged_replaced == 1 and result.damaged_keys == (key,)
    assert (result.restored, result.released) == (2, 0)
    # Back at their places: the score each had in wait, from its priority and order.
    assert await _state(q, "p1") == ("pending", "cc:k", [])
    assert await _set(q, "cc:k") == [("p1", wait_score(5, 2)), ("p2", wait_score(0, 3))]
    assert await client.type(key) == b"zset"
    assert await client.zscore(q.keys.parked_index, "cc:k") == 2
    assert await parked_count(q) == 2
    assert f"damaged:{key}" not in await slot_errors(q)
    # Left in the set, the blocker's next release frees them in order.
    await e.complete(T0 + 1, "w0", token)
    _, _, got, t1 = await e.claim(T0 + 2, n=1)
    assert got == ["p1"]
    await e.complete(T0 + 3, "p1", t1)
    _, _, got, _ = await e.claim(T0 + 4, n=5)
    assert got == ["p2"] or got == ["p3"], got


async def test_a_wrong_index_count_and_total_are_recomputed(make_queue: QueueFactory) -> None:
    q, _, _ = await _capped(make_queue, "recount")
    client = await q.client()
    await client.zadd(q.keys.parked_index, {"cc:k": 7, "cc:ghost": 3})
    await client.hset(q.keys.meta, "parked", 42)
    result = await rebuild_parked(q)
    assert (result.restored, result.index_fixed) == (0, 2)
    assert (result.total_before, result.total_after) == (42, 2)
    assert await client.zrange(q.keys.parked_index, 0, -1, withscores=True) == [(b"cc:k", 2.0)]
    assert await parked_count(q) == 2
    # A damaged index is deleted and listed again from the sets.
    await _damage(client, q.keys.parked_index, "string")
    result = await rebuild_parked(q)
    assert result.damaged_keys == (q.keys.parked_index,) and result.index_fixed == 1
    assert await client.zscore(q.keys.parked_index, "cc:k") == 2
    assert (await park_stats(q)).top == [("cc:k", 2)]


async def test_sound_blockers_are_untouched_among_damaged_ones(
    make_queue: QueueFactory, prefix: str
) -> None:
    q = make_queue("mix")
    q.set_concurrency_limit("*", 1)
    e = Engine(q)
    for k in "abc":
        await e.add(T0, f"{k}0", concurrency_key=k)
    assert len((await e.claim(T0))[2]) == 3
    for k in "abc":
        for i in (1, 2):
            await e.add(T0, f"{k}{i}", concurrency_key=k)
    client = await q.client()
    sound = {k: v for k, v in (await _snapshot(client, prefix)).items() if b"a" in k[-3:]}
    assert q.keys.parked("cc:a").encode() in sound
    await _damage(client, q.keys.parked("cc:b"), "string")
    await client.delete(q.keys.parked("cc:c"))
    # One blocker at a time: only its jobs and its count.
    only = await rebuild_parked(q, "cc:b", release=False)
    assert (only.restored, only.blockers, only.damaged_replaced) == (2, ("cc:b",), 1)
    assert await _state(q, "c1") == ("pending", "cc:c", [])
    assert await client.exists(q.keys.parked("cc:c")) == 0
    result = await rebuild_parked(q, release=False)
    assert (result.pending, result.restored, result.blockers) == (6, 2, ("cc:c",))
    for k in "abc":
        assert [m for m, _ in await _set(q, f"cc:{k}")] == [f"{k}1", f"{k}2"]
    after = await _snapshot(client, prefix)
    assert {k: after.get(k) for k in sound} == sound  # cc:a's set and jobs, byte for byte
    assert await parked_count(q) == 6


async def test_a_dry_run_writes_nothing(make_queue: QueueFactory, prefix: str) -> None:
    q, e, token = await _capped(make_queue, "dry")
    client = await q.client()
    await _damage(client, q.keys.parked("cc:k"), "string")
    await e.complete(T0 + 1, "w0", token)  # records the damaged key in slot-errors
    await _damage(client, q.keys.parked_index, "hash")
    await client.hset(q.keys.meta, "parked", 9)
    before = await _snapshot(client, prefix)
    result = await rebuild_parked(q, dry_run=True)
    assert result.dry_run and (result.pending, result.restored, result.released) == (2, 2, 2)
    assert set(result.damaged_keys) == {q.keys.parked("cc:k"), q.keys.parked_index}
    assert result.total_before == 9 and result.total_after is None
    assert await _snapshot(client, prefix) == before
    # The real run does what the dry run said.
    done = await rebuild_parked(q)
    assert (done.restored, done.released, set(done.damaged_keys)) == (
        2,
        2,
        set(result.damaged_keys),
    )


async def test_refused_whole_on_a_damaged_meta_and_checked_arguments(
    make_queue: QueueFactory, prefix: str
) -> None:
    q, _, _ = await _capped(make_queue, "refuse")
    client = await q.client()
    await client.delete(q.keys.parked("cc:k"))
    await _damage(client, q.keys.meta, "string")
    before = await _snapshot(client, prefix)
    with pytest.raises(DamagedKeyError, match="meta"):
        await rebuild_parked(q)
    assert await _snapshot(client, prefix) == before
    with pytest.raises(ValueError, match="blocker"):
        await rebuild_parked(q, "")
    with pytest.raises(ValueError, match="dry_run"):
        await rebuild_parked(q, dry_run="yes")  # type: ignore[arg-type]


async def test_the_repair_passes_the_admin_choke_point(make_queue: QueueFactory) -> None:
    q, _, _ = await _capped(make_queue, "audit")
    calls: list[AdminCall] = []

    class Audit(Subscriber):
        def admin(self, call: AdminCall) -> None:
            calls.append(call)

    q.subscribe(Audit())
    await rebuild_parked(q, dry_run=True)
    assert [c.command for c in calls] == ["rebuild_parked"]
    assert calls[0].args == {"blocker": None, "dry_run": True, "release": True}


async def test_parked_in_names_the_repair_for_a_damaged_set(make_queue: QueueFactory) -> None:
    q, _, _ = await _capped(make_queue, "named")
    await _damage(await q.client(), q.keys.parked("cc:k"), "string")
    with pytest.raises(DamagedKeyError, match="rebuild_parked") as info:
        await parked_in(q, "cc:k")
    assert "kitium-queue parked rebuild" in str(info.value)


async def test_the_memory_backend_skips_a_damaged_set_and_repairs_it() -> None:
    # Before: on memory:// (fakeredis, whose Lua error replies are not strings) parking
    # behind a damaged set failed the enqueue with "bad argument #1 to 'find'".
    q = JobQueue("mem", redis=f"memory://{uuid.uuid4().hex}")
    try:
        FIFOQueueManager(q)
        for i in range(3):
            await q.add_job("j", {"i": i}, message_group_id="g")
        client = await q.client()
        await _damage(client, q.keys.parked("g:g"), "string")
        late = await q.add_job("j", {}, message_group_id="g")
        assert await _state(q, late) == ("waiting", None, ["wait"])
        assert f"damaged:{q.keys.parked('g:g')}" in await slot_errors(q)
        result = await rebuild_parked(q)
        assert (result.restored, result.released, result.damaged_replaced) == (2, 2, 1)
        assert await parked_count(q) == 0
    finally:
        await q.close()


# ------------------------------------------------------------------ end to end


async def test_jobs_run_after_the_repair_and_the_blockers_release(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("e2e", worker={"concurrency": 6, "scheduler": False})
    q.set_concurrency_limit("k", 1)
    q.set_concurrency_limit("live", 1)
    JobChainManager(q)
    FIFOQueueManager(q)
    hold, hold_live = asyncio.Event(), asyncio.Event()
    runs: Counter[str] = Counter()
    order: list[str] = []

    async def work(job: Any) -> None:
        runs[job.id] += 1
        order.append(job.id)
        if job.data.get("hold"):
            await (hold_live if job.data.get("live") else hold).wait()

    q.process("*", work)
    holder = await q.add_job("j", {"hold": True}, concurrency_key="k")
    parent = await q.add_job("j", {"hold": True}, job_id="parent")
    g_head = await q.add_job("j", {"hold": True}, message_group_id="g1")
    live = await q.add_job("j", {"hold": True, "live": True}, concurrency_key="live")
    await q.start()
    await wait_until(lambda: {holder, parent, g_head, live} <= set(runs), 10)
    capped = [await q.add_job("j", {}, concurrency_key="k") for _ in range(3)]
    child = await q.add_job("j", {}, depends_on=[parent])
    line = [await q.add_job("j", {}, message_group_id="g1") for _ in range(3)]
    behind_live = [await q.add_job("j", {}, concurrency_key="live") for _ in range(2)]
    client = await q.client()
    await wait_until(lambda: client.zcard(q.keys.parked("cc:live")), 5)
    for b in ("cc:k", "wp:parent", "g:g1", "cc:live"):
        assert await client.zcard(q.keys.parked(b)) > 0, b
    await _damage(client, q.keys.parked("cc:k"), "string")
    await client.delete(q.keys.parked("wp:parent"))
    await client.delete(q.keys.parked("g:g1"))
    await client.delete(q.keys.parked("cc:live"))
    hold.set()  # three blockers are released while their sets are damaged or gone
    await wait_until(lambda: runs[holder] and runs[parent] and runs[g_head], 10)
    await asyncio.sleep(0.5)
    gone = [*capped, child, *line]
    stranded = [*gone, *behind_live]
    assert not any(runs[j] for j in stranded)
    for j in stranded:
        info = await q.get_job_status(j)
        assert info is not None and info.status == JobStatus.PENDING, j
    result = await rebuild_parked(q)
    assert result.restored == len(stranded) and result.released == len(stranded)
    await wait_until(lambda: all(runs[j] for j in gone), 15, message=lambda: f"ran {runs}")
    # The group's line ran in its order; the live key's jobs wait behind it again.
    assert [j for j in order if j in line] == line
    await asyncio.sleep(0.3)
    assert not any(runs[j] for j in behind_live)
    assert sorted(await parked_in(q, "cc:live")) == sorted(behind_live)
    hold_live.set()  # the live blocker's release frees them
    await wait_until(lambda: all(runs[j] for j in behind_live), 10)
    await asyncio.sleep(0.2)
    assert set(runs.values()) == {1}
    assert await parked_count(q) == 0


async def test_a_drain_with_sets_damaged_and_repaired_runs_each_job_once(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("chaos", worker={"concurrency": 8, "scheduler": False})
    q.set_concurrency_limit("*", 2)
    FIFOQueueManager(q)
    runs: Counter[str] = Counter()

    async def work(job: Any) -> None:
        runs[job.id] += 1
        await asyncio.sleep(random.uniform(0.005, 0.02))

    q.process("*", work)
    ids: list[str] = []
    for i in range(240):
        opts = {"concurrency_key": f"k{i % 4}"} if i % 3 else {"message_group_id": f"g{i % 5}"}
        ids.append(await q.add_job("j", {"i": i}, **opts))
    client = await q.client()
    blockers = [*(f"cc:k{i}" for i in range(4)), *(f"g:g{i}" for i in range(5))]
    await q.start()
    rng = random.Random(7)
    repairs: list[ParkRepair] = []
    # Damage while the drain runs (a repair every third round), until most jobs ran.
    for round_ in range(300):
        if len(runs) >= len(ids) * 0.9:
            break
        for b in rng.sample(blockers, 2):
            await _damage(client, q.keys.parked(b), rng.choice(["string", "delete"]))
        await asyncio.sleep(0.02)
        if round_ % 3 == 2:
            repairs.append(await rebuild_parked(q))
    assert len(repairs) >= 3

    async def settled() -> bool:
        if len(runs) == len(ids):
            return True
        # Sets damaged by the last rounds may still strand jobs: repair until none is.
        repairs.append(await rebuild_parked(q))
        return False

    await wait_until(settled, 30, interval=0.3, message=lambda: f"{len(runs)}/{len(ids)} ran")
    await asyncio.sleep(0.3)
    assert sorted(runs) == sorted(ids)
    assert set(runs.values()) == {1}, [j for j, n in runs.items() if n > 1]
    assert sum(r.restored for r in repairs) > 0  # the damage did strand jobs
    assert await parked_count(q) == 0


# ------------------------------------------------------------------ command line


def test_the_cli_reports_a_dry_run_then_rebuilds(
    redis_url: str, prefix: str, tmp_path: Any
) -> None:
    source = (
        "from kitium_queue import JobQueue\n"
        f"queue = JobQueue('cliq', redis={redis_url!r}, prefix={prefix!r})\n"
        "queue.set_concurrency_limit('k', 1)\n"
    )

    async def setup() -> None:
        q = JobQueue("cliq", redis=redis_url, prefix=prefix)
        q.set_concurrency_limit("k", 1)
        e = Engine(q)
        await e.add(T0, "w0", concurrency_key="k")
        _, _, _, token = await e.claim(T0)
        await e.add(T0, "p1", concurrency_key="k")
        client = await q.client()
        await _damage(client, q.keys.parked("cc:k"), "string")
        await e.complete(T0 + 1, "w0", token)
        await q.close()

    asyncio.run(setup())
    with app_module(tmp_path, source) as module:
        app = f"{module}:queue"
        runner = CliRunner()
        dry = runner.invoke(main, ["parked", "rebuild", app, "--dry-run", "--json"])
        assert dry.exit_code == 0, dry.output
        report = json.loads(dry.output)
        assert report["dry_run"] is True and report["restored"] == 1
        plain = runner.invoke(main, ["--plain", "parked", "rebuild", app])
        assert plain.exit_code == 0, plain.output
        assert "restored=1" in plain.output and "released=1" in plain.output
        again = runner.invoke(main, ["parked", "rebuild", app, "--json"])
        assert json.loads(again.output)["restored"] == 0
