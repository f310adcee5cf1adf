"""The ``memory://`` stores' fast script path (``kitium_queue.memorystore``): each script
compiled once and run per call with that call's ``KEYS``/``ARGV``, globals refused by a
guard on ``_G``, fakeredis' replies otherwise, and fakeredis servers made elsewhere left
on fakeredis' own path."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import fakeredis
import pytest
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError

from kitium_queue import JobQueue, memorystore
from kitium_queue.connection import ConnectionFactory

_GLOBAL_IN_PCALL = "local ok = pcall(function() y = 1 end) return tostring(ok)"

#: Scripts whose replies the fast path must give as fakeredis' own path does.
_SAME_REPLIES = [
    "return {KEYS[1], ARGV[1], ARGV[2], #KEYS, #ARGV}",
    "redis.call('SET', KEYS[1], 'x') error('boom')",
    "redis.call('SET', KEYS[1], 'x') return redis.call('HSET', KEYS[1], 'a', 'b')",
    "redis.call('SET', KEYS[1], 'x') local r = redis.pcall('HSET', KEYS[1], 'a', 'b') error(r)",
    "error(redis.error_reply('KQ_DAMAGED_KEY string hash ' .. KEYS[1]))",
    "local x = nil return x + 1",
    "return 1 +",
    "return redis.call('nosuch')",
    "return redis.call('SET', KEYS[1])",
    "return redis.call('SET', KEYS[1], {})",
    "return {1, 'two', {ok = 'OK'}, 3.9, true, false}",
    "return cjson.decode(cjson.encode({a = ARGV[1]})).a",
    "created = 1 return 1",
    "rawset(_G, 'created', 1) return 1",
    "KEYS = nil return 1",
]


def _store() -> tuple[str, Any]:
    name = f"t-{uuid.uuid4().hex}"
    return name, memorystore.memory_server(name)


def _fast(server: Any) -> Any:
    fast = getattr(server, memorystore._FAST_ATTR, None)
    assert fast is not None, "the store is not on the fast script path"
    return fast


def _reply(client: Any, script: str, *args: Any) -> Any:
    try:
        return client.eval(script, *args)
    except ResponseError as exc:
        return f"{type(exc).__name__}: {exc}"


def test_each_call_runs_with_its_own_keys_and_argv_on_one_compiled_function() -> None:
    _, server = _store()
    client = fakeredis.FakeRedis(server=server)
    count = "redis.call('INCR', KEYS[1]) return {KEYS[1], ARGV[1], #ARGV}"
    concat = "return KEYS[1] .. ':' .. table.concat(ARGV, ',')"
    for i in range(20):
        assert client.eval(count, 1, f"c{i % 2}", f"a{i}") == [f"c{i % 2}".encode(), b"a%d" % i, 1]
        args = [f"v{j}" for j in range(i)]
        assert client.eval(concat, 1, f"k{i}", *args) == f"k{i}:{','.join(args)}".encode()
    assert client.get("c0") == b"10" and client.get("c1") == b"10"  # top level ran every call
    sha = client.script_load(count).encode()
    assert client.evalsha(sha, 1, "c0", "x", "y") == [b"c0", b"x", 2]
    assert client.eval(concat, 1, "big", *[str(j) for j in range(10_000)]).endswith(b",9999")
    assert [sha for sha, _ in _fast(server).compiled.values()].count(sha) == 1
    assert len(_fast(server).compiled) == 2


@pytest.mark.parametrize("script", _SAME_REPLIES)
def test_replies_are_fakeredis_own(script: str) -> None:
    fast = fakeredis.FakeRedis(server=_store()[1])
    name = f"t-{uuid.uuid4().hex}"
    stock = fakeredis.FakeRedis(server=memorystore.memory_server(name, fast_scripts=False))
    assert (
        getattr(stock.connection_pool.connection_kwargs["server"], memorystore._FAST_ATTR, None)
        is None
    )
    for _ in range(2):  # compiled, then from the cache
        assert _reply(fast, script, 1, "k", "a1", "a2") == _reply(stock, script, 1, "k", "a1", "a2")
        assert fast.get("k") == stock.get("k")
        assert _reply(fast, "return type(created)", 0) == b"nil"


def test_a_script_creating_a_global_is_refused_and_the_store_stays_usable() -> None:
    _, server = _store()
    client = fakeredis.FakeRedis(server=server)
    with pytest.raises(ResponseError, match="Script attempted to set global variables: g"):
        client.eval("redis.call('SET', 'before', 1) g = 1 redis.call('SET', 'after', 1)", 0)
    assert client.get("before") == b"1" and client.get("after") is None  # refused at once
    with pytest.raises(ResponseError, match="set global variables: f"):
        client.eval("function f() end return 1", 0)
    assert client.eval("return {type(g), type(f), KEYS[1]}", 1, "k") == [b"nil", b"nil", b"k"]
    with pytest.raises(ResponseError, match="boom"):
        client.eval("rawset(_G, 'h', 1) error('boom')", 0)
    assert client.eval("return type(h)", 0) == b"nil"  # dropped with the failed script
    assert client.eval(_GLOBAL_IN_PCALL, 0) == b"false"
    assert client.eval("return type(y)", 0) == b"nil"


async def test_a_global_assigned_inside_pcall_fails_as_on_redis(redis_url: str) -> None:
    real = aioredis.Redis.from_url(redis_url)
    memory = ConnectionFactory(f"memory://{uuid.uuid4().hex}").client()
    try:
        assert await memory.eval(_GLOBAL_IN_PCALL, 0) == await real.eval(_GLOBAL_IN_PCALL, 0)
    finally:
        await real.aclose()
        await memory.aclose()


async def test_script_flush_then_evalsha_is_noscript_and_the_queue_recovers() -> None:
    name, server = _store()
    queue = JobQueue("flush", redis=f"memory://{name}", worker={"scheduler": False})
    done: list[int] = []
    finished = asyncio.Event()

    async def work(job: Any) -> None:
        done.append(job.data["i"])
        if len(done) == 2:
            finished.set()

    queue.process("t", work)
    try:
        await queue.add_job("t", {"i": 1})
        assert _fast(server).compiled
        client = await queue.client()
        sha = (await client.script_load("return 7")).encode()
        await client.script_flush()
        with pytest.raises(NoScriptError):
            await client.evalsha(sha, 0)
        await queue.add_job("t", {"i": 2})
        assert all(sha in server.script_cache for sha, _ in _fast(server).compiled.values())
        await queue.start()
        await asyncio.wait_for(finished.wait(), 30)
        assert sorted(done) == [1, 2]
    finally:
        await queue.close()


def test_the_compiled_scripts_are_bounded_and_dropped_by_script_flush() -> None:
    _, server = _store()
    client = fakeredis.FakeRedis(server=server)
    for i in range(memorystore._COMPILED_MAX + 40):
        assert client.eval(f"return {i}", 0) == i
    compiled = _fast(server).compiled
    assert len(compiled) == memorystore._COMPILED_MAX
    assert b"return 0" not in compiled and client.eval("return 0", 0) == 0  # compiled again
    client.script_flush()
    assert client.eval("return 1", 0) == 1
    assert list(compiled) == [b"return 1"]


def test_a_fakeredis_server_made_elsewhere_keeps_fakeredis_own_path() -> None:
    _store()  # the fast path is installed in this process
    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server)
    assert client.eval("return tostring(getmetatable(_G))", 0) == b"nil"
    with pytest.raises(ResponseError, match="set global variables: y"):
        client.eval(_GLOBAL_IN_PCALL, 0)  # fakeredis finds it after the script
    assert client.eval("return {KEYS[1], ARGV[1]}", 1, "k", "a") == [b"k", b"a"]
    assert getattr(server, memorystore._FAST_ATTR, None) is None


def test_a_fakeredis_other_than_the_one_followed_keeps_its_own_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(memorystore, "_hooked", [None])
    _, server = _store()
    client = fakeredis.FakeRedis(server=server)
    assert getattr(server, memorystore._FAST_ATTR, None) is None
    assert client.eval("return {KEYS[1], ARGV[1]}", 1, "k", "a") == [b"k", b"a"]
    assert _reply(client, "error(redis.error_reply('KQ_X y'))", 0) == "ResponseError: KQ_X y"
