"""A failed encrypted step's sealed reason in the workflows' records (``dep:<id>``)
against a real Redis.

The reason an encrypted job's failure stores is sealed (``features/encryption/
failures.py``); the workflows feature copies it into the step's dependency record. The
copy is kept whole (a cut one never opens), or replaced by a marker when it is longer
than any filter answers; the workflow views (``get_workflow_status``, ``parent_results``,
``kitium-queue workflows show``) open it where the key is held and show ``(sealed: key
k1)`` elsewhere, also once the job's own record is gone; a key rotation re-seals the
copy, so a process holding only the new key opens it. A plain queue's reasons are
clipped as before.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner

import test_encryption
from helpers import QueueFactory, app_module, wait_for_status, wait_until
from kitium_queue import JobQueue, JobStatus
from kitium_queue.cli import main
from kitium_queue.features.encryption import EncryptionManager, KeyConfig, generate_key
from kitium_queue.features.workflows import JobChainManager, WorkflowStep
from kitium_queue.middleware import MAX_FILTERED_REASON_BYTES

K1, K2 = generate_key(), generate_key()
MARK = "CARD-4111-WF-7c1e"
#: A reason far longer than the 2,000 bytes a dependency record keeps of a clear one:
#: sealed, about 4 KB of base64 and JSON.
LONG = f"card {MARK} " + "x" * 3000

rq = test_encryption.rq  # the Redis queue factory of the encryption tests


def enc_queue(rq: QueueFactory, name: str, *keys: str) -> tuple[JobQueue, EncryptionManager]:
    """A queue with an ``EncryptionManager`` holding ``keys`` (``k1``, ``k2``; the first
    current), and workflows."""
    q = rq(name, worker={"concurrency": 4}, dlq={"enabled": True})
    held = [KeyConfig(k, {"k1": K1, "k2": K2}[k]) for k in keys]
    m = EncryptionManager(q, keys=held, rotation_grace_ms=0, run_rotation=False)
    JobChainManager(q)
    return q, m


def steps(reason: str, **opts: Any) -> list[WorkflowStep]:
    """``a`` fails with ``reason`` (``on_failure="continue"``), ``b`` reads it."""
    return [
        WorkflowStep("a", "boom", {"why": reason}, on_failure="continue", options=opts),
        WorkflowStep("b", "read", {}, depends_on=["a"], options=opts),
    ]


def processors(q: JobQueue, chains: JobChainManager, seen: dict[str, Any]) -> None:
    @q.process("boom")
    async def boom(job: Any) -> Any:
        raise ValueError(job.data["why"])

    @q.process("read")
    async def read(job: Any) -> Any:
        seen["a"] = (await chains.parent_results(job))["a"]
        return "read"


async def finished(chains: JobChainManager, wid: str) -> Any:
    async def check() -> bool:
        st = await chains.get_workflow_status(wid)
        return st is not None and st.unfinished == 0

    await wait_until(check, 15)
    return await chains.get_workflow_status(wid)


async def stored(client: aioredis.Redis, q: JobQueue, key: str) -> bytes:
    raw = await client.hget(q.keys.extra(key), "e")
    assert raw is not None, key
    return bytes(raw)


def whole_envelope(raw: bytes) -> dict[str, Any]:
    """The envelope of a sealed text stored whole (fails on one cut short)."""
    assert raw.startswith(b"(sealed: key k1) {"), raw[:60]
    env = orjson.loads(raw[raw.index(b") {") + 2 :])
    assert isinstance(env, dict) and env.get("kid") == "k1"
    return env


async def test_a_sealed_reason_is_kept_whole_and_opens_in_the_workflow_views(
    rq: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q, _ = enc_queue(rq, "wsr", "k1")
    chains = JobChainManager.for_queue(q)
    seen: dict[str, Any] = {}
    processors(q, chains, seen)
    await chains.execute_workflow("w", steps(LONG, encrypted=True))
    await q.start()
    st = await finished(chains, "w")
    reason = f"ValueError: {LONG}"

    # Stored sealed and whole: the copy parses, holds no trace of the text.
    raw = await stored(redis_client, q, "dep:w:a")
    assert len(raw) > 2000 and MARK.encode() not in raw
    whole_envelope(raw)
    assert raw == await redis_client.hget(q.keys.job("w:a"), "e")
    # The views of the process holding the key open it.
    assert st.steps["a"].state == "dlq" and st.steps["a"].error == reason
    assert seen["a"].status == "failed" and seen["a"].error == reason
    assert (await chains.parent_results("w:b"))["a"].error == reason
    await q.worker.stop(timeout_ms=500)  # type: ignore[union-attr]

    # A process whose manager lacks k1: the placeholder, never the envelope.
    other, _ = enc_queue(rq, "wsr", "k2")
    chains2 = JobChainManager.for_queue(other)
    st2 = await chains2.get_workflow_status("w")
    assert st2 is not None and st2.steps["a"].error == "(sealed: key k1)"
    assert (await chains2.parent_results("w:b"))["a"].error == "(sealed: key k1)"

    # The job's own record gone (removed): the copy, bound to the name kept with it,
    # still opens with the key, and still shows the placeholder without it.
    await redis_client.delete(q.keys.job("w:a"))
    st = await chains.get_workflow_status("w")
    assert st is not None and st.steps["a"].error == reason
    assert (await chains.parent_results("w:b"))["a"].error == reason
    st2 = await chains2.get_workflow_status("w")
    assert st2 is not None and st2.steps["a"].error == "(sealed: key k1)"

    # A copy cut short (as copies were once clipped) is never shown, with or without k1.
    await redis_client.hset(q.keys.extra("dep:w:a"), "e", raw[:2000])
    for c in (chains, chains2):
        st = await c.get_workflow_status("w")
        assert st is not None and st.steps["a"].error == "(sealed: malformed or cut short)"


async def test_a_sealed_reason_longer_than_any_filter_answers_is_a_marker(
    rq: QueueFactory, redis_client: aioredis.Redis
) -> None:
    # A parent finished by a process without the workflows feature: the heal copies its
    # stored reason, here a sealed-looking text longer than a filter may answer
    # (written by hand). It becomes a marker with its length, never a part of it.
    q, _ = enc_queue(rq, "wsm", "k1")
    chains = JobChainManager.for_queue(q)
    parent = await q.add_job("boom", {"why": "x"}, attempts=1, on_failure="continue")
    kid = await q.add_job("read", {}, depends_on=[parent])
    plain = rq("wsm", worker={"concurrency": 2}, dlq={"enabled": True})

    @plain.process("boom")
    async def boom(job: Any) -> Any:
        raise ValueError("boom")

    await plain.start()
    await wait_for_status(plain, parent, JobStatus.DLQ, timeout=10)
    await plain.worker.stop(timeout_ms=500)  # type: ignore[union-attr]
    env = orjson.dumps({"kqe": 1, "kid": "k1", "pad": "y" * MAX_FILTERED_REASON_BYTES})
    huge = b"(sealed: key k1) " + env
    await redis_client.hset(q.keys.job(parent), "e", huge)
    report = await chains.heal()
    assert report.parents == 1
    raw = (await stored(redis_client, q, f"dep:{parent}")).decode()
    assert raw.startswith("(sealed: not kept: a sealed reason of ") and "y" * 10 not in raw
    assert f" {len(huge)} bytes, above the {MAX_FILTERED_REASON_BYTES} " in raw
    shown = next(iter((await chains.parent_results(kid)).values()))
    assert shown.status == "failed" and shown.error == raw


async def test_a_rotation_reseals_the_copied_reason(
    rq: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q, m = enc_queue(rq, "wsk", "k1", "k2")
    chains = JobChainManager.for_queue(q)
    processors(q, chains, {})
    await chains.execute_workflow("w", steps(LONG, encrypted=True))
    await q.start()
    await finished(chains, "w")
    await q.worker.stop(timeout_ms=500)  # type: ignore[union-attr]
    # The job's record goes: the copy is bound to the name kept with it.
    await redis_client.delete(q.keys.job("w:a"))
    before = await stored(redis_client, q, "dep:w:a")
    whole_envelope(before)

    await m.rotate_key("k1", "k2")
    done = await m.run_rotation()
    assert done.state == "done" and done.undecryptable == 0, done.problems
    after = await stored(redis_client, q, "dep:w:a")
    assert after.startswith(b"(sealed: key k2) {") and MARK.encode() not in after

    # A process holding only k2 (k1 retired) opens it.
    new, _ = enc_queue(rq, "wsk", "k2")
    st = await JobChainManager.for_queue(new).get_workflow_status("w")
    assert st is not None and st.steps["a"].error == f"ValueError: {LONG}"


async def test_a_plain_queues_reasons_are_clipped_as_before(
    rq: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q = rq("wsp", worker={"concurrency": 4}, dlq={"enabled": True})
    chains = JobChainManager(q)
    seen: dict[str, Any] = {}
    processors(q, chains, seen)
    await chains.execute_workflow("w", steps(LONG))
    await q.start()
    st = await finished(chains, "w")
    clipped = f"ValueError: {LONG}"[:2000]
    assert await stored(redis_client, q, "dep:w:a") == clipped.encode()
    assert st.steps["a"].error == clipped and seen["a"].error == clipped
    assert await redis_client.hget(q.keys.extra("dep:w:a"), "en") is None


@pytest.fixture
def app(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[str]:
    source = (
        "from kitium_queue import JobQueue\n"
        "from kitium_queue.features.encryption import EncryptionManager, KeyConfig\n"
        "from kitium_queue.features.workflows import JobChainManager\n"
        f"queue = JobQueue('wsc', redis={redis_url!r}, prefix={prefix!r})\n"
        f"EncryptionManager(queue, keys=[KeyConfig('k1', {K1!r})], run_rotation=False)\n"
        "JobChainManager(queue)\n"
    )
    with app_module(tmp_path, source, "kq_cli_wf_sealed") as module:
        yield f"{module}:queue"


def test_workflows_show_opens_the_reason_with_the_key(
    app: str, redis_url: str, prefix: str
) -> None:
    async def run() -> None:
        factory = QueueFactory(redis_url, prefix)
        try:
            q, _ = enc_queue(factory, "wsc", "k1")
            processors(q, JobChainManager.for_queue(q), {})
            await JobChainManager.for_queue(q).execute_workflow("w", steps(LONG, encrypted=True))
            await q.start()
            await finished(JobChainManager.for_queue(q), "w")
        finally:
            await factory.aclose()

    asyncio.run(run())
    out = CliRunner().invoke(main, ["workflows", "show", app, "w", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["steps"]["a"]["error"] == f"ValueError: {LONG}"
