"""A pipeline's replies with the Redis server's clock read alongside.

Admin reads that compare stored times with "now" read the server's clock (``TIME``) in
the same round trip as their keys. A Redis Cluster pipeline refuses ``TIME`` (redis-py
blocks it), so there the clock is read on its own, after the pipeline.
"""

from __future__ import annotations

from typing import Any

__all__ = ["execute_with_clock"]


async def execute_with_clock(
    client: Any, pipe: Any, *, cluster: bool, raise_on_error: bool = True
) -> tuple[list[Any], Any]:
    """Run ``pipe`` (built on ``client``) and read the server clock: its replies and
    ``TIME``'s reply (``(seconds, microseconds)``; with ``raise_on_error=False`` an
    error is returned as the other replies' are). ``cluster``: the client talks to a
    Redis Cluster."""
    if not cluster:
        pipe.time()
    replies = list(await pipe.execute(raise_on_error=raise_on_error))
    return replies, (await client.time() if cluster else replies.pop())
