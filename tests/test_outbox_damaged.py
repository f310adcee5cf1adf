"""An outbox key overwritten with another type of key (by hand): a transition that adds
follow-up work still completes — a script never fails after its first write — and the
entry it could not write is counted and reported; ``add``, ``create_group`` and a
consumer's ``read`` say what is wrong; trim and stats go on; once the key is deleted
the outbox works again. Against a real Redis."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from kitium_queue import JobQueue, KitiumQueueError
from kitium_queue.outbox import Outbox

pytestmark = pytest.mark.redis_only

_TRANSITION = """--[[
  test transition: a state write, then its follow-up work.
]]
--@include common
--@include outbox
local n = redis.call('INCR', PREFIX .. 'test:transitions')
local id, over = outbox_add('job.done', 'n', n)
return { n, id or '' }
"""


@pytest.fixture
async def queue(redis_url: str, prefix: str) -> AsyncIterator[JobQueue]:
    q = JobQueue("obd", redis=redis_url, prefix=prefix)
    yield q
    await q.close()


async def test_a_damaged_outbox_key_never_fails_a_transition(
    queue: JobQueue, redis_client: redis.asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    queue.scripts.add_fragment("test_outbox_damaged", _TRANSITION)
    outbox = Outbox(queue)
    await redis_client.set(outbox.key, "not a stream")
    # The transition's own write stands; the entry is counted as unwritten.
    for expected in (1, 2, 3):
        n, entry_id = await queue.run("test_outbox_damaged")
        assert (n, entry_id) == (expected, b"")
    assert int(await redis_client.get(queue.keys.extra("test:transitions"))) == 3
    st = await outbox.stats()
    assert st.unwritten == 3 and st.damaged and "another type" in st.damaged
    assert st.length == 0
    # What a caller does with the outbox says what is wrong instead of a raw WRONGTYPE.
    with pytest.raises(KitiumQueueError, match=r"holds another type of key.*nothing was added"):
        await outbox.add("x", b"1")
    with pytest.raises(KitiumQueueError, match="cannot be created"):
        await outbox.create_group("g")
    assert await outbox.trim() == 0
    with caplog.at_level(logging.WARNING, logger="kitium_queue"):
        await outbox._warn_cap(st)
    assert any("3 entries could not be written" in r.getMessage() for r in caplog.records)
    # Deleted: the outbox works again, from empty; the count of the lost entries stays.
    await redis_client.delete(outbox.key)
    await outbox.create_group("g")
    n, entry_id = await queue.run("test_outbox_damaged")
    assert n == 4 and entry_id
    consumer = outbox.consumer("g", "c")
    got = await consumer.read(block_ms=0)
    assert [e.fields.get("n") for e in got] == [b"4"]
    st = await outbox.stats()
    # The three transitions' entries and the refused add: four never written.
    assert st.damaged is None and st.unwritten == 4 and st.length == 1


async def test_a_consumer_reading_a_damaged_outbox_is_told_why(
    queue: JobQueue, redis_client: redis.asyncio.Redis
) -> None:
    outbox = Outbox(queue)
    await outbox.create_group("g")
    consumer = outbox.consumer("g", "c")
    assert await consumer.read(block_ms=0) == []
    await redis_client.delete(outbox.key)
    await redis_client.rpush(outbox.key, "x")
    with pytest.raises(KitiumQueueError, match="nothing can be read"):
        await consumer.read(block_ms=0)
