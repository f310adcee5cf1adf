"""Each Lua transition exercised directly, with the time passed in (ARGV[2] = now ms).

One section per script. Calls go through ``queue.scripts.call`` with the queue's KEYS
vector and ``[prefix, now, events maxlen, ...script arguments]``, so the scripts are
checked as the worker and the admin API use them, without any worker running.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from helpers import QueueFactory, wait_until
from kitium_queue import (
    JobNotFoundError,
    JobQueue,
    JobStateError,
    LeaseLostError,
    QueueActiveError,
)

T0 = 1_700_000_000_000


def _dec(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [_dec(v) for v in value]
    if isinstance(value, dict):
        return {_dec(k): _dec(v) for k, v in value.items()}
    return value


class Lua:
    """Runs the queue's scripts with an explicit clock and reads its keys (decoded)."""

    def __init__(self, queue: JobQueue, client: Any) -> None:
        self.queue = queue
        self.client = client
        self.keys = queue.keys

    async def __call__(self, script: str, now: int | None, *args: Any) -> Any:
        argv = [self.keys.base, "" if now is None else str(now), "10000", *args]
        return _dec(await self.queue.scripts.call(self.client, script, self.keys.all, argv))

    # -- transitions with sensible defaults --------------------------------------------
    async def enqueue(self, now: int, *jobs: dict[str, Any], ttl: int = 86_400_000) -> list[str]:
        args: list[Any] = [ttl]
        for j in jobs:
            args += [
                j.get("id", ""),
                j.get("name", "a"),
                j.get("data", "{}"),
                j.get("opts", ""),
                j.get("priority", 0),
                j.get("delay", 0),
                "1" if j.get("lifo") else "0",
                j.get("ik", ""),
            ]
        return list(await self("enqueue", now, *args))

    async def add(self, now: int = T0, **job: Any) -> str:
        reply = await self.enqueue(now, job)
        return str(reply[0])

    async def claim(
        self,
        now: int,
        n: int = 10,
        *,
        lease: int = 1000,
        lim_max: int = 0,
        lim_win: int = 0,
        max_stalled: int = 2,
        dlq: bool = True,
        worker: str = "w1",
        scan: int = 1000,
    ) -> list[Any]:
        return list(
            await self(
                "claim",
                now,
                n,
                lease,
                lim_max,
                lim_win,
                max_stalled,
                "1" if dlq else "0",
                worker,
                scan,
            )
        )

    async def claim_one(self, now: int, **kw: Any) -> tuple[str, str]:
        reply = await self.claim(now, 1, **kw)
        assert reply[0] == "ok", reply
        return reply[5][0], str(reply[2])

    async def finish(self, now: int, *outcomes: tuple[Any, ...], dlq: bool = True) -> list[str]:
        args: list[Any] = ["1" if dlq else "0"]
        for o in outcomes:
            # id, token, kind, payload, traceback, delay, keep count, keep age, meta
            full = (*o, *(["", "", 0, -1, -1, ""][len(o) - 3 :]))
            args += list(full)
        return list(await self("finish", now, *args))

    # -- reads ----------------------------------------------------------------------------
    async def job(self, job_id: str) -> dict[str, str]:
        return dict(_dec(await self.client.hgetall(self.keys.job(job_id))))

    async def zset(self, name: str) -> list[tuple[str, int]]:
        raw = await self.client.zrange(getattr(self.keys, name), 0, -1, withscores=True)
        return [(_dec(m), int(s)) for m, s in raw]

    async def ids(self, name: str) -> list[str]:
        return [m for m, _ in await self.zset(name)]

    async def events(self) -> list[dict[str, str]]:
        return [dict(_dec(f)) for _, f in await self.client.xrange(self.keys.events)]

    async def event_names(self, job_id: str | None = None) -> list[str]:
        return [e["e"] for e in await self.events() if job_id is None or e["id"] == job_id]

    async def marker(self) -> bool:
        return await self.client.zscore(self.keys.marker, "0") is not None

    async def clear_marker(self) -> None:
        await self.client.delete(self.keys.marker)


@pytest.fixture
async def lua(backend_url: str, prefix: str) -> AsyncIterator[Lua]:
    factory = QueueFactory(backend_url, prefix)
    queue = factory("scripts")
    try:
        yield Lua(queue, await queue.client())
    finally:
        await factory.aclose()


# ================================================================ enqueue


async def test_enqueue_creates_jobs_with_sequential_ids(lua: Lua) -> None:
    reply = await lua.enqueue(
        T0, {"name": "a", "data": '{"x":1}'}, {"name": "b", "opts": '{"attempts":2}'}
    )
    assert reply == ["1", "new", "2", "new"]
    j1 = await lua.job("1")
    assert j1 == {
        "n": "a",
        "d": '{"x":1}',
        "ts": str(T0),
        "p": "0",
        "q": "1",
        "a": "0",
        "s": "0",
        "st": "waiting",
    }
    assert (await lua.job("2"))["o"] == '{"attempts":2}'
    assert await lua.ids("wait") == ["1", "2"]
    assert await lua.marker()
    events = await lua.events()
    assert [(e["e"], e["id"], e["st"]) for e in events] == [
        ("job-added", "1", "waiting"),
        ("job-added", "2", "waiting"),
    ]


async def test_enqueue_delayed_job(lua: Lua) -> None:
    jid = await lua.add(T0, delay=500)
    assert await lua.zset("delayed") == [(jid, T0 + 500)]
    assert await lua.ids("wait") == []
    job = await lua.job(jid)
    assert job["st"] == "delayed" and job["due"] == str(T0 + 500)
    assert await lua.marker(), "the earliest delayed job must wake idle workers"
    await lua.clear_marker()
    await lua.add(T0, delay=900)
    assert not await lua.marker(), "a later delayed job changes no wake-up time"
    await lua.add(T0, delay=100)
    assert await lua.marker()


async def test_enqueue_orders_by_priority_then_fifo_and_lifo(lua: Lua) -> None:
    await lua.enqueue(
        T0,
        {"id": "low"},
        {"id": "high1", "priority": 10},
        {"id": "mid", "priority": 5},
        {"id": "high2", "priority": 10},
        {"id": "high-lifo", "priority": 10, "lifo": True},
        {"id": "low-lifo1", "lifo": True},
        {"id": "low-lifo2", "lifo": True},
        {"id": "top", "priority": 65535},
    )
    assert await lua.ids("wait") == [
        "top",
        "high-lifo",
        "high1",
        "high2",
        "mid",
        "low-lifo2",
        "low-lifo1",
        "low",
    ]


async def test_enqueue_duplicate_job_id_writes_nothing(lua: Lua) -> None:
    assert await lua.enqueue(T0, {"id": "order-1", "data": '"first"'}) == ["order-1", "new"]
    before_events = len(await lua.events())
    seq = await lua.client.get(lua.keys.id)
    reply = await lua.enqueue(T0 + 5, {"id": "order-1", "data": '"second"', "priority": 9})
    assert reply == ["order-1", "dup"]
    job = await lua.job("order-1")
    assert job["d"] == '"first"' and job["p"] == "0" and job["ts"] == str(T0)
    assert len(await lua.events()) == before_events
    assert await lua.client.get(lua.keys.id) == seq


async def test_enqueue_idempotency_key(lua: Lua) -> None:
    reply = await lua.enqueue(T0, {"ik": "pay-42"}, {"ik": "pay-42"}, {"ik": "pay-43"})
    assert reply == ["1", "new", "1", "dup", "2", "new"]
    assert (await lua.job("1"))["ik"] == "pay-42"
    ttl = await lua.client.pttl(lua.keys.idempotency("pay-42"))
    assert 0 < ttl <= 86_400_000
    # A custom job_id with a known key is still the original job.
    assert await lua.enqueue(T0, {"id": "other", "ik": "pay-42"}) == ["1", "dup"]
    assert await lua.ids("wait") == ["1", "2"]


async def test_enqueue_idempotency_window_expires(lua: Lua) -> None:
    assert await lua.enqueue(T0, {"ik": "k"}, ttl=30) == ["1", "new"]
    key = lua.keys.idempotency("k")
    await wait_until(lambda: _not_exists(lua, key), 2)
    assert await lua.enqueue(T0, {"ik": "k"}, ttl=30) == ["2", "new"]


async def _not_exists(lua: Lua, key: str) -> bool:
    return not await lua.client.exists(key)


async def test_idempotency_key_outlives_a_removed_job(lua: Lua) -> None:
    jid = await lua.add(T0, ik="once")
    assert await lua("remove", T0, jid) == ["removed"]
    assert await lua.enqueue(T0, {"ik": "once"}) == [jid, "dup"]


# ================================================================ promote


async def test_promote_moves_only_due_jobs(lua: Lua) -> None:
    await lua.enqueue(
        T0,
        {"id": "d100", "delay": 100},
        {"id": "d200", "delay": 200, "priority": 3},
        {"id": "d900", "delay": 900},
    )
    await lua.clear_marker()
    assert await lua("promote", T0 + 99, 100) == 0
    assert not await lua.marker()
    assert await lua("promote", T0 + 200, 100) == 2
    assert await lua.ids("wait") == ["d200", "d100"]  # priority decides once waiting
    assert await lua.ids("delayed") == ["d900"]
    job = await lua.job("d100")
    assert job["st"] == "waiting" and "due" not in job
    assert await lua.marker()


async def test_promote_is_bounded(lua: Lua) -> None:
    for i in range(5):
        await lua.add(T0, id=f"j{i}", delay=10)
    assert await lua("promote", T0 + 10, 2) == 2
    assert len(await lua.ids("delayed")) == 3
    assert await lua("promote", T0 + 10, 10) == 3


# ================================================================ claim


async def test_claim_leases_jobs(lua: Lua) -> None:
    await lua.enqueue(
        T0, {"name": "email", "data": '{"to":"x"}', "opts": '{"attempts":4}'}, {"name": "sms"}
    )
    reply = await lua.claim(T0 + 10, 5, lease=1000, worker="host:1")
    status, wake_in, token, back, dead, *jobs = reply
    assert (status, wake_in, back, dead) == ("ok", 1000, [], [])
    assert jobs == [
        ["1", "email", '{"to":"x"}', '{"attempts":4}', 1, str(T0), "0", "", None],
        ["2", "sms", "{}", "", 1, str(T0), "0", "", None],
    ]
    assert await lua.zset("active") == [("1", T0 + 1010), ("2", T0 + 1010)]
    job = await lua.job("1")
    assert (job["st"], job["lt"], job["ps"], job["w"], job["a"]) == (
        "active",
        str(token),
        str(T0 + 10),
        "host:1",
        "1",
    )
    assert await lua.event_names("1") == ["job-added", "job-started"]


async def test_claim_takes_at_most_n_and_passes_wake_up_on(lua: Lua) -> None:
    await lua.enqueue(T0, {}, {}, {})
    await lua.clear_marker()
    reply = await lua.claim(T0, 2)
    assert [j[0] for j in reply[5:]] == ["1", "2"]
    assert await lua.marker(), "work is left: the next idle worker must be woken"
    await lua.clear_marker()
    reply = await lua.claim(T0, 2)
    assert [j[0] for j in reply[5:]] == ["3"]
    assert not await lua.marker()


async def test_claim_tokens_are_fresh_per_call(lua: Lua) -> None:
    await lua.enqueue(T0, {}, {}, {})
    first = await lua.claim(T0, 2)
    second = await lua.claim(T0, 2)
    assert int(second[2]) > int(first[2]) > 0
    assert (await lua.job("1"))["lt"] == (await lua.job("2"))["lt"] == str(first[2])
    assert (await lua.job("3"))["lt"] == str(second[2])


async def test_claim_when_empty_reports_next_due_time(lua: Lua) -> None:
    assert (await lua.claim(T0))[:2] == ["empty", -1]
    await lua.add(T0, delay=300)
    assert (await lua.claim(T0 + 100))[:2] == ["empty", 200]
    reply = await lua.claim(T0 + 300)
    assert reply[0] == "ok" and reply[5][0] == "1"
    # Now the lease deadline is the next thing due.
    assert (await lua.claim(T0 + 400))[:2] == ["empty", 900]


async def test_claim_promotes_due_delayed_jobs_by_priority(lua: Lua) -> None:
    await lua.enqueue(T0, {"id": "late", "delay": 50}, {"id": "urgent", "delay": 50, "priority": 9})
    reply = await lua.claim(T0 + 50, 1)
    assert reply[5][0] == "urgent"


async def test_claim_on_paused_queue_hands_out_nothing(lua: Lua) -> None:
    await lua.add(T0)
    await lua("pause", T0, "1")
    reply = await lua.claim(T0, 5)
    assert reply[0] == "paused" and len(reply) == 5
    assert await lua.ids("wait") == ["1"]
    await lua("pause", T0, "0")
    assert (await lua.claim(T0, 5))[0] == "ok"


async def test_claim_respects_the_limiter(lua: Lua) -> None:
    await lua.enqueue(T0, *({} for _ in range(5)))
    reply = await lua.claim(T0, 5, lim_max=2, lim_win=150)
    assert reply[0] == "ok" and len(reply[5:]) == 2
    limited = await lua.claim(T0, 5, lim_max=2, lim_win=150)
    assert limited[0] == "limited" and 0 <= limited[1] <= 150
    assert len(await lua.ids("wait")) == 3
    # The window is a Redis key with a TTL: once it is gone, claiming resumes.
    await wait_until(lambda: _not_exists(lua, lua.keys.limiter), 2)
    reply = await lua.claim(T0, 5, lim_max=2, lim_win=150)
    assert reply[0] == "ok" and len(reply[5:]) == 2


async def test_claim_recovers_expired_leases_first(lua: Lua) -> None:
    await lua.add(T0)
    _, token1 = await lua.claim_one(T0, lease=100)
    assert (await lua.claim(T0 + 99))[0] == "empty"
    reply = await lua.claim(T0 + 100, 5, lease=100)
    assert reply[3] == ["1"] and reply[4] == []
    assert reply[5][0] == "1" and reply[5][4] == 1, "a stalled run is not an attempt"
    assert int(reply[2]) != int(token1)
    job = await lua.job("1")
    assert (job["s"], job["a"]) == ("1", "1")
    assert "job-stalled" in await lua.event_names("1")


async def test_claim_dead_letters_jobs_that_stall_too_often(lua: Lua) -> None:
    await lua.add(T0)
    await lua.claim_one(T0, lease=100, max_stalled=1)
    await lua.claim_one(T0 + 100, lease=100, max_stalled=1)  # stall 1: back and re-leased
    reply = await lua.claim(T0 + 200, lease=100, max_stalled=1)
    assert reply[0] == "empty" and reply[4] == ["1"]
    job = await lua.job("1")
    assert job["st"] == "dlq" and "stalled 2 times" in job["e"]
    assert await lua.ids("dlq") == ["1"]


async def test_claim_dead_letters_a_waiting_job_whose_record_vanished(lua: Lua) -> None:
    await lua.enqueue(T0, {"id": "ghost"}, {"id": "real"})
    await lua.client.delete(lua.keys.job("ghost"))
    reply = await lua.claim(T0, 5)
    assert reply[4] == ["ghost"]
    assert [j[0] for j in reply[5:]] == ["real"]
    assert await lua.ids("dlq") == ["ghost"]
    assert "job record missing" in (await lua.job("ghost"))["e"]


async def test_claim_runs_admission_checks(lua: Lua) -> None:
    lua.queue.scripts.add_admission_check(
        "not_blocked", "function(id, jk) return redis.call('HGET', jk, 'n') ~= 'blocked' end"
    )
    await lua.enqueue(T0, {"id": "b", "name": "blocked"}, {"id": "ok", "name": "fine"})
    reply = await lua.claim(T0, 5)
    assert [j[0] for j in reply[5:]] == ["ok"]
    assert await lua.ids("wait") == ["b"]
    assert (await lua.job("b"))["a"] == "0"
    assert (await lua.claim(T0, 5))[0] == "empty"


async def test_claim_scan_limit_bounds_the_work(lua: Lua) -> None:
    lua.queue.scripts.add_admission_check("only_last", "function(id, jk) return id == 'z' end")
    await lua.enqueue(T0, {"id": "x"}, {"id": "y"}, {"id": "z"})
    assert (await lua.claim(T0, 5, scan=2))[0] == "empty"
    reply = await lua.claim(T0, 5, scan=3)
    assert [j[0] for j in reply[5:]] == ["z"]


# ================================================================ extend


async def test_extend_renews_a_held_lease(lua: Lua) -> None:
    await lua.add(T0)
    jid, token = await lua.claim_one(T0, lease=100)
    assert await lua("extend", T0 + 50, 100, jid, token) == [[], [], []]
    assert await lua.zset("active") == [(jid, T0 + 150)]


async def test_extend_reports_lost_leases_and_never_resurrects(lua: Lua) -> None:
    await lua.enqueue(T0, {}, {})
    reply = await lua.claim(T0, 2, lease=100)
    token = str(reply[2])
    # Job 1 expires and is recovered (waiting again); job 2 is still ours.
    await lua("recover", T0 + 100, 2, "1", 1)  # limit 1: only the first expired job
    assert await lua.ids("active") == ["2"]
    assert await lua("extend", T0 + 100, 100, "1", token, "2", token) == [["1"], [], []]
    assert await lua.zset("active") == [("2", T0 + 200)]
    assert (await lua.job("1"))["st"] == "waiting"
    assert await lua("extend", T0, 100, "2", "999") == [["2"], [], []]
    # A job whose record is gone is lost, and reported as gone too.
    assert await lua("extend", T0, 100, "nope", token) == [["nope"], [], ["nope"]]


async def test_extend_reports_cancellation_requests(lua: Lua) -> None:
    await lua.add(T0)
    jid, token = await lua.claim_one(T0, lease=100)
    assert await lua("cancel", T0, jid) == ["flagged"]
    assert await lua("extend", T0 + 10, 100, jid, token) == [[], [jid], []]
    assert await lua.zset("active") == [(jid, T0 + 110)]


# ================================================================ finish


async def test_finish_complete(lua: Lua) -> None:
    await lua.add(T0)
    jid, token = await lua.claim_one(T0)
    outcome = (jid, token, "C", '{"ok":true}', "", 0, -1, -1, "m1")
    assert await lua.finish(T0 + 20, outcome) == ["ok"]
    job = await lua.job(jid)
    assert (job["st"], job["r"], job["f"], job["m"]) == (
        "completed",
        '{"ok":true}',
        str(T0 + 20),
        "m1",
    )
    assert "lt" not in job
    assert await lua.zset("completed") == [(jid, T0 + 20)]
    assert await lua.ids("active") == []
    assert (await lua.event_names(jid))[-1] == "job-completed"


async def test_finish_is_fenced_by_the_lease_token(lua: Lua) -> None:
    await lua.add(T0)
    jid, token = await lua.claim_one(T0, lease=100)
    assert await lua.finish(T0, (jid, "12345", "C", "1")) == ["lease-lost"]
    assert (await lua.job(jid))["st"] == "active"
    # The lease expires and another worker takes the job: the old holder cannot finish.
    _, token2 = await lua.claim_one(T0 + 100)
    assert await lua.finish(T0 + 101, (jid, token, "C", "1")) == ["lease-lost"]
    assert (await lua.job(jid))["lt"] == token2
    assert await lua.finish(T0 + 102, (jid, token2, "C", "2")) == ["ok"]
    assert await lua.finish(T0 + 103, (jid, token2, "C", "3")) == ["lease-lost"]
    assert (await lua.job(jid))["r"] == "2"


async def test_finish_missing_job(lua: Lua) -> None:
    await lua.add(T0)
    jid, token = await lua.claim_one(T0)
    await lua.client.delete(lua.keys.job(jid))
    assert await lua.finish(T0, (jid, token, "C", "1")) == ["missing"]
    assert await lua.ids("active") == []


async def test_finish_many_outcomes_in_one_call(lua: Lua) -> None:
    await lua.enqueue(T0, {}, {}, {})
    reply = await lua.claim(T0, 3)
    token = str(reply[2])
    statuses = await lua.finish(
        T0 + 1, ("1", token, "C", "1"), ("2", "0", "C", "1"), ("3", token, "R", "boom", "", 0)
    )
    assert statuses == ["ok", "lease-lost", "ok"]


async def test_finish_complete_with_removal_and_retention(lua: Lua) -> None:
    await lua.enqueue(T0, *({} for _ in range(4)))
    reply = await lua.claim(T0, 4)
    token = str(reply[2])
    assert await lua.finish(T0 + 1, ("1", token, "C", "r", "", 0, 0, -1)) == ["ok"]
    assert await lua.job("1") == {} and await lua.ids("completed") == []
    assert "job-completed" in await lua.event_names("1")
    for i, jid in enumerate(("2", "3", "4")):
        await lua.finish(T0 + 10 + i, (jid, token, "C", "r", "", 0, 2, -1))
    assert await lua.ids("completed") == ["3", "4"]
    assert await lua.job("2") == {}


async def test_finish_complete_with_age_retention(lua: Lua) -> None:
    await lua.enqueue(T0, {}, {})
    token = str((await lua.claim(T0, 2))[2])
    await lua.finish(T0, ("1", token, "C", "r", "", 0, -1, 100))
    await lua.finish(T0 + 100, ("2", token, "C", "r", "", 0, -1, 100))
    assert await lua.ids("completed") == ["2"], "a job exactly max-age old is removed"
    assert await lua.job("1") == {}


async def test_finish_complete_after_a_failed_attempt(lua: Lua) -> None:
    await lua.add(T0)
    jid, token = await lua.claim_one(T0)
    await lua.finish(T0, (jid, token, "R", "ValueError: first", "tb1", 0))
    jid, token = await lua.claim_one(T0 + 1)
    await lua.finish(T0 + 2, (jid, token, "C", "1"))
    job = await lua.job(jid)
    assert job["st"] == "completed" and job["le"] == "ValueError: first"
    assert "e" not in job and "tb" not in job


async def test_finish_retry(lua: Lua) -> None:
    await lua.enqueue(T0, {"id": "later"}, {"id": "now"})
    token = str((await lua.claim(T0, 2))[2])
    out = await lua.finish(
        T0 + 5,
        ("later", token, "R", "ValueError: x", "tb...", 250),
        ("now", token, "R", "ValueError: y", "", 0),
    )
    assert out == ["ok", "ok"]
    later = await lua.job("later")
    assert (later["st"], later["due"], later["e"], later["tb"], later["a"]) == (
        "delayed",
        str(T0 + 255),
        "ValueError: x",
        "tb...",
        "1",
    )
    assert await lua.zset("delayed") == [("later", T0 + 255)]
    assert await lua.ids("wait") == ["now"]
    events = [e for e in await lua.events() if e["e"] == "job-retrying"]
    assert [(e["id"], e["delay"]) for e in events] == [("later", "250"), ("now", "0")]


async def test_finish_final_failure_to_dlq(lua: Lua) -> None:
    await lua.add(T0)
    jid, token = await lua.claim_one(T0)
    assert await lua.finish(T0 + 7, (jid, token, "F", "KeyError: 'x'", "Traceback ...")) == ["ok"]
    job = await lua.job(jid)
    assert (job["st"], job["e"], job["tb"], job["f"]) == (
        "dlq",
        "KeyError: 'x'",
        "Traceback ...",
        str(T0 + 7),
    )
    assert await lua.zset("dlq") == [(jid, T0 + 7)]
    assert (await lua.event_names(jid))[-2:] == ["job-failed", "job-dlq"]


async def test_finish_final_failure_without_dlq(lua: Lua) -> None:
    await lua.enqueue(T0, {}, {}, {})
    token = str((await lua.claim(T0, 3))[2])
    await lua.finish(T0, ("1", token, "F", "e1", "", 0, -1, -1), dlq=False)
    assert (await lua.job("1"))["st"] == "failed" and await lua.ids("failed") == ["1"]
    assert "job-dlq" not in await lua.event_names("1")
    await lua.finish(T0, ("2", token, "F", "e2", "", 0, 0, -1), dlq=False)
    assert await lua.job("2") == {} and await lua.ids("failed") == ["1"]
    await lua.finish(T0 + 1, ("3", token, "F", "e3", "", 0, 1, -1), dlq=False)
    assert await lua.ids("failed") == ["3"]


async def test_finish_defer_spends_no_attempt(lua: Lua) -> None:
    await lua.add(T0)
    jid, token = await lua.claim_one(T0)
    assert (await lua.job(jid))["a"] == "1"
    await lua.finish(T0, (jid, token, "D", "rate limited", "", 300))
    job = await lua.job(jid)
    assert (job["st"], job["a"], job["due"]) == ("delayed", "0", str(T0 + 300))
    assert "job-delayed" in await lua.event_names(jid)
    reply = await lua.claim(T0 + 300)
    assert reply[5][4] == 1


async def test_finish_hand_back_keeps_queue_position(lua: Lua) -> None:
    await lua.enqueue(T0, {"id": "first"}, {"id": "second"})
    score_before = dict(await lua.zset("wait"))["first"]
    jid, token = await lua.claim_one(T0)
    assert jid == "first"
    await lua.finish(T0, (jid, token, "H", ""))
    assert await lua.ids("wait") == ["first", "second"]
    assert dict(await lua.zset("wait"))["first"] == score_before
    assert (await lua.job("first"))["a"] == "0"
    assert "job-released" in await lua.event_names("first")


# ================================================================ recover


async def test_recover_requeues_expired_leases(lua: Lua) -> None:
    await lua.enqueue(T0, {"id": "short"}, {"id": "long"})
    await lua.claim(T0, 1, lease=100)
    await lua.claim(T0, 1, lease=500)
    assert await lua("recover", T0 + 99, 2, "1", 100) == [[], []]
    assert await lua("recover", T0 + 100, 2, "1", 100) == [["short"], []]
    job = await lua.job("short")
    assert (job["st"], job["a"], job["s"]) == ("waiting", "0", "1")
    assert "lt" not in job
    assert await lua.ids("active") == ["long"]
    assert await lua.marker()


async def test_recover_dead_letters_after_max_stalled(lua: Lua) -> None:
    await lua.add(T0)
    await lua.claim(T0, lease=10)
    assert await lua("recover", T0 + 10, 0, "0", 100) == [[], ["1"]]
    job = await lua.job("1")
    assert job["st"] == "failed" and "max_stalled_count=0" in job["e"]
    assert await lua.ids("failed") == ["1"]


async def test_recover_is_bounded(lua: Lua) -> None:
    await lua.enqueue(T0, {}, {}, {})
    await lua.claim(T0, 3, lease=10)
    back, _ = await lua("recover", T0 + 10, 2, "1", 2)
    assert len(back) == 2 and len(await lua.ids("active")) == 1


# ================================================================ retry


async def _dead(lua: Lua, now: int, *ids: str, dlq: bool = True) -> None:
    """Enqueue and dead-letter (or fail) jobs with the given ids, in order."""
    await lua.enqueue(now, *({"id": i} for i in ids))
    token = str((await lua.claim(now, len(ids)))[2])
    for k, i in enumerate(ids):
        await lua.finish(now + k, (i, token, "F", f"err {i}", "tb"), dlq=dlq)


async def test_retry_ids_requeues_with_fresh_attempts(lua: Lua) -> None:
    await _dead(lua, T0, "x")
    assert await lua("retry", T0 + 50, "ids", "x") == ["x"]
    job = await lua.job("x")
    assert (job["st"], job["a"], job["s"], job["le"]) == ("waiting", "0", "0", "err x")
    assert not {"e", "tb", "f", "lt"} & set(job)
    assert await lua.ids("dlq") == [] and await lua.ids("wait") == ["x"]


async def test_retry_ids_errors_move_nothing(lua: Lua) -> None:
    await _dead(lua, T0, "dead")
    await lua.add(T0, id="waiting")
    with pytest.raises(JobNotFoundError, match="job nope does not exist"):
        await lua("retry", T0, "ids", "dead", "nope")
    with pytest.raises(JobStateError, match="job waiting is waiting"):
        await lua("retry", T0, "ids", "dead", "waiting")
    assert await lua.ids("dlq") == ["dead"]


async def test_retry_state_oldest_first_with_limit(lua: Lua) -> None:
    await _dead(lua, T0, "a", "b", "c", dlq=False)
    assert await lua("retry", T0 + 9, "state", "failed", 2) == ["a", "b"]
    assert await lua.ids("failed") == ["c"]
    with pytest.raises(JobStateError, match="cannot bulk-retry state waiting"):
        await lua("retry", T0, "state", "waiting", 10)


async def test_retry_completed_job(lua: Lua) -> None:
    await lua.add(T0)
    jid, token = await lua.claim_one(T0)
    await lua.finish(T0, (jid, token, "C", "1"))
    assert await lua("retry", T0, "ids", jid) == [jid]
    job = await lua.job(jid)
    assert job["st"] == "waiting" and "r" not in job


# ================================================================ replay


async def test_replay_moves_dlq_jobs_back_oldest_first(lua: Lua) -> None:
    await _dead(lua, T0, "a", "b", "c")
    await lua.clear_marker()
    assert await lua("replay", T0 + 10, 2) == ["a", "b"]
    assert await lua.ids("dlq") == ["c"]
    assert await lua.ids("wait") == ["a", "b"]
    assert (await lua.job("a"))["le"] == "err a"
    assert await lua.marker()
    assert await lua("replay", T0 + 10, 10) == ["c"]
    assert await lua("replay", T0 + 10, 10) == []


# ================================================================ remove


async def test_remove_each_state(lua: Lua) -> None:
    await lua.enqueue(T0, {"id": "w"}, {"id": "d", "delay": 100}, {"id": "act"}, {"id": "c"})
    reply = await lua.claim(T0, 5)
    token = str(reply[2])
    # Claimed w, act, c (d is delayed); complete c, keep w active... re-queue w first.
    await lua.finish(T0, ("w", token, "H", ""), ("c", token, "C", "1"))
    await lua.client.rpush(lua.keys.logs("w"), "line")
    out = await lua("remove", T0, "w", "d", "act", "c", "missing")
    assert out == ["removed", "removed", "active", "removed", "missing"]
    assert await lua.job("w") == {} and not await lua.client.exists(lua.keys.logs("w"))
    assert await lua.ids("wait") == [] and await lua.ids("delayed") == []
    assert await lua.ids("completed") == [] and await lua.ids("active") == ["act"]
    assert (await lua.job("act"))["st"] == "active"
    assert "job-removed" in await lua.event_names("d")


# ================================================================ cancel


async def test_cancel_each_state(lua: Lua) -> None:
    await lua.enqueue(T0, {"id": "act"}, {"id": "w"}, {"id": "d", "delay": 50})
    await lua.claim(T0, 1)
    out = await lua("cancel", T0, "w", "d", "act", "nope")
    assert out == ["removed", "removed", "flagged", "missing"]
    assert await lua.job("w") == {} and await lua.job("d") == {}
    assert await lua.ids("wait") == [] and await lua.ids("delayed") == []
    assert (await lua.job("act"))["cx"] == "1"
    assert "job-cancelling" in await lua.event_names("act")


async def test_cancel_finished_job_is_a_no_op(lua: Lua) -> None:
    await lua.add(T0)
    jid, token = await lua.claim_one(T0)
    await lua.finish(T0, (jid, token, "C", "1"))
    assert await lua("cancel", T0, jid) == ["finished"]
    assert (await lua.job(jid))["st"] == "completed"


# ================================================================ drain


async def test_drain_removes_unstarted_jobs_only(lua: Lua) -> None:
    await lua.enqueue(T0, {"id": "act"}, {"id": "w1"}, {"id": "w2"}, {"id": "d", "delay": 10})
    await lua.claim(T0, 1)
    assert await lua("drain", T0, "0", 100) == 2
    assert await lua.ids("wait") == [] and await lua.ids("delayed") == ["d"]
    assert await lua("drain", T0, "1", 100) == 1
    assert await lua.ids("delayed") == [] and await lua.job("d") == {}
    assert await lua.ids("active") == ["act"]
    drained = [e for e in await lua.events() if e["e"] == "queue-drained"]
    assert [e["count"] for e in drained] == ["2", "1"]
    assert await lua("drain", T0, "1", 100) == 0


async def test_drain_is_bounded_per_call(lua: Lua) -> None:
    await lua.enqueue(T0, *({} for _ in range(5)))
    assert await lua("drain", T0, "1", 2) == 2
    assert len(await lua.ids("wait")) == 3


# ================================================================ clear


async def test_clear_refuses_while_jobs_run(lua: Lua) -> None:
    await lua.enqueue(T0, {}, {})
    await lua.claim(T0, 1)
    with pytest.raises(QueueActiveError, match="1 jobs are active"):
        await lua("clear", T0, "0", 100)
    assert len(await lua.ids("wait")) == 1


async def test_clear_force_deletes_every_key_in_batches(lua: Lua) -> None:
    await lua.enqueue(T0, *({} for _ in range(4)), {"delay": 10})
    token = str((await lua.claim(T0, 2))[2])
    await lua.finish(T0, ("1", token, "C", "1"))
    await lua("pause", T0, "1")
    assert await lua("clear", T0, "1", 2) == 1
    while await lua("clear", T0, "1", 2) == 1:
        pass
    # Only the id and lease-token counters remain (ids and fencing tokens never repeat),
    # and the queue's settings: the pause stays a pause.
    left = sorted(k.decode() for k in await lua.client.keys(f"{lua.keys.prefix}:*"))
    assert left == sorted([lua.keys.id, lua.keys.lease, lua.keys.meta])
    assert await lua.client.hgetall(lua.keys.meta) == {b"paused": b"1"}


async def test_ids_continue_after_clear(lua: Lua) -> None:
    first = await lua.enqueue(T0, {}, {})
    while await lua("clear", T0, "1", 100) == 1:
        pass
    second = await lua.enqueue(T0, {})
    assert int(second[0]) > int(first[0]), "an id handed out before clear() came back"


# ================================================================ pause


async def test_pause_and_resume(lua: Lua) -> None:
    await lua("pause", T0, "1")
    assert await lua.client.hget(lua.keys.meta, "paused") == b"1"
    await lua.clear_marker()
    await lua("pause", T0, "0")
    assert await lua.client.hget(lua.keys.meta, "paused") is None
    assert await lua.marker(), "resume must wake idle workers"
    assert [e["e"] for e in await lua.events()] == ["queue-paused", "queue-resumed"]


# ================================================================ update


async def test_update_progress_and_logs(lua: Lua) -> None:
    await lua.add(T0)
    jid, token = await lua.claim_one(T0)
    assert await lua("update", T0, jid, token, "progress", "42", 3) == 1
    assert (await lua.job(jid))["pg"] == "42"
    progress = [e for e in await lua.events() if e["e"] == "job-progress"]
    assert progress[0]["progress"] == "42"
    for i in range(5):
        await lua("update", T0, jid, token, "log", f"line {i}", 3)
    logs = await lua.client.lrange(lua.keys.logs(jid), 0, -1)
    assert _dec(logs) == ["line 2", "line 3", "line 4"]


async def test_update_is_fenced(lua: Lua) -> None:
    await lua.add(T0)
    jid, token = await lua.claim_one(T0)
    with pytest.raises(LeaseLostError, match=f"job {jid} is no longer leased"):
        await lua("update", T0, jid, "999", "progress", "1", 10)
    await lua.finish(T0, (jid, token, "C", "1"))
    with pytest.raises(LeaseLostError):
        await lua("update", T0, jid, token, "log", "late", 10)
    assert "pg" not in await lua.job(jid)


# ================================================================ stats


async def test_stats_counts_and_oldest_waiting(lua: Lua) -> None:
    assert await lua("stats", T0) == [0, 0, 0, 0, 0, 0, "0", -1, T0, "0"]
    await lua.enqueue(T0, {"id": "a"}, {"id": "b"}, {"id": "c"})
    await lua.enqueue(T0 + 30, {"id": "e"}, {"id": "d", "delay": 1000})
    token = str((await lua.claim(T0 + 40, 3))[2])
    await lua.finish(T0 + 40, ("a", token, "C", "1"), ("b", token, "F", "x"))
    await lua.finish(T0 + 40, ("c", token, "F", "y"), dlq=False)
    assert await lua("stats", T0 + 100) == [1, 0, 1, 1, 1, 1, "0", T0 + 30, T0 + 100, "0"]
    await lua("pause", T0, "1")
    assert (await lua("stats", T0 + 100))[6] == "1"
    await lua("pause", T0, "0")
    await lua.claim(T0 + 100, 1)
    assert await lua("stats", T0 + 100) == [0, 1, 1, 1, 1, 1, "0", -1, T0 + 100, "0"]


async def test_server_clock_is_used_when_now_is_empty(lua: Lua) -> None:
    reply = await lua("enqueue", None, 86_400_000, "", "a", "{}", "", 0, 0, "0", "")
    ts = int((await lua.job(reply[0]))["ts"])
    assert abs(ts - time.time() * 1000) < 5000
    stats = await lua("stats", None)
    assert abs(stats[8] - time.time() * 1000) < 5000
