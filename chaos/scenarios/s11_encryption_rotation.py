"""Issue 13: key rotation under worker SIGKILL.

Three workers (4 slots each, lease 1 s, sweep every 250 ms) encrypt every job
(``EncryptionManager(encrypt_all=True)``, keys from environment variables) and work
through a backlog of 20-150 ms jobs (short form: 10-75 ms); the key is rotated from
``k1`` to ``k2`` and, while the workers' leader-only pass re-encrypts the stored jobs,
a random busy worker (the leader among them, at times) is SIGKILLed again and again
and replaced. Checks: nothing lost (the ledger); the rotation ends; no stored
ciphertext is left on ``k1``; no ciphertext failed to open; no key material in Redis;
no traceback.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import time
from typing import Any

import orjson

from kitium_queue.keys import QueueKeys

from ..core import Context, Result, scenario
from ..infra import wait_for
from ._common import closing_checks, stop_fleet, tracebacks, wait_final

QUEUE = "encrot"


def _manager(q: Any, keys: dict[str, str], **kw: Any) -> Any:
    from kitium_queue.features.encryption import EncryptionManager, KeyConfig

    return EncryptionManager(q, keys=[KeyConfig(k, v) for k, v in keys.items()],
                             encrypt_all=True, refresh_ms=200, **kw)


def _rotate(url: str, prefix: str, keys: dict[str, str]) -> None:
    from kitium_queue import JobQueue

    async def go() -> None:
        q = JobQueue(QUEUE, redis=url, prefix=prefix)
        try:
            await _manager(q, keys, run_rotation=False).rotate_key("k1", "k2")
        finally:
            await q.close()

    asyncio.run(go())


def _stored_key_ids(client: Any, keys: QueueKeys) -> dict[str, int]:
    counts: dict[str, int] = {}
    for key in client.scan_iter(match=f"{keys.base}job:*", count=1000):
        for field in (b"d", b"r"):
            raw = client.hget(key, field)
            if raw:
                env = orjson.loads(raw)
                kid = env.get("kid", "?") if isinstance(env, dict) else "plain"
                counts[kid] = counts.get(kid, 0) + 1
    return counts


@scenario("encryption-rotation", 9, "Key rotation under worker SIGKILL")
def run(ctx: Context, res: Result) -> None:
    from kitium_queue.features.encryption import generate_key

    keys = {"k1": generate_key(), "k2": generate_key()}
    for k, v in keys.items():
        os.environ[f"KQ_CHAOS_KEY_{k}"] = v  # the workers read their keys from here
    lease_ms, sweep_ms = 1000, 250
    kills = ctx.pick(4, 16)
    rnd = random.Random(9)
    srv = ctx.redis()
    prefix = ctx.prefix()
    qkeys = QueueKeys(QUEUE, prefix)
    client = ctx.client(srv.url)
    producer = ctx.producer(srv.url, QUEUE, prefix)
    _manager(producer.queue, keys, run_rotation=False)
    fleet = ctx.fleet(srv.url, QUEUE, prefix, concurrency=4, lock_duration=lease_ms,
                      stalled_interval=sweep_ms, max_stalled=1000, encrypt="k1,k2")
    for w in [fleet.start() for _ in range(3)]:
        w.wait_ready()

    # Short form: jobs half as long, so the backlog is worked off soon after the kills
    # (the rotation pass still has every stored job to re-encrypt meanwhile).
    ms = ctx.pick((10, 75), (20, 150))

    def add(n: int) -> None:
        jobs = [("work", {"ms": rnd.randint(*ms)}, {"remove_on_complete": False})
                for _ in range(n)]
        ctx.ledger.record(producer.add_jobs(jobs), tag="load")

    add(ctx.pick(300, 3000))
    wait_for(lambda: client.zcard(qkeys.completed) >= 50, 30, what="first completions")
    t_rotate = time.time()
    _rotate(srv.url, prefix, keys)
    killed = 0
    for _ in range(kills):
        add(100)
        busy = wait_for(lambda: [w for w in fleet.live() if len(w.running_jobs()) >= 1], 20,
                        what="a busy worker to kill")
        rnd.choice(busy).kill()
        killed += 1
        fleet.start().wait_ready()
        time.sleep(0.3)

    wait_final(ctx, client, qkeys, ctx.pick(90, 300))
    rot_key = qkeys.extra("enc:rotation")
    done = wait_for(lambda: client.hget(rot_key, "state") == b"done", ctx.pick(90, 300),
                    what="the rotation pass to finish")
    snap, _ = closing_checks(ctx, res, client, qkeys, fleet)
    rot = {k.decode(): v.decode() for k, v in client.hgetall(rot_key).items()}
    counts = _stored_key_ids(client, qkeys)
    dump = b"".join(client.dump(k) or b"" for k in client.scan_iter(count=1000))
    leaked = [k for k, v in keys.items()
              if v.encode() in dump or base64.b64decode(v) in dump]
    res.figures.update({
        "jobs": len(ctx.ledger), "kills": killed, "rotation": rot,
        "stored_ciphertexts_by_key": counts,
        "rotation_s": round(time.time() - t_rotate, 2),
        "completed": len(snap.sets["completed"]),
    })
    res.expect("the rotation pass finished", bool(done), rot)
    res.expect("no stored ciphertext left on the old key", "k1" not in counts, counts)
    res.expect("every stored value is a ciphertext under k2", set(counts) == {"k2"}, counts)
    res.expect("no ciphertext failed to open", rot.get("undecryptable") == "0", rot)
    res.expect("every job completed", len(snap.sets["completed"]) == len(ctx.ledger),
               f"{len(snap.sets['completed'])}/{len(ctx.ledger)}")
    res.expect("no key material in Redis", not leaked, leaked)
    tb = tracebacks(fleet)
    res.expect("no traceback in worker logs", not tb, tb[:2])
    stop_fleet(res, fleet)
