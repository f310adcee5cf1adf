"""``queue.explain(job_id)`` on a Redis Cluster: the facts pipeline holds only keys of
the queue's hash slot, and the server clock (``TIME``, which a Cluster pipeline refuses)
is read on its own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from _cluster import LocalCluster
from helpers import QueueFactory
from kitium_queue import JobStatus


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(masters=3, replicas=0) as c:
        yield c


async def test_explain_on_a_cluster(cluster: LocalCluster, prefix: str) -> None:
    factory = QueueFactory(cluster.url, prefix)
    try:
        q = factory("ex-cluster")
        jid = await q.add_job("a", {}, delay=60_000)
        why = await q.explain(jid)
        assert why.status is JobStatus.DELAYED
        delayed = [r for r in why.reasons if r.code == "delayed"]
        assert delayed and delayed[0].until_ms is not None
        assert delayed[0].until_ms - why.now_ms > 50_000  # the server's clock was read
        await q.pause()
        paused = await q.explain(await q.add_job("b", {}))
        assert {"queue-paused", "no-worker"} <= {r.code for r in paused.reasons}
        assert (await q.explain("no-such-job")).status is None
    finally:
        await factory.aclose()
