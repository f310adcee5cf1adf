"""A process that only keeps a multi-region queue going (health checks, leases,
replication), as a deployment's worker processes would, so that the benchmark's own
process measures what a producer or worker pays. Reads the configuration (JSON) from
argv[1]; prints "ready" once initialized; stops when stdin closes."""

from __future__ import annotations

import asyncio
import json
import logging
import sys

from kitium_queue.features.regions import GlobalQueueManager


async def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    m = GlobalQueueManager()
    await m.initialize(json.loads(sys.argv[1]))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await m.close()


if __name__ == "__main__":
    asyncio.run(main())
