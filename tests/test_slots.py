"""Lua slots (``kitium_queue.slots``): features' fragments compiled into the scripts.

* An unfilled slot adds nothing to any script (read from the compiled source).
* ``release`` runs exactly once for every way a job leaves active, and never otherwise.
* ``enqueue`` runs for every new job (single, bulk, scheduled) and may park it.
* ``admission`` gets its declared fields from claim's own read and may park a candidate.
* A fragment that does not compile is refused; one that fails at run time cannot leave
  a transition half done (the job still moves; the error is recorded).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from helpers import QueueFactory
from kitium_queue import ConfigurationError, JobQueue, JobStatus
from kitium_queue import slots as slots_module
from kitium_queue.parking import parked_count, parked_in, slot_errors
from kitium_queue.scripts import SCRIPT_NAMES, ScriptRegistry
from kitium_queue.slots import RELEASE_OUTCOMES

T0 = 1_700_000_000_000

RECORD_RELEASE = """function(id, jk, outcome)
  redis.call('RPUSH', PREFIX .. 'released', id .. '=' .. outcome)
end"""


def _dec(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [_dec(v) for v in value]
    return value


class Lua:
    """The queue's scripts with an explicit clock."""

    def __init__(self, queue: JobQueue, client: Any) -> None:
        self.queue = queue
        self.client = client
        self.keys = queue.keys

    async def __call__(self, script: str, now: int, *args: Any) -> Any:
        argv = [self.keys.base, str(now), "10000", *args]
        return _dec(await self.queue.scripts.call(self.client, script, self.keys.all, argv))

    async def add(self, now: int, *jobs: dict[str, Any]) -> list[str]:
        args: list[Any] = [86_400_000]
        for j in jobs:
            args += [
                j.get("id", ""),
                j.get("name", "a"),
                "{}",
                j.get("opts", ""),
                j.get("priority", 0),
                j.get("delay", 0),
                "0",
                "",
            ]
        return list(await self("enqueue", now, *args))

    async def claim(
        self, now: int, n: int = 10, lease: int = 1000, max_stalled: int = 2, dlq: bool = True
    ) -> tuple[list[str], str]:
        r = await self("claim", now, n, lease, 0, 0, max_stalled, "1" if dlq else "0", "w", 1000)
        return [j[0] for j in r[5:]], str(r[2])

    async def finish(self, now: int, *outcomes: tuple[Any, ...], dlq: bool = True) -> list[str]:
        args: list[Any] = ["1" if dlq else "0"]
        for o in outcomes:
            args += list((*o, *(["", "", 0, -1, -1, ""][len(o) - 3 :])))
        return list(await self("finish", now, *args))

    async def ids(self, name: str) -> list[str]:
        return [_dec(m) for m in await self.client.zrange(getattr(self.keys, name), 0, -1)]

    async def released(self) -> list[str]:
        return [_dec(x) for x in await self.client.lrange(self.keys.extra("released"), 0, -1)]


@pytest.fixture
async def lua(backend_url: str, prefix: str) -> AsyncIterator[Lua]:
    factory = QueueFactory(backend_url, prefix)
    queue = factory("slots")
    try:
        yield Lua(queue, await queue.client())
    finally:
        await factory.aclose()


# ================================================================ compiled source


def _code(source: str) -> str:
    """A script's source without its comments (headers name the slots they document)."""
    source = re.sub(r"--\[\[.*?\]\]", "", source, flags=re.S)
    return re.sub(r"--[^\n]*", "", source)


#: The scripts on a worker's or producer's hot path.
HOT = ("enqueue", "claim", "extend", "finish", "recover", "promote", "schedule_fire")


def test_an_unfilled_slot_adds_nothing_to_any_script() -> None:
    reg = ScriptRegistry()
    plain = {n: reg.get(n).source for n in SCRIPT_NAMES}
    for name, src in plain.items():
        assert not re.search(r"^\s*--@", src, re.M), f"{name}: a directive was left over"
        assert "--[[@" not in src, f"{name}: a mark was left over"
        code = _code(src)
        for word in (
            "release_slot",
            "enqueue_slot",
            "admit(",
            "slot_failed",
            "pcall(release",
            "K_SLOT_ERRORS",
        ):
            assert word not in code, f"{name} compiles {word!r} with no slot filled"
        if name in HOT:
            # No parking machinery either: no timers served, no park state tested.
            for word in (
                r"\bfire_timers\b",
                r"\bnext_timer\b",
                r"\bpark\(",
                "'pending'",
                r"ADMIT_PARK then",
            ):
                assert not re.search(word, code), f"{name} compiles {word!r} with no slot filled"
    # Filling a slot changes only the scripts that run it; emptying it again restores
    # every script byte for byte (same SHA: no cost left behind).
    shas = {n: reg.get(n).sha for n in SCRIPT_NAMES}
    reg.add_slot("release", "rec", RECORD_RELEASE)
    assert "release_slot(id, jk, RELEASED_AS[kind], payload, ctx, f)" in reg.get("finish").source
    assert "release_slot" in reg.get("recover").source
    assert "release_slot" in reg.get("clear").source
    assert "admit(" not in _code(reg.get("claim").source)
    assert "enqueue_slot" not in reg.get("enqueue").source
    assert reg.get("update").sha == shas["update"] and reg.get("extend").sha == shas["extend"]
    reg.remove_slot("release", "rec")
    assert {n: reg.get(n).sha for n in SCRIPT_NAMES} == shas


def test_each_filled_slot_is_compiled_where_it_runs() -> None:
    reg = ScriptRegistry()
    reg.add_slot("enqueue", "e", "function(id, jk, opts, state) return nil end")
    reg.add_slot(
        "admission", "a", "function(id, jk, opts, x, y) return true end", fields=("x", "y")
    )
    assert "enqueue_slot(id, jk, opts, state, pri, q)" in reg.get("enqueue").source
    assert "enqueue_slot(" in reg.get("schedule_fire").source
    claim = reg.get("claim").source
    assert "'pg', 'a', 'fw', 'x', 'y')" in claim and "admit(id, jk, f[3], f)" in claim
    assert "pcall(admission_0, id, jk, opts, f[9], f[10])" in claim
    assert "fire_timers()" in claim
    assert reg.slot_names("admission") == ["a"]


def test_includes_are_expanded_once_per_script() -> None:
    reg = ScriptRegistry()
    reg.add_fragment(
        "test_many",
        "--[[\n  test script\n]]\n--@include common\n"
        "--@include lib_parking\n--@include lib_base\n--@include common\n"
        "return 1\n",
    )
    src = reg.get("test_many").source
    for definition in (
        "local K_WAIT",
        "local function park(",
        "local function add_job(",
        "local function emit(",
    ):
        assert src.count(definition) == 1, definition
    # Each script pulls in only the fragments it uses.
    assert "local function add_job(" not in reg.get("finish").source
    assert "local function requeue(" not in reg.get("claim").source
    assert "local function requeue(" in reg.get("retry").source


def test_slot_arguments_are_checked() -> None:
    reg = ScriptRegistry()
    with pytest.raises(ConfigurationError, match="unknown Lua slot 'finish'"):
        reg.add_slot("finish", "x", "function() end")
    with pytest.raises(ConfigurationError, match="not a Lua expression"):
        reg.add_slot("release", "broken", "function(id) if id then end")
    with pytest.raises(ConfigurationError, match="not a Lua expression"):
        reg.add_slot("release", "two", "function() end local x = 1")
    with pytest.raises(ConfigurationError, match="only admission and release fragments"):
        reg.add_slot("enqueue", "f", "function() end", fields=("x",))
    with pytest.raises(ConfigurationError, match="invalid job-hash field name"):
        reg.add_slot("release", "f", "function() end", fields=("x-y",))
    with pytest.raises(ConfigurationError, match="invalid job-hash field name"):
        reg.add_slot("admission", "f", "function() return true end", fields=("a b",))
    with pytest.raises(ConfigurationError, match="not a str"):
        reg.add_slot("admission", "f", "function() return true end", fields="ab")
    assert reg.slot_names("release") == []


@pytest.mark.redis_only
async def test_without_a_local_compiler_the_server_refuses_a_broken_fragment_at_load(
    make_queue: QueueFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    q = make_queue()
    monkeypatch.setattr(slots_module, "_check_compiles", lambda *a: None)
    client = await q.client()
    q.scripts.add_slot("release", "broken", "function(id) if id then end")
    q.scripts.forget(client)
    with pytest.raises(ConfigurationError, match=r"does not compile .*release: broken"):
        await q.scripts.load(client)


# ================================================================ release


async def test_release_runs_once_for_every_way_a_job_leaves_active(lua: Lua) -> None:
    lua.queue.scripts.add_slot("release", "rec", RECORD_RELEASE)
    names = ["c1", "c0", "r0", "r1", "f1", "d1", "h1", "m1", "lost"]
    await lua.add(T0, *({"id": i} for i in names))
    got, token = await lua.claim(T0, 20)
    assert sorted(got) == sorted(names)
    await lua.client.delete(lua.keys.job("m1"))  # its record vanished while it ran
    replies = await lua.finish(
        T0 + 1,
        ("c1", token, "C", "1"),
        ("c0", token, "C", "1", "", 0, 0),  # removed on completion
        ("r0", token, "R", "boom"),  # retry now
        ("r1", token, "R", "boom", "", 500),  # retry later
        ("f1", token, "F", "fatal"),
        ("d1", token, "D", "later", "", 100),
        ("h1", token, "H", ""),
        ("m1", token, "C", "1"),
        ("lost", "999", "C", "1"),  # not our lease: nothing happens
        ("c1", token, "C", "1"),  # a second outcome for c1: lease lost
    )
    assert replies == ["ok"] * 7 + ["missing", "lease-lost", "lease-lost"]
    await lua.finish(T0 + 2, ("m1", token, "C", "1"))  # missing again: not in active
    first = await lua.released()
    assert Counter(first) == Counter(
        [
            "c1=completed",
            "c0=completed",
            "r0=retrying",
            "r1=retrying",
            "f1=failed",
            "d1=deferred",
            "h1=released",
            "m1=removed",
        ]
    )

    # Failure without the DLQ, recovery (stalled, stalled too often, cancelled, record
    # missing) and clear(force): each job once.
    await lua.client.delete(lua.keys.extra("released"))
    await lua("drain", T0, "1", 1000)
    assert await lua.ids("active") == ["lost"]
    await lua.finish(T0 + 3, ("lost", token, "F", "x"), dlq=False)
    await lua.add(T0 + 10, *({"id": i} for i in ("s1", "s2", "x1", "g1", "k1")))
    got, token = await lua.claim(T0 + 10, 10, lease=100)
    assert sorted(got) == ["g1", "k1", "s1", "s2", "x1"]
    await lua.client.hset(lua.keys.job("s2"), "s", "2")  # stalled twice already
    await lua.client.hset(lua.keys.job("x1"), "cx", "1")  # cancel_job() flagged it
    await lua.client.delete(lua.keys.job("g1"))
    await lua("extend", T0 + 20, 10_000, "k1", token)  # k1 stays leased
    back, dead = await lua("recover", T0 + 200, 2, "1", 1000)
    assert back == ["s1"] and sorted(dead) == ["g1", "s2", "x1"]
    await lua("clear", T0 + 300, "1", 1000)
    second = await lua.released()
    assert Counter(second) == Counter(
        [
            # drained before they ran again: retried (r0 waiting, r1 delayed), deferred,
            # handed back
            "r0=removed",
            "r1=removed",
            "d1=removed",
            "h1=removed",
            "lost=failed",
            "s1=stalled",
            "s2=failed",
            "x1=failed",
            "g1=failed",
            "k1=removed",
        ]
    )
    # Every documented outcome was seen, and no other.
    seen = {r.split("=")[1] for r in first + second}
    assert seen == set(RELEASE_OUTCOMES)


async def test_release_runs_as_removed_for_jobs_deleted_before_they_finished(
    lua: Lua,
) -> None:
    lua.queue.scripts.add_slot("release", "rec", RECORD_RELEASE)
    await lua.add(T0, {"id": "w"}, {"id": "v"}, {"id": "late", "delay": 1000}, {"id": "done"})
    await lua("remove", T0, "w")
    await lua("cancel", T0, "v", "late")
    assert Counter(await lua.released()) == Counter(["w=removed", "v=removed", "late=removed"])
    await lua.client.delete(lua.keys.extra("released"))
    # A finished job passed the slot when it left active: removing it later does not.
    _, token = await lua.claim(T0)
    await lua.finish(T0, ("done", token, "C", "1"))
    assert await lua.released() == ["done=completed"]
    await lua.client.delete(lua.keys.extra("released"))
    assert await lua("remove", T0, "done") == ["removed"]
    assert await lua.released() == []

    await lua.add(T0, {"id": "a"})
    _, token = await lua.claim(T0)
    assert await lua("cancel", T0, "a") == ["flagged"]  # only a flag: a is still active
    assert await lua.released() == []
    await lua.finish(T0, ("a", token, "F", "cancelled"))
    assert await lua.released() == ["a=failed"]


async def test_drain_passes_waiting_delayed_and_parked_jobs_through_release(
    lua: Lua,
) -> None:
    lua.queue.scripts.add_slot("release", "rec", RECORD_RELEASE)
    lua.queue.scripts.add_slot(
        "enqueue",
        "gate",
        """function(id, jk, opts, state)
      if redis.call('HGET', jk, 'n') == 'gated' then return 'gate' end
    end""",
    )
    await lua.add(
        T0,
        {"id": "w1"},
        {"id": "l1", "delay": 1000},
        {"id": "p1", "name": "gated"},
        {"id": "p2", "name": "gated"},
    )
    assert await lua("drain", T0, "1", 1000) == 4
    assert Counter(await lua.released()) == Counter(
        ["w1=removed", "l1=removed", "p1=removed", "p2=removed"]
    )


async def test_a_fragment_removing_a_job_passes_it_through_release(lua: Lua) -> None:
    # A feature removing jobs from inside its own fragment (a workflow cancelling the
    # dependents of a failed step) goes through remove_unstarted: every release fragment
    # sees the removal, nested in the release of the job that caused it.
    lua.queue.scripts.add_slot("release", "rec", RECORD_RELEASE)
    lua.queue.scripts.add_slot(
        "enqueue",
        "gate",
        """function(id, jk, opts, state)
      if redis.call('HGET', jk, 'n') == 'gated' then return 'gate' end
    end""",
    )
    lua.queue.scripts.add_slot(
        "release",
        "cascade",
        """function(id, jk, outcome)
      if outcome ~= 'failed' then return end
      for _, c in ipairs({'w1', 'l1', 'p1'}) do
        local ck = job_key(c)
        if redis.call('EXISTS', ck) == 1 then
          remove_unstarted(c, ck)
          emit('job-removed', c)
        end
      end
    end""",
    )
    await lua.add(
        T0, {"id": "boss"}, {"id": "w1"}, {"id": "l1", "delay": 1000}, {"id": "p1", "name": "gated"}
    )
    got, token = await lua.claim(T0, n=1)
    assert got == ["boss"]
    await lua.finish(T0, ("boss", token, "F", "fatal"))
    assert Counter(await lua.released()) == Counter(
        ["boss=failed", "w1=removed", "l1=removed", "p1=removed"]
    )
    for jid in ("w1", "l1", "p1"):
        assert not await lua.client.exists(lua.keys.job(jid))
    assert await lua.ids("wait") == [] and await lua.ids("delayed") == []
    assert await parked_count(lua.queue) == 0
    assert await slot_errors(lua.queue) == {}


async def test_event_slot_gets_the_events_features_raise(lua: Lua) -> None:
    raise_it = """function(id, jk, outcome)
      if outcome == 'completed' then feature_event('thing-done', id, 'k', 'v', 'n', '2') end
    end"""
    lua.queue.scripts.add_slot("release", "raiser", raise_it)
    await lua.add(T0, {"id": "a"}, {"id": "b"})
    _, token = await lua.claim(T0, n=1)
    await lua.finish(T0, ("a", token, "C", "1"))
    # No feature forwards events: the event stream has it all the same.
    lua.queue.scripts.add_slot(
        "event",
        "rec",
        """function(name, subject, fields)
      redis.call('RPUSH', PREFIX .. 'raised', name .. '|' .. subject .. '|' ..
        table.concat(fields, ','))
    end""",
    )
    _, token = await lua.claim(T0, n=1)
    await lua.finish(T0, ("b", token, "C", "1"))
    raised = [_dec(x) for x in await lua.client.lrange(lua.keys.extra("raised"), 0, -1)]
    assert raised == ["thing-done|b|k,v,n,2"]
    stream = [_dec(f) for _, f in await lua.client.xrange(lua.keys.events)]
    done = [f for f in stream if f[b"e"] == b"thing-done"]
    assert [(f[b"id"], f[b"k"], f[b"n"]) for f in done] == [(b"a", b"v", b"2"), (b"b", b"v", b"2")]


# ================================================================ enqueue


async def test_enqueue_slot_sees_every_new_job_and_may_park_it(lua: Lua) -> None:
    # A gate: jobs named 'gated' wait behind it; a job named 'opener' that completes
    # opens it for one of them (the pattern of a group or a dependency).
    lua.queue.scripts.add_slot(
        "enqueue",
        "gate",
        """function(id, jk, opts, state)
      redis.call('RPUSH', PREFIX .. 'seen', id .. '=' .. state .. '=' .. opts)
      if redis.call('HGET', jk, 'n') == 'gated' then return 'gate' end
    end""",
    )
    lua.queue.scripts.add_slot(
        "release",
        "opener",
        """function(id, jk, outcome)
      if outcome == 'completed' and redis.call('HGET', jk, 'n') == 'opener' then
        unpark('gate', 1)
      end
    end""",
    )
    await lua.add(
        T0,
        {"id": "g1", "name": "gated", "opts": '{"x":1}'},
        {"id": "g2", "name": "gated", "priority": 3},
        {"id": "o1", "name": "opener"},
        {"id": "gd", "name": "gated", "delay": 50},
    )
    seen = [_dec(x) for x in await lua.client.lrange(lua.keys.extra("seen"), 0, -1)]
    assert seen == ['g1=waiting={"x":1}', "g2=waiting=", "o1=waiting=", "gd=delayed="]
    assert await lua.ids("wait") == ["o1"]
    assert await parked_in(lua.queue, "gate") == ["g2", "g1"]  # by priority
    assert await lua.ids("delayed") == ["gd"]  # not parked: delayed
    events = [
        {_dec(k): _dec(v) for k, v in f.items()}
        for _, f in await lua.client.xrange(lua.keys.events)
    ]
    assert [e["st"] for e in events if e["e"] == "job-added"] == [
        "pending",
        "pending",
        "waiting",
        "delayed",
    ]
    got, token = await lua.claim(T0 + 1)
    assert got == ["o1"]
    await lua.finish(T0 + 2, ("o1", token, "C", "1"))
    assert (await lua.claim(T0 + 3))[0] == ["g2"]
    assert await parked_in(lua.queue, "gate") == ["g1"]

    # A scheduled tick passes the same slot (add_job in schedule_fire.lua).
    sk = lua.keys.schedule("s")
    await lua.client.hset(
        sk,
        mapping={
            "due": "100",
            "v": "1",
            "n": "gated",
            "d": "{}",
            "o": "",
            "p": "0",
            "l": "0",
            "cnt": "0",
            "lim": "0",
        },
    )
    reply = await lua("schedule_fire", T0, "s", "100", "1", "200", "0", "100", "100")
    assert reply[0] == "ok"
    assert await parked_in(lua.queue, "gate") == ["g1", "sched:s:100"]
    assert (await lua.queue.get_job_status("sched:s:100")).status is JobStatus.PENDING  # type: ignore[union-attr]
    assert await parked_count(lua.queue) == 2


# ================================================================ admission


async def test_admission_gets_its_declared_fields_and_may_park(lua: Lua) -> None:
    lua.queue.scripts.add_slot(
        "admission",
        "lights",
        """function(id, jk, opts, color)
      if color == 'red' then admit_park('red-light'); return false end
      if color == 'amber' then return false end
      return true
    end""",
        fields=("color",),
    )
    await lua.add(T0, {"id": "r"}, {"id": "a"}, {"id": "g"}, {"id": "n"})
    for jid, color in (("r", "red"), ("a", "amber"), ("g", "green")):
        await lua.client.hset(lua.keys.job(jid), "color", color)
    got, _ = await lua.claim(T0)
    assert got == ["g", "n"]
    assert await lua.ids("wait") == ["a"]  # rejected: stays in wait
    assert await parked_in(lua.queue, "red-light") == ["r"]  # parked: out of wait
    assert (await lua.queue.get_job_status("r")).status is JobStatus.PENDING  # type: ignore[union-attr]


async def test_release_gets_its_declared_fields_from_finish_and_nil_elsewhere(
    lua: Lua,
) -> None:
    """finish reads the declared fields in its own HMGET (a value, or false when the
    hash has none, so a fragment can skip a job for free); the other ways out of active
    read no record for the slot and pass nil."""
    lua.queue.scripts.add_slot(
        "release",
        "tags",
        """function(id, jk, outcome, payload, context, tag, color)
      local function shown(v)
        if v == nil then return 'nil' elseif v == false then return 'false' end
        return v
      end
      redis.call('RPUSH', PREFIX .. 'released',
        id .. '=' .. outcome .. ':' .. shown(tag) .. ':' .. shown(color))
    end""",
        fields=("tag", "color"),
    )
    lua.queue.scripts.add_slot("release", "rec", RECORD_RELEASE, fields=("color",))
    finish = lua.queue.scripts.get("finish").source
    assert "HMGET', jk, 'lt', 'st', 'e', 'tag', 'color')" in finish  # one read, no more
    await lua.add(T0, {"id": "a"}, {"id": "b"}, {"id": "s"})
    await lua.client.hset(lua.keys.job("a"), mapping={"tag": "t1", "color": "red"})
    await lua.client.hset(lua.keys.job("s"), "tag", "t3")
    got, token = await lua.claim(T0, 3, lease=100)
    assert sorted(got) == ["a", "b", "s"]
    await lua.finish(T0 + 1, ("a", token, "C", "1"), ("b", token, "F", "x"))
    back, _ = await lua("recover", T0 + 500, 5, "1", 1000)  # s: its lease expired
    assert back == ["s"]
    assert await lua.released() == [
        "a=completed:t1:red",
        "a=completed",
        "b=failed:false:false",
        "b=failed",
        "s=stalled:nil:nil",  # recovery reads nothing for the slot
        "s=stalled",
    ]


# ================================================================ failing fragments


async def test_a_failing_release_fragment_never_leaves_a_half_done_transition(lua: Lua) -> None:
    lua.queue.scripts.add_slot("release", "rec", RECORD_RELEASE)
    lua.queue.scripts.add_slot(
        "release",
        "boom",
        """function(id, jk, outcome)
      redis.call('INCR', PREFIX .. 'boom-writes')
      if id ~= 'fine' then error('boom on ' .. id) end
    end""",
    )
    await lua.add(T0, {"id": "a"}, {"id": "b"}, {"id": "fine"})
    got, token = await lua.claim(T0)
    assert len(got) == 3
    replies = await lua.finish(
        T0 + 1, ("a", token, "C", "1"), ("b", token, "R", "x"), ("fine", token, "C", "1")
    )
    assert replies == ["ok", "ok", "ok"]
    # Every transition was made in full: the fragment's failure did not abort the call.
    assert sorted(await lua.ids("completed")) == ["a", "fine"]
    assert await lua.ids("wait") == ["b"] and await lua.ids("active") == []
    assert (await lua.queue.get_job_status("b")).status is JobStatus.WAITING  # type: ignore[union-attr]
    # The fragments before it ran; its own write before the error stays (the rule:
    # check first, write last), and the error is recorded for operators.
    assert len(await lua.released()) == 3
    assert await lua.client.get(lua.keys.extra("boom-writes")) == b"3"
    errors = await slot_errors(lua.queue)
    assert list(errors) == ["release:boom"] and "boom on b" in errors["release:boom"]


async def test_a_failing_admission_check_skips_only_its_candidate(lua: Lua) -> None:
    lua.queue.scripts.add_slot(
        "admission",
        "picky",
        """function(id, jk)
      if id == 'bad' then admit_park('never'); error('cannot decide on ' .. id) end
      return true, function(id2) redis.call('RPUSH', PREFIX .. 'committed', id2) end
    end""",
    )
    await lua.add(T0, {"id": "x"}, {"id": "bad"}, {"id": "y"})
    got, _ = await lua.claim(T0)
    assert got == ["x", "y"]
    # The candidate stays in wait as it was; the others were claimed in full.
    assert await lua.ids("wait") == ["bad"] and sorted(await lua.ids("active")) == ["x", "y"]
    assert (await lua.queue.get_job_status("bad")).status is JobStatus.WAITING  # type: ignore[union-attr]
    assert await parked_count(lua.queue) == 0
    committed = await lua.client.lrange(lua.keys.extra("committed"), 0, -1)
    assert _dec(committed) == ["x", "y"]
    assert "cannot decide on bad" in (await slot_errors(lua.queue))["admission:picky"]


async def test_a_failing_enqueue_fragment_still_adds_the_job(lua: Lua) -> None:
    lua.queue.scripts.add_slot("enqueue", "boom", "function(id) error('no') end")
    assert (await lua.add(T0, {"id": "j"}))[1] == "new"
    assert await lua.ids("wait") == ["j"]
    assert "no" in (await slot_errors(lua.queue))["enqueue:boom"]
