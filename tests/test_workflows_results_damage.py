"""Workflows: one parent's undecodable result, and job ids used again.

* ``parent_results`` with one parent whose stored result cannot be decoded (bytes
  written by hand, a value sealed by a codec key no longer configured, a truncated
  compressed value) raised ``SerializationError`` for every parent; now the others read
  as usual and that parent reads ``status="damaged"`` with ``error`` saying why (its
  bytes stay in Redis as they are). A ``data_transformer`` gets the same reading.
* A dependency names the job that exists now under its id: a job whose id held a
  finished job whose dependency record is still kept (its job record removed by
  ``remove_job`` or by retention, the id then used by a new job) is not taken as done
  by a new dependent (it ran before the new job did); the dependent is refused. A job
  with dependencies added under such an id is refused too (it took over the earlier
  job's record: its workflow counted the step twice and ended early).
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest
import redis.asyncio

from helpers import QueueFactory, wait_until
from kitium_queue import JobQueue, JobRefusedError, JobStatus
from kitium_queue.features.compression import CompressionCodec
from kitium_queue.features.workflows import JobChainManager

pytestmark = pytest.mark.redis_only


class KeyedCodec:
    """A codec sealing values under one key (as an encryption codec would): a value
    sealed under another key does not open."""

    def __init__(self, key: bytes) -> None:
        self.tag = hashlib.sha256(key).digest()[:8]

    def encode(self, data: bytes) -> bytes:
        return self.tag + data

    def decode(self, data: bytes) -> bytes:
        if data[:8] != self.tag:
            raise ValueError("sealed under a key this codec does not hold")
        return data[8:]


async def _finished_parents(
    q: JobQueue, results: dict[str, Any], redis_client: redis.asyncio.Redis
) -> None:
    """Jobs ``a``, ``b``, ``c`` completed with ``results``, and ``kid`` depending on them
    (added after they completed: their results copied into their dependency records)."""

    @q.process("p")
    async def p(job: Any) -> Any:
        return results[job.id]

    for jid in results:
        await q.add_job("p", {}, job_id=jid)
    await q.start()

    async def all_done() -> bool:
        got = [await q.get_job_status(j) for j in results]
        return all(s is not None and s.status is JobStatus.COMPLETED for s in got)

    await wait_until(all_done, 15)
    await q.worker.stop(timeout_ms=500)  # type: ignore[union-attr]
    await q.add_job("k", {}, job_id="kid", depends_on=list(results))


@pytest.mark.parametrize("cause", ["garbage", "old_key", "truncated"])
async def test_one_undecodable_parent_result_spoils_none_of_the_others(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis, cause: str
) -> None:
    big = {"text": "x" * 5000}
    codecs: list[Any] = []
    if cause == "old_key":
        codecs = [KeyedCodec(b"k1")]
    elif cause == "truncated":
        codecs = [CompressionCodec(algorithm="zlib", threshold=16)]
    q = make_queue("wfd", codecs=codecs)
    chains = JobChainManager(q)
    await _finished_parents(q, {"a": {"n": 1}, "b": big, "c": [3]}, redis_client)
    rk = q.keys.extra("dep:b")
    if cause == "garbage":
        await redis_client.hset(rk, "r", b"\xff\x00not json")
    elif cause == "truncated":
        stored = await redis_client.hget(rk, "r")
        assert stored is not None and len(stored) > 20
        await redis_client.hset(rk, "r", stored[: len(stored) // 2])
    else:  # sealed under a key this queue's codec no longer holds
        await redis_client.hset(rk, "r", KeyedCodec(b"k0").encode(b'{"text": "x"}'))
    bad = await redis_client.hget(rk, "r")

    got = await chains.parent_results("kid")
    assert got["a"].status == "completed" and got["a"].result == {"n": 1}
    assert got["c"].status == "completed" and got["c"].result == [3]
    assert got["b"].status == "damaged" and got["b"].result is None
    assert got["b"].job_id == "b"
    assert "result cannot be decoded" in (got["b"].error or "")
    assert "completed" in (got["b"].error or "")
    assert await redis_client.hget(rk, "r") == bad  # the bytes are left as they are


async def test_a_transformer_sees_the_damaged_parent_and_the_others(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    q = make_queue("wft", worker={"concurrency": 2})
    chains = JobChainManager(q)
    seen: dict[str, Any] = {}
    gate = asyncio.Event()

    def keep(data: Any, parents: Any) -> Any:
        seen.update({k: (v.status, v.result) for k, v in parents.items()})
        return data

    chains.register_transformer("keep", keep)

    @q.process("x")
    async def x(job: Any) -> Any:
        if job.id == "w:hold":
            await gate.wait()
        return {"from": job.id}

    steps = [
        {"name": "a", "job_name": "x"},
        {"name": "b", "job_name": "x"},
        {"name": "hold", "job_name": "x"},
        {
            "name": "d",
            "job_name": "x",
            "depends_on": ["a", "b", "hold"],
            "data_transformer": "keep",
        },
    ]
    await chains.execute_workflow("w", steps)
    await q.start()

    async def parents_done() -> bool:
        got = await chains.parent_results("w:d")
        return got["a"].status == "completed" and got["b"].status == "completed"

    await wait_until(parents_done, 15)
    await redis_client.hset(q.keys.extra("dep:w:a"), "r", b"\x00garbage")
    gate.set()
    await wait_until(lambda: "hold" in seen, 15)
    assert seen["a"] == ("damaged", None)
    assert seen["b"] == ("completed", {"from": "w:b"})
    assert seen["hold"] == ("completed", {"from": "w:hold"})
    status = await chains.get_workflow_status("w")
    assert status is not None and status.steps["a"].state == "completed"


@pytest.mark.parametrize("how", ["remove_job", "retention"])
async def test_a_dependency_on_a_reused_id_is_not_the_earlier_job(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis, how: str
) -> None:
    q = make_queue("wfr")
    chains = JobChainManager(q)

    @q.process("p")
    async def p(job: Any) -> Any:
        return "old"

    # A chosen id is free again once its job is removed (job_id_window=False), or once
    # its window ended: both shorter than the workflows' retention.
    opts: dict[str, Any] = {"job_id_window": False}
    if how == "retention":
        opts["remove_on_complete"] = True
    await q.add_job("p", {}, job_id="P", **opts)
    await q.add_job("k", {}, job_id="D1", depends_on=["P"])  # P is followed: dep:P
    await q.start()

    async def p_done() -> bool:
        got = await chains.parent_results("D1")
        return got["P"].status == "completed"

    await wait_until(p_done, 15)
    await q.worker.stop(timeout_ms=500)  # type: ignore[union-attr]
    if how == "remove_job":
        assert await q.remove_job("P")
    assert await q.get_job_status("P") is None
    assert await redis_client.exists(q.keys.extra("dep:P")) == 1

    await q.add_job("p", {}, job_id="P", job_id_window=False)  # the id used again
    got = await q.get_job_status("P")
    assert got is not None and got.status is JobStatus.WAITING
    with pytest.raises(JobRefusedError, match=r"depends on job P, whose id was used again"):
        await q.add_job("k", {}, job_id="D2", depends_on=["P"])
    assert await q.get_job_status("D2") is None
    assert await redis_client.exists(q.keys.extra("dep:D2"), q.keys.extra("dep-p:D2")) == 0
    assert await redis_client.smembers(q.keys.extra("dep-c:P")) == {b"D1"}
    # The earlier job's record is kept for its own dependent.
    assert (await chains.parent_results("D1"))["P"].result == "old"
    # With no new job under that id, the kept record still counts as done.
    assert await q.remove_job("P")
    await q.add_job("k", {}, job_id="D3", depends_on=["P"])
    st = await q.get_job_status("D3")
    assert st is not None and st.status is JobStatus.WAITING


async def test_a_job_with_parents_under_a_reused_step_id_is_refused(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    q = make_queue("wfs", worker={"concurrency": 4})
    chains = JobChainManager(q)
    gate = asyncio.Event()

    @q.process("x")
    async def x(job: Any) -> Any:
        if job.id == "w:b":
            await gate.wait()
        return job.id

    steps = [
        {"name": "a", "job_name": "x", "options": {"remove_on_complete": True}},
        {"name": "b", "job_name": "x", "depends_on": ["a"]},
    ]
    await chains.execute_workflow("w", steps)
    await q.add_job("x", {}, job_id="other")
    await q.start()

    async def a_gone() -> bool:
        st = await chains.get_workflow_status("w")
        return st is not None and st.steps["a"].state == "completed"

    await wait_until(a_gone, 15)
    assert await q.get_job_status("w:a") is None
    with pytest.raises(JobRefusedError, match=r"job id w:a was used again"):
        await q.add_job("x", {}, job_id="w:a", depends_on=["other"])
    assert await q.get_job_status("w:a") is None
    gate.set()
    st = await chains.get_workflow_status("w")
    assert st is not None and st.steps["a"].state == "completed"

    async def ended() -> bool:
        s = await chains.get_workflow_status("w")
        return s is not None and s.state == "completed"

    await wait_until(ended, 15)
    s = await chains.get_workflow_status("w")
    assert s is not None and s.counts == {"completed": 2} and s.unfinished == 0
    assert (await chains.parent_results("w:b"))["a"].result == "w:a"
