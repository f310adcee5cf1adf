"""Reply deadlines, refusals in the webhook loops and ``runends.bounded``: what a review
of them found.

* A connection's reply deadline (``connerrors.bound_replies``) counted a reply owed from
  each command *packed*: a command redis-py failed to pack (``DataError``: a value it
  cannot encode) was never sent, yet its reply stayed owed, so the connection was cut
  15 s after its next command although every reply had come (an idle pooled connection
  aborted, or one the engine's scripts were using), and a blocking command with a wait
  of 0 that failed to pack took the deadline off the next command.
* It cut a subscriber that reads its messages later than 15 s after ``SUBSCRIBE``: the
  server had answered, the reply just waited unread.
* It cut blocking commands it did not know (``BLMPOP``, ``BZMPOP``, ``BRPOPLPUSH``,
  ``WAITAOF``, a name spelled ``Blpop``) and an ``XREADGROUP ... BLOCK`` whose group or
  consumer is named ``BLOCK`` or ``STREAMS`` after 15 s, whatever wait they asked for.
* A webhook loop refused by the Redis ACL said "permitted again" at the first step that
  found nothing to do (it ran none of what was refused), then the refusal again when
  work came: two lines per retry for as long as the refusal lasted.
* ``OutageLog``: a refusal after an outage (Redis answers again, but refuses) never said
  "Redis is reachable again" until the refusal ended.
* A client used in a second event loop (``asyncio.run`` twice) kept the timer of the
  first, which never fires: no deadline for ever after.
* ``runends.bounded`` on Python 3.10 returned on a cancel before the call it waited for
  had ended (``wait_for`` waits for it).

The deadline is shortened to ``DEADLINE_S``; a private ``redis-server`` is paused with
``CLIENT PAUSE`` (no SIGSTOP needed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError

import kitium_queue.leader as leader
from _redis import RedisServer
from helpers import wait_until
from kitium_queue import JobQueue, PermissionDeniedError
from kitium_queue.connerrors import ReplyTimeoutError, bound_replies, held_for
from kitium_queue.features.access.redisacl import redis_acl_rules
from kitium_queue.features.webhooks import (
    WebhookConfig,
    WebhookEvent,
    WebhookManager,
    generate_secret,
)
from kitium_queue.leader import OutageLog
from kitium_queue.replywaits import holds
from kitium_queue.runends import bounded

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chaos.receiver import Receiver  # noqa: E402

pytestmark = pytest.mark.redis_only

DEADLINE_S = 0.3


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as srv:
        yield srv


@pytest.fixture
def short_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kitium_queue.connerrors.REPLY_DEADLINE_S", DEADLINE_S)


@pytest.fixture
async def client(server: RedisServer, short_deadline: None) -> AsyncIterator[Any]:
    # No socket_timeout (redis-py's own bound would take the deadline's place), one
    # connection: every command below goes over the same one.
    c = bound_replies(
        aioredis.Redis(host="127.0.0.1", port=server.port, socket_timeout=None, max_connections=1)
    )
    yield c
    await c.aclose()


def _only_connection(c: Any) -> Any:
    pool = c.connection_pool
    conns = [*pool._available_connections, *pool._in_use_connections]
    assert len(conns) == 1
    return conns[0]


def _pause(server: RedisServer, ms: int) -> None:
    admin = redis_sync.Redis(host="127.0.0.1", port=server.port)
    try:
        admin.execute_command("CLIENT", "PAUSE", ms, "ALL")
    finally:
        admin.close()


# ------------------------------------------------------------------ reply deadlines
async def test_a_command_that_failed_to_pack_owes_no_reply(client: Any) -> None:
    await client.ping()
    conn = _only_connection(client)
    with pytest.raises(DataError):
        await client.set("k", object())  # never sent
    pipe = client.pipeline()
    pipe.set("a", 1).set("b", object())
    with pytest.raises(DataError):
        await pipe.execute()  # MULTI, SET a packed; SET b refused: none of them sent
    assert await client.ping()
    await asyncio.sleep(DEADLINE_S * 3)
    # Every reply came: the connection is neither cut nor replaced.
    assert conn.is_connected and not conn._writer.transport.is_closing()
    assert await client.ping() and _only_connection(client) is conn


async def test_a_blocking_command_that_failed_to_pack_leaves_the_next_one_bounded(
    client: Any, server: RedisServer
) -> None:
    await client.ping()
    with pytest.raises(DataError):
        await client.blpop([object()], 0)  # a wait of 0 (for ever), never sent
    _pause(server, 3000)
    with pytest.raises(ReplyTimeoutError):
        await asyncio.wait_for(client.get("k"), 10)
    await asyncio.sleep(3.0)  # the pause ends
    assert await client.ping()


async def test_a_subscriber_may_read_its_messages_late(client: Any) -> None:
    sub = client.pubsub()
    try:
        await sub.subscribe("news")
        await asyncio.sleep(DEADLINE_S * 3)  # the confirmation waits unread meanwhile
        first = await sub.get_message(timeout=1.0)
        assert first is not None and first["type"] == "subscribe"
        publisher = aioredis.Redis(
            host="127.0.0.1", port=client.connection_pool.connection_kwargs["port"]
        )
        try:
            await publisher.publish("news", "x")
        finally:
            await publisher.aclose()
        got = await sub.get_message(timeout=2.0)
        assert got is not None and got["data"] == b"x"
    finally:
        await sub.aclose()


async def test_a_subscriber_of_a_server_that_does_not_answer_is_still_cut(
    client: Any, server: RedisServer
) -> None:
    await client.ping()
    sub = client.pubsub()
    try:
        await sub.ping()  # a connection of its own, open before the pause
        assert (await sub.get_message(timeout=1.0))["type"] == "pong"
        _pause(server, 2000)
        await sub.subscribe("news")
        await asyncio.sleep(DEADLINE_S * 3)
        with pytest.raises((ReplyTimeoutError, RedisConnectionError)):
            await sub.get_message(timeout=1.0)
    finally:
        await asyncio.sleep(2.0)  # the pause ends
        await sub.aclose()


def test_a_client_used_in_a_second_event_loop_keeps_its_deadline(
    server: RedisServer, short_deadline: None
) -> None:
    c = bound_replies(
        aioredis.Redis(host="127.0.0.1", port=server.port, socket_timeout=None, max_connections=1)
    )
    asyncio.run(c.ping())  # the loop ends with the deadline's timer of that call pending

    async def second() -> None:
        with contextlib.suppress(Exception):  # redis-py's socket of the loop that ended
            await c.ping()
        assert await c.ping()
        _pause(server, 2000)
        try:
            with pytest.raises(ReplyTimeoutError):
                await asyncio.wait_for(c.get("k"), 10)
        finally:
            await asyncio.sleep(2.0)  # the pause ends
            await c.aclose()

    asyncio.run(second())


def test_the_waits_of_every_blocking_command() -> None:
    assert held_for(("BLMPOP", 2.5, 1, "k", "LEFT")) == 2.5
    assert held_for(("BLMPOP", 0, 1, "k", "LEFT")) is None
    assert held_for(("BZMPOP", 3, 2, "a", "b", "MIN", "COUNT", 9)) == 3.0
    assert held_for(("BRPOPLPUSH", "src", "dst", 4)) == 4.0
    assert held_for(("WAITAOF", 1, 0, 1500)) == 1.5 and held_for(("WAITAOF", 1, 0, 0)) is None
    # A group or consumer named BLOCK or STREAMS is no option.
    assert held_for(("XREADGROUP", "GROUP", "BLOCK", "c", "BLOCK", 0, "STREAMS", "s", ">")) is None
    assert held_for(("XREADGROUP", "GROUP", "g", "BLOCK", "BLOCK", 2000, "STREAMS", "s", ">")) == 2
    assert (
        held_for(("XREADGROUP", "GROUP", "STREAMS", "c", "BLOCK", 0, "STREAMS", "s", ">")) is None
    )
    assert held_for(("XREADGROUP", "GROUP", "g", "c", "COUNT", 5, "STREAMS", "BLOCK", ">")) == 0.0
    assert holds("Blpop") and holds(b"bzMPOP") and not holds("GET") and not holds(["BLPOP"])


async def test_blocking_commands_it_did_not_know_keep_their_wait(client: Any) -> None:
    wait = DEADLINE_S * 4
    assert await client.execute_command("BLMPOP", wait, 1, "none", "LEFT") is None
    assert await client.execute_command("BZMPOP", wait, 1, "none", "MIN") is None
    assert await client.execute_command("BRPOPLPUSH", "none", "dst", wait) is None
    assert await client.execute_command("Blpop", "none", wait) is None
    await client.xgroup_create("s", "BLOCK", id="$", mkstream=True)
    got = await client.execute_command(
        "XREADGROUP", "GROUP", "BLOCK", "c", "BLOCK", int(wait * 1000), "STREAMS", "s", ">"
    )
    assert not got


# ------------------------------------------------------------------ refusals
USER, PASSWORD = "review49", "pw-review49"
REFUSED = "refused for lack of permission, not an outage"
PERMITTED = "permitted again"


def _keys_but(admin: redis_sync.Redis, queue: str, part: str) -> None:
    """The user keeps every key of ``queue`` but those starting with ``part``."""
    base = f"kq:{{{queue}}}:"
    patterns = [f"~{base}{part[:i]}[^{c}]*" for i, c in enumerate(part)]
    admin.execute_command("ACL", "SETUSER", USER, "resetkeys", *patterns)


async def test_a_webhook_loop_says_permitted_again_only_once_it_records_again(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(leader, "REFUSED_RETRY_S", 0.1)
    caplog.set_level(logging.WARNING, logger="kitium_queue")
    admin = redis_sync.Redis(host="127.0.0.1", port=server.port)
    name = "rv49"
    rules = redis_acl_rules(USER, [name], features=["webhooks"])
    admin.execute_command("ACL", "SETUSER", *rules.setuser_args(PASSWORD))
    rec = await Receiver().start()
    owner = JobQueue(name, redis=f"redis://127.0.0.1:{server.port}/0")
    events = WebhookManager(owner, run_service=False, allow_networks=["127.0.0.0/8"])
    url = f"redis://{USER}:{PASSWORD}@127.0.0.1:{server.port}/0"
    q = JobQueue(name, redis=url)
    secret = generate_secret()
    m = WebhookManager(
        q, secrets={"h1": secret}, allow_networks=["127.0.0.0/8"], claim_idle_ms=400, poll_ms=20
    )
    who = f"webhook delivery (outbox) of queue {name}:"

    def said(text: str) -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.getMessage().startswith(who) and text in r.getMessage()
        ]

    try:
        await events.register_webhook(
            WebhookConfig(url=rec.url, secret=secret, events=["ping"], id="h1")
        )
        await m.service.start(q)
        await events.send_event(WebhookEvent("ping", {"i": 0}, id="e0"))
        await wait_until(lambda: "e0" in rec.ids(), 20, message="never delivered")
        _keys_but(admin, name, "wh:idx")  # the record of a delivery is refused
        await events.send_event(WebhookEvent("ping", {"i": 1}, id="e1"))
        await wait_until(lambda: said(REFUSED), 20, message="refusal not said")
        # Taken over again and again (claim_idle_ms), each time refused; steps that find
        # nothing to do run in between.
        await wait_until(lambda: rec.ids()["e1"] >= 3, 20, message="not tried again")
        assert len(said(REFUSED)) == 1, said("")
        assert not said(PERMITTED), said("")
        admin.execute_command("ACL", "SETUSER", USER, "resetkeys", f"~kq:{{{name}}}:*")
        await wait_until(lambda: said(PERMITTED), 20, message="recovery not said")
        await asyncio.sleep(0.5)
        assert len(said(PERMITTED)) == 1 and len(said(REFUSED)) == 1, said("")
    finally:
        await m.service.stop()
        await q.close()
        await owner.close()
        await rec.stop()
        admin.execute_command("ACL", "DELUSER", USER)
        admin.close()


def test_a_refusal_after_an_outage_says_redis_is_reachable_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="kitium_queue.leader")
    log = OutageLog("loop x")
    log.failed(RedisConnectionError("Connection refused"))
    log.failed(PermissionDeniedError("Redis refused the command for lack of permission (NOPERM)"))
    lines = [r.getMessage() for r in caplog.records]
    assert [line for line in lines if "unreachable" in line], lines
    assert [line for line in lines if "Redis is reachable again" in line], lines
    assert [line for line in lines if REFUSED in line], lines
    log.ok()  # permitted: said once, and no second "reachable again"
    lines = [r.getMessage() for r in caplog.records]
    assert sum("reachable again" in line for line in lines) == 1, lines
    assert sum(PERMITTED in line for line in lines) == 1, lines


# ------------------------------------------------------------------ runends.bounded
async def test_bounded_without_asyncio_timeout_returns_only_once_the_call_ended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Python 3.10's path (no ``asyncio.timeout``), taken here on any version."""
    monkeypatch.delattr(asyncio, "timeout", raising=False)
    ended: list[str] = []
    started = asyncio.Event()

    async def call() -> int:
        try:
            started.set()
            await asyncio.sleep(10)
        finally:
            await asyncio.sleep(0.05)  # its cleanup takes a moment (a connection closed)
            ended.append("call")
        return 1

    waiter = asyncio.ensure_future(bounded(call(), 5.0))
    await started.wait()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert ended == ["call"]  # as asyncio.wait_for: the call has ended

    ended.clear()
    with pytest.raises(asyncio.TimeoutError):
        await bounded(call(), 0.05)
    assert ended == ["call"]
