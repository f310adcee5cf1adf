"""Review of the stop's changes: behaviours they must keep. Against a real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from helpers import QueueFactory
from kitium_queue.features.encryption import (
    EncryptionManager,
    KeyConfig,
    KeyNotHeldError,
    generate_key,
)


@pytest.fixture
async def rq(redis_url: str, prefix: str) -> AsyncIterator[QueueFactory]:
    factory = QueueFactory(redis_url, prefix)
    yield factory
    await factory.aclose()


async def test_a_process_holding_no_key_is_told_it_lacks_the_current_one(
    rq: QueueFactory,
) -> None:
    """A process whose manager holds no key yet (keys to be added later) asks for the
    queue's current key: KeyNotHeldError names it, as before the check values (the check
    of no key at all must not send Redis an HMGET without fields)."""
    q = rq("nokey")
    m = EncryptionManager(q, keys=[KeyConfig("k1", generate_key())])
    assert await m.initialize() == "k1"

    other = rq("nokey")
    m2 = EncryptionManager(other, keys=[], run_rotation=False)
    with pytest.raises(KeyNotHeldError):
        await m2.current_key_id(refresh=True)
