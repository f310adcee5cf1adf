"""A rate limit changed or removed while all of a key's held-back jobs are parked.

Jobs held back by a key's rate limit are parked behind the key's timer (blocker
``'rl:<key>'``, ``features/flowpark.py``), armed with the rule of their parking. When
none of the key's jobs was left in wait, nothing looked at the key again before that
timer fired: 1,500 jobs parked at one an hour still came back one an hour after the
limit was removed or raised. Changing a limit now brings the key's timer to the time the
key may start under the new rule, and a process that starts with other declarations
does the same (``flowpark.follow_limits``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from helpers import QueueFactory, wait_until
from kitium_queue import JobQueue
from kitium_queue.features import flowpark
from kitium_queue.parking import parked_count

HOUR = 3_600_000


def _limited(make_queue: QueueFactory, name: str, **worker: Any) -> JobQueue:
    """Queue ``name`` whose key ``big`` may start one job an hour, every held-back job
    parked; one job at a time (the order the jobs start in is their claim order)."""
    q = make_queue(name, worker={"concurrency": 1, **worker})
    q.set_rate_limit("big", max=1, duration=HOUR)
    q.flow.park_rate_limited_jobs()
    return q


def _recorder(q: JobQueue, seen: list[str]) -> None:
    async def work(job: Any) -> None:
        seen.append(job.id)

    q.process("w", work)


async def _backlog(q: JobQueue, n: int, key: str = "big", tag: str = "big") -> list[str]:
    ids = [f"{tag}-{i:05d}" for i in range(n)]
    for start in range(0, n, 500):
        await q.add_jobs(
            [("w", {}, {"rate_limit_key": key, "job_id": i}) for i in ids[start : start + 500]]
        )
    return ids


async def _all_parked(q: JobQueue, seen: list[str], n: int) -> None:
    """Wait until the first job ran and the other ``n - 1`` are parked."""

    async def parked() -> bool:
        return len(seen) == 1 and await parked_count(q) == n - 1

    await wait_until(parked, 30, message=lambda: f"ran {len(seen)}")
    client = await q.client()
    assert await client.zcard(q.keys.wait) == 0  # none of the key's jobs left in wait


#: What one job may cost at one job at a time on a loaded machine: a claim/finish round
#: (its outcome goes out with the next claim).
ROUND_S = 0.2


async def _all_ran(seen: list[str], n: int) -> None:
    """Wait until ``n`` jobs ran, allowing one round for each."""
    await wait_until(lambda: len(seen) == n, 30 + n * ROUND_S, message=lambda: f"ran {len(seen)}")


async def _lead_elsewhere(q: JobQueue) -> None:
    """Another process leads the flow-control heal (it walks the parked keys every
    30 s): only the starting workers themselves can bring the parked jobs back soon."""
    client = await q.client()
    await client.set(q.keys.extra("leader:flow-control-heal"), "elsewhere", px=120_000)


async def _timer(q: JobQueue) -> tuple[float | None, Any]:
    client = await q.client()
    due = await client.zscore(q.keys.extra("park:timers"), "rl:big")
    rule = await client.hget(q.keys.extra("park:rules"), "rl:big")
    return due, rule


@pytest.mark.timeout(480)  # one job at a time: see ROUND_S
async def test_removing_the_limit_brings_every_parked_job_back(make_queue: QueueFactory) -> None:
    q = _limited(make_queue, "lc-remove")
    seen: list[str] = []
    _recorder(q, seen)
    await q.start()
    ids = await _backlog(q, 1500)
    await _all_parked(q, seen, 1500)
    q.flow.remove_rate_limit("big")
    # Before: the next one came an hour later, then one an hour.
    await _all_ran(seen, 1500)
    assert seen == ids  # in their order, each once
    assert await parked_count(q) == 0


@pytest.mark.timeout(480)  # one job at a time: see ROUND_S
async def test_raising_the_limit_brings_the_parked_jobs_back_by_the_new_rule(
    make_queue: QueueFactory,
) -> None:
    q = _limited(make_queue, "lc-raise")
    seen: list[str] = []
    _recorder(q, seen)
    await q.start()
    ids = await _backlog(q, 1500)
    await _all_parked(q, seen, 1500)
    q.set_rate_limit("big", max=1000, duration=1000)
    await _all_ran(seen, 1500)
    assert seen == ids
    client = await q.client()
    window = await client.hgetall(q.keys.extra("rl:big"))
    assert int(window[b"n"]) <= 1000  # the new limit holds


async def test_a_process_started_with_a_new_limit_brings_them_back(
    make_queue: QueueFactory,
) -> None:
    old = _limited(make_queue, "lc-procs")
    seen: list[str] = []
    _recorder(old, seen)
    await old.start()
    ids = await _backlog(old, 1200)
    await _all_parked(old, seen, 1200)
    await old.close()
    await _lead_elsewhere(old)
    # The next release of the app declares a faster limit (its own queue object, as a new
    # process does), and two of its workers (one each in two queue objects) start.
    news = []
    for _ in range(2):
        new = make_queue("lc-procs", worker={"concurrency": 4})
        new.set_rate_limit("big", max=500, duration=1000)
        new.flow.park_rate_limited_jobs()
        _recorder(new, seen)
        news.append(new)
    for new in news:
        await new.start()
    await wait_until(lambda: len(seen) == 1200, 60, message=lambda: f"ran {len(seen)}")
    await asyncio.sleep(0.2)
    assert sorted(seen) == ids  # each once
    assert await parked_count(news[0]) == 0


@pytest.mark.timeout(360)  # one job at a time: see ROUND_S
async def test_a_process_started_without_the_limit_brings_them_back(
    make_queue: QueueFactory,
) -> None:
    old = _limited(make_queue, "lc-nolimit")
    seen: list[str] = []
    _recorder(old, seen)
    await old.start()
    ids = await _backlog(old, 800)
    await _all_parked(old, seen, 800)
    await old.close()
    await _lead_elsewhere(old)
    new = make_queue("lc-nolimit", worker={"concurrency": 1})
    new.flow.park_rate_limited_jobs()  # flow control, no limit for the key any more
    _recorder(new, seen)
    await new.start()
    await _all_ran(seen, 800)
    assert seen == ids  # one worker: in their order


async def test_a_limit_of_another_key_leaves_the_timer_alone(make_queue: QueueFactory) -> None:
    q = _limited(make_queue, "lc-other")
    seen: list[str] = []
    _recorder(q, seen)
    await q.start()
    await _backlog(q, 50)
    await _all_parked(q, seen, 50)
    before = await _timer(q)
    assert before[0] is not None
    q.set_rate_limit("other-*", max=5, duration=1000)
    q.set_rate_limit("big", max=1, duration=HOUR)  # the same rule again
    await asyncio.sleep(1.5)
    assert await _timer(q) == before
    assert seen == ["big-00000"]
    assert await parked_count(q) == 49


async def _parked_without_worker(make_queue: QueueFactory, name: str) -> JobQueue:
    """Queue ``name`` (connected, no worker) whose first job of key ``big`` was claimed
    at one an hour and whose other 19 are parked behind the key's timer."""
    q = make_queue(name)
    q.set_rate_limit("big", max=1, duration=HOUR)
    q.flow.park_rate_limited_jobs()
    await _backlog(q, 20)
    got = await q.ctx.run("claim", [5, 60_000, 0, 0, 5, "1", "w1", 100])
    assert got[0] in (b"ok", "ok"), got
    assert await parked_count(q) == 19
    return q


async def _redis_ms(q: JobQueue) -> int:
    client = await q.client()
    sec, usec = await client.time()
    return int(sec) * 1000 + int(usec) // 1000


@pytest.mark.parametrize(
    ("change", "rule"),
    [("remove", b"0 0 "), ("raise", b"1000 1000 "), ("prefix", b"50 1000 ")],
)
async def test_a_change_arms_the_timer_for_now_and_wakes_the_workers(
    make_queue: QueueFactory, change: str, rule: bytes
) -> None:
    q = await _parked_without_worker(make_queue, f"lc-now-{change}")
    due, _ = await _timer(q)
    assert due is not None and due > await _redis_ms(q) + HOUR - 60_000
    client = await q.client()
    await client.delete(q.keys.marker)
    if change == "remove":
        q.flow.remove_rate_limit("big")
    elif change == "raise":
        q.set_rate_limit("big", max=1000, duration=1000)
    else:  # a prefix that now applies to the key: ``big`` had none of its own
        q.flow.remove_rate_limit("big")
        q.set_rate_limit("b*", max=50, duration=1000)
    await wait_until(lambda: _rule_is(q, rule), 10)
    due, _ = await _timer(q)
    assert due is not None and due <= await _redis_ms(q)
    assert await client.exists(q.keys.marker)  # idle workers were woken


async def test_a_lowered_limit_leaves_the_timer_as_armed(make_queue: QueueFactory) -> None:
    # Due no later than the new rule would arm it: it fires as armed, and claim judges the
    # jobs it brings back by the new limit.
    q = await _parked_without_worker(make_queue, "lc-lower")
    before = await _timer(q)
    assert before[0] is not None and before[1] is not None
    q.set_rate_limit("big", max=1, duration=2 * HOUR)
    await asyncio.sleep(1.5)
    assert await _timer(q) == before
    assert await flowpark.follow_limits(q) == 0


async def test_the_heal_pass_arms_a_timer_left_by_another_rule(make_queue: QueueFactory) -> None:
    from kitium_queue.features import flowheal

    q = _limited(make_queue, "lc-heal")
    seen: list[str] = []
    _recorder(q, seen)
    q.add_service(flowheal.heal_service(q, interval_s=0.2))
    await q.start()
    await _backlog(q, 300)
    await _all_parked(q, seen, 300)
    await asyncio.sleep(0.5)  # the start's walk is over
    # A timer armed last by a rule this process does not declare (one a day), due in a
    # day: the heal's pass arms it by the current rule, for the current window's end.
    client = await q.client()
    far = await _redis_ms(q) + 24 * HOUR
    await client.zadd(q.keys.extra("park:timers"), {"rl:big": far})
    await client.hset(q.keys.extra("park:rules"), "rl:big", f"1 {24 * HOUR} {far}")
    await wait_until(lambda: _rule_is(q, f"1 {HOUR} ".encode()), 10)
    due, _ = await _timer(q)
    assert due is not None and due <= await _redis_ms(q) + HOUR
    assert seen == ["big-00000"]  # the window is still full: none more started


async def _rule_is(q: JobQueue, head: bytes) -> bool:
    rule = (await _timer(q))[1]
    return rule is not None and bytes(rule).startswith(head)


@pytest.mark.redis_only
async def test_a_timer_served_past_the_claims_budget_keeps_its_rule(
    make_queue: QueueFactory,
) -> None:
    # Four keys of 300 a second, 700 jobs each: one claim's budget (1,000 jobs) serves
    # three timers whole and 100 jobs of the fourth. Its timer is armed again by its own
    # rule (300 a second), not by what the budget let out: a rule rewritten there read as
    # another declaration's, and the walk (follow_limits) armed the timer again.
    q = make_queue("lc-budget")
    q.set_rate_limit("k*", max=300, duration=1000)
    q.flow.park_rate_limited_jobs()
    for k in range(4):
        await _backlog(q, 700, key=f"k{k}", tag=f"k{k}")
    t0 = await _redis_ms(q)
    client = await q.client()

    async def claim(now: int, n: int) -> list[Any]:
        argv = [q.keys.base, str(now), "10000", n, 600_000, 0, 0, 2, "1", "w", 3000]
        reply = await q.scripts.call(client, "claim", q.keys.all, argv)
        return list(reply[5:])

    assert len(await claim(t0, 2000)) == 1200
    assert await parked_count(q) == 1600
    await claim(t0 + 1000, 1)
    rules = await client.hgetall(q.keys.extra("park:rules"))
    assert sorted(bytes(r).split()[:2] for r in rules.values()) == [[b"300", b"1000"]] * 4
    assert await flowpark.follow_limits(q) == 0
