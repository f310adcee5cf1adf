"""Rewriting the durable event stream without some of its entries, physically.

``XDEL`` and ``XTRIM`` only *mark* stream entries deleted inside their node: the bytes
stay in memory, in ``DUMP`` and in RDB snapshots until every entry of the node is
gone. Compliance needs them gone for real, so ``rewrite_events`` copies the entries to
keep into ``<events>:rewrite`` (pages of ``page`` entries, ids preserved) and then, in
one atomic script (``stream_swap.lua``), copies what was added meanwhile and renames
the copy over the stream. Readers see the same ids and entries, less the dropped ones.

One rewrite runs at a time per queue (a lease, ``LeaderLease`` role
``events-rewrite``), so two erasures cannot bring back each other's entries. The lease
is renewed while the copy goes on (a stream of millions of entries takes longer to copy
than the lease runs), and the swap is fenced by it: a rewrite that lost its lease (its
process stalled past it, and another rewrite took over and dropped entries meanwhile)
stops with ``ConfigurationError`` and swaps nothing. Before, it went on and put its
own copy in the stream's place, bringing back entries the other had erased and losing
the ones both kept but it had copied before the other's swap. Cost: one pass over the
stream (at most about ``events_max_len`` entries) and a copy of what is kept, in memory
until the swap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any

from ...errors import ConfigurationError
from ...leader import LeaderLease

if TYPE_CHECKING:
    from ...queue import JobQueue

__all__ = ["rewrite_events"]

SWAP = "stream_swap"
_LEASE_MS = 60_000


def install_swap(queue: JobQueue) -> None:
    """Register the swap script on ``queue`` (idempotent)."""
    src = resources.files(__package__).joinpath("stream_swap.lua").read_text("utf-8")
    queue.scripts.add_fragment(SWAP, src)


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


async def rewrite_events(
    queue: JobQueue,
    *,
    drop: Callable[[Mapping[bytes, bytes]], bool] | None = None,
    min_id: str | None = None,
    page: int = 1000,
    wait_s: float = 60.0,
) -> int:
    """Rewrite ``queue``'s event stream without the entries ``drop(fields)`` selects
    and (``min_id``, a stream id) without those older than ``min_id``. Returns how
    many entries were left out (by ``drop``; older ones are not counted)."""
    install_swap(queue)
    lease = LeaderLease(queue, "events-rewrite", lease_ms=_LEASE_MS)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while await lease.acquire() is None:
        if loop.time() > deadline:
            raise ConfigurationError(
                f"queue {queue.name!r}: another rewrite of the event stream has held its "
                f"lease for over {wait_s:.0f} s; try again"
            )
        await asyncio.sleep(0.05)
    renewed = loop.time()
    try:
        client = await queue.client()
        key = queue.keys.events
        tmp = key + ":rewrite"
        await client.delete(tmp)
        start = min_id or "-"
        dropped = 0
        while True:
            while True:
                if loop.time() - renewed > _LEASE_MS / 3000:
                    if not await lease.renew():
                        raise _lost(queue)
                    renewed = loop.time()
                rows = await client.xrange(key, min=start, max="+", count=page)
                if not rows:
                    break
                pipe = client.pipeline(transaction=False)
                for eid, fields in rows:
                    if drop is not None and drop(fields):
                        dropped += 1
                        continue
                    pipe.xadd(tmp, fields, id=eid)
                await pipe.execute()
                start = "(" + _text(rows[-1][0])
                if len(rows) < page:
                    break
            status, _ = await queue.run(SWAP, [start, 5000, lease.token or ""])
            if _text(status) == "lost":
                lease.forget()
                raise _lost(queue)
            if _text(status) != "more":
                return dropped
    finally:
        await lease.release()


def _lost(queue: JobQueue) -> ConfigurationError:
    return ConfigurationError(
        f"queue {queue.name!r}: the rewrite of the event stream lost its lease (this "
        "process stalled longer than it runs, and another rewrite may have taken over); "
        "nothing was swapped: run it again"
    )
