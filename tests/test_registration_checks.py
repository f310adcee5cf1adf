"""What a queue is given to plug in — middleware, event handlers of a multi-queue,
adapters, codecs — is checked when it is given, with an error naming it, rather than
failing every job or event later."""

from __future__ import annotations

from typing import Any

import pytest

from helpers import QueueFactory
from kitium_queue import ConfigurationError, JobQueue
from kitium_queue.features.partitioned import PartitionedQueue


class _Metrics:
    def increment(self, name: str, value: float = 1, tags: Any = None) -> None: ...

    def observe(self, name: str, value: float, tags: Any = None) -> None: ...


class _Codec:
    def encode(self, data: bytes) -> bytes:
        return data

    def decode(self, data: bytes) -> bytes:
        return data


@pytest.mark.parametrize("register", ["use_enqueue", "use_process"])
@pytest.mark.parametrize("bad", [3, "mw", None])
async def test_middleware_must_be_a_function(
    make_queue: QueueFactory, register: str, bad: Any
) -> None:
    q = make_queue()
    with pytest.raises(ConfigurationError, match="middleware must be a function"):
        getattr(q, register)(bad)
    # Nothing was registered: jobs go on as before.
    job_id = await q.add_job("n", {"ok": 1})
    assert (await q.get_job_status(job_id)) is not None
    assert q.enqueue_middleware == [] and q.process_middleware == []


async def test_a_multi_queue_refuses_a_handler_that_is_not_callable(
    backend_url: str, prefix: str
) -> None:
    pq = PartitionedQueue("mq", partitions=2, redis=backend_url, prefix=prefix)
    try:
        with pytest.raises(TypeError, match="must be a function"):
            pq.on("job-completed", 42)  # type: ignore[arg-type]
        seen: list[str] = []
        pq.on("job-added", lambda e: seen.append(e.event))  # a good one is still taken
        await pq.add_job("n", {"v": 1})
        assert seen == ["job-added"]
    finally:
        await pq.close()


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"telemetry": 5}, "telemetry must be an object with start_span method"),
        ({"metrics": object()}, "metrics must be an object with increment and observe"),
        ({"metrics": type("Half", (), {"increment": print})()}, "Half has no observe"),
        ({"codecs": 5}, "codecs must be a list of codecs"),
        ({"codecs": "zstd"}, "codecs must be a list of codecs"),
        ({"codecs": [5]}, "each codec has encode(bytes) and decode(bytes)"),
    ],
)
def test_adapters_and_codecs_are_checked_at_construction(kw: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        JobQueue("checks", redis="memory://checks", **kw)
    assert needle in str(err.value)


def test_good_adapters_and_codecs_are_taken() -> None:
    q = JobQueue("checks", redis="memory://checks-ok", metrics=_Metrics(), codecs=[_Codec()])
    assert isinstance(q.metrics, _Metrics)
    assert len(q.serializer.codecs) == 1
