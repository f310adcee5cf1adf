"""Key rotation reaches the copies of job values other features keep (``copies.py``).

The workflows feature keeps, in ``dep:<id>``, a cancelled step's data (``sd``: a replay
of the failed step revives it) and a finished step's result (``r``: what its dependents
read). After a rotation is done and the old key is dropped, a revived step still opens
its data and its parent's result copy still opens; a copy whose binding cannot be known
(its job's record gone) is reported undecryptable and left as it was.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from helpers import QueueFactory, wait_until
from kitium_queue import JobQueue
from kitium_queue.features.encryption import EncryptionManager, KeyConfig, generate_key
from kitium_queue.features.workflows import JobChainManager, WorkflowStep

K1, K2 = generate_key(), generate_key()
MARK = "4111-COPY"


@pytest.fixture
async def rq(redis_url: str, prefix: str) -> AsyncIterator[QueueFactory]:
    factory = QueueFactory(redis_url, prefix)
    yield factory
    await factory.aclose()


async def _kid(client: aioredis.Redis, q: JobQueue, key: str, field: str) -> str:
    raw = await client.hget(q.keys.extra(key), field)
    assert raw, f"{key} {field} is empty"
    env = orjson.loads(raw)
    assert isinstance(env, dict) and "kqe" in env
    return str(env["kid"])


async def _workflow_state(chains: JobChainManager, wid: str, state: str) -> Any:
    async def check() -> bool:
        st = await chains.get_workflow_status(wid)
        return st is not None and st.state == state and st.unfinished == 0

    await wait_until(check, 15)
    return await chains.get_workflow_status(wid)


async def test_rotation_reencrypts_kept_step_data_and_result_copies(
    rq: QueueFactory, redis_client: aioredis.Redis
) -> None:
    # Old processes: both keys, k1 current. p completes (result copy in dep:w:p), a
    # fails for good, so b is cancelled with its data kept in dep:w:b.
    q = rq("rc", worker={"concurrency": 4}, dlq={"enabled": True})
    m = EncryptionManager(
        q, keys=[KeyConfig("k1", K1), KeyConfig("k2", K2)], rotation_grace_ms=0, run_rotation=False
    )
    chains = JobChainManager(q)

    @q.process("ok")
    async def ok(job: Any) -> Any:
        return {"secret": "R-" + job.id}

    @q.process("fail")
    async def fail(job: Any) -> Any:
        raise RuntimeError("closed")

    enc = {"encrypted": True}
    await chains.execute_workflow(
        "w",
        [
            WorkflowStep("p", "ok", {"p": 1}, options=enc),
            WorkflowStep("a", "fail", {"a": 1}, depends_on=["p"], options=enc),
            WorkflowStep("b", "ok", {"card": MARK}, depends_on=["a"], options=enc),
        ],
    )
    await q.start()
    st = await _workflow_state(chains, "w", "failed")
    assert st.steps["a"].state == "dlq" and st.steps["b"].state == "cancelled"
    await q.worker.stop(timeout_ms=500)  # type: ignore[union-attr]
    client = redis_client
    assert await _kid(client, q, "dep:w:b", "sd") == "k1"
    assert await _kid(client, q, "dep:w:p", "r") == "k1"

    await m.rotate_key("k1", "k2")
    done = await m.run_rotation()
    assert done.state == "done" and done.undecryptable == 0
    assert await _kid(client, q, "dep:w:b", "sd") == "k2"
    assert await _kid(client, q, "dep:w:p", "r") == "k2"
    await q.close()

    # New processes: only k2 (k1 dropped). Replaying a revives b from its kept data.
    q2 = rq("rc", worker={"concurrency": 4}, dlq={"enabled": True})
    m2 = EncryptionManager(q2, keys=[KeyConfig("k2", K2)], run_rotation=False)
    chains2 = JobChainManager(q2)
    seen: dict[str, Any] = {}

    @q2.process("fail")
    async def fail_now_ok(job: Any) -> Any:
        parent = (await chains2.parent_results(job))["p"].result
        seen["p"] = m2.open_job_result("w:p", "ok", parent)
        return "a-done"

    @q2.process("ok")
    async def ok2(job: Any) -> Any:
        seen[job.id] = job.data
        return None

    await q2.start()
    assert await q2.replay_dlq() == 1
    st = await _workflow_state(chains2, "w", "completed")
    assert st.counts == {"completed": 3}
    assert seen == {"p": {"secret": "R-w:p"}, "w:b": {"card": MARK}}


async def test_a_result_copy_whose_job_is_gone_is_reported_not_destroyed(
    rq: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q = rq("rg", worker={"concurrency": 2})
    m = EncryptionManager(
        q, keys=[KeyConfig("k1", K1), KeyConfig("k2", K2)], rotation_grace_ms=0, run_rotation=False
    )
    chains = JobChainManager(q)

    @q.process("ok")
    async def ok(job: Any) -> Any:
        return {"secret": job.id}

    await chains.execute_workflow(
        "g", [WorkflowStep("p", "ok", {"p": 1}, options={"encrypted": True})]
    )
    await q.start()
    await _workflow_state(chains, "g", "completed")
    await q.worker.stop(timeout_ms=500)  # type: ignore[union-attr]
    # The job's record goes (as removal after completion would): the copy stays, bound to
    # a job name nothing else records.
    await redis_client.delete(q.keys.job("g:p"))
    before = await redis_client.hget(q.keys.extra("dep:g:p"), "r")
    await m.rotate_key("k1", "k2")
    done = await m.run_rotation()
    assert done.state == "done" and done.undecryptable == 1
    assert "dep:g:p r" in (done.problems or "")
    assert await redis_client.hget(q.keys.extra("dep:g:p"), "r") == before
