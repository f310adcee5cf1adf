"""Stop 58's small fixes, each reproduced first against a real Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from helpers import QueueFactory
from kitium_queue import SerializationError
from kitium_queue.codec import Serializer
from kitium_queue.features.compression import CompressionCodec

DOC = {"text": "a fairly long repeated payload " * 40}


def test_a_compressed_value_read_without_the_codec_says_what_it_is() -> None:
    frame = CompressionCodec(threshold=64).encode(b'{"text": "' + b"x" * 400 + b'"}')
    with pytest.raises(SerializationError) as err:
        Serializer().loads(frame)
    text = str(err.value)
    assert "codec's frame" in text and "0x006b717a" in text and "compressed" in text
    # A damaged plain value gets no such hint.
    with pytest.raises(SerializationError) as plain:
        Serializer().loads(b'{"broken": ')
    assert "frame" not in str(plain.value)


async def test_a_worker_without_compression_fails_a_compressed_job_saying_why(
    make_queue: QueueFactory,
) -> None:
    squeezed = make_queue(
        "offcodec",
        advanced={"cost_optimization": {"enabled": True, "compression": {"threshold_bytes": 64}}},
    )
    jid = await squeezed.add_job("n", DOC)
    plain = make_queue("offcodec")
    ran: list[Any] = []
    plain.process("n", lambda job: ran.append(job.data))
    await plain.start()
    info: Any = None
    for _ in range(200):
        info = await plain.get_job_status(jid)
        if info is not None and info.failed_reason:
            break
        await asyncio.sleep(0.05)
    assert info is not None and info.failed_reason, info
    assert "codec's frame" in info.failed_reason and "replay" in info.failed_reason
    assert ran == []
    # Kept: the process that has the codec reads it (the job is not lost).
    back = await squeezed.get_job_status(jid)
    assert back is not None and back.data == DOC


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"dlq": {"count": -1}}, "advanced.cost_optimization.retention.dlq.count"),
        ({"failed": {"age_ms": "x"}}, "advanced.cost_optimization.retention.failed.age_ms"),
        ({"completed": {"count": True}}, "advanced.cost_optimization.retention.completed.count"),
    ],
)
def test_a_wrong_retention_limit_names_its_state(config: dict[str, Any], named: str) -> None:
    from kitium_queue import ConfigurationError
    from kitium_queue.features.advanced.operations import RetentionLimits

    with pytest.raises(ConfigurationError, match=rf"^{named} must be"):
        RetentionLimits.parse(config)


def test_a_wrong_region_names_its_place_in_the_list() -> None:
    from kitium_queue import AdvancedQueueConfig, ConfigurationError

    good = {"region": "eu", "redis": "redis://127.0.0.1:1/0"}
    for bad, named in (
        ({**good, "region": ""}, "regions[1].region must be"),
        ({**good, "priority": -3}, "regions[1].priority must be"),
    ):
        with pytest.raises(ConfigurationError) as err:
            AdvancedQueueConfig.parse({"global_queue": {"enabled": True, "regions": [good, bad]}})
        assert named in str(err.value), str(err.value)


async def test_calls_waiting_in_a_lane_whose_batch_task_stops_are_told_not_left_hanging(
    make_queue: QueueFactory,
) -> None:
    """The batching task of a lane stopped (cancelled) while a batch was in flight: the
    calls that came after it, not sent, got no answer and waited for ever; now a
    RuntimeError says nothing of their jobs was written."""
    q = make_queue("lanestop")
    await q.add_job("warm", {})
    producer = q.producer
    real = producer.enqueue
    first, second = asyncio.Event(), asyncio.Event()
    calls = 0

    async def gated(prepared: Any, opts: Any) -> Any:
        nonlocal calls
        calls += 1
        await (first if calls == 1 else second).wait()
        return await real(prepared, opts)

    producer.enqueue = gated  # type: ignore[method-assign]
    try:
        a = asyncio.ensure_future(q.add_job("n", {"i": "a"}))
        await asyncio.sleep(0.05)
        b = asyncio.ensure_future(q.add_job("n", {"i": "b"}))  # waits for a's round trip
        await asyncio.sleep(0.05)
        first.set()
        await asyncio.wait_for(a, 10)
        await asyncio.sleep(0.05)  # the lane's task now sends b's batch (held at `second`)
        c = asyncio.ensure_future(q.add_job("n", {"i": "c"}))  # waits behind b's batch
        await asyncio.sleep(0.05)
        tasks = list(producer.plain._bg)
        assert len(tasks) == 1
        tasks[0].cancel()
        done, _ = await asyncio.wait({b, c}, timeout=10)
        assert done == {b, c}, "a call was left waiting"
        with pytest.raises(RuntimeError, match="nothing of the job was written"):
            c.result()
        # b's batch was under way when it stopped: b ends (cancelled with it), as before.
        assert b.cancelled() or b.exception() is not None
    finally:
        producer.enqueue = real  # type: ignore[method-assign]
        second.set()
