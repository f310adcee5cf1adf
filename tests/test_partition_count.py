"""The partition count of a ``PartitionedQueue`` is recorded in Redis at its first use;
opening the queue with another count while the recorded layout still holds jobs, or
while a process still uses it, is refused (docs/scale-out.md, "Changing the partition
count"). Before, 4 -> 2 partitions showed 0 waiting and None for all 8 job ids."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
import weakref
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from helpers import app_module, wait_until
from kitium_queue import ConfigurationError, PartitionedQueue, QueueStats, SyncPartitionedQueue
from kitium_queue.cli import main
from kitium_queue.features import partitioncount, partitioned

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def make_pq(backend_url: str, prefix: str) -> AsyncIterator[Callable[..., PartitionedQueue]]:
    made: list[PartitionedQueue] = []

    def make(partitions: int, name: str = "orders", **kw: Any) -> PartitionedQueue:
        pq = PartitionedQueue(name, partitions=partitions, redis=backend_url, prefix=prefix, **kw)
        made.append(pq)
        return pq

    yield make
    for pq in made:
        await pq.close()


async def _record(pq: PartitionedQueue) -> dict[bytes, bytes]:
    client = await pq.queues[0].client()
    return dict(await client.hgetall(pq.count_record.key))


def _refused(old: int, new: int, jobs: int) -> str:
    return (
        rf"recorded in Redis with {old} partitions and this process opened it with "
        rf"partitions={new}.* {jobs} job\(s\)"
    )


async def test_another_count_is_refused_while_the_old_layout_holds_jobs(make_pq: Any) -> None:
    old, new = make_pq(4), make_pq(2)
    ids = [await old.add_job("n", {"i": i}) for i in range(8)]
    assert await _record(old) == {b"partitions": b"4", b"scheme": partitioncount.SCHEME.encode()}
    # Every path of the new count: stats, a job by id (of a partition 2 lacks too),
    # adding a job, the worker.
    for call in (
        new.get_stats,
        lambda: new.get_job_status(ids[0]),
        lambda: new.get_job_status("3:1"),
        lambda: new.add_job("n", {}),
        lambda: new.add_jobs([("n", {})]),
        lambda: new.start(concurrency=2),
    ):
        with pytest.raises(
            ConfigurationError, match=_refused(4, 2, 8) + r" that layout still holds \(8 waiting\)"
        ):
            await call()
    assert not new.is_worker_running()
    assert (await old.get_stats()).waiting == 8  # nothing of the old layout was touched
    assert await _record(old) == {b"partitions": b"4", b"scheme": partitioncount.SCHEME.encode()}
    await old.close()  # no process uses 4 now, but its 8 jobs still wait: still refused
    with pytest.raises(ConfigurationError, match=_refused(4, 2, 8)):
        await new.get_stats()


async def test_delayed_failed_and_dead_lettered_jobs_hold_the_layout_too(make_pq: Any) -> None:
    old = make_pq(3, dlq={"enabled": True})
    old.process("w", lambda job: (_ for _ in ()).throw(ValueError("no")))
    await old.add_job("w", "later", delay=600_000)
    bad = await old.add_job("w", "bad", attempts=1)
    await old.start(concurrency=1)
    await wait_until(lambda: _dead(old, bad), 10)
    await old.close()
    with pytest.raises(ConfigurationError, match=r"2 job\(s\).*\(1 delayed, 1 dlq\)"):
        await make_pq(5).get_stats()


async def _dead(pq: PartitionedQueue, job_id: str) -> bool:
    return [j.id for j in await pq.get_dlq_jobs()] == [job_id]


async def test_an_empty_unused_old_layout_is_re_recorded(
    make_pq: Any, caplog: pytest.LogCaptureFixture
) -> None:
    old = make_pq(4)
    old.process("n", lambda job: None)
    await old.add_jobs([("n", i) for i in range(8)])
    await old.start(concurrency=4)
    await wait_until(lambda: _completed(old, 8), 10)
    await old.close()  # completed jobs do not hold the layout
    new = make_pq(2)
    with caplog.at_level(logging.INFO, "kitium_queue"):
        assert (await new.get_stats()).waiting == 0
    assert "partition count 2 recorded (it was 4)" in caplog.text
    assert (await _record(new))[b"partitions"] == b"2"
    await new.get_job_status(await new.add_job("n", 1))
    # Now the old count is the other one: refused, naming the new layout's job.
    with pytest.raises(ConfigurationError, match=_refused(2, 4, 1)):
        await make_pq(4).get_stats()


async def _completed(pq: PartitionedQueue, n: int) -> bool:
    return (await pq.get_stats()).completed >= n


async def test_concurrent_starts_with_different_counts_one_wins(make_pq: Any) -> None:
    for round_ in range(5):
        name = f"race{round_}"
        four, two = make_pq(4, name), make_pq(2, name)
        answers = await asyncio.gather(four.get_stats(), two.get_stats(), return_exceptions=True)
        errors = [a for a in answers if isinstance(a, BaseException)]
        assert len(errors) == 1 and isinstance(errors[0], ConfigurationError), answers
        winner = four if isinstance(answers[0], QueueStats) else two
        loser = two if winner is four else four
        assert f"recorded in Redis with {winner.partitions} partitions" in str(errors[0])
        assert "1 process(es) using" in str(errors[0])
        record = await _record(winner)
        assert record[b"partitions"] == str(winner.partitions).encode()
        await winner.close()  # stopped and empty: the other count may take over now
        assert (await loser.get_stats()).waiting == 0
        assert (await _record(loser))[b"partitions"] == str(loser.partitions).encode()


_STARTER = """
import asyncio, sys, time
from kitium_queue import ConfigurationError, PartitionedQueue

async def main():
    url, prefix, n, at, hold = sys.argv[1:6]
    q = PartitionedQueue("orders", partitions=int(n), redis=url, prefix=prefix)
    time.sleep(max(0.0, float(at) - time.time()))
    try:
        await q.get_stats()
        print("ok", flush=True)
    except ConfigurationError as exc:
        print("refused", exc, flush=True)
    if hold == "kill":
        import os, signal
        os.kill(os.getpid(), signal.SIGKILL)
    await asyncio.sleep(float(hold))
    await q.close()

asyncio.run(main())
"""


def _starter(url: str, prefix: str, n: int, at: float, hold: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_STARTER), url, prefix, str(n), str(at), hold],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.mark.redis_only
def test_two_processes_starting_at_once_with_different_counts(redis_url: str, prefix: str) -> None:
    import time

    at = time.time() + 3  # both import first, then check within the same instant
    procs = [_starter(redis_url, prefix, n, at, "2") for n in (4, 2)]
    outs = [p.communicate(timeout=60) for p in procs]
    lines = [out.strip() for out, _ in outs]
    assert sorted(line.split()[0] for line in lines) == ["ok", "refused"], outs
    won = 4 if lines[0] == "ok" else 2
    refusal = next(line for line in lines if line.startswith("refused"))
    assert f"recorded in Redis with {won} partitions" in refusal
    assert "1 process(es) using" in refusal


@pytest.mark.redis_only
async def test_a_killed_process_is_forgotten_after_the_stale_bound(
    redis_url: str, prefix: str, make_pq: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc = _starter(redis_url, prefix, 4, 0, "kill")
    out, err = await asyncio.to_thread(proc.communicate, timeout=60)
    assert out.strip() == "ok" and proc.returncode == -signal.SIGKILL, err
    with pytest.raises(ConfigurationError, match=r"1 process\(es\) using 4 partitions are live"):
        await make_pq(2).get_stats()
    # Its entry is dropped once not refreshed for the stale bound (30 s; shortened here).
    monkeypatch.setattr(partitioncount, "_STALE_MS", 300)
    await asyncio.sleep(0.5)
    new = make_pq(2)
    assert (await new.get_stats()).waiting == 0
    assert (await _record(new))[b"partitions"] == b"2"


async def test_a_process_whose_count_was_taken_over_refuses_new_jobs(
    make_pq: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(partitioncount, "_REFRESH_S", 0.05)
    old = make_pq(4)
    await old.add_job("n", 1)
    await old.clear()  # empty
    # It stopped being heard of (frozen beyond the stale bound: its refresh stopped, its
    # entry is gone), and another count took over meanwhile; then it goes on.
    record = old.count_record
    assert record._refresher is not None
    record._refresher.cancel()
    client = await old.queues[0].client()
    await client.delete(record.users_key)
    new = make_pq(2)
    await new.add_job("n", 2)
    record._refresher = asyncio.get_running_loop().create_task(
        partitioncount._refresh(weakref.ref(record))
    )
    await wait_until(lambda: record.moved is not None, 5)
    with pytest.raises(ConfigurationError, match="no longer 4"):
        await old.add_job("n", 3)


@pytest.mark.redis_only
def test_the_blocking_client_is_refused_too(redis_url: str, prefix: str) -> None:
    async def fill() -> None:
        async with PartitionedQueue("orders", partitions=4, redis=redis_url, prefix=prefix) as q:
            await q.add_jobs([("n", i) for i in range(8)])

    asyncio.run(fill())
    with SyncPartitionedQueue("orders", partitions=2, redis=redis_url, prefix=prefix) as q:
        with pytest.raises(ConfigurationError, match=_refused(4, 2, 8)):
            q.add_job("n", {})
        with pytest.raises(ConfigurationError, match=_refused(4, 2, 8)):
            q.get_stats()


@pytest.mark.redis_only
async def test_the_cli_names_the_recorded_count(
    tmp_path: Path, redis_url: str, prefix: str, make_pq: Any
) -> None:
    await make_pq(4).add_jobs([("n", i) for i in range(8)])
    source = (
        "from kitium_queue import PartitionedQueue\n"
        f"two = PartitionedQueue('orders', partitions=2, redis={redis_url!r}, prefix={prefix!r})\n"
        f"four = PartitionedQueue('orders', partitions=4, redis={redis_url!r}, prefix={prefix!r})\n"
    )
    with app_module(tmp_path, source, "kq_pc") as module:
        refused = await asyncio.to_thread(CliRunner().invoke, main, ["stats", f"{module}:two"])
        shown = await asyncio.to_thread(
            CliRunner().invoke, main, ["stats", "--json", f"{module}:four"]
        )
    assert refused.exit_code != 0
    text = " ".join(refused.output.split())
    assert "recorded in Redis with 4 partitions" in text and "8 job(s)" in text, text
    assert shown.exit_code == 0, shown.output
    assert '"waiting": 8' in shown.output


@pytest.mark.redis_only
async def test_acl_users_reach_the_record_with_the_documented_patterns(
    redis_url: str, prefix: str, redis_client: Any
) -> None:
    """``orders#*`` covers the record and every count's partitions; the partitions' own
    patterns alone do not cover the record: refused, saying which pattern to add."""
    from urllib.parse import urlsplit

    from kitium_queue.errors import PermissionDeniedError
    from kitium_queue.features.access.redisacl import redis_acl_rules

    port = urlsplit(redis_url).port
    names = partitioned.partition_names("orders", 2)
    users = {
        f"{prefix}-wide": ["orders#*"],
        f"{prefix}-listed": ["orders#", *names],
        f"{prefix}-narrow": names,
    }
    try:
        for user, queues in users.items():
            rules = redis_acl_rules(user, queues, prefix=prefix)
            await redis_client.execute_command("ACL", "SETUSER", *rules.setuser_args("pw"))
        for user in (f"{prefix}-wide", f"{prefix}-listed"):
            url = f"redis://{user}:pw@127.0.0.1:{port}/0"
            async with PartitionedQueue("orders", partitions=2, redis=url, prefix=prefix) as q:
                await q.add_job("n", 1)
                assert (await q.get_stats()).waiting >= 1
        url = f"redis://{prefix}-narrow:pw@127.0.0.1:{port}/0"
        async with PartitionedQueue("orders", partitions=2, redis=url, prefix=prefix) as q:
            with pytest.raises(PermissionDeniedError, match=r"~" + prefix + r":\{orders#\*"):
                await q.get_stats()
    finally:
        for user in users:
            await redis_client.acl_deluser(user)
