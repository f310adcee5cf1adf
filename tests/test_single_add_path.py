"""The path of one awaited ``add_job`` on a plain Redis: the reply channel's one timer,
the kept connection's check, the packing of arguments and a plain job's arguments.

Each exchange of a ``ReplyChannel`` keeps its deadline with the channel's single timer
(armed once, moved on when it fires early, never one per exchange); a connection kept
between exchanges is taken back on its channel's word; ``pack_args`` packs in hiredis
what it packs byte for byte like its own loop.
"""

from __future__ import annotations

import asyncio
import enum
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

import kitium_queue.replies as replies_mod
import kitium_queue.scripts as scripts_mod
from _redis import RedisServer
from helpers import wait_until
from kitium_queue import JobQueue
from kitium_queue.replies import ReplyChannel, channel_for, kept_channel, pack_args

pytestmark = pytest.mark.redis_only

PING = b"*1\r\n$4\r\nPING\r\n"


@pytest.fixture
def server(debug_server: RedisServer) -> RedisServer:
    return debug_server  # DEBUG SLEEP makes it busy on cue


@pytest.fixture
async def queue(server: RedisServer, prefix: str) -> AsyncIterator[JobQueue]:
    q = JobQueue("single-add", redis=server.url, prefix=prefix)
    try:
        yield q
    finally:
        await q.close()


def _kept(q: JobQueue) -> Any:
    reg = q.producer.ctx.scripts
    (conn,) = [c for conns in reg._idle.values() for c in conns][:1]
    return conn


def _channel_timers(loop: asyncio.AbstractEventLoop) -> list[asyncio.TimerHandle]:
    """The timers of reply channels the loop has scheduled and not cancelled."""
    scheduled: list[asyncio.TimerHandle] = getattr(loop, "_scheduled", [])
    return [
        h
        for h in scheduled
        if not h.cancelled() and isinstance(getattr(h._callback, "__self__", None), ReplyChannel)
    ]


async def test_exchanges_on_a_connection_share_one_timer(
    queue: JobQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    # A deadline no slow machine reaches here: the timer never fires during the test.
    monkeypatch.setattr(scripts_mod, "REPLY_TIMEOUT_S", 600.0)
    await queue.add_job("warm", 0)
    armed: list[Any] = []
    call_at = loop.call_at

    def counting(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        if isinstance(getattr(callback, "__self__", None), ReplyChannel):
            armed.append(callback)
        return call_at(when, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", counting)
    ids = [await queue.add_job("one", i) for i in range(50)]
    assert len(set(ids)) == 50
    # The timer armed by the warm-up add watches all of them (one per exchange before).
    assert armed == []
    assert len(_channel_timers(loop)) == 1


async def test_a_later_exchange_outlives_the_deadline_of_the_one_that_armed_the_timer(
    queue: JobQueue, server: RedisServer
) -> None:
    await queue.add_job("warm", 0)
    conn = _kept(queue)
    channel = channel_for(conn)
    assert channel is not None
    assert await channel.exchange(PING, 1, 0.3) == [b"PONG"]  # moves the timer to +0.3 s
    blocker = aioredis.Redis.from_url(server.url)
    try:
        sleeping = asyncio.ensure_future(blocker.execute_command("DEBUG", "SLEEP", "1"))
        await asyncio.sleep(0.05)
        # Redis answers after about 0.95 s: past the first deadline, within this one's.
        assert await channel.exchange(PING, 1, 10.0) == [b"PONG"]
        await sleeping
    finally:
        await blocker.aclose()
    assert channel.usable
    assert await queue.get_job_status(await queue.add_job("after", 1)) is not None


async def test_the_timer_still_ends_an_exchange_past_its_deadline(
    queue: JobQueue, server: RedisServer
) -> None:
    await queue.add_job("warm", 0)
    channel = channel_for(_kept(queue))
    assert channel is not None
    assert await channel.exchange(PING, 1, 15.0) == [b"PONG"]  # a timer far away
    blocker = aioredis.Redis.from_url(server.url)
    try:
        sleeping = asyncio.ensure_future(blocker.execute_command("DEBUG", "SLEEP", "1"))
        await asyncio.sleep(0.05)
        with pytest.raises(replies_mod.ReplyTimeout):
            await channel.exchange(PING, 1, 0.2)  # nearer than the armed timer
        await sleeping
    finally:
        await blocker.aclose()
    assert not channel.usable


async def test_a_timer_firing_between_exchanges_leaves_the_channel_usable(
    queue: JobQueue,
) -> None:
    await queue.add_job("warm", 0)
    channel = channel_for(_kept(queue))
    assert channel is not None
    assert await channel.exchange(PING, 1, 0.5) == [b"PONG"]
    await wait_until(lambda: channel._timer is None, 10.0)  # fired, nothing in flight
    assert channel.usable
    assert await channel.exchange(PING, 1, 5.0) == [b"PONG"]
    assert channel._timer is not None  # armed again by the exchange


async def test_a_channel_given_back_to_redis_py_leaves_no_timer(queue: JobQueue) -> None:
    loop = asyncio.get_running_loop()
    await queue.add_job("warm", 0)
    conn = _kept(queue)
    assert len(_channel_timers(loop)) == 1
    assert replies_mod.release_channel(conn)
    assert _channel_timers(loop) == []


async def test_a_kept_connection_is_taken_on_its_channel_s_word(queue: JobQueue) -> None:
    await queue.add_job("warm", 0)
    conn = _kept(queue)
    channel = kept_channel(conn)
    assert channel is not None and channel is channel_for(conn)
    channel.data_received(b"+PONG\r\n")  # bytes nobody asked for: out of step
    assert kept_channel(conn) is None
    jid = await queue.add_job("next", 1)  # the registry drops it and takes another
    info = await queue.get_job_status(jid)
    assert info is not None and info.data == 1


async def test_a_kept_connection_whose_transport_this_side_closed_is_not_taken(
    queue: JobQueue,
) -> None:
    await queue.add_job("warm", 0)
    conn = _kept(queue)
    assert kept_channel(conn) is not None
    conn._writer.transport.close()  # closing: `usable` says so before connection_lost
    assert kept_channel(conn) is None
    jid = await queue.add_job("next", 2)  # the registry drops it and takes another
    info = await queue.get_job_status(jid)
    assert info is not None and info.data == 2


def _loop_packed(args: Any) -> bytes:
    """``pack_args`` with hiredis's packer switched off."""
    saved = replies_mod._PACK
    replies_mod._PACK = None
    try:
        return pack_args(args)
    finally:
        replies_mod._PACK = saved


class _Color(str, enum.Enum):
    RED = "red"


class _Level(enum.IntEnum):
    HIGH = 7


@pytest.mark.parametrize(
    "args",
    [
        ["kq:{q}:", "", "10000", 86400000, "", "n", b'{"i":1}', b"", 0, 0, "0", ""],
        ["é中😀", "\x7f", b"\x00\xff", -1, 1024, 1025, -(2**70), 2**70],
        [0.1, 1 / 3, 1e16, 1e20, -0.0, 5e-324, math.inf, -math.inf, math.nan, 2.5],
        [True, False, None, bytearray(b"ab"), memoryview(b"cd"), _Color.RED, _Level.HIGH],
        ["mixed", True, 3, b"x", 1.5],
        [],
    ],
)
def test_pack_args_packs_as_its_own_loop_does(args: list[Any]) -> None:
    assert replies_mod._PACK is not None  # hiredis is a dependency
    assert pack_args(args) == _loop_packed(args)
    assert pack_args(tuple(args)) == _loop_packed(args)


def test_pack_args_refuses_a_lone_surrogate_as_before() -> None:
    with pytest.raises(UnicodeEncodeError):
        pack_args(["\ud800"])
    with pytest.raises(UnicodeEncodeError):
        _loop_packed(["\ud800"])


async def test_a_plain_job_s_arguments_are_those_of_the_general_path(queue: JobQueue) -> None:
    producer = queue.producer
    plain = producer.prepare("n", {"i": 1}, {})
    assert plain == ["", "n", b'{"i":1}', b"", 0, 0, "0", ""]
    # The same job through the general path (an option that changes nothing stored).
    assert producer.prepare("n", {"i": 1}, {"priority": None}) == plain
    producer.ctx.defaults = {"attempts": 3}
    try:
        assert producer.prepare("n", {"i": 1}, {})[3] == b'{"attempts":3}'
    finally:
        producer.ctx.defaults = {}
