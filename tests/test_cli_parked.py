"""``kitium-queue parked list|show`` and ``kitium-queue limits`` against a real Redis:
their JSON is what the parking and flow-state functions return, a damaged or missing
set is named with its repair, names and ids from Redis come out escaped in plain and
rich output (bytes that are not UTF-8 included), a partitioned APP is read queue by
queue, an empty queue is no error, and the reads pass the queue's read guards.

Jobs are parked with the engine's scripts on an explicit clock (``test_parking.Engine``):
concurrency keys capped at 1, key 'k' held by w0 with p1..p3 behind it, a hostile key
held by h0 with a hostile id behind it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from helpers import app_module
from kitium_queue import JobQueue
from kitium_queue.cli import main
from kitium_queue.errors import PermissionDeniedError
from kitium_queue.features.flowcontrol import rate_key
from kitium_queue.features.flowstate import MAX_FLOW_KEYS, flow_state
from kitium_queue.features.partitioned import PartitionedQueue
from kitium_queue.parking import blocker_sets, park_stats, parked_in
from test_parking import T0, Engine

pytestmark = pytest.mark.redis_only

# A key and an id written by another client: a terminal escape, a bidi override, a
# newline and a tab (the engine's scripts take them; the producer would refuse them).
EVIL_KEY = "evil\x1b[31m\u202e\n\tkey"
EVIL_ID = "id\x1b]0;pwn\x07\u202e\n2"
BAD_BYTES = b"cc:raw\xff\xfe"  # a blocker that is not UTF-8, written by hand

DECLARE = (
    "    q.set_concurrency_limit('*', 1)\n"
    "    q.set_rate_limit('r-*', max=5, duration=60000)\n"
    "    q.set_rate_limit('r-exact', max=2, duration=1000)\n"
    "    q.set_global_concurrency(8)\n"
)


def _declare(q: JobQueue) -> None:
    q.set_concurrency_limit("*", 1)
    q.set_rate_limit("r-*", max=5, duration=60000)
    q.set_rate_limit("r-exact", max=2, duration=1000)
    q.set_global_concurrency(8)


@pytest.fixture
def app(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[str]:
    """Module with ``queue`` (flow control declared), ``bare`` (another queue, nothing
    declared), ``guarded`` (the same queue behind a read guard refusing every read, which
    records what it was asked in ``asked``) and ``parts`` (a factory of a partitioned
    queue of two, flow control declared on each member)."""
    source = (
        "from kitium_queue import JobQueue\n"
        "from kitium_queue.errors import PermissionDeniedError\n"
        "from kitium_queue.features.partitioned import PartitionedQueue\n"
        "def declare(q):\n"
        f"{DECLARE}"
        f"queue = JobQueue('cp', redis={redis_url!r}, prefix={prefix!r})\n"
        "declare(queue)\n"
        f"bare = JobQueue('cp-bare', redis={redis_url!r}, prefix={prefix!r})\n"
        "asked = []\n"
        "def refuse(call):\n"
        "    asked.append(call.query)\n"
        "    raise PermissionDeniedError(f'reading {call.query} is not allowed here')\n"
        f"guarded = JobQueue('cp', redis={redis_url!r}, prefix={prefix!r})\n"
        "declare(guarded)\n"
        "guarded.queries.add_guard(refuse)\n"
        # A factory: each command builds its own (a partitioned queue's shared client
        # belongs to the event loop of the command that used it).
        "def parts():\n"
        f"    p = PartitionedQueue('cpp', partitions=2, redis={redis_url!r}, prefix={prefix!r})\n"
        "    for member in p.queues:\n"
        "        declare(member)\n"
        "    return p\n"
        "one_partition = parts()\n"
    )
    with app_module(tmp_path, source, "kq_cli_parked") as module:
        yield module


def _queue(redis_url: str, prefix: str, name: str = "cp") -> JobQueue:
    q = JobQueue(name, redis=redis_url, prefix=prefix)
    _declare(q)
    return q


async def _fill(q: JobQueue) -> Engine:
    """w0 and h0 running; p1..p3 parked behind 'cc:k', EVIL_ID behind the evil key."""
    e = Engine(q)
    await e.add(T0, "w0", concurrency_key="k")
    await e.add(T0, "h0", concurrency_key=EVIL_KEY)
    _, _, got, _ = await e.claim(T0)
    assert sorted(got) == ["h0", "w0"]
    for i in (1, 2, 3):
        await e.add(T0, f"p{i}", concurrency_key="k")
    await e.add(T0, EVIL_ID, concurrency_key=EVIL_KEY)
    return e


def _run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def _ok(*args: str) -> Result:
    result = _run(*args)
    assert result.exit_code == 0, (result.output, result.stderr)
    assert "Traceback" not in result.output + result.stderr
    return result


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _read(redis_url: str, prefix: str, fn: Any, name: str = "cp") -> Any:
    async def go() -> Any:
        q = _queue(redis_url, prefix, name)
        try:
            return await fn(q)
        finally:
            await q.close()

    return asyncio.run(go())


def _setup(redis_url: str, prefix: str, fn: Any = None) -> None:
    async def go(q: JobQueue) -> None:
        await _fill(q)
        if fn is not None:
            await fn(q)

    _read(redis_url, prefix, go)


# ---------------------------------------------------------------------- the JSON
def test_the_json_is_what_the_functions_return(app: str, redis_url: str, prefix: str) -> None:
    async def window(q: JobQueue) -> None:
        client = await q.client()
        sec, usec = await client.time()
        now = int(sec) * 1000 + int(usec) // 1000
        # An open window of r-exact, full (2 of 2 started), and one of r-7 under its cap.
        await client.hset(rate_key(q.keys, "r-exact"), mapping={"w": now, "n": 2})
        await client.hset(rate_key(q.keys, "r-7"), mapping={"w": now, "n": 1})
        await client.zadd(q.keys.parked_index, {"rl:r-7": 1})
        await client.zadd(q.keys.parked("rl:r-7"), {"x7": 1})
        await client.hincrby(q.keys.meta, "parked", 1)

    _setup(redis_url, prefix, window)

    listed = json.loads(_ok("parked", "list", f"{app}:queue", "--json").output)

    async def expected_list(q: JobQueue) -> Any:
        stats = await park_stats(q, 50)
        sets = await blocker_sets(q, stats.top)
        return {"queue": "cp", "stats": asdict(stats), "blockers": [b.to_dict() for b in sets]}

    assert listed == _jsonable(_read(redis_url, prefix, expected_list))
    assert [(b["name"], b["count"], b["state"]) for b in listed["blockers"]] == [
        ("cc:k", 3, "ok"),  # the largest first (ties: as the index lists them)
        ("rl:r-7", 1, "ok"),
        (f"cc:{EVIL_KEY}", 1, "ok"),
    ]
    assert listed["stats"]["total"] == 5 and listed["stats"]["blockers"] == 3

    # Only the two largest; the ids of one, paged, in the order they return to wait.
    top = json.loads(_ok("parked", "list", f"{app}:queue", "--limit", "2", "--json").output)
    assert [b["name"] for b in top["blockers"]] == ["cc:k", "rl:r-7"]
    page = json.loads(
        _ok("parked", "show", f"{app}:queue", "cc:k", "--limit", "2", "--json").output
    )
    assert page["ids"] == _read(redis_url, prefix, lambda q: parked_in(q, "cc:k", 2, 0))
    assert page["ids"] == ["p1", "p2"] and page["more"] is True
    assert (page["name"], page["count"], page["state"], page["repair"]) == ("cc:k", 3, "ok", None)
    rest = json.loads(
        _ok("parked", "show", f"{app}:queue", "cc:k", "-n", "2", "--offset", "2", "--json").output
    )
    assert rest["ids"] == _read(redis_url, prefix, lambda q: parked_in(q, "cc:k", 2, 2))
    assert rest["ids"] == ["p3"] and rest["more"] is False

    shown = json.loads(_ok("limits", f"{app}:queue", "--json").output)

    async def expected_flow(q: JobQueue) -> Any:
        top = [name for name, _ in (await park_stats(q, MAX_FLOW_KEYS)).top]
        return {"queue": "cp", **await flow_state(q, top, MAX_FLOW_KEYS)}

    want = _jsonable(_read(redis_url, prefix, expected_flow))
    assert shown.pop("now_ms") <= want.pop("now_ms")  # the one value that moves
    assert shown == want
    assert shown["declared"] is True and shown["global_cap"] == 8 and shown["active"] == 2
    assert shown["rate_limits"] == [
        {"pattern": "r-*", "max": 5, "duration": 60000},
        {"pattern": "r-exact", "max": 2, "duration": 1000},
    ]
    assert shown["concurrency_limits"] == [{"pattern": "*", "max": 1}]
    counters = {(c["kind"], c["key"]): c for c in shown["counters"]}
    # The running jobs' keys, at their cap of 1; the rate keys of a declaration and of
    # a blocker, each with its window.
    assert counters[("concurrency", "k")]["running"] == 1
    assert counters[("concurrency", "k")]["full"] is True
    assert counters[("concurrency", EVIL_KEY)]["limit"] == 1
    exact = counters[("rate", "r-exact")]
    assert (exact["max"], exact["started"], exact["full"]) == (2, 2, True)
    seven = counters[("rate", "r-7")]
    assert (seven["max"], seven["duration"], seven["started"], seven["full"]) == (
        5,
        60000,
        1,
        False,
    )


# ---------------------------------------------------------------------- damage
def test_a_damaged_or_missing_set_is_named_with_its_repair(
    app: str, redis_url: str, prefix: str
) -> None:
    async def damage(q: JobQueue) -> None:
        client = await q.client()
        await client.delete(q.keys.parked("cc:k"))
        await client.set(q.keys.parked("cc:k"), "by hand")  # another type
        await client.delete(q.keys.parked(f"cc:{EVIL_KEY}"))  # gone: h1 stranded

    _setup(redis_url, prefix, damage)
    key = _read(redis_url, prefix, lambda q: asyncio.sleep(0, q.keys.parked("cc:k")))
    app_q = f"{app}:queue"
    plain = _ok("--plain", "parked", "list", app_q).output.splitlines()
    (row,) = [line for line in plain if line.startswith("blocker\tcp\tcc:k\t")]
    fields = row.split("\t")
    assert fields[3:5] == ["3", "damaged"]
    assert key in fields[5] and "holds a string" in fields[5]
    assert "kitium-queue parked rebuild APP" in fields[5]
    (row,) = [line for line in plain if line.startswith("blocker\tcp\tcc:evil")]
    assert row.split("\t")[3:5] == ["1", "missing"] and "stranded" in row
    listed = json.loads(_ok("parked", "list", app_q, "--json").output)
    states = {b["name"]: (b["state"], b["found"]) for b in listed["blockers"]}
    assert states == {"cc:k": ("damaged", "string"), f"cc:{EVIL_KEY}": ("missing", "none")}

    # show: its state on stdout, then exit 1 with one line naming the key and the repair.
    shown = _run("parked", "show", app_q, "cc:k", "--json")
    assert shown.exit_code == 1, shown.output
    doc = json.loads(shown.stdout)
    assert doc["state"] == "damaged" and doc["ids"] == [] and key in doc["repair"]
    (err,) = shown.stderr.strip().splitlines()
    assert err.startswith("Error: ") and key in err and "parked rebuild" in err
    shown = _run("--plain", "parked", "show", app_q, "cc:k")
    assert shown.exit_code == 1 and "Traceback" not in shown.output
    assert shown.stdout.startswith("blocker\tcp\tcc:k\tparked=3\tset=damaged\t")
    # A missing set is no error: its jobs are listed as stranded, with the repair.
    missing = _ok("--plain", "parked", "show", app_q, f"cc:{EVIL_KEY}").stdout
    assert "\tset=missing\t" in missing and "--blocker BLOCKER" in missing

    # The rebuild repairs both, and the commands say so.
    _ok("parked", "rebuild", app_q, "--keep-parked", "--json")
    listed = json.loads(_ok("parked", "list", app_q, "--json").output)
    assert {b["state"] for b in listed["blockers"]} == {"ok"}


def test_a_score_that_is_no_number_is_named_as_damaged(
    app: str, redis_url: str, prefix: str
) -> None:
    async def inf(q: JobQueue) -> None:
        await (await q.client()).zadd(q.keys.parked_index, {"cc:k": float("inf")})

    _setup(redis_url, prefix, inf)
    result = _run("parked", "list", f"{app}:queue", "--json")
    assert result.exit_code == 0 and "Traceback" not in result.output + result.stderr
    shown = json.loads(result.output)
    doc = shown if isinstance(shown, dict) else shown[0]
    errors = doc["stats"]["slot_errors"]
    damaged = errors[next(k for k in errors if k.endswith("}:parked"))]
    assert "no whole number" in damaged and "rebuild_parked" in damaged
    # limits still shows flow control (the keys of the running jobs, from their owners).
    shown = json.loads(_ok("limits", f"{app}:queue", "--json").output)
    assert ("concurrency", "k") in {(c["kind"], c["key"]) for c in shown["counters"]}


# ---------------------------------------------------------------------- hostile names
def _escaped(text: str) -> None:
    """No raw control or bidi character reached the output; each record is one line."""
    for ch in ("\x1b", "\u202e", "\x07", "\r"):
        assert ch not in text, repr(ch)


def test_hostile_names_and_ids_come_out_escaped(app: str, redis_url: str, prefix: str) -> None:
    async def raw(q: JobQueue) -> None:
        client = await q.client()
        await client.zadd(q.keys.parked_index, {BAD_BYTES: 1})
        await client.zadd(q.keys.parked("").encode() + BAD_BYTES, {b"j\xff\x80": 1})

    _setup(redis_url, prefix, raw)
    app_q = f"{app}:queue"
    listed = _ok("--plain", "parked", "list", app_q).stdout
    _escaped(listed)
    rows = [line.split("\t") for line in listed.splitlines() if line.startswith("blocker\t")]
    assert len(rows) == 3 and all(len(r) >= 5 for r in rows)
    names = [r[2] for r in rows]
    assert "cc:evil\\x1b[31m\\u202e\\n\\tkey" in names
    assert "cc:raw\\\\xff\\\\xfe" in names  # not UTF-8: shown escaped, never a crash
    # JSON keeps the text whole (escaped by JSON itself).
    doc = json.loads(_ok("parked", "list", app_q, "--json").output)
    assert f"cc:{EVIL_KEY}" in {b["name"] for b in doc["blockers"]}

    shown = _ok("--plain", "parked", "show", app_q, f"cc:{EVIL_KEY}").stdout
    _escaped(shown)
    lines = shown.splitlines()
    assert lines[0].split("\t")[2] == "cc:evil\\x1b[31m\\u202e\\n\\tkey"
    assert lines[1:] == ["id\tcp\tid\\x1b]0;pwn\\x07\\u202e\\n2"]
    ids = json.loads(_ok("parked", "show", app_q, f"cc:{EVIL_KEY}", "--json").output)["ids"]
    assert ids == [EVIL_ID]

    # A BLOCKER argument that is not UTF-8 (the shell's bytes): a usage error, one line.
    bad = _run("parked", "show", app_q, "cc:\udcff")
    assert bad.exit_code == 2 and "not valid UTF-8" in bad.stderr, bad.stderr

    limits = _ok("--plain", "limits", app_q).stdout
    _escaped(limits)
    (row,) = [
        line for line in limits.splitlines() if line.startswith("counter\tcp\tconcurrency\tevil")
    ]
    assert row.split("\t")[3] == "evil\\x1b[31m\\u202e\\n\\tkey"
    # Rich tables escape the same way.
    for args in (["parked", "list", app_q], ["parked", "show", app_q, f"cc:{EVIL_KEY}"]):
        out = _ok("--rich", *args).stdout
        _escaped(out)
        assert "\\x1b" in out
    _escaped(_ok("--rich", "limits", app_q).stdout)


# ---------------------------------------------------------------------- partitions
def test_a_partitioned_app_is_read_queue_by_queue(app: str, redis_url: str, prefix: str) -> None:
    async def go() -> list[str]:
        parts = PartitionedQueue("cpp", partitions=2, redis=redis_url, prefix=prefix)
        try:
            for member in parts.queues:
                _declare(member)
            e = Engine(parts.queues[1])
            await e.add(T0, "w0", concurrency_key="k")
            await e.claim(T0)
            await e.add(T0, "p1", concurrency_key="k")
            await e.add(T0, "p2", concurrency_key="k")
            return [m.name for m in parts.queues]
        finally:
            await parts.close()

    names = asyncio.run(go())
    app_p = f"{app}:parts"
    listed = json.loads(_ok("parked", "list", app_p, "--json").output)
    assert [d["queue"] for d in listed] == names
    assert [d["stats"]["total"] for d in listed] == [0, 2]
    assert listed[1]["blockers"][0]["name"] == "cc:k"
    shown = json.loads(_ok("parked", "show", app_p, "cc:k", "--json").output)
    assert [(d["queue"], d["state"], d["ids"]) for d in shown] == [
        (names[0], "empty", []),
        (names[1], "ok", ["p1", "p2"]),
    ]
    plain = _ok("--plain", "parked", "show", app_p, "cc:k").stdout.splitlines()
    assert plain[0] == f"blocker\t{names[0]}\tcc:k\tparked=0\tset=empty"
    assert f"id\t{names[1]}\tp2" in plain
    limits = json.loads(_ok("limits", app_p, "--json").output)
    assert [(d["queue"], d["active"], d["declared"]) for d in limits] == [
        (names[0], 0, True),
        (names[1], 1, True),
    ]
    # One member names one queue, as for the other commands.
    one = json.loads(_ok("limits", f"{app}:one_partition.queues.1", "--json").output)
    assert one["queue"] == names[1]


# ---------------------------------------------------------------------- empty, guards
def test_an_empty_queue_and_no_flow_control(app: str) -> None:
    bare = f"{app}:bare"
    doc = json.loads(_ok("parked", "list", bare, "--json").output)
    assert doc["stats"]["total"] == 0 and doc["blockers"] == [] and doc["queue"] == "cp-bare"
    plain = _ok("--plain", "parked", "list", bare).stdout
    assert plain == "parked\tcp-bare\ttotal=0\tblockers=0\ttimers=0\tnext_timer=-\n"
    shown = json.loads(_ok("parked", "show", bare, "cc:nothing", "--json").output)
    assert (shown["state"], shown["count"], shown["ids"]) == ("empty", 0, [])
    limits = _ok("limits", bare, "--json")
    doc = json.loads(limits.stdout)
    assert doc["declared"] is False and doc["counters"] == [] and doc["active"] == 0
    assert doc["rate_limits"] == [] and doc["global_cap"] is None
    text = _ok("--plain", "limits", bare)
    assert text.stdout.startswith("flow\tcp-bare\tdeclared=no\tglobal_cap=none\trunning=0")
    assert "declares no flow control" in text.stderr
    # Asking did not turn flow control on for the queue.
    import importlib

    module = importlib.import_module(app)
    assert module.bare._flow is None
    # An empty blocker is a usage error.
    assert _run("parked", "show", bare, "").exit_code == 2


def test_the_reads_pass_the_read_guards(app: str, redis_url: str, prefix: str) -> None:
    import importlib

    _setup(redis_url, prefix)
    module = importlib.import_module(app)
    guarded = f"{app}:guarded"
    for args, asked in (
        (["parked", "list", guarded], ["get_stats"]),
        (["parked", "show", guarded, "cc:k"], ["get_stats"]),
        (["limits", guarded], ["get_stats"]),
    ):
        module.asked.clear()
        result = _run(*args, "--json")
        assert result.exit_code == 1, result.output
        assert result.stdout == "" and "cc:k" not in result.output
        assert "reading get_stats is not allowed here" in result.stderr
        assert module.asked == asked
    # The ids need get_jobs_by_status too, with the page asked for.
    seen: list[Any] = []

    def only_stats(call: Any) -> None:
        seen.append((call.query, call.args))
        if call.query != "get_stats":
            raise PermissionDeniedError("no ids")

    module.guarded.queries.remove_guard(module.refuse)
    module.guarded.queries.add_guard(only_stats)
    result = _run("parked", "show", guarded, "cc:k", "--limit", "7", "--offset", "1")
    assert result.exit_code == 1 and "p1" not in result.stdout
    assert seen == [
        ("get_stats", {}),
        ("get_jobs_by_status", {"status": "pending", "limit": 7, "offset": 1}),
    ]
