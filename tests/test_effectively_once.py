"""Effectively-once processing and idempotency windows (``features.idempotency``).

Stored results that outlive retention, the TTL edge, the three windows (ttl,
until_finished, debounce), derived keys, execution records, 8 producer processes racing
on 2 partitions, and a worker SIGKILLed after its side effect (the documented re-run,
skipped by ``record_execution``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import (
    ConfigurationError,
    DeliveryGuarantee,
    IdempotencyManager,
    JobStatus,
    PartitionedQueue,
)
from kitium_queue.features.idempotency import derive_key

EO = {"delivery_guarantee": DeliveryGuarantee.EXACTLY_ONCE}
ROOT = Path(__file__).resolve().parents[1]


async def test_exactly_once_returns_the_stored_result_after_retention(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("eo", worker={"concurrency": 4})
    idem = IdempotencyManager(q)
    runs: list[Any] = []

    @q.process("pay")
    async def pay(job: Any) -> dict[str, Any]:
        runs.append(job.data)
        return {"charged": job.data["amount"]}

    first = await q.add_job(
        "pay", {"amount": 5}, idempotency_key="order-1", remove_on_complete=True, **EO
    )
    await q.start()

    async def stored() -> Any:
        return await idem.get_result("order-1")

    res = await wait_until(stored, 5)
    # Count-based retention (remove_on_complete) removed the job's hash at once...
    assert await q.get_job_status(first) is None
    # ... and the result is still there, under the key.
    assert res.result == {"charged": 5} and res.job_id == first and res.source == "stored"
    again = await q.add_job("pay", {"amount": 5}, idempotency_key="order-1", **EO)
    await asyncio.sleep(0.2)
    assert again == first and runs == [{"amount": 5}]
    got = await idem.get_execution_result("order-1")
    assert got is not None and got.result == {"charged": 5}


async def test_result_by_job_id_and_by_key_while_the_job_is_kept(make_queue: QueueFactory) -> None:
    q = make_queue("eo2")
    idem = IdempotencyManager(q)
    q.process("n")(lambda job: job.data * 2)
    jid = await q.add_job("n", 21, idempotency_key="k", **EO)
    assert await idem.get_result("k") is None  # not run yet
    await q.start()
    await wait_for_status(q, jid, JobStatus.COMPLETED)
    by_id = await idem.get_result(jid)
    by_key = await idem.get_result("k")
    assert by_id is not None and by_id.result == 42 and by_id.source == "job"
    assert by_key is not None and by_key.job_id == jid and by_key.result == 42


async def test_a_key_that_expires_while_its_job_runs_keeps_no_result(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("edge", idempotency_ttl=150)
    idem = IdempotencyManager(q)
    gate = asyncio.Event()

    @q.process("slow")
    async def slow(job: Any) -> str:
        await gate.wait()
        return "done"

    first = await q.add_job("slow", None, idempotency_key="short", **EO)
    await q.start()
    await wait_for_status(q, first, JobStatus.ACTIVE)
    await asyncio.sleep(0.3)  # the key's window ends while the job runs
    # The second job's window is long, so that its result is still kept when read below
    # however slowly a loaded machine runs the jobs (150 ms could end before it).
    IdempotencyManager(q, ttl_ms=600_000)
    second = await q.add_job("slow", None, idempotency_key="short", **EO)
    assert second != first  # documented: a new window, a new job
    gate.set()
    await wait_for_status(q, first, JobStatus.COMPLETED)
    await wait_for_status(q, second, JobStatus.COMPLETED)
    res = await idem.get_result("short")
    # The key points to the second job now: its result is the one kept.
    assert res is not None and res.job_id == second


async def test_exactly_once_for_every_job_derives_keys(make_queue: QueueFactory) -> None:
    q = make_queue("all")
    IdempotencyManager(q, exactly_once=True)
    a = await q.add_job("n", {"x": 1, "y": [1, 2]})
    b = await q.add_job("n", {"y": [1, 2], "x": 1})  # same data, other key order
    c = await q.add_job("n", {"x": 2})
    assert a == b != c
    info = await q.get_job_status(a)
    assert info is not None
    assert info.options["idempotency_key"] == derive_key("n", {"x": 1, "y": [1, 2]})
    strict = make_queue("strict")
    IdempotencyManager(strict, derive_keys=False)
    with pytest.raises(ConfigurationError, match="needs idempotency_key"):
        await strict.add_job("n", 1, **EO)
    plain = make_queue("plain")
    with pytest.raises(ConfigurationError, match="exactly-once"):
        await plain.add_job("n", 1, **EO)


async def test_until_finished_window(make_queue: QueueFactory) -> None:
    q = make_queue("uf")
    IdempotencyManager(q, window="until_finished")
    gate = asyncio.Event()
    runs: list[int] = []

    @q.process("n")
    async def n(job: Any) -> None:
        runs.append(job.data)
        await gate.wait()

    a = await q.add_job("n", 1, idempotency_key="u")
    await q.start()
    await wait_for_status(q, a, JobStatus.ACTIVE)
    assert await q.add_job("n", 2, idempotency_key="u") == a  # running: suppressed
    gate.set()
    await wait_for_status(q, a, JobStatus.COMPLETED)
    b = await q.add_job("n", 3, idempotency_key="u")  # finished: the key is free
    assert b != a
    await wait_for_status(q, b, JobStatus.COMPLETED)
    assert runs == [1, 3]


async def test_debounce_window_replaces_data_and_pushes_the_start(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("db")
    IdempotencyManager(q, window="debounce")
    runs: list[Any] = []
    gate = asyncio.Event()

    @q.process("save")
    async def save(job: Any) -> None:
        runs.append(job.data)
        await gate.wait()

    t0 = time.monotonic()
    a = await q.add_job("save", "v1", idempotency_key="doc-1", delay=200)
    await asyncio.sleep(0.1)
    # The worker starts after the second add: however slow the machine, the first job
    # cannot have started before it (the order, not the clock, decides).
    b = await q.add_job("save", "v2", idempotency_key="doc-1", delay=200)
    await q.start()
    assert a == b
    info = await wait_for_status(q, a, JobStatus.ACTIVE, timeout=3)
    assert time.monotonic() - t0 >= 0.28  # pushed back by the second add
    assert info.data == "v2"
    # Active is recorded at the claim, a moment before the processor runs.
    await wait_until(lambda: runs == ["v2"], 3)
    # Started: a repeated key is a new job (trailing edge), and the key points to it.
    c = await q.add_job("save", "v3", idempotency_key="doc-1", delay=10)
    assert c != a
    gate.set()
    await wait_for_status(q, c, JobStatus.COMPLETED)
    assert runs == ["v2", "v3"]
    with pytest.raises(ConfigurationError, match="idempotency_window"):
        await q.add_job("save", 1, idempotency_key="x", idempotency_window="forever")


async def test_record_execution_and_clean_expired(make_queue: QueueFactory) -> None:
    q = make_queue("rec")
    idem = IdempotencyManager(q)
    assert await idem.get_execution_result("ext-1") is None
    await idem.record_execution("ext-1", "job-9", "charge", {"receipt": "r-1"}, ttl_ms=100)
    await idem.record_execution("ext-2", "job-8", "charge", 2, ttl_ms=60_000)
    got = await idem.get_execution_result("ext-1")
    assert got is not None and got.source == "recorded" and got.result == {"receipt": "r-1"}
    await asyncio.sleep(0.2)
    assert await idem.get_execution_result("ext-1") is None
    assert await idem.clean_expired() == 1  # ext-1's index entry; ext-2 stays
    assert await idem.clean_expired() == 0
    assert (await idem.get_execution_result("ext-2")) is not None
    for bad in ("", "a\nb", "x" * 600):
        with pytest.raises(ConfigurationError):
            await idem.get_execution_result(bad)


# ---------------------------------------------------------------- processes


_PRODUCER = textwrap.dedent("""
    import asyncio, sys
    from kitium_queue import PartitionedQueue, IdempotencyManager
    async def main():
        q = PartitionedQueue("race", partitions=2, redis=sys.argv[1], prefix=sys.argv[2])
        IdempotencyManager(q)
        ids = {}
        for k in range(int(sys.argv[3])):
            ids[k] = await q.add_job("run", {"k": k}, idempotency_key=f"key-{k}",
                                     delivery_guarantee="exactly-once")
        print(" ".join(f"{k}={v}" for k, v in ids.items()))
        await q.close()
    asyncio.run(main())
""")


@pytest.mark.redis_only
async def test_eight_producer_processes_on_two_partitions_run_each_key_once(
    redis_url: str,
    prefix: str,
    tmp_path: Path,
) -> None:
    keys = 60
    script = tmp_path / "producer.py"
    script.write_text(_PRODUCER)
    pq = PartitionedQueue(
        "race", partitions=2, redis=redis_url, prefix=prefix, worker={"concurrency": 20}
    )
    idem = IdempotencyManager(pq)
    client = aioredis.from_url(redis_url)
    runs = f"{prefix}:test-runs"

    @pq.process("run")
    async def run(job: Any) -> int:
        await client.rpush(runs, job.data["k"])
        return int(job.data["k"])

    try:
        await pq.start()
        env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{os.environ.get('PYTHONPATH', '')}"}
        procs = [
            subprocess.Popen(
                [sys.executable, str(script), redis_url, prefix, str(keys)],
                stdout=subprocess.PIPE,
                env=env,
            )
            for _ in range(8)
        ]
        outs = [p.communicate(timeout=60)[0].decode() for p in procs]
        assert all(p.returncode == 0 for p in procs)
        # Every process got the same id for each key.
        seen = [dict(kv.split("=") for kv in out.split()) for out in outs]
        assert all(s == seen[0] for s in seen) and len(seen[0]) == keys

        async def all_ran() -> bool:
            return int(await client.llen(runs)) >= keys

        await wait_until(all_ran, 20)
        await asyncio.sleep(0.3)
        ran = sorted(int(x) for x in await client.lrange(runs, 0, -1))
        assert ran == list(range(keys))  # each key executed exactly once
        res = await idem.get_result("key-7")
        assert res is not None and res.result == 7
    finally:
        await pq.close()
        await client.aclose()


_KILLED_WORKER = textwrap.dedent("""
    import asyncio, os, sys
    import redis.asyncio as aioredis
    from kitium_queue import JobQueue, IdempotencyManager
    async def main():
        q = JobQueue("kill", redis=sys.argv[1], prefix=sys.argv[2],
                     settings={"lock_duration": 500, "lock_renew_time": 100})
        idem = IdempotencyManager(q)
        side = aioredis.from_url(sys.argv[1])
        @q.process("charge")
        async def charge(job):
            done = await idem.get_execution_result(job.idempotency_key)
            if done is not None:
                await side.rpush(sys.argv[2] + ":skipped", job.id)
                return done.result
            await side.rpush(sys.argv[2] + ":charged", job.id)   # the side effect
            await idem.record_execution(job.idempotency_key, job.id, job.name, {"ok": 1})
            if sys.argv[3] == "die":
                await side.rpush(sys.argv[2] + ":ready", "1")
                await asyncio.sleep(3600)                          # killed here
            return {"ok": 1}
        await q.run_worker(concurrency=1)
    asyncio.run(main())
""")


@pytest.mark.redis_only
async def test_a_worker_killed_after_its_side_effect_runs_the_job_again_with_the_same_key(
    redis_url: str,
    prefix: str,
    tmp_path: Path,
) -> None:
    script = tmp_path / "worker.py"
    script.write_text(_KILLED_WORKER)
    client = aioredis.from_url(redis_url)
    from kitium_queue import JobQueue

    q = JobQueue("kill", redis=redis_url, prefix=prefix)
    IdempotencyManager(q)
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{os.environ.get('PYTHONPATH', '')}"}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        jid = await q.add_job("charge", {"amount": 5}, idempotency_key="pay-1", **EO)
        procs.append(
            subprocess.Popen([sys.executable, str(script), redis_url, prefix, "die"], env=env)
        )

        async def ready() -> bool:
            return bool(await client.llen(f"{prefix}:ready"))

        await wait_until(ready, 20)
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(10)
        procs.append(
            subprocess.Popen([sys.executable, str(script), redis_url, prefix, "ok"], env=env)
        )
        await wait_for_status(q, jid, JobStatus.COMPLETED, timeout=20)
        # The job ran twice (at-least-once), the side effect once: the second run found
        # the record made under the same key and skipped it.
        assert await client.lrange(f"{prefix}:charged", 0, -1) == [jid.encode()]
        assert await client.lrange(f"{prefix}:skipped", 0, -1) == [jid.encode()]
        info = await q.get_job_status(jid)
        assert info is not None and info.stalls == 1 and info.result == {"ok": 1}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        await q.close()
        await client.aclose()


def test_cli_result_by_key(redis_url: str, prefix: str, tmp_path: Path) -> None:
    import json
    import uuid

    from click.testing import CliRunner

    from kitium_queue import JobQueue
    from kitium_queue.cli import main

    module = f"kq_cli_eo_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        "from kitium_queue import JobQueue, IdempotencyManager\n"
        f"queue = JobQueue('cli-eo', redis={redis_url!r}, prefix={prefix!r})\n"
        "idem = IdempotencyManager(queue)\n"
    )

    async def fill() -> None:
        q = JobQueue("cli-eo", redis=redis_url, prefix=prefix)
        IdempotencyManager(q)
        q.process("n")(lambda job: {"total": 3})
        jid = await q.add_job("n", 1, idempotency_key="inv-1", remove_on_complete=True, **EO)
        await q.start()

        async def done() -> bool:
            return bool(await IdempotencyManager.for_queue(q).get_result("inv-1"))

        await wait_until(done, 5)
        assert await q.get_job_status(jid) is None
        await q.close()

    asyncio.run(fill())
    sys.path.insert(0, str(tmp_path))
    try:
        runner = CliRunner()
        out = runner.invoke(main, ["result", f"{module}:queue", "inv-1", "--json"])
        assert out.exit_code == 0, out.output
        data = json.loads(out.output)
        assert data["result"] == {"total": 3} and data["source"] == "stored"
        missing = runner.invoke(main, ["result", f"{module}:queue", "nope"])
        assert missing.exit_code == 1 and "no completed job" in missing.output
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(module, None)


async def test_a_kept_or_recorded_result_is_redacted_as_its_job_would_be(
    make_queue: QueueFactory,
) -> None:
    """A result read back after its job was removed (kept under its key) or recorded by
    ``record_execution`` is shown through the redactors (compliance ``redact_fields``)
    wherever job results are: the CLI's ``result``, a dashboard, ``redacted_views()``."""
    from kitium_queue.context import redacted_views
    from kitium_queue.features.compliance import ComplianceManager

    q = make_queue("eo-red")
    idem = IdempotencyManager(q)
    ComplianceManager(q, redact_fields=["card"], run_service=False)
    q.process("pay")(lambda job: {"card": "4111-SECRET", "total": 3})
    await q.add_job("pay", {}, idempotency_key="k-1", remove_on_complete=True, **EO)
    await idem.record_execution("k-2", "j-2", "pay", {"card": "5500-SECRET", "ok": True})
    await q.start()

    async def kept() -> Any:
        return await idem.get_result("k-1")

    plain = await wait_until(kept, 5)
    assert plain.source == "stored" and plain.result["card"] == "4111-SECRET"
    with redacted_views():
        stored = await idem.get_result("k-1")
        recorded = await idem.get_execution_result("k-2")
    assert stored is not None and stored.result == {"card": "***", "total": 3}
    assert recorded is not None and recorded.source == "recorded"
    assert recorded.result == {"card": "***", "ok": True}
