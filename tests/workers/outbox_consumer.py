"""A standalone outbox consumer (or leader) process for tests/test_outbox.py.

    python outbox_consumer.py --url redis://127.0.0.1:PORT/0 --prefix P --queue Q \
        --log /tmp/c.log consume --group G --name N --read 500 --skip-every 3
    python outbox_consumer.py ... leader --role R --lease-ms 1000

``consume`` reads entries of group G as consumer N until it has read ``--read`` of them,
acknowledges every entry except each ``--skip-every``-th one, then idles until it is
killed. ``leader`` runs a ``LeaderService`` whose body logs its term and sleeps.

Log lines (the format of ``run_worker.py``, so ``workers.harness.read_log`` parses it),
one ``O_APPEND`` write each, so a SIGKILL loses nothing already logged::

    ready - <pid> 0 <unix time>
    read  <entry id> <pid> <deliveries> <unix time>    after XREADGROUP returned it
    ack   <entry id> <pid> 0 <unix time>               after XACK returned
    idle  - <pid> <entries read> <unix time>           all read; waiting to be killed
    lead  - <pid> <term> <unix time>                   its body started in that term
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from kitium_queue import JobQueue
from kitium_queue.leader import LeaderService
from kitium_queue.outbox import Outbox


class Log:
    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.pid = os.getpid()

    def write(self, event: str, entry_id: str = "-", n: int = 0) -> None:
        os.write(self.fd, f"{event} {entry_id} {self.pid} {n} {time.time():.6f}\n".encode())


async def consume(queue: JobQueue, log: Log, args: argparse.Namespace) -> None:
    consumer = Outbox(queue).consumer(args.group, args.name, claim_idle_ms=60_000)
    log.write("ready")
    seen = 0
    while seen < args.read:
        for entry in await consumer.read(count=50, block_ms=200):
            seen += 1
            log.write("read", entry.id, entry.deliveries)
            if seen % args.skip_every != 0:
                await consumer.ack(entry.id)
                log.write("ack", entry.id)
    log.write("idle", n=seen)
    await asyncio.Event().wait()


async def lead(queue: JobQueue, log: Log, args: argparse.Namespace) -> None:
    async def body(term: int) -> None:
        log.write("lead", n=term)
        await asyncio.Event().wait()

    service = LeaderService(args.role, body, lease_ms=args.lease_ms)
    await service.start(queue)
    log.write("ready")
    await asyncio.Event().wait()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--queue", required=True)
    p.add_argument("--log", required=True)
    sub = p.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("consume")
    c.add_argument("--group", required=True)
    c.add_argument("--name", required=True)
    c.add_argument("--read", type=int, required=True)
    c.add_argument("--skip-every", type=int, default=3)
    ld = sub.add_parser("leader")
    ld.add_argument("--role", required=True)
    ld.add_argument("--lease-ms", type=int, default=1000)
    args = p.parse_args()
    queue = JobQueue(args.queue, redis=args.url, prefix=args.prefix)
    run = consume if args.mode == "consume" else lead
    asyncio.run(run(queue, Log(args.log), args))


if __name__ == "__main__":
    main()
