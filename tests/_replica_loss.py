"""Acknowledged enqueues lost when a Sentinel primary is SIGKILLed, with and without
replica-acknowledged writes (``ReplicaAcks``): shared by ``tests/test_replicas.py`` and
the chaos scenario ``replica-acks``.

    figures = await primary_kill_run(prefix, acks=True)

One deployment per run: a primary, one replica that replicates through a loopback proxy
(``chaos.proxy``), three sentinels. Under load (a producer adding jobs with their own
ids, a worker consuming them), the replication link is stalled for ``stall_s`` (the
replica falls behind, as a slow or distant replica does), the primary is SIGKILLed and
the proxy dropped with what it held, and Sentinel promotes the replica. Then every
acknowledged id is looked up on the new primary (completed jobs are kept, so a job that
ran is still found): an acknowledged job that is not there was lost.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chaos.proxy import Proxy  # noqa: E402

from _sentinel import LocalSentinel  # noqa: E402
from kitium_queue import JobQueue, ReplicaAckError, ReplicaAcks  # noqa: E402

__all__ = ["primary_kill_run"]


async def primary_kill_run(
    prefix: str,
    *,
    acks: bool,
    load_s: float = 1.0,
    stall_s: float = 0.5,
    producers: int = 4,
    timeout_ms: int = 100,
) -> dict[str, Any]:
    """One run (see the module docstring); returns its figures."""
    proxies: list[Proxy] = []

    def relay(port: int) -> int:
        proxy = Proxy(port, max_lifetime=300).start()
        proxies.append(proxy)
        return proxy.port

    acked: dict[str, float] = {}
    refused_unconfirmed = 0
    errors = 0
    stop = False
    latencies: list[float] = []
    with LocalSentinel(relay=relay, extra_args=("--repl-diskless-sync-delay", "0")) as s:
        q = JobQueue(
            "rk",
            redis=s.url,
            prefix=prefix,
            default_job_options={"remove_on_complete": False},
            settings={"lock_duration": 2000},
        )
        if acks:
            ReplicaAcks(q, replicas=1, timeout_ms=timeout_ms)
        q.process("load", lambda job: None)
        try:

            async def produce(k: int) -> None:
                nonlocal refused_unconfirmed, errors
                n = 0
                while not stop:
                    jid = f"p{k}-{n}"
                    n += 1
                    t0 = time.monotonic()
                    try:
                        await q.add_job("load", {"k": k}, job_id=jid)
                    except ReplicaAckError:
                        refused_unconfirmed += 1  # written, not acknowledged
                        await asyncio.sleep(0.01)
                    except Exception:
                        errors += 1  # not acknowledged (Redis away)
                        await asyncio.sleep(0.05)
                    else:
                        acked[jid] = time.monotonic()
                        latencies.append(time.monotonic() - t0)
                    await asyncio.sleep(0.002)

            await q.start(concurrency=8)
            tasks = [asyncio.ensure_future(produce(k)) for k in range(producers)]
            await asyncio.sleep(load_s)
            proxies[0].stall(None)  # the replica stops receiving the stream
            t_stall = time.monotonic()
            await asyncio.sleep(stall_s)
            old = s.kill_primary()
            t_kill = time.monotonic()
            proxies[0].stop()  # what the link held never reaches the replica
            await asyncio.to_thread(s.wait_new_primary, old)
            t_back = time.monotonic()
            await asyncio.sleep(load_s)
            stop = True
            await asyncio.gather(*tasks)
            client = await q.client()
            ids = list(acked)
            present: list[bool] = []
            for i in range(0, len(ids), 500):
                pipe = client.pipeline(transaction=False)
                for jid in ids[i : i + 500]:
                    pipe.exists(q.keys.job(jid))
                present += [bool(x) for x in await pipe.execute()]
            lost = [jid for jid, there in zip(ids, present, strict=True) if not there]
        finally:
            await q.close()
            for p in proxies:
                p.stop()
    latencies.sort()
    return {
        "replica_acks": acks,
        "acknowledged": len(acked),
        "acknowledged_during_stall": sum(1 for t in acked.values() if t_stall <= t < t_kill),
        "lost_acknowledged": len(lost),
        "lost_examples": lost[:5],
        "written_not_acknowledged": refused_unconfirmed,
        "add_errors_while_down": errors,
        "failover_s": round(t_back - t_kill, 2),
        "add_job_p50_ms": round(latencies[len(latencies) // 2] * 1000, 3) if latencies else None,
    }
