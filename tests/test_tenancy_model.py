"""A Hypothesis state machine over the transitions of a queue with multi-tenancy.

Every rule calls one of the queue's scripts (with the tenancy fragments compiled in)
directly, with an injected clock, as the library does: adds of jobs of three tenants
(waiting or delayed, two priorities), claims, every kind of outcome, lease expiries
(stalls, then dead-lettering), removal, cancellation, drain, quota changes (after
which the tenant's lane holds jobs only while its new quota leaves no room), and the
removal of a tenant, its copy's resync, its expiry and its creation again (the registry's
copies, ``tn_put.lua``). After every step the invariants compare the tenants'
bookkeeping with the jobs themselves:

* each tenant's count of unfinished jobs is the number of its jobs not finished; an add
  is refused exactly when the count is at the tenant's ``max_queue_size``;
* its running set is its jobs in ``active``;
* its tickets are held by its jobs in ``wait``, at most ``weight x quantum``;
* its lane holds exactly its jobs parked behind ``t:<tenant>``;
* every job is in exactly one place (a state set, or its blocker's set), the one its
  record names;
* a tenant's copy expires (a TTL) only when it is a removed tenant's with nothing left
  in the queue, and no tenant key is ever written without a copy (``v``).
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from kitium_queue import JobQueue
from kitium_queue.features.tenancy import TenantRegistry, lua
from kitium_queue.features.tenancy import keys as tk
from kitium_queue.scripts import SCRIPT_NAMES

# Property tests: their wall time scales with the machine (several pytest processes share
# two cores); a wedged example still fails on its own settle timeouts, well inside this.
pytestmark = [pytest.mark.redis_only, pytest.mark.timeout(600)]

T0 = 1_700_000_000_000
QUANTUM = 2
TENANTS = {"a": 1.0, "b": 2.0, "c": 1.0}  # weights
SETS = {
    "waiting": "wait",
    "active": "active",
    "delayed": "delayed",
    "completed": "completed",
    "failed": "failed",
    "dlq": "dlq",
}
UNFINISHED = ("waiting", "active", "delayed", "pending")
TTL_MS = 3_600_000  # a retired tombstone's TTL (the rule `expire` makes it run out)


class TenantMachine(RuleBasedStateMachine):
    url = ""
    fair = True

    def __init__(self) -> None:
        super().__init__()
        self.client = redis.Redis.from_url(self.url)
        self.prefix = f"kqtm{uuid.uuid4().hex[:10]}"
        queue = JobQueue("tm", prefix=self.prefix)
        TenantRegistry.enable(queue, quantum=QUANTUM, fair_dispatch=self.fair)
        self.keys = queue.keys
        self.sha = {n: self.client.script_load(queue.scripts.get(n).source) for n in SCRIPT_NAMES}
        self.now = T0
        self.version = 0
        self.quota: dict[str, tuple[int, int]] = {}
        self.ids: list[str] = []
        self.tokens: dict[str, bytes] = {}
        self.removed: dict[str, int] = {}  # removed tenant -> its tombstone's version
        self.put = self.client.script_load(lua.put_script().source)
        # The queue's declarations, as its processes write them at their sync: a copy
        # that leaves a tenant more room refills its lane by them (tn_put.lua).
        self.client.hset(
            tk.declarations(self.keys),
            mapping={"quantum": QUANTUM, "fair": int(self.fair), "quotas": 1},
        )
        for t in TENANTS:
            self._set_quota(t, 4, 2)

    def teardown(self) -> None:
        keys = list(self.client.scan_iter(match=f"{self.prefix}:*", count=1000))
        if keys:
            self.client.delete(*keys)
        self.client.close()

    # ------------------------------------------------------------------ helpers
    def run(self, script: str, *args: Any) -> Any:
        k = self.keys.all
        return self.client.evalsha(
            self.sha[script], len(k), *k, self.keys.base, str(self.now), 100_000, *args
        )

    def _copy(self, t: str, version: int, on: str, mqs: int, mc: int, w: float) -> Any:
        # The registry's copy of the tenant (tn_put.lua); no read time: no age check. A
        # copy leaving more room refills the tenant's lane (checked by the invariants).
        keys = [
            *self.keys.all,
            tk.tenant(self.keys, t),
            tk.index(self.keys),
            *tk.usage(self.keys, t)[1:],
            tk.declarations(self.keys),
        ]
        head = (self.keys.base, str(self.now), 100_000)
        args = (t, version, on, mqs, mc, 0, 0, repr(w), "", "", TTL_MS)
        return self.client.evalsha(self.put, len(keys), *keys, *head, *args)

    def _set_quota(self, t: str, mqs: int, mc: int) -> None:
        self.version += 1
        assert self._copy(t, self.version, "1", mqs, mc, TENANTS[t])[0] == 1
        self.quota[t] = (mqs, mc)
        if self.removed.pop(t, None) is not None:
            # Created again: it starts clean (its unfinished jobs stay counted).
            key = tk.tenant(self.keys, t)
            assert self.client.pttl(key) == -1
            assert self.client.hmget(key, "done", "fail", "rw", "rn") == [None] * 4

    def _left(self, t: str) -> bool:
        """Whether anything of tenant ``t`` is left in the queue."""
        c = self.client
        return bool(
            int(c.hget(tk.tenant(self.keys, t), "n") or 0)
            or c.scard(tk.running(self.keys, t))
            or c.scard(tk.tickets(self.keys, t))
            or c.zcard(tk.lane(self.keys, t))
        )

    def _jobs(self) -> dict[str, dict[bytes, bytes]]:
        pipe = self.client.pipeline(transaction=False)
        for jid in self.ids:
            pipe.hgetall(self.keys.job(jid))
        return {jid: h for jid, h in zip(self.ids, pipe.execute(), strict=True) if h}

    def _pick(self, index: int, state: str) -> str | None:
        found = [j for j, h in self._jobs().items() if h.get(b"st") == state.encode()]
        return found[index % len(found)] if found else None

    # ------------------------------------------------------------------ rules
    @rule(
        t=st.sampled_from(sorted(TENANTS)),
        delay=st.sampled_from([0, 0, 500]),
        pri=st.sampled_from([0, 5]),
        n=st.integers(1, 3),
    )
    def add(self, t: str, delay: int, pri: int, n: int) -> None:
        fields: list[Any] = []
        for _ in range(n):
            fields += ["", "x", "{}", orjson.dumps({"tenant_id": t}), pri, delay, "0", ""]
        before = int(self.client.hget(tk.tenant(self.keys, t), "n") or 0)
        reply = self.run("enqueue", 86_400_000, *fields)
        mqs = self.quota[t][0]
        for k in range(0, len(reply), 2):
            refused = reply[k + 1] == b"refused"
            if t in self.removed:  # refused as long as it is removed, copy or none
                assert refused and b"does not exist" in reply[k], reply[k]
                continue
            assert refused == (before >= mqs), (before, mqs, reply[k])
            if refused:
                assert reply[k].startswith(b"KQ_QUOTA_EXCEEDED\t" + t.encode())
            else:
                self.ids.append(reply[k].decode())
                before += 1

    @rule(n=st.integers(1, 4))
    def claim(self, n: int) -> None:
        reply = self.run("claim", n, 1000, 0, 0, 1, "1", "w", 1000)
        token = reply[2]
        for job in reply[5:]:
            self.tokens[job[0].decode()] = str(token).encode()

    @rule(
        index=st.integers(0, 50),
        kind=st.sampled_from(["C", "R", "F", "D", "H"]),
        delay=st.sampled_from([0, 300]),
    )
    def finish(self, index: int, kind: str, delay: int) -> None:
        jid = self._pick(index, "active")
        if jid is None:
            return
        out = self.run(
            "finish", "1", jid, self.tokens.get(jid, b"0"), kind, "r", "", delay, -1, -1, ""
        )
        # cancelled: an R, D or H outcome of a job cancel_job() flagged (a final failure).
        assert out[0] in (b"ok", b"lease-lost", b"cancelled")

    @rule(ms=st.sampled_from([300, 1200]))
    def advance(self, ms: int) -> None:
        self.now += ms

    @rule(index=st.integers(0, 50), state=st.sampled_from(["waiting", "pending", "delayed"]))
    def remove(self, index: int, state: str) -> None:
        jid = self._pick(index, state)
        if jid is not None:
            assert self.run("remove", jid) == [b"removed"]

    @rule(index=st.integers(0, 50), state=st.sampled_from(["waiting", "pending", "active"]))
    def cancel(self, index: int, state: str) -> None:
        jid = self._pick(index, state)
        if jid is not None:
            self.run("cancel", jid)

    @precondition(lambda self: len(self.ids) > 8)
    @rule()
    def drain(self) -> None:
        while self.run("drain", "1", 5):
            pass

    @rule(t=st.sampled_from(sorted(TENANTS)), mqs=st.integers(2, 6), mc=st.integers(0, 3))
    def change_quota(self, t: str, mqs: int, mc: int) -> None:
        self._set_quota(t, mqs, mc)  # a removed tenant: created again
        # The copy handed the lane the room its quota leaves: a job stays there only
        # while the tenant is at its cap or (fair dispatch) has all its tickets out.
        # Handed room is held by the jobs it went to: under fair dispatch a ticket each;
        # with quotas only (no tickets) their places in wait, which a claim takes first.
        c = self.client
        if c.zcard(tk.lane(self.keys, t)):
            running = c.scard(tk.running(self.keys, t))
            if self.fair:
                held = c.scard(tk.tickets(self.keys, t))
            else:
                waiting = {m.decode() for m in c.zrange(self.keys.wait, 0, -1)}
                held = sum(
                    1
                    for j, h in self._jobs().items()
                    if j in waiting and h.get(b"tn") == t.encode()
                )
            room = max(1, round(TENANTS[t] * QUANTUM)) if self.fair else 10**9
            if mc:
                room = min(room, mc - running)
            assert room - held <= 0, (t, mc, running, held)

    @rule(t=st.sampled_from(sorted(TENANTS)))
    def remove_tenant(self, t: str) -> None:
        if t in self.removed:
            return
        self.version += 1
        self.removed[t] = self.version
        left = self._left(t)
        status, retired = self._copy(t, self.version, "0", 0, 0, 1.0)[:2]
        assert status == 1 and retired == (0 if left else 1), (t, left, retired)

    @rule(t=st.sampled_from(sorted(TENANTS)))
    def resync_removed(self, t: str) -> None:
        # A worker's sync copies the tombstone again: retired once nothing is left.
        if t not in self.removed:
            return
        left = self._left(t)
        ttl = self.client.pttl(tk.tenant(self.keys, t))
        reply = self._copy(t, self.removed[t], "0", 0, 0, 1.0)
        assert reply[0] == (1 if ttl == -2 else 0), (reply, ttl)
        assert reply[1] == (0 if left and ttl < 0 else 1), (t, left, ttl, reply)

    @rule(t=st.sampled_from(sorted(TENANTS)))
    def expire(self, t: str) -> None:
        # Its TTL runs out.
        key = tk.tenant(self.keys, t)
        if self.client.pttl(key) >= 0:
            self.client.delete(key)

    # ------------------------------------------------------------------ invariants
    @invariant()
    def bookkeeping_matches_the_jobs(self) -> None:
        jobs = self._jobs()
        c = self.client
        for t, w in TENANTS.items():
            mine = {j: h for j, h in jobs.items() if h.get(b"tn") == t.encode()}
            unfinished = {j for j, h in mine.items() if h.get(b"st", b"").decode() in UNFINISHED}
            counted = {j for j, h in mine.items() if h.get(b"tq") == b"1"}
            n = int(c.hget(tk.tenant(self.keys, t), "n") or 0)
            assert counted == unfinished and n == len(unfinished), (t, n, unfinished, counted)
            active = {j for j, h in mine.items() if h.get(b"st") == b"active"}
            running = {m.decode() for m in c.smembers(tk.running(self.keys, t))}
            assert running == active, (t, running, active)
            tickets = {m.decode() for m in c.smembers(tk.tickets(self.keys, t))}
            waiting = {j for j, h in mine.items() if h.get(b"st", b"waiting") == b"waiting"}
            # Only tenancy parks jobs here: every ticket is held by a job in wait.
            assert tickets <= waiting, (t, tickets - waiting)
            assert len(tickets) <= (max(1, round(w * QUANTUM)) if self.fair else 0), tickets
            lane = {m.decode() for m in c.zrange(tk.lane(self.keys, t), 0, -1)}
            parked = {
                j
                for j, h in mine.items()
                if h.get(b"st") == b"pending" and h.get(b"pk") == f"t:{t}".encode()
            }
            assert lane == parked, (t, lane, parked)

    @invariant()
    def only_a_removed_tenant_with_nothing_left_expires(self) -> None:
        for t in TENANTS:
            key = tk.tenant(self.keys, t)
            ttl = self.client.pttl(key)
            if ttl >= 0:
                assert t in self.removed and not self._left(t), (t, ttl)
            if ttl != -2:
                assert self.client.hget(key, "v") is not None, t  # never a key without copy
            elif t not in self.removed:
                raise AssertionError(f"tenant {t} lost its copy")

    @invariant()
    def every_job_in_one_place(self) -> None:
        c = self.client
        members = {
            s: {m.decode() for m in c.zrange(getattr(self.keys, s), 0, -1)} for s in SETS.values()
        }
        for jid, h in self._jobs().items():
            st_ = h.get(b"st", b"waiting").decode()
            where = {s for s, ids in members.items() if jid in ids}
            if st_ == "pending":
                assert where == set(), (jid, where)
                assert c.zscore(self.keys.parked(h[b"pk"].decode()), jid) is not None, jid
            else:
                assert where == {SETS[st_]}, (jid, st_, where)


@pytest.mark.parametrize("fair", [True, False], ids=["fair-dispatch", "quotas-only"])
def test_tenancy_state_machine(redis_url: str, fair: bool) -> None:
    TenantMachine.url = redis_url
    TenantMachine.fair = fair
    run_state_machine_as_test(
        TenantMachine,
        settings=settings(
            max_examples=60,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
