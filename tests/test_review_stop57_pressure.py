"""Redis under pressure, attacked: a full Redis during a drain with every feature that
adds writes, a failed background save, evicted records, replica acknowledgements and
the start-up checks. Each test runs against private redis-servers."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
import redis.asyncio as aioredis

from _redis import RedisServer
from helpers import wait_until
from kitium_queue import (
    FIFOQueueManager,
    JobChainManager,
    JobQueue,
    WebhookConfig,
    WebhookManager,
    WorkflowStep,
    WriteRefusedError,
    generate_secret,
)

pytestmark = pytest.mark.redis_only

STATE_SETS = ("wait", "active", "delayed", "completed", "failed", "dlq")
STATUS = {"wait": "waiting"}


#: One atomic look (a read-only script): every job in at most one state set, and each
#: record's status that of the set holding it (parked, ``pending``, jobs are in none).
_CHECK = """
local where, problems = {}, {}
for i = 1, #KEYS - 1 do
  for _, id in ipairs(redis.call('ZRANGE', KEYS[i], 0, -1)) do
    if where[id] then problems[#problems + 1] = id .. ' in ' .. where[id] .. ' and ' .. ARGV[i] end
    where[id] = ARGV[i]
  end
end
local cursor = '0'
repeat
  local got = redis.call('SCAN', cursor, 'MATCH', KEYS[#KEYS] .. '*', 'COUNT', 1000)
  cursor = got[1]
  for _, key in ipairs(got[2]) do
    if redis.call('TYPE', key)['ok'] == 'hash' then
      local id = string.sub(key, #KEYS[#KEYS] + 1)
      local st = redis.call('HGET', key, 'st') or 'waiting'
      if st ~= 'pending' and where[id] ~= st then
        problems[#problems + 1] = id .. ': st=' .. st .. ', found in ' .. tostring(where[id])
      end
    end
  end
until cursor == '0'
return problems
"""


async def _problems(client: aioredis.Redis, q: JobQueue) -> list[str]:
    keys = [getattr(q.keys, a) for a in STATE_SETS] + [q.keys.job("")]
    names = [STATUS.get(a, a) for a in STATE_SETS]
    got = await client.eval(_CHECK, len(keys), *keys, *names)
    return [g.decode() for g in got]


async def _cap_memory(client: aioredis.Redis, headroom: int) -> None:
    used = int((await client.info("memory"))["used_memory"])
    await client.config_set("maxmemory", str(used + headroom))


async def test_a_drain_with_every_feature_survives_a_full_redis(prefix: str, receiver: Any) -> None:
    with RedisServer("--maxmemory-policy", "noeviction") as srv:
        client = aioredis.from_url(srv.url)
        q = JobQueue(
            "full",
            redis=srv.url,
            prefix=prefix,
            worker={"concurrency": 8},
            settings={"max_stalled_interval": 200},
        )
        fifo = FIFOQueueManager(q)
        chains = JobChainManager(q)
        hooks = WebhookManager(q, allow_networks=["127.0.0.0/8"])
        q.set_rate_limit("rl:*", max=1000, duration=1000)
        q.set_concurrency_limit("cc:*", 2)
        ran: list[str] = []
        gate = asyncio.Event()
        gate.set()
        flaky: set[str] = set()

        @q.process("n")
        async def n(job: Any) -> str:
            await gate.wait()
            ran.append(job.id)
            if job.data.get("flaky") and job.id not in flaky:
                flaky.add(job.id)
                raise RuntimeError("first try fails")
            return "r" * 300

        try:
            await hooks.register_webhook(
                WebhookConfig(
                    url=receiver.url,
                    secret=generate_secret(),
                    events=["job-completed", "job-failed"],
                    delivery_strategy="guaranteed",
                )
            )
            await q.start()
            added: set[str] = set()
            keyed: dict[str, str] = {}
            workflows: list[str] = []
            refused = 0

            async def add_round(r: int) -> None:
                nonlocal refused
                try:
                    for i in range(10):
                        opts: dict[str, Any] = {}
                        kind = i % 5
                        if kind == 0:
                            opts["message_group_id"] = f"g{i % 3}"
                        elif kind == 1:
                            opts["rate_limit_key"] = f"rl:{i % 2}"
                        elif kind == 2:
                            opts["concurrency_key"] = f"cc:{i % 2}"
                        elif kind == 3:
                            opts["idempotency_key"] = f"k{r}-{i}"
                        data = {"pad": "p" * 1500, "flaky": i == 4, "r": r}
                        jid = await q.add_job("n", data, **opts)
                        added.add(jid)
                        if "idempotency_key" in opts:
                            keyed[opts["idempotency_key"]] = jid
                    wid = f"wf{r}"
                    await chains.execute_workflow(
                        wid,
                        [
                            WorkflowStep("a", "n", {"pad": "w"}),
                            WorkflowStep("b", "n", {"pad": "w"}, depends_on=["a"]),
                        ],
                    )
                    workflows.append(wid)
                except WriteRefusedError as exc:
                    assert "nothing of this call was written" in str(exc), exc
                    refused += 1

            for r in range(5):
                await add_round(r)
            gate.clear()  # a backlog builds up while Redis fills
            await _cap_memory(client, 2 * 1024 * 1024)
            r = 5
            while refused < 3 and r < 400:
                await add_round(r)
                r += 1
            assert refused >= 3, "Redis never filled up"
            # While full: the problems check holds, nothing in two sets, and the workers
            # drain the backlog (claims, outcomes, retries, parked jobs, workflow steps).
            assert await _problems(client, q) == []
            gate.set()

            async def empty() -> bool:
                st = await q.get_stats()
                return (st.waiting, st.active, st.delayed, st.pending) == (0, 0, 0, 0)

            await wait_until(empty, 60, message="the workers did not drain a full Redis")
            with pytest.raises(WriteRefusedError):  # still full
                await q.add_job("n", {"pad": "p" * 1500})
            assert await _problems(client, q) == []
            await client.config_set("maxmemory", "0")
            await add_round(r + 1)

            async def drained() -> bool:
                st = await q.get_stats()
                if (st.waiting, st.active, st.delayed) != (0, 0, 0):
                    return False
                for w in workflows:
                    status = await chains.get_workflow_status(w)
                    if status is None or status.state != "completed":
                        return False
                return True

            await wait_until(drained, 60, message="the queue did not drain")
            assert await _problems(client, q) == []
            stats = await q.get_stats()
            assert stats.dlq == 0 and stats.failed == 0, stats
            for g in ("g0", "g1", "g2"):
                gs = await fifo.get_group_stats(g)
                assert (gs.size or 0, gs.waiting, gs.active) == (0, 0, 0), gs
            for key, jid in keyed.items():  # idempotency keys kept for the accepted jobs
                assert await q.add_job("n", {"again": True}, idempotency_key=key) == jid
            assert not (added - set(ran)), "accepted jobs never ran"
            # The completion of every accepted job was written to the outbox with it
            # (delivered, or still in the stream: entries whose delivery record Redis
            # refused while full are delivered again after claim_idle_ms).
            outboxed = {
                fields[b"j"].decode()
                for _, fields in await client.xrange(q.keys.extra("outbox"))
                if fields.get(b"e") == b"job-completed"
            }
            delivered = {r.json()["data"]["job_id"] for r in receiver.ok()}
            assert not (added - outboxed - delivered), "completions without their webhook"
        finally:
            gate.set()
            with contextlib.suppress(Exception):
                await q.close()
            await client.aclose()


async def test_admin_calls_on_evicted_records_never_crash(prefix: str) -> None:
    """allkeys-lru with ``allow_eviction``: a record evicted in each state (deleted here,
    which is what eviction does to a key) is reported, never a crash of an admin call."""
    from kitium_queue import KitiumQueueError

    with RedisServer("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru") as srv:
        client = aioredis.from_url(srv.url)
        q = JobQueue(
            "ev",
            redis=srv.url,
            prefix=prefix,
            settings={"allow_eviction": True},
            default_job_options={"attempts": 1},
        )
        gate = asyncio.Event()

        @q.process("n")
        async def n(job: Any) -> str:
            if job.data == "fail":
                raise RuntimeError("no")
            if job.data == "hold":
                await gate.wait()
            return "ok"

        try:
            await q.add_job("n", "ok", job_id="c")
            await q.add_job("n", "fail", job_id="x")
            await q.start(concurrency=2)
            await wait_until(lambda: _done(q, 2), 10)
            await q.add_job("n", "hold", job_id="a")
            await wait_until(lambda: _active(q, 1), 10)
            await q.pause()
            await q.add_job("n", "w", job_id="w")
            await q.add_job("n", "d", job_id="d", delay=600_000)
            for jid in ("c", "x", "a", "w", "d"):
                await client.delete(q.keys.job(jid))
            calls: list[tuple[str, Any]] = []
            for jid in ("c", "x", "a", "w", "d"):
                calls += [
                    (f"status {jid}", q.get_job_status(jid)),
                    (f"detail {jid}", q.get_job_detail(jid)),
                    (f"explain {jid}", q.explain(jid)),
                    (f"logs {jid}", q.get_job_logs(jid)),
                ]
            for st in ("waiting", "active", "delayed", "completed", "failed", "dlq"):
                calls.append((f"by status {st}", q.get_jobs_by_status(st)))  # type: ignore[arg-type]
            calls += [
                ("list", q.list_jobs("waiting")),
                ("dlq", q.get_dlq_jobs()),
                ("stats", q.get_stats()),
                ("health", q.health_check()),
                ("retry x", q.retry_job("x")),
                ("promote d", q.promote_job("d")),
                ("cancel a", q.cancel_job("a")),
                ("bulk retry", q.bulk_retry()),
                ("replay", q.replay_dlq()),
                ("promote all", q.promote_delayed()),
                ("recover", q.recover_stalled()),
                ("remove w", q.remove_job("w")),
                ("drain", q.drain()),
            ]
            crashes = []
            for name, call in calls:
                try:
                    await call
                except KitiumQueueError:
                    pass
                except Exception as exc:  # what the test looks for
                    crashes.append(f"{name}: {type(exc).__name__}: {exc}")
            assert crashes == [], crashes
            gate.set()
            await q.resume()
            assert (await q.get_stats()).missing_records >= 1
        finally:
            gate.set()
            await q.close()
            await client.aclose()


async def _done(q: JobQueue, n: int) -> bool:
    st = await q.get_stats()
    return st.completed + st.dlq + st.failed >= n


async def _active(q: JobQueue, n: int) -> bool:
    return (await q.get_stats()).active >= n


async def test_replica_acks_on_a_refusing_primary_say_refused_not_written(
    prefix: str, tmp_path: Any
) -> None:
    """``ReplicaAcks`` runs ``WAIT`` after the enqueue script in the same round trip: a
    script Redis refused (full, unable to save) must raise ``WriteRefusedError`` (nothing
    written), not ``ReplicaAckError`` ("written on the primary"); outcomes a refusing
    primary did not take are held and recorded once it takes them; a replica that goes
    away makes waiting calls fail after their timeout, never wedges the worker."""
    from helpers import SAVING_SERVER_ARGS, fail_saves, mend_saves, wait_replica_online
    from kitium_queue import ReplicaAckError, ReplicaAcks
    from kitium_queue.hooks import Subscriber

    primary = RedisServer(*SAVING_SERVER_ARGS, "--repl-diskless-sync-delay", "0").start()
    replica = RedisServer(
        "--replicaof", "127.0.0.1", str(primary.port), "--repl-diskless-sync-delay", "0"
    ).start()
    client = aioredis.from_url(primary.url)
    q = JobQueue("ra", redis=primary.url, prefix=prefix, worker={"concurrency": 4})
    ReplicaAcks(q, replicas=1, timeout_ms=200)
    errors: list[BaseException] = []

    class Watch(Subscriber):
        def queue_error(self, queue: str, error: BaseException) -> None:
            errors.append(error)

    q.subscribe(Watch())
    gate = asyncio.Event()
    ran: list[str] = []

    @q.process("n")
    async def n(job: Any) -> str:
        ran.append(job.id)
        await gate.wait()
        return "ok"

    try:
        await asyncio.to_thread(wait_replica_online, primary.port, replica.port)
        assert await q.add_job("n", {"i": 0})
        # Full: refused whole, by the single add, the batched adds and add_jobs.
        await _cap_memory(client, -1024 * 1024)
        for call in (
            q.add_job("n", {"i": 1}),
            q.add_jobs([("n", {"i": i}) for i in range(3)]),
        ):
            with pytest.raises(WriteRefusedError, match="out of memory"):
                await call
        got = await asyncio.gather(
            *(q.add_job("n", {"c": i}) for i in range(5)), return_exceptions=True
        )
        assert all(isinstance(g, WriteRefusedError) for g in got), got
        await client.config_set("maxmemory", "0")
        assert (await q.get_stats()).waiting == 1
        # Unable to save: refused whole; the worker's outcomes are held, not lost.
        await q.start()
        await wait_until(lambda: len(ran) == 1, 10)
        await asyncio.to_thread(fail_saves, primary.port)
        with pytest.raises(WriteRefusedError, match="MISCONF"):
            await q.add_job("n", {"i": 2})
        gate.set()
        await asyncio.sleep(0.5)
        assert (await q.get_stats()).completed == 0
        await asyncio.to_thread(mend_saves, primary.port, tmp_path)

        async def completed(n: int) -> bool:
            return (await q.get_stats()).completed == n

        await wait_until(lambda: completed(1), 15)
        assert not any(isinstance(e, ReplicaAckError) for e in errors), errors
        # The replica goes away mid-run: waiting adds fail after their timeout, saying
        # what was written; outcomes are recorded (reported unconfirmed); nothing wedges.
        replica.close()
        with pytest.raises(ReplicaAckError) as ei:
            await q.add_job("n", {"i": 3}, job_id="late")
        assert ei.value.written_ids == ["late"]
        await wait_until(lambda: completed(2), 15)
        assert any(isinstance(e, ReplicaAckError) for e in errors), errors
        assert await q.add_job("n", {"i": 4}, wait_replicas=0)
        await wait_until(lambda: completed(3), 15)
    finally:
        gate.set()
        await q.close()
        await client.aclose()
        replica.close()
        primary.close()


async def _rewrite_aof(client: aioredis.Redis) -> None:
    """BGREWRITEAOF once no rewrite runs (the new file is opened as it starts)."""

    async def started() -> bool:
        if (await client.info("persistence"))["aof_rewrite_in_progress"]:
            return False
        with contextlib.suppress(Exception):
            await client.bgrewriteaof()
            return True
        return False

    await wait_until(started, 15, message="no AOF rewrite could start")


async def _aof_writes_fail(client: aioredis.Redis, aof_dir: Any) -> None:
    """The next append-only file Redis opens is a full disk (``/dev/full``): with
    ``appendfsync everysec`` it then refuses every write, and PING, with ``MISCONF
    Errors writing to the AOF file``."""
    manifest = (aof_dir / "appendonly.aof.manifest").read_text()
    seq = max(int(part.split(".")[2]) for part in manifest.split() if ".incr.aof" in part)
    (aof_dir / f"appendonly.aof.{seq + 1}.incr.aof").symlink_to("/dev/full")
    await _rewrite_aof(client)

    async def refused() -> bool:
        with contextlib.suppress(Exception):
            await client.set("aof-probe", "1")
        return (await client.info("persistence"))["aof_last_write_status"] == "err"

    await wait_until(refused, 15, message="the AOF never failed")


async def test_a_server_that_cannot_write_its_aof_says_so(prefix: str) -> None:
    """``MISCONF`` has two causes: a failed background save (RDB) and a failed write of
    the append-only file. The second was reported as "its last background save
    failed", which sends an operator to the wrong file and the wrong setting."""
    with RedisServer("--appendonly", "yes", "--appendfsync", "everysec") as srv:
        client = aioredis.from_url(srv.url)
        q = JobQueue("aof", redis=srv.url, prefix=prefix)
        try:
            assert await q.add_job("n", {"before": True})
            aof_dir = srv.dir / "appendonlydir"
            await _aof_writes_fail(client, aof_dir)
            with pytest.raises(WriteRefusedError) as ei:
                await q.add_job("n", {"during": True})
            text = str(ei.value)
            assert "append-only file" in text and "MISCONF" in text, text
            assert "background save" not in text, text
            health = await q.health_check()
            assert not health.healthy and "append-only file" in (health.error or "")
            assert "background save" not in (health.error or ""), health.error
            # The disk mended: a rewrite opens a new file, and writes go on.
            for link in aof_dir.glob("*.incr.aof"):
                if link.is_symlink():
                    link.unlink()
            await _rewrite_aof(client)

            async def accepted() -> bool:
                with contextlib.suppress(WriteRefusedError):
                    return bool(await q.add_job("n", {"after": True}))
                return False

            await wait_until(accepted, 15)
        finally:
            await q.close()
            await client.aclose()


async def test_add_jobs_refused_after_its_first_chunk_says_the_rest_was_not_added(
    prefix: str,
) -> None:
    """An ``add_jobs`` of several chunks on a Redis that fills during the call: its
    first chunk is written, the next refused whole. The error says which jobs are in
    the queue and that the rest were not added (certain: Redis refused the script
    before its first write)."""
    from kitium_queue import PartialEnqueueError

    with RedisServer("--maxmemory-policy", "noeviction") as srv:
        client = aioredis.from_url(srv.url)
        q = JobQueue("chunks", redis=srv.url, prefix=prefix)
        try:
            assert await q.add_job("n", 0)
            await _cap_memory(client, 1_000_000)
            with pytest.raises(PartialEnqueueError) as ei:
                await q.add_jobs([("n", {"pad": "x" * 300}) for _ in range(2500)])
            err = ei.value
            assert isinstance(err.__cause__, WriteRefusedError)
            assert len(err.written_ids) == 1000 and err.failed_from == 1000
            assert (await q.get_stats()).waiting == 1001
            assert "were not added" in str(err), str(err)
        finally:
            await q.close()
            await client.aclose()


async def test_health_of_a_full_redis_says_the_workers_go_on(prefix: str, tmp_path: Any) -> None:
    """On a full Redis (noeviction) only what grows memory is refused: claims, renewals
    and outcomes go on, and the workers drain the queue. ``health`` said "new jobs,
    claims and outcomes are refused", which sends an operator after a stopped worker."""
    from helpers import health_cli

    with RedisServer("--maxmemory-policy", "noeviction") as srv:
        client = aioredis.from_url(srv.url)
        q = JobQueue("hf", redis=srv.url, prefix=prefix)
        ran: list[str] = []
        q.process("n", lambda job: ran.append(job.id))
        try:
            ids = await q.add_jobs([("n", i) for i in range(5)])
            await _cap_memory(client, -100_000)
            health = await q.health_check()
            error = health.error or ""
            assert not health.healthy and "out of memory" in error, error
            assert "claims and outcomes are refused" not in error, error
            assert "claims, lease renewals and outcomes go on" in error, error
            code, report = await health_cli(tmp_path, srv.url, "hf", prefix)
            failed = {c["name"] for c in report["checks"] if not c["ok"]}
            assert code == 4 and failed == {"writes", "memory"}, report
            # What it says holds: the worker drains the full Redis.
            await q.start()
            await wait_until(lambda: sorted(ran) == sorted(ids), 15)
        finally:
            await q.close()
            await client.aclose()
