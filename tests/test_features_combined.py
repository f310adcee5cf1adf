"""Features combined on one queue: a job that is at once a tenant's, in a FIFO group,
bound to a circuit breaker, a workflow step or a dependent, with an idempotency key,
encrypted, delayed, prioritised, retried, dead-lettered and replayed.

Several features park a job aside (a tenant's lane, a group's line, a breaker's hold, a
dependency): these tests check what happens when two of them want the same job, and
what removal, ``clear()``, a DLQ replay and a SIGKILLed worker leave behind. Each
asserts that every job runs to completion once (or reaches its documented end), a group
keeps its order, a tenant's cap is never exceeded, every feature's counters go back to
zero and nothing is left parked.

* the blocker a job meets first no longer depends on the order the features were
  enabled in (``slots.ORDER_READY`` / ``ORDER_LINE``): a group's line keeps its place
  against a tenant's lane, and a job waiting for its parents holds no group turn and no
  tenant ticket (before, a dependent could hold its group's turn while its parent waited
  in that group's line: both waited for good);
* steps a DLQ replay revives are the jobs they were to every feature: their tenant's
  cap and their group's order apply (before, they ran uncounted, all at once);
* a dispatch ticket held by a job another feature parks (a breaker's hold, a group's
  line) is given back at once: it counted against the tenant's ``max_concurrency`` and
  stalled the tenant's lane until the 30 s sync (a group's turn holder and a ticket
  holder waited for each other).
"""

from __future__ import annotations

import asyncio
import random
import textwrap
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from helpers import QueueFactory, wait_until
from kitium_queue import (
    CircuitBreakerManager,
    ConfigurationError,
    IdempotencyManager,
    JobQueue,
    JobStatus,
    NonRetryableError,
)
from kitium_queue.features.encryption import EncryptionManager, KeyConfig, generate_key
from kitium_queue.features.groups import FIFOQueueManager
from kitium_queue.features.tenancy import TenantRegistry
from kitium_queue.features.tenancy import keys as tk
from kitium_queue.features.workflows import JobChainManager, WorkflowStep
from kitium_queue.parking import parked_by_blocker, parked_count
from kitium_queue.slots import ORDER_LINE, ORDER_READY, SlotTable
from workers.procs import WorkerProcs

KEY = generate_key()
FAST = {"lock_duration": 1000, "max_stalled_interval": 100}
#: The order the features are enabled in: a job's treatment must not depend on it.
ORDERS = {
    "tenancy-first": ("tenancy", "groups", "breakers", "workflows", "idempotency", "encryption"),
    "tenancy-last": ("encryption", "idempotency", "workflows", "breakers", "groups", "tenancy"),
}


@pytest.fixture
async def rq(redis_url: str, prefix: str) -> AsyncIterator[QueueFactory]:
    """Queues on the real Redis (tenancy, breakers and encryption need it)."""
    factory = QueueFactory(redis_url, prefix)
    yield factory
    await factory.aclose()


@dataclass
class Stack:
    """One queue with every feature that parks or marks jobs enabled."""

    q: JobQueue
    tenants: TenantRegistry
    groups: FIFOQueueManager
    breakers: CircuitBreakerManager
    chains: JobChainManager
    idem: IdempotencyManager


def stack(rq: QueueFactory, order: str = "tenancy-first", **kw: Any) -> Stack:
    kw.setdefault("worker", {"concurrency": 4, "scheduler": False})
    kw.setdefault("settings", FAST)
    q = rq("combo", **kw)
    made: dict[str, Any] = {}
    for feature in ORDERS[order]:
        if feature == "tenancy":
            made[feature] = TenantRegistry(q)
        elif feature == "groups":
            made[feature] = FIFOQueueManager(q)
        elif feature == "breakers":
            made[feature] = CircuitBreakerManager(q)
        elif feature == "workflows":
            made[feature] = JobChainManager(q)
        elif feature == "idempotency":
            made[feature] = IdempotencyManager(q)
        else:
            EncryptionManager(q, keys=[KeyConfig("k1", KEY)])
    return Stack(
        q,
        made["tenancy"],
        made["groups"],
        made["breakers"],
        made["workflows"],
        made["idempotency"],
    )


class Ledger:
    """The processor's view: every start and end, in order, and any run that went over a
    tenant's cap or ran beside another run of its group (groups here have one turn)."""

    def __init__(self, caps: dict[str, int] | None = None) -> None:
        self.caps = caps or {}
        self.events: list[tuple[str, str, str | None, str | None]] = []
        self.done: Counter[str] = Counter()
        self.over: list[str] = []
        self._tenant: Counter[str | None] = Counter()
        self._group: Counter[str | None] = Counter()

    def wrap(self, body: Callable[[Any], Awaitable[Any]]) -> Callable[[Any], Awaitable[Any]]:
        async def run(job: Any) -> Any:
            t = job.options.get("tenant_id")
            g = job.options.get("message_group_id")
            self._tenant[t] += 1
            self._group[g] += 1
            if t in self.caps and self._tenant[t] > self.caps[t]:
                self.over.append(f"tenant {t}: {self._tenant[t]} running (job {job.id})")
            if g is not None and self._group[g] > 1:
                self.over.append(f"group {g}: {self._group[g]} running (job {job.id})")
            self.events.append(("start", job.id, t, g))
            try:
                result = await body(job)
            except BaseException:
                self.events.append(("fail", job.id, t, g))
                raise
            finally:
                self._tenant[t] -= 1
                self._group[g] -= 1
            self.events.append(("end", job.id, t, g))
            self.done[job.id] += 1
            return result

        return run

    def started(self, job_id: str) -> bool:
        return any(e[0] == "start" and e[1] == job_id for e in self.events)

    def starts(self, group: str) -> list[str]:
        """The group's jobs in the order they first started."""
        seen: list[str] = []
        for ev, jid, _, g in self.events:
            if ev == "start" and g == group and jid not in seen:
                seen.append(jid)
        return seen

    def ends(self) -> list[str]:
        return [jid for ev, jid, _, _ in self.events if ev == "end"]


async def counts(
    s: Stack,
    tenants: tuple[str, ...] = (),
    groups: tuple[str, ...] = (),
    breakers: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Every feature's bookkeeping of the queue, straight from Redis."""
    q = s.q
    client = await q.client()
    out: dict[str, Any] = {}
    for t in tenants:
        n = await client.hget(tk.tenant(q.keys, t), "n")
        out[f"tenant {t}"] = {
            "n": int(n or 0),
            "running": await client.scard(tk.running(q.keys, t)),
            "tickets": await client.scard(tk.tickets(q.keys, t)),
            "lane": await client.zcard(tk.lane(q.keys, t)),
        }
    for g in groups:
        st = await s.groups.get_group_stats(g)
        out[f"group {g}"] = {
            "size": st.size,
            "turns": [t.job_id for t in st.turns],
            "waiting": st.waiting,
            "held": st.held,
            "active": st.active,
        }
    for b in breakers:
        out[f"breaker {b}"] = {"held": (await s.breakers.get_stats(b)).held_jobs}
    stats = await q.get_stats()
    out["queue"] = {
        "waiting": stats.waiting,
        "active": stats.active,
        "delayed": stats.delayed,
        "pending": stats.pending,
        "parked": await parked_count(q),
    }
    return out


def _zero(c: dict[str, Any]) -> bool:
    for what, v in c.items():
        if what.startswith("tenant") and v != {"n": 0, "running": 0, "tickets": 0, "lane": 0}:
            return False
        if what.startswith("group") and v != {
            "size": 0,
            "turns": [],
            "waiting": 0,
            "held": 0,
            "active": 0,
        }:
            return False
        if what.startswith("breaker") and v["held"] != 0:
            return False
        if what == "queue" and any(v.values()):
            return False
    return True


async def settled(
    s: Stack,
    tenants: tuple[str, ...] = (),
    groups: tuple[str, ...] = (),
    breakers: tuple[str, ...] = (),
    timeout: float = 10,
) -> None:
    """Wait until nothing is left anywhere: no job waiting, running, delayed or parked,
    and every count of the tenants, groups and breakers named back to zero."""
    last: list[Any] = [None]

    async def zero() -> bool:
        last[0] = await counts(s, tenants, groups, breakers)
        return _zero(last[0])

    await wait_until(zero, timeout, interval=0.02, message=lambda: f"counters at 0: {last[0]}")


async def all_done(led: Ledger, ids: list[str], timeout: float = 10) -> None:
    await wait_until(
        lambda: all(led.done[i] >= 1 for i in ids),
        timeout,
        message=lambda: f"jobs not completed: {[i for i in ids if not led.done[i]]}",
    )


async def _plain(job: Any) -> None:
    await asyncio.sleep(0.005)


# ================================================================ the order of fragments


def test_fragments_run_by_their_order_then_as_added() -> None:
    table = SlotTable()
    table.add("enqueue", "tenancy", "function() return nil end")
    table.add("enqueue", "groups", "function() return nil end", order=ORDER_LINE)
    table.add("enqueue", "flow", "function() return nil end")
    table.add("enqueue", "workflows", "function() return nil end", order=ORDER_READY)
    assert table.names("enqueue") == ["workflows", "groups", "tenancy", "flow"]
    # A fragment added again under its name keeps its order.
    table.add("enqueue", "groups", "function() return 'x' end", order=ORDER_LINE)
    assert table.names("enqueue") == ["workflows", "groups", "tenancy", "flow"]
    lua = table.compose("slot_enqueue")
    # The fragments after the one that parked the job are told it is pending.
    assert "seen = 'pending'" in lua and "enqueue_2, id, jk, opts, seen" in lua
    with pytest.raises(ConfigurationError, match="order must be an int"):
        table.add("admission", "x", "function() return true end", order="1")  # type: ignore[arg-type]


# ================================================================ tenants x groups


@pytest.mark.parametrize("order", ORDERS)
async def test_a_group_keeps_its_order_across_a_tenants_lane(rq: QueueFactory, order: str) -> None:
    s = stack(rq, order)
    await s.tenants.create_tenant({"tenant_id": "capped", "quota": {"max_concurrency": 1}})
    await s.tenants.create_tenant({"tenant_id": "free"})
    led = Ledger({"capped": 1})
    gate = asyncio.Event()

    async def body(job: Any) -> None:
        if job.data.get("hold"):
            await gate.wait()

    s.q.process("w", led.wrap(body))
    await s.q.start()
    busy = await s.q.add_job("w", {"hold": 1}, tenant_id="capped")
    await wait_until(lambda: led.started(busy), 5)
    # The capped tenant is at its cap: its jobs wait in its lane, the group's in its
    # line. The first holds the group's turn in the tenant's lane; it is then removed.
    who = ["capped", "capped", "free", "capped", "free", "capped"]
    ids = [
        await s.q.add_job("w", {"i": i}, tenant_id=t, message_group_id="g")
        for i, t in enumerate(who)
    ]
    before = await counts(s, ("capped",), ("g",))
    assert before["group g"]["turns"] == [ids[0]] and before["group g"]["size"] == len(ids)
    assert before["tenant capped"]["n"] == 5
    assert await s.q.remove_job(ids[0])
    gate.set()
    await all_done(led, [busy, *ids[1:]])
    # One at a time, in the order they were added: the job in the tenant's lane did not
    # lose its place to a later job of the other tenant.
    assert led.starts("g") == ids[1:]
    assert not led.over, led.over
    assert led.done[ids[0]] == 0 and all(led.done[i] == 1 for i in ids[1:])
    await settled(s, ("capped", "free"), ("g",))


# ================================================================ groups x workflows


@pytest.mark.parametrize("order", ORDERS)
async def test_a_dependent_holds_no_group_turn_while_its_parent_waits(
    rq: QueueFactory, order: str
) -> None:
    s = stack(rq, order)
    await s.tenants.create_tenant({"tenant_id": "t"})
    led = Ledger()
    s.q.process("w", led.wrap(_plain))
    opts: dict[str, Any] = {"tenant_id": "t"}
    # g1: the parent is delayed (it takes no turn while delayed); its dependent, added
    # after it, would take the free turn and wait for it, the parent then waiting in
    # the line for that turn.
    p1 = await s.q.add_job("w", {}, message_group_id="g1", delay=150, **opts)
    c1 = await s.q.add_job("w", {}, message_group_id="g1", depends_on=[p1], **opts)
    # g2: the dependent goes before its parent in the line (priority).
    h2 = await s.q.add_job("w", {}, message_group_id="g2", **opts)
    p2 = await s.q.add_job("w", {}, message_group_id="g2", **opts)
    c2 = await s.q.add_job("w", {}, message_group_id="g2", priority=5, depends_on=[p2], **opts)
    # g3: the same through a workflow, and a job of the group after it.
    g3: dict[str, Any] = {"message_group_id": "g3", **opts}
    steps = await s.chains.execute_workflow(
        "wf",
        [
            WorkflowStep("a", "w", {}, options={**g3, "delay": 150}),
            WorkflowStep("b", "w", {}, depends_on=["a"], options=g3),
            WorkflowStep("c", "w", {}, depends_on=["b"], options=g3),
        ],
    )
    other = await s.q.add_job("w", {}, **g3)
    waiting = await counts(s, groups=("g1", "g2", "g3"))
    # Dependents waiting for their parents hold no turn.
    assert waiting["group g1"]["turns"] == [] and waiting["group g3"]["turns"] == [other]
    assert waiting["group g2"]["turns"] == [h2]
    await s.q.start()
    ids = [p1, c1, h2, p2, c2, *steps.values(), other]
    await all_done(led, ids)
    assert all(led.done[i] == 1 for i in ids) and not led.over, led.over
    ends = led.ends()
    for parent, child in ((p1, c1), (p2, c2), (steps["a"], steps["b"]), (steps["b"], steps["c"])):
        assert ends.index(parent) < ends.index(child)
    await settled(s, ("t",), ("g1", "g2", "g3"))
    status = await s.chains.get_workflow_status("wf")
    assert status is not None and status.state == "completed"


# ================================================================ tenants x workflows


@pytest.mark.parametrize("order", ORDERS)
async def test_a_tenants_jobs_are_not_held_by_its_steps_waiting_for_parents(
    rq: QueueFactory, order: str
) -> None:
    s = stack(rq, order)
    for t in ("t", "u"):
        await s.tenants.create_tenant({"tenant_id": t})
    led = Ledger()
    gate = asyncio.Event()

    async def body(job: Any) -> None:
        if job.data.get("hold"):
            await gate.wait()

    s.q.process("w", led.wrap(body))
    # 40 steps of tenant t wait for a root of tenant u that runs long: they are not
    # ready, and must not take t's dispatch tickets (16) from its ready jobs.
    steps = [WorkflowStep("root", "w", {"hold": 1}, options={"tenant_id": "u"})]
    steps += [
        WorkflowStep(f"s{i}", "w", {}, depends_on=["root"], options={"tenant_id": "t"})
        for i in range(40)
    ]
    made = await s.chains.execute_workflow("wf", steps)
    parked = await counts(s, ("t",))
    assert parked["tenant t"] == {"n": 40, "running": 0, "tickets": 0, "lane": 0}
    plain = await s.q.add_jobs([("w", {}, {"tenant_id": "t"}) for _ in range(40)])
    await s.q.start()
    # All of them run while the root still runs (before: they waited for it).
    await all_done(led, plain, timeout=5)
    assert not any(led.done[made[f"s{i}"]] for i in range(40))
    gate.set()
    await all_done(led, list(made.values()))
    assert all(led.done[i] == 1 for i in [*plain, *made.values()])
    await settled(s, ("t", "u"))


# ================================================================ DLQ replays


async def test_a_replayed_step_revives_its_steps_under_their_tenant_cap_and_group(
    rq: QueueFactory,
) -> None:
    s = stack(rq, retry={"max_attempts": 1})
    await s.tenants.create_tenant({"tenant_id": "t", "quota": {"max_concurrency": 1}})
    led = Ledger({"t": 1})
    fixed: set[str] = set()

    async def body(job: Any) -> dict[str, Any]:
        if job.data.get("bad") and not fixed:
            raise NonRetryableError("the dependency refused it")
        await asyncio.sleep(0.05)
        return {"secret": job.data["secret"]}

    s.q.process("w", led.wrap(body))
    opts: dict[str, Any] = {"tenant_id": "t", "message_group_id": "g"}
    steps = [WorkflowStep("a", "w", {"bad": 1, "secret": "a"}, options=opts)]
    steps += [
        WorkflowStep(f"c{i}", "w", {"secret": f"c{i}"}, depends_on=["a"], options=opts)
        for i in range(4)
    ]
    made = await s.chains.execute_workflow("wf", steps)
    await s.q.start()

    async def failed() -> bool:
        st = await s.chains.get_workflow_status("wf")
        return st is not None and st.state == "failed" and st.unfinished == 0

    await wait_until(failed, 10)
    # The failed workflow's steps are cancelled: nothing of them is counted or parked.
    await settled(s, ("t",), ("g",))
    fixed.add("a")
    assert await s.q.replay_dlq() == 1
    kids = [made[f"c{i}"] for i in range(4)]
    await all_done(led, [made["a"], *kids])

    async def completed() -> bool:
        st = await s.chains.get_workflow_status("wf")
        return st is not None and st.state == "completed"

    await wait_until(completed, 10)
    # The revived steps ran one at a time (the tenant's cap, the group's single turn),
    # in their order, each once, with their (encrypted) data.
    assert not led.over, led.over
    assert led.starts("g") == [made["a"], *kids]
    assert all(led.done[k] == 1 for k in kids)
    for k in kids:
        info = await s.q.get_job_status(k)
        assert info is not None and info.result == {"secret": k.split(":")[1]}
    await settled(s, ("t",), ("g",))


async def test_replayed_grouped_tenant_jobs_run_once_in_order_with_their_keys(
    rq: QueueFactory,
) -> None:
    s = stack(rq, retry={"max_attempts": 2, "backoff_type": "fixed", "backoff_delay": 20})
    await s.tenants.create_tenant({"tenant_id": "t", "quota": {"max_concurrency": 2}})
    led = Ledger({"t": 2})
    replayed = asyncio.Event()
    tries: Counter[str] = Counter()

    async def body(job: Any) -> str:
        tries[job.id] += 1
        kind = job.data["kind"]
        if kind == "flaky" and tries[job.id] == 1:
            raise RuntimeError("once")
        if kind == "dead" and not replayed.is_set():
            raise NonRetryableError("not now")
        return f"r-{job.data['i']}"

    s.q.process("w", led.wrap(body))
    kinds = ["ok", "dead", "flaky", "ok", "dead", "ok"]
    ids = []
    for i, kind in enumerate(kinds):
        ids.append(
            await s.q.add_job(
                "w",
                {"i": i, "kind": kind},
                tenant_id="t",
                message_group_id="g",
                idempotency_key=f"k{i}",
                delivery_guarantee="exactly-once",
            )
        )
    # The same keys again: the same jobs, counted once.
    again = [
        await s.q.add_job(
            "w",
            {"i": i, "kind": "ok"},
            tenant_id="t",
            message_group_id="g",
            idempotency_key=f"k{i}",
            delivery_guarantee="exactly-once",
        )
        for i in range(len(kinds))
    ]
    assert again == ids
    first = await counts(s, ("t",), ("g",))
    assert first["tenant t"]["n"] == first["group g"]["size"] == len(kinds)
    await s.q.start()
    dead = [ids[1], ids[4]]
    await all_done(led, [i for i in ids if i not in dead])
    await wait_until(lambda: _in_dlq(s.q, dead), 10)
    # A dead-lettered job gave its turn back: the group went on in its order.
    assert led.starts("g") == ids
    await settled(s, ("t",), ("g",))
    replayed.set()
    assert await s.q.replay_dlq() == 2
    await all_done(led, dead)
    assert not led.over, led.over
    assert all(led.done[i] == 1 for i in ids)
    await settled(s, ("t",), ("g",))  # every outcome recorded
    for i, jid in enumerate(ids):
        res = await s.idem.get_result(f"k{i}")
        assert res is not None and res.job_id == jid and res.result == f"r-{i}"
    # A key whose job completed still runs nothing.
    assert (
        await s.q.add_job(
            "w",
            {"i": 0, "kind": "ok"},
            idempotency_key="k0",
            delivery_guarantee="exactly-once",
            tenant_id="t",
            message_group_id="g",
        )
        == ids[0]
    )
    await settled(s, ("t",), ("g",))


async def _in_dlq(q: JobQueue, ids: list[str]) -> bool:
    for jid in ids:
        info = await q.get_job_status(jid)
        if info is None or info.status != JobStatus.DLQ:
            return False
    return True


# ================================================================ idempotency x parking


async def test_repeated_keys_of_parked_jobs_count_once_and_keep_their_place(
    rq: QueueFactory,
) -> None:
    s = stack(rq)
    await s.tenants.create_tenant({"tenant_id": "t", "quota": {"max_concurrency": 1}})
    led = Ledger({"t": 1})
    seen: dict[str, Any] = {}
    gate = asyncio.Event()

    async def body(job: Any) -> None:
        seen[job.id] = job.data
        if job.data.get("hold"):
            await gate.wait()

    s.q.process("w", led.wrap(body))
    await s.q.start()
    opts: dict[str, Any] = {"tenant_id": "t", "message_group_id": "g"}
    first = await s.q.add_job("w", {"hold": 1}, **opts)
    await wait_until(lambda: led.started(first), 5)
    # In the group's line: a debounced key replaces its data, in its place; a key with
    # the default window is a duplicate; until_finished is one job until it ends.
    deb = await s.q.add_job(
        "w", {"v": 1}, idempotency_key="deb", idempotency_window="debounce", **opts
    )
    dup = await s.q.add_job("w", {"v": 1}, idempotency_key="dup", **opts)
    fin = await s.q.add_job(
        "w", {"v": 1}, idempotency_key="fin", idempotency_window="until_finished", **opts
    )
    for v in (2, 3):
        assert (
            await s.q.add_job(
                "w", {"v": v}, idempotency_key="deb", idempotency_window="debounce", **opts
            )
            == deb
        )
        assert await s.q.add_job("w", {"v": v}, idempotency_key="dup", **opts) == dup
        assert (
            await s.q.add_job(
                "w", {"v": v}, idempotency_key="fin", idempotency_window="until_finished", **opts
            )
            == fin
        )
    c = await counts(s, ("t",), ("g",))
    assert c["tenant t"]["n"] == c["group g"]["size"] == 4
    gate.set()
    await all_done(led, [first, deb, dup, fin])
    assert led.starts("g") == [first, deb, dup, fin]
    assert seen[deb] == {"v": 3} and seen[dup] == {"v": 1} and seen[fin] == {"v": 1}
    await settled(s, ("t",), ("g",))  # every outcome recorded
    # until_finished: the key is free once its job ended; the new job is counted once.
    again = await s.q.add_job(
        "w", {"v": 4}, idempotency_key="fin", idempotency_window="until_finished", **opts
    )
    assert again != fin
    await all_done(led, [again])
    assert all(led.done[i] == 1 for i in (first, deb, dup, fin, again)) and not led.over
    await settled(s, ("t",), ("g",))


# ================================================================ breakers x groups x tenants


async def test_an_open_breaker_holds_a_groups_turn_and_nothing_else(rq: QueueFactory) -> None:
    s = stack(rq)
    await s.tenants.create_tenant({"tenant_id": "t"})
    await s.breakers.create_breaker({"id": "api", "timeout": 60_000})
    await s.breakers.force_open("api", 60_000)
    led = Ledger()
    s.q.process("w", led.wrap(_plain))
    await s.q.start()
    held = await s.q.add_job("w", {}, tenant_id="t", message_group_id="g", circuit_breaker_id="api")
    await wait_until(lambda: _parked_behind(s.q, "cb:api"), 5)
    behind = [await s.q.add_job("w", {}, tenant_id="t", message_group_id="g") for _ in range(3)]
    # Other groups, the tenant's other jobs and jobs of no feature keep running.
    others = [await s.q.add_job("w", {}, tenant_id="t", message_group_id="h") for _ in range(3)]
    others += [await s.q.add_job("w", {}, tenant_id="t") for _ in range(3)]
    await all_done(led, others)
    c = await counts(s, ("t",), ("g",), ("api",))
    assert c["group g"]["turns"] == [held] and c["group g"]["waiting"] == 3
    assert c["breaker api"]["held"] == 1 and not led.started(held)
    # Removed while held: its turn goes to the next job of the line at once.
    assert await s.q.remove_job(held)
    await all_done(led, behind)
    assert led.starts("g") == behind
    # A new bound job is held again; the breaker closes and it runs, in its group's order.
    late = await s.q.add_job("w", {}, tenant_id="t", message_group_id="g", circuit_breaker_id="api")
    after = await s.q.add_job("w", {}, tenant_id="t", message_group_id="g")
    await wait_until(lambda: _parked_behind(s.q, "cb:api"), 5)
    await s.breakers.reset("api")
    await all_done(led, [late, after])
    assert led.starts("g") == [*behind, late, after]
    assert all(led.done[i] == 1 for i in [*behind, *others, late, after]) and not led.over
    await settled(s, ("t",), ("g", "h"), ("api",))


async def _parked_behind(q: JobQueue, blocker: str) -> bool:
    return (await parked_by_blocker(q)).get(blocker, 0) > 0


# ================================================================ remove and clear


async def test_clear_with_jobs_parked_by_every_feature_leaves_nothing(rq: QueueFactory) -> None:
    s = stack(rq)
    await s.tenants.create_tenant({"tenant_id": "t", "quota": {"max_concurrency": 1}})
    await s.breakers.create_breaker({"id": "api", "timeout": 60_000})
    led = Ledger({"t": 1})
    gate = asyncio.Event()

    async def body(job: Any) -> None:
        if job.data.get("hold"):
            await gate.wait()

    s.q.process("w", led.wrap(body))
    await s.q.start()
    running = await s.q.add_job("w", {"hold": 1}, tenant_id="t", message_group_id="g")
    await wait_until(lambda: led.started(running), 5)
    await s.breakers.force_open("api", 60_000)
    # In the tenant's lane, in the group's line, held by the breaker, waiting for a
    # parent, delayed: each in two features at once.
    await s.q.add_job("w", {}, tenant_id="t")
    await s.q.add_job("w", {}, tenant_id="t", message_group_id="g")
    held = await s.q.add_job("w", {}, message_group_id="h", circuit_breaker_id="api")
    await wait_until(lambda: _parked_behind(s.q, "cb:api"), 5)
    await s.q.add_job("w", {}, message_group_id="h", tenant_id="t")
    await s.q.add_job("w", {}, depends_on=[running], tenant_id="t", message_group_id="g2")
    await s.q.add_job("w", {}, delay=60_000, tenant_id="t", message_group_id="g")
    await s.chains.execute_workflow(
        "wf",
        [
            WorkflowStep("a", "w", {"hold": 1}, options={"message_group_id": "g3"}),
            WorkflowStep("b", "w", {}, depends_on=["a"], options={"tenant_id": "t"}),
        ],
    )
    before = await counts(s, ("t",), ("g", "h", "g2", "g3"), ("api",))
    assert before["queue"]["parked"] >= 5 and before["breaker api"]["held"] == 1, before
    assert not led.started(held)
    await s.q.clear(force=True)
    gate.set()
    await settled(s, ("t",), ("g", "h", "g2", "g3"), ("api",))
    assert await s.chains.list_workflows() == []
    # Nothing is stuck: the same tenant, groups and breaker take new jobs at once.
    await s.breakers.reset("api")
    new = [
        await s.q.add_job("w", {}, tenant_id="t", message_group_id=g, circuit_breaker_id="api")
        for g in ("g", "h", "g2", "g3")
    ]
    await all_done(led, new)
    assert not led.over, led.over
    await settled(s, ("t",), ("g", "h", "g2", "g3"), ("api",))


# ================================================================ everything at once


@pytest.mark.parametrize("seed", [1, 2])
async def test_mixed_jobs_of_every_feature_each_run_once(rq: QueueFactory, seed: int) -> None:
    rnd = random.Random(seed)
    s = stack(
        rq,
        "tenancy-first" if seed % 2 else "tenancy-last",
        retry={"max_attempts": 3, "backoff_type": "fixed", "backoff_delay": 30},
    )
    await s.tenants.create_tenant({"tenant_id": "capped", "quota": {"max_concurrency": 2}})
    await s.tenants.create_tenant({"tenant_id": "heavy", "weight": 2})
    await s.breakers.create_breaker(
        {"id": "api", "timeout": 300, "failure_threshold": {"percentage": 50, "min_requests": 3}}
    )
    led = Ledger({"capped": 2})
    replayed = asyncio.Event()
    tries: Counter[str] = Counter()

    async def body(job: Any) -> None:
        tries[job.id] += 1
        await asyncio.sleep(rnd.random() * 0.02)
        if job.data["kind"] == "flaky" and tries[job.id] == 1:
            raise RuntimeError("once")
        if job.data["kind"] == "dead" and not replayed.is_set():
            raise NonRetryableError("later")

    s.q.process("w", led.wrap(body))
    ids: list[str] = []
    dead: list[str] = []
    for i in range(60):
        o: dict[str, Any] = {}
        if rnd.random() < 0.7:
            o["tenant_id"] = rnd.choice(["capped", "heavy"])
        if rnd.random() < 0.6:
            o["message_group_id"] = rnd.choice(["g1", "g2", "g3"])
        if rnd.random() < 0.4:
            o["circuit_breaker_id"] = "api"
        if rnd.random() < 0.3:
            o["priority"] = rnd.randint(0, 5)
        if rnd.random() < 0.3:
            o["idempotency_key"] = f"key-{i}"
        # No capped tenant's group job is delayed or dead-lettered here: that case has its
        # own test below (a delayed group job of a capped tenant).
        capped_in_group = o.get("tenant_id") == "capped" and "message_group_id" in o
        if not capped_in_group and rnd.random() < 0.15:
            o["delay"] = rnd.randint(1, 150)
        kind = rnd.choices(["ok", "flaky", "dead"], [0.75, 0.15, 0.1])[0]
        if kind == "dead" and capped_in_group:
            kind = "ok"
        jid = await s.q.add_job("w", {"i": i, "kind": kind}, **o)
        ids.append(jid)
        if kind == "dead":
            dead.append(jid)
    await s.breakers.force_open("api", 300)
    await s.q.start()
    live = [i for i in ids if i not in dead]
    await all_done(led, live, timeout=15)
    await wait_until(lambda: _in_dlq(s.q, dead), 10)
    replayed.set()
    assert await s.q.replay_dlq() == len(dead)
    await all_done(led, ids, timeout=15)
    assert all(led.done[i] == 1 for i in ids), [i for i in ids if led.done[i] != 1]
    assert not led.over, led.over
    await settled(s, ("capped", "heavy"), ("g1", "g2", "g3"), ("api",))


# ================================================ tenancy: tickets of jobs parked by others


@pytest.mark.parametrize("order", ORDERS)
async def test_a_breaker_held_job_does_not_stall_its_tenants_other_jobs(
    rq: QueueFactory, order: str
) -> None:
    s = stack(rq, order)
    await s.tenants.create_tenant({"tenant_id": "t", "quota": {"max_concurrency": 1}})
    await s.breakers.create_breaker({"id": "api", "timeout": 60_000})
    await s.breakers.force_open("api", 60_000)
    led = Ledger({"t": 1})
    s.q.process("w", led.wrap(_plain))
    await s.q.start()
    held = await s.q.add_job("w", {}, tenant_id="t", circuit_breaker_id="api")
    await wait_until(lambda: _parked_behind(s.q, "cb:api"), 5)
    # Parked aside, it gave back the tenant's dispatch ticket it held (its one slot).
    assert (await counts(s, ("t",)))["tenant t"]["tickets"] == 0
    await asyncio.sleep(0.5)  # the worker's first tenancy sync (and heal) is over
    # docs/breakers.md: jobs of other names keep running while it is open.
    plain = [await s.q.add_job("w", {}, tenant_id="t") for _ in range(3)]
    await all_done(led, plain, timeout=5)
    # Closed, the held job runs too, under the tenant's cap; nothing is left held.
    await s.breakers.reset("api")
    await all_done(led, [held], timeout=5)
    assert not led.over, led.over
    await settled(s, ("t",), (), ("api",))


@pytest.mark.parametrize("order", ORDERS)
async def test_a_delayed_group_job_of_a_capped_tenant_does_not_deadlock(
    rq: QueueFactory, order: str
) -> None:
    s = stack(rq, order)
    await s.tenants.create_tenant({"tenant_id": "t", "quota": {"max_concurrency": 1}})
    led = Ledger({"t": 1})
    gate = asyncio.Event()

    async def body(job: Any) -> None:
        if job.data.get("hold"):
            await gate.wait()

    s.q.process("w", led.wrap(body))
    await s.q.start()
    busy = await s.q.add_job("w", {"hold": 1}, tenant_id="t")
    await wait_until(lambda: led.started(busy), 5)
    # Due while the tenant is at its cap: it goes to the tenant's lane without a turn.
    late = await s.q.add_job("w", {}, tenant_id="t", message_group_id="g", delay=50)
    await wait_until(lambda: _parked_behind(s.q, "t:t"), 5)
    # Takes the free turn, then waits in the tenant's lane too (behind `late`).
    nxt = await s.q.add_job("w", {}, tenant_id="t", message_group_id="g")
    gate.set()
    await all_done(led, [busy, late, nxt], timeout=5)
    assert not led.over, led.over
    await settled(s, ("t",), ("g",))


# ================================================================ a worker SIGKILLed

WORKER = textwrap.dedent(
    """
    import argparse, asyncio, os, time
    import orjson
    import redis.asyncio as aioredis
    from kitium_queue import CircuitBreakerManager, IdempotencyManager, JobQueue
    from kitium_queue.features.encryption import EncryptionManager, KeyConfig
    from kitium_queue.features.groups import FIFOQueueManager
    from kitium_queue.features.tenancy import TenantRegistry
    from kitium_queue.features.workflows import JobChainManager

    async def main(a):
        q = JobQueue(a.queue, redis=a.url, prefix=a.prefix,
                     worker={"concurrency": 4, "scheduler": False, "shutdown_timeout": 2000},
                     settings={"lock_duration": 1000, "max_stalled_interval": 100,
                               "max_stalled_count": 5})
        TenantRegistry(q)
        FIFOQueueManager(q)
        CircuitBreakerManager(q)
        JobChainManager(q)
        IdempotencyManager(q)
        EncryptionManager(q, keys=[KeyConfig("k1", a.key)])
        rec = aioredis.Redis.from_url(a.url)
        runs = a.prefix + ":runs"

        async def note(event, job):
            o = job.options
            await rec.rpush(runs, orjson.dumps({
                "e": event, "id": job.id, "pid": os.getpid(), "t": time.time(),
                "tenant": o.get("tenant_id"), "group": o.get("message_group_id")}))

        async def run(job):
            await note("start", job)
            await asyncio.sleep(job.data["ms"] / 1000)
            await note("end", job)
            return job.data["ms"]

        q.process("*", run)
        print("ready", flush=True)
        await q.run_worker()

    p = argparse.ArgumentParser()
    for flag in ("--url", "--prefix", "--queue", "--key"):
        p.add_argument(flag, required=True)
    asyncio.run(main(p.parse_args()))
    """
)


async def test_a_worker_sigkilled_mid_run_with_every_feature_on(
    redis_url: str, prefix: str, tmp_path: Path, rq: QueueFactory
) -> None:
    script = tmp_path / "combo_worker.py"
    script.write_text(WORKER)
    procs = WorkerProcs(redis_url, prefix, "combo", tmp_path, script=script)
    s = stack(rq)
    try:
        await s.tenants.create_tenant({"tenant_id": "capped", "quota": {"max_concurrency": 2}})
        await s.tenants.create_tenant({"tenant_id": "free"})
        await s.breakers.create_breaker({"id": "api", "timeout": 60_000})
        ids = []
        for i in range(24):
            o: dict[str, Any] = {"tenant_id": ("capped", "free")[i % 2]}
            o["message_group_id"] = f"g{i % 3}"
            if i % 4 == 0:
                o["circuit_breaker_id"] = "api"
            if i % 5 == 0:
                o["idempotency_key"] = f"k{i}"
            ids.append(await s.q.add_job("w", {"ms": 400 if i < 6 else 30}, **o))
        made = await s.chains.execute_workflow(
            "wf",
            [
                WorkflowStep("a", "w", {"ms": 30}, options={"tenant_id": "capped"}),
                WorkflowStep(
                    "b",
                    "w",
                    {"ms": 30},
                    depends_on=["a"],
                    options={"tenant_id": "free", "message_group_id": "g0"},
                ),
            ],
        )
        ids += list(made.values())
        await procs.start(1, "--key", KEY)
        client = await s.q.client()

        async def runs() -> list[dict[str, Any]]:
            return [orjson.loads(r) for r in await client.lrange(f"{prefix}:runs", 0, -1)]

        await wait_until(lambda: _started(runs, 3), 15)
        killed_at = time.time()
        procs.kill(0)
        await procs.start(1, "--key", KEY)

        async def all_ended() -> bool:
            for jid in ids:
                info = await s.q.get_job_status(jid)
                if info is None or info.status != JobStatus.COMPLETED:
                    return False
            return True

        await wait_until(all_ended, 30)
        log = await runs()
        dead_pid = log[0]["pid"]
        cut = {r["id"] for r in log if r["pid"] == dead_pid and r["e"] == "start"}
        cut -= {r["id"] for r in log if r["pid"] == dead_pid and r["e"] == "end"}
        assert cut, "the kill cut no run short"
        # Each job completed (its outcome recorded) once; a run the kill cut short ran
        # again (at-least-once), after its lease expired.
        ends = Counter(r["id"] for r in log if r["e"] == "end" and r["pid"] != dead_pid)
        assert all(ends[i] == 1 for i in ids if not _ended_by(log, i, dead_pid)), ends
        # No tenant over its cap and one run at a time in each group, counting a run the
        # kill cut short as running until the kill.
        _check_overlaps(log, dead_pid, killed_at)
        # Each group's jobs started in the order they were added.
        for g in ("g0", "g1", "g2"):
            order = [i for i in ids if _group_of(log, i) == g and i not in made.values()]
            started = []
            for r in log:
                if r["e"] == "start" and r["id"] in order and r["id"] not in started:
                    started.append(r["id"])
            assert started == order, (g, started, order)
        await settled(s, ("capped", "free"), ("g0", "g1", "g2"), ("api",), timeout=15)
    finally:
        await procs.close()


async def _started(runs: Callable[[], Awaitable[list[dict[str, Any]]]], n: int) -> bool:
    return sum(1 for r in await runs() if r["e"] == "start") >= n


def _ended_by(log: list[dict[str, Any]], jid: str, pid: int) -> bool:
    return any(r["e"] == "end" and r["id"] == jid and r["pid"] == pid for r in log)


def _group_of(log: list[dict[str, Any]], jid: str) -> str | None:
    for r in log:
        if r["id"] == jid:
            return r["group"]  # type: ignore[no-any-return]
    return None


def _check_overlaps(log: list[dict[str, Any]], dead_pid: int, killed_at: float) -> None:
    spans: list[tuple[float, float, str | None, str | None]] = []
    open_: dict[tuple[str, int], dict[str, Any]] = {}
    for r in log:
        if r["e"] == "start":
            open_[(r["id"], r["pid"])] = r
        else:
            st = open_.pop((r["id"], r["pid"]))
            spans.append((st["t"], r["t"], r["tenant"], r["group"]))
    for (_, pid), st in open_.items():
        assert pid == dead_pid, f"a run of a live worker never ended: {st}"
        spans.append((st["t"], killed_at, st["tenant"], st["group"]))
    for t0, _t1, tenant, group in spans:
        during = [s for s in spans if s[0] <= t0 < s[1]]
        if tenant == "capped":
            assert sum(1 for s in during if s[2] == "capped") <= 2, (t0, tenant, during)
        if group is not None:
            assert sum(1 for s in during if s[3] == group) <= 1, (t0, group, during)
