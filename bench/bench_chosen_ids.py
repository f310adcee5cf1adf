"""What a chosen ``job_id`` costs against an automatic id, on a private redis-server: the
id checked against existing jobs and the window of removed ones (``jids``), and held
there for ``idempotency_ttl``. Adds one at a time and in batches of 100, alternating, three
repetitions; the enqueue scripts' Redis time per job (``INFO commandstats``) and memory
per job.

Run: ``.venv/bin/python bench/bench_chosen_ids.py``
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _redis import RedisServer
from kitium_queue import JobQueue


async def run(url, chosen, batch, n):
    c = aioredis.from_url(url)
    await c.flushall()
    q = JobQueue("cost", redis=url)
    await q.add_job("warm", {})
    await c.config_resetstat()
    t = time.perf_counter()
    if batch == 1:
        for i in range(n):
            await q.add_job("n", {"i": i}, **({"job_id": f"o-{i}"} if chosen else {}))
    else:
        for s in range(0, n, batch):
            await q.add_jobs(
                [
                    {
                        "name": "n",
                        "data": {"i": i},
                        "options": ({"job_id": f"o-{i}"} if chosen else {}),
                    }
                    for i in range(s, s + batch)
                ]
            )
    dt = time.perf_counter() - t
    st = await c.info("commandstats")
    us = sum(v["usec"] for k, v in st.items() if k in ("cmdstat_evalsha", "cmdstat_eval"))
    mem = (await c.info("memory"))["used_memory"]
    await q.close()
    await c.aclose()
    return n / dt, us / n, mem


async def main():
    with RedisServer() as srv:
        for batch, n in ((1, 5000), (100, 50000)):
            res = {False: [], True: []}
            for _rep in range(3):
                for chosen in (False, True):
                    res[chosen].append(await run(srv.url, chosen, batch, n))
            for chosen in (False, True):
                r = res[chosen]
                rate = statistics.median(x[0] for x in r)
                us = statistics.median(x[1] for x in r)
                mem = statistics.median(x[2] for x in r) / n
                print(
                    f"batch {batch:>3} chosen={chosen!s:5}: {rate:,.0f} jobs/s, "
                    f"{us:.1f} us Redis/job, {mem:.0f} B/job"
                )


asyncio.run(main())
