"""The bound on ``access.denied`` entries (features/audit/refusals.py): per (principal,
action, queue) and window, the first refusals are an entry each and the rest are
counted, then summed up in one entry, so the log's growth no longer follows the rate of
a refused caller, and every refusal is still accounted for."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import redis.asyncio as redis_async

from kitium_queue import JobQueue, acting_as
from kitium_queue.errors import AccessDeniedError
from kitium_queue.features.access import AccessControlManager
from kitium_queue.features.audit import AuditEntry

KEY = secrets.token_hex(32)
BURST = 10


def _split(entries: list[AuditEntry]) -> tuple[list[AuditEntry], list[AuditEntry]]:
    """(entries of single refusals, summaries), oldest first."""
    single = [e for e in entries if "suppressed" not in e.metadata]
    summaries = [e for e in entries if "suppressed" in e.metadata]
    return single, summaries


async def _denied(url: str, prefix: str, **filters: object) -> list[AuditEntry]:
    reader = AccessControlManager(url, prefix=prefix, audit_key=KEY)
    try:
        assert (await reader.verify_audit_log()).ok
        return await reader.query_audit_log(
            action="access.denied", newest_first=False, limit=10_000, **filters
        )
    finally:
        await reader.close()


async def _refuse(q: JobQueue, times: int) -> None:
    for _ in range(times):
        with pytest.raises(AccessDeniedError):
            await q.add_job("x", {})


async def test_a_flood_of_refusals_is_bounded_and_counted_exactly(
    backend_url: str, prefix: str
) -> None:
    """2,000 refused add_job calls of one viewer in one window: 10 entries written
    before their refusals, then one summary counting the 1,990 others."""
    acm = AccessControlManager(
        backend_url, prefix=prefix, audit_key=KEY, refusal_burst=BURST, refusal_window=600_000
    )
    q = acm.protect(JobQueue("acme-q", redis=backend_url, prefix=prefix, principal="viewer"))
    await acm.grant_access(principal_id="viewer", queue_pattern="acme-q", role="viewer")
    try:
        await _refuse(q, 2000)
        single, summaries = _split(await _denied(backend_url, prefix, principal="viewer"))
        assert len(single) == BURST  # the rest counted, not written (yet)
    finally:
        await q.close()
        await acm.close()  # sums up the window this process counted in
    single, summaries = _split(await _denied(backend_url, prefix, principal="viewer"))
    assert len(single) == BURST
    [summary] = summaries
    assert summary.metadata["suppressed"] == 2000 - BURST
    assert summary.metadata["action"] == "add_job"
    assert summary.metadata["permission"] == "can_add_job"
    assert summary.outcome == "denied" and summary.resource == "acme-q"
    start, end = summary.metadata["window_start"], summary.metadata["window_end"]
    assert end - start == 600_000
    assert all(start - 1000 <= int(e.id.split("-")[0]) < end for e in single)


async def test_another_principal_or_action_is_not_suppressed_by_the_flood(
    backend_url: str, prefix: str
) -> None:
    acm = AccessControlManager(
        backend_url, prefix=prefix, audit_key=KEY, refusal_burst=BURST, refusal_window=600_000
    )
    q = acm.protect(JobQueue("acme-q", redis=backend_url, prefix=prefix, principal="viewer"))
    for who in ("viewer", "viewer2"):
        await acm.grant_access(principal_id=who, queue_pattern="acme-q", role="viewer")
    try:
        await _refuse(q, 3 * BURST)
        with pytest.raises(AccessDeniedError):
            await q.pause()  # another action of the flooding principal
        with pytest.raises(AccessDeniedError):
            await acm.require_access("viewer", "other-q", "can_view_job", action="add_job")
        with acting_as("viewer2"):  # another principal, same action and queue
            await _refuse(q, 2)
        entries = await _denied(backend_url, prefix)
        assert [e.principal for e in entries if e.principal == "viewer2"] == ["viewer2"] * 2
        others = [
            (e.resource, e.metadata["action"])
            for e in entries
            if e.principal == "viewer"
            and (e.resource, e.metadata["action"]) != ("acme-q", "add_job")
        ]
        assert others == [("acme-q", "pause"), ("other-q", "add_job")]
    finally:
        await q.close()
        await acm.close()
    _, summaries = _split(await _denied(backend_url, prefix, principal="viewer"))
    assert [s.metadata["suppressed"] for s in summaries] == [2 * BURST]


async def test_a_refusal_after_the_window_writes_an_entry_again(
    backend_url: str, prefix: str
) -> None:
    acm = AccessControlManager(
        backend_url, prefix=prefix, audit_key=KEY, refusal_burst=2, refusal_window=1500
    )
    q = acm.protect(JobQueue("acme-q", redis=backend_url, prefix=prefix, principal="viewer"))
    await acm.grant_access(principal_id="viewer", queue_pattern="acme-q", role="viewer")
    try:
        await _refuse(q, 5)
        first = await _denied(backend_url, prefix, principal="viewer")
        await asyncio.sleep(1.7)
        await _refuse(q, 1)
        entries = await _denied(backend_url, prefix, principal="viewer")
    finally:
        await q.close()
        await acm.close()
    assert len(first) == 2
    # The summary of the first window (by this process' timer at the window's end, or
    # by the refusal after it), then that refusal's own entry.
    assert [e.metadata.get("suppressed") for e in entries] == [None, None, 3, None]
    summary, again = entries[2], entries[3]
    assert int(again.id.split("-")[0]) >= summary.metadata["window_end"] - 50


_WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from kitium_queue import JobQueue, acting_as
    from kitium_queue.errors import AccessDeniedError
    from kitium_queue.features.access import AccessControlManager

    async def main(url, prefix, key, times, close):
        acm = AccessControlManager(url, prefix=prefix, audit_key=key, refusal_burst=10,
                                   refusal_window=600_000)
        q = acm.protect(JobQueue("acme-q", redis=url, prefix=prefix, principal="viewer"))
        print("ready", flush=True)
        sys.stdin.readline()
        refused = 0
        for _ in range(times):
            try:
                await q.add_job("x", {})
            except AccessDeniedError:
                refused += 1
        print("refused", refused, flush=True)
        if close == "close":
            await q.close()
            await acm.close()
        else:
            sys.stdin.readline()  # held until killed: its count is left in Redis

    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]))
    """
)


def _spawn(url: str, prefix: str, times: int, close: str) -> subprocess.Popen[str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-c", _WORKER, url, prefix, KEY, str(times), close],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


async def test_two_processes_refusing_at_once_count_exactly(redis_url: str, prefix: str) -> None:
    acm = AccessControlManager(redis_url, prefix=prefix, audit_key=KEY)
    await acm.grant_access(principal_id="viewer", queue_pattern="acme-q", role="viewer")
    await acm.close()
    procs = [_spawn(redis_url, prefix, 400, "close") for _ in range(2)]
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [await asyncio.to_thread(p.communicate, timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert [o[0].split()[-1] for o in outs] == ["400", "400"]
    single, summaries = _split(await _denied(redis_url, prefix, principal="viewer"))
    assert len(single) + sum(s.metadata["suppressed"] for s in summaries) == 800
    # The first process to close ends the window early; the other's later refusals
    # open a second one: at most two windows of BURST + 1 entries.
    assert len(single) + len(summaries) <= 2 * (BURST + 1)
    assert len(single) >= BURST


async def test_a_count_left_by_a_process_that_died_is_summed_up(
    redis_url: str, prefix: str
) -> None:
    acm = AccessControlManager(
        redis_url, prefix=prefix, audit_key=KEY, refusal_burst=BURST, refusal_window=600_000
    )
    await acm.grant_access(principal_id="viewer", queue_pattern="acme-q", role="viewer")
    proc = _spawn(redis_url, prefix, 50, "hold")
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    assert (await asyncio.to_thread(proc.stdout.readline)).split() == ["refused", "50"]
    proc.kill()
    await asyncio.to_thread(proc.wait, 30)
    try:
        assert await acm.flush_refusals() == 0  # its window is not over yet
        # The window's end, brought forward (as if 10 minutes had passed).
        raw = redis_async.Redis.from_url(redis_url)
        try:
            [member] = await raw.zrange(f"{prefix}:{{!access}}:refusals", 0, -1)
            counter = f"{prefix}:{{!access}}:refusals:{member.decode()}"
            start = int(await raw.hget(counter, "start"))
            await raw.hset(counter, "end", start + 1)
            await raw.zadd(f"{prefix}:{{!access}}:refusals", {member: start + 1})
        finally:
            await raw.aclose()
        assert await acm.flush_refusals() == 1
        assert await acm.flush_refusals() == 0  # once
    finally:
        await acm.close()
    single, summaries = _split(await _denied(redis_url, prefix, principal="viewer"))
    assert len(single) == BURST
    assert [s.metadata["suppressed"] for s in summaries] == [50 - BURST]
