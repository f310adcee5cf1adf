"""The registry's set of queues (``keys.registry_queues``): who is in it, and who left.

Every process that uses tenancy on a queue adds the queue to the set (``install``'s
``_attach``: first its own ``keys.registered`` mark, then the set); the registry's
readers (``TenantRegistry.queues``, ``get_tenant_usage``, the copies of every change
and ``sync``: ``install.propagate``) take out the queues that are gone, none of whose
keys is left (``keys.presence``), so that nothing is read from, or written back into,
a queue that was deleted. A queue with jobs, or one only cleared (which keeps its mark,
its tenants' quotas and its counters), stays. A queue registering while a reader takes
it out is put back (``prune``). See docs/tenancy.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

from redis.exceptions import NoPermissionError, ResponseError

from ...errors import ConfigurationError
from ...keys import QueueKeys
from ...limits import get_logger, printable
from ..audit.conn import LuaScript
from . import keys as tk
from .lua import run_script, run_scripts

__all__ = ["TN_PRESENT", "live_queues", "members", "prune"]

log = get_logger(__name__)

TN_PRESENT = LuaScript(__package__, "tn_present")


async def members(client: Any, key: str) -> set[Any]:
    """The members of set ``key``; none (logged) when it holds another type."""
    try:
        return set(await client.smembers(key))
    except ResponseError as exc:
        if "WRONGTYPE" not in str(exc):
            raise
        log.warning(
            "tenant registry: key %s holds another Redis type than a set of queue names "
            "(damaged or written by hand); no queue is listed or copied to. Delete it: "
            "queues register again at their next sync",
            key,
        )
        return set()


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


async def live_queues(client: Any, prefix: str, names: Iterable[Any]) -> list[str]:
    """``names`` (members of the registry's set of queues) without the queues that are
    gone, which leave the set (``prune``). Gone: none of the queue's keys is left
    (``tk.presence``: no job in any state, no parked job, no schedule, no counter, no
    tenancy key), as deleting the queue's keys leaves it; a queue with jobs, or one
    that was only cleared, stays. Read in one pipeline (``tn_present.lua`` per queue,
    each under its own hash tag). A name that is no queue name is skipped and kept (a
    later release may accept it); when the check cannot be made (a Redis user that may
    not read a queue's keys), every queue is kept."""
    kept: list[str] = []
    calls: list[tuple[list[str], list[Any]]] = []
    for raw in names:
        name = _text(raw)
        try:
            qk = QueueKeys(name, prefix)
        except ConfigurationError:
            continue  # not a queue name: not written by a queue
        kept.append(name)
        calls.append((tk.presence(qk), []))
    if not calls:
        return []
    try:
        found = await run_scripts(client, TN_PRESENT, calls)
    except (NoPermissionError, ResponseError) as exc:
        log.debug("tenant registry: which queues are gone was not checked (%s)", exc)
        return kept
    gone = [n for n, f in zip(kept, found, strict=True) if int(f) == 0]
    lost = set(await prune(client, prefix, gone)) if gone else set()
    return [n for n in kept if n not in lost]


async def prune(client: Any, prefix: str, names: Iterable[str]) -> list[str]:
    """Take the queues ``names``, found gone (none of their keys left), out of the
    registry's set; returns those still gone, for the caller to skip. Each is checked
    again after its removal and put back if it is there again: a queue registering
    meanwhile writes its ``tk.registered`` key before it adds itself to the set
    (``_attach``), so either this check sees that key or its own add comes after the
    removal; it is never lost (nor when the check fails: then it is put back). A Redis
    user that may not change the set leaves the queues in it (still returned)."""
    key, out = tk.registry_queues(prefix), list[str]()
    may_write = True
    for name in names:
        qk = QueueKeys(name, prefix)
        if may_write:
            try:
                removed = await client.srem(key, name)
            except (NoPermissionError, ResponseError) as exc:
                log.debug("tenant registry: gone queues left in %s (%s)", key, exc)
                may_write, removed = False, 0
            if removed:
                try:
                    back = int(await run_script(client, TN_PRESENT, tk.presence(qk), []))
                except BaseException:
                    with contextlib.suppress(Exception):
                        await client.sadd(key, name)  # not checked again: kept
                    raise
                if back:
                    await client.sadd(key, name)  # registered again meanwhile
                    continue
                log.info(
                    "tenant registry: queue %s is gone (none of its keys is left); it "
                    "is no longer registered (it registers again when tenancy is used "
                    "on it)",
                    printable(name)[:200],
                )
        # Not removed here: taken out by another reader (which checks it again), or
        # this user may not: gone all the same.
        out.append(name)
    return out
