"""Registered endpoints and workers without the webhooks feature: ``sync_needs``.

The events of a job's end (``job-completed``, ``job-failed``, ...) are written by the
webhooks feature's step in the script that ends the job. A worker of the queue that runs
without ``WebhookManager`` (a rolling deploy's previous release, a process that forgot
it) ends jobs without that step, and an endpoint registered for those events never hears
of them. So while an active endpoint wants a ``job-*`` event, the feature names itself in
the queue's ``needs`` hash (``handoff.require``): a worker without it hands its jobs to a
live worker with it, without spending an attempt (``handoff.py``). When no endpoint wants
one any more, the need is withdrawn.

It is synced after every registration change made in this process and when a worker of
this process starts (``NeedsService``), so a change made by another process, or a hash
lost with Redis, is made right by the next worker start or registration.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ...connection import TRANSIENT_ERRORS
from ...handoff import release, require
from ...limits import get_logger, printable
from .service import FEATURE

if TYPE_CHECKING:
    from .manager import WebhookManager

__all__ = ["HOW", "NeedsService", "sync_needs", "synced_after_change", "wants_job_ends"]

log = get_logger(__name__)

#: What a worker lacking the feature is told to do.
HOW = "create WebhookManager(queue) (a registered endpoint wants every job's end)"


def wants_job_ends(mgr: WebhookManager) -> bool:
    """Whether an active registered endpoint (as last read) wants a job's events."""
    return any(
        h.active and any(e.startswith("job-") for e in h.events)
        for h in mgr.registry.hooks.values()
    )


async def sync_needs(mgr: WebhookManager) -> bool:
    """Read the registrations and name the feature in the queue's ``needs`` hash while an
    active endpoint wants job events (withdraw it otherwise). Returns whether it does."""
    await mgr.registry.refresh(force=True)
    wanted = wants_job_ends(mgr)
    if wanted:
        await require(mgr.queue, FEATURE, HOW)
    else:
        await release(mgr.queue, FEATURE)
    return wanted


async def synced_after_change(mgr: WebhookManager) -> None:
    """``sync_needs`` after a registration change this process made: a failure is
    logged, not raised (the change is made; the next worker start or change syncs it)."""
    try:
        await sync_needs(mgr)
    except Exception as exc:
        log.warning(
            "queue %s: webhook needs not synced after a registration change: %s",
            printable(mgr.queue.name),
            printable(exc),
        )


class NeedsService:
    """Syncs the need when a worker of this process starts (a queue ``Service``)."""

    name = "webhooks-needs"

    def __init__(self, mgr: WebhookManager) -> None:
        self.mgr = mgr

    async def start(self, queue: Any) -> None:
        try:
            await asyncio.wait_for(sync_needs(self.mgr), 5.0)
        except asyncio.CancelledError:
            raise
        except asyncio.TimeoutError:
            pass  # the next start or registration change syncs it
        except TRANSIENT_ERRORS:
            pass
        except Exception as exc:  # a damaged registration key: the feature reports it
            log.warning(
                "queue %s: webhook needs not synced: %s", printable(queue.name), printable(exc)
            )

    async def stop(self) -> None:
        return None
