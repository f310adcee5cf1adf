"""How a worker's exchange with Redis that failed is handled (``worker.Worker``).

* ``round_failed`` — a pump round failed as a whole: an outage is reported once and
  retried with backoff; anything else (a refused ``SCRIPT LOAD``, an ACL change) is said
  loudly each time, a damaged key at a bounded rate. A connection refused by a limit
  (the server's ``maxclients``, the process's open files) is reported as such
  (``limit_said``), with what to do.
* ``permission_refused`` — a round refused for lack of permission: the worker checks
  which commands of the queue's scripts the user may not run now and, while any is
  refused, claims and records nothing (``aclcheck.py``), saying which; once they are
  allowed again, it walks the job records for those a refused script left in no set
  and puts them back (``orphans.walk``).
* ``refused`` — Redis refused to record outcomes for a reason of its own (out of memory,
  ...): they are kept and offered again after a backoff.
* ``reply_too_big`` — Redis closed the connection while it sent a claim's reply, yet
  answers at once: the reply was too big for the server (``client-output-buffer-limit``
  for normal clients, which managed services may set). Before, the worker took it for an
  outage and claimed as many again: no job of the queue ever ran, each claim's leases
  expired, and every job was dead-lettered as stalled. The worker now claims at most
  half as many jobs per call from then on (down to one) and says why.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import TYPE_CHECKING, Any

from .aclcheck import WORKER_SCRIPTS, refused_commands, refused_error
from .connection import TRANSIENT_ERRORS
from .connerrors import limit_reached
from .errors import PermissionDeniedError
from .limits import get_logger, safe_text
from .pools import blocking_wait_overran

if TYPE_CHECKING:
    from .worker import Worker

__all__ = [
    "RECHECK_S",
    "limit_said",
    "permission_refused",
    "refused",
    "reply_too_big",
    "round_failed",
]

log = get_logger("kitium_queue.worker")

#: While a command of the queue's scripts is refused, the rights are checked this often.
RECHECK_S = 5
_MIN_BACKOFF_S = 0.05
#: Workers checking their Redis user's rights now (one lane checks, the others wait).
_CHECKING: weakref.WeakSet[Worker] = weakref.WeakSet()

#: How long the check that Redis still answers may take (s).
_PING_S = 1.0


async def round_failed(worker: Worker, exc: Exception, backoff: float) -> float:
    """A round failed as a whole: report it, wait ``backoff`` seconds, return the next
    backoff."""
    # During a stop, the outcomes it holds are offered again after the backoff (below),
    # until its flush deadline.
    denied = isinstance(exc, PermissionDeniedError) and await permission_refused(worker, exc)
    if denied and not worker.stopping:
        return _MIN_BACKOFF_S
    if isinstance(exc, TRANSIENT_ERRORS):
        worker.report_outage(limit_said(worker, exc))
        await asyncio.sleep(backoff)
        return min(backoff * 2, 1.0)
    q = worker.queue
    if not q.ctx.damaged.failed(exc):
        log.error(
            "worker %s: claim/finish round on queue %s failed (%s: %s); retrying in %.2f s",
            worker.id,
            q.name,
            type(exc).__name__,
            q.connection.redact(exc),
            backoff,
        )
    if worker.hooks.queue_error:
        worker.hooks.emit_queue_error(q.name, exc)
    await asyncio.sleep(backoff)
    return min(backoff * 2, 5.0)


async def wait_failed(worker: Worker, exc: BaseException, asked: int) -> None:
    """The waker's wait (with the claim riding on it, of ``asked`` slots) failed: a
    reply too big, a permission refusal (claims stop until the rights are back: each
    retry would take another job out of wait), a blocking wait that overran its
    deadline, or an outage (reported)."""
    client = worker._client
    if await reply_too_big(worker, exc, asked, client):
        return
    if isinstance(exc, PermissionDeniedError) and await permission_refused(worker, exc):
        return
    if not await blocking_wait_overran(exc, client, f"worker {worker.id}"):
        worker.report_outage(limit_said(worker, exc))


def limit_said(worker: Worker, exc: BaseException) -> BaseException:
    """``exc``, or, when a limit on connections refused it (the server's ``maxclients``,
    the process's open files), the queue's ``ConnectionLimitError`` saying which and
    what to do: the outage warning names the cause, not "Redis unreachable" alone.
    The worker retries all the same (connections may be freed)."""
    if limit_reached(exc) is None:
        return exc
    q = worker.queue
    return q.connection.error(exc, q.name) or exc


async def permission_refused(worker: Worker, exc: BaseException) -> bool:
    """A round was refused for lack of permission (the user's rights changed while the
    worker ran): whether a command of the queue's scripts is refused now. Then the
    worker claims and records nothing until every one is allowed again (checked every
    ``RECHECK_S``), saying which are refused: each claim sent meanwhile could take jobs
    out of wait and be refused before it put them anywhere (``aclcheck.py``)."""
    q, handoff = worker.queue, worker.runner.handoff
    if worker in _CHECKING:  # another lane of the worker checks: wait with it
        while worker in _CHECKING:
            await asyncio.sleep(0.5)
        return True
    _CHECKING.add(worker)
    try:
        return await _recheck(worker, q, handoff, exc)
    finally:
        _CHECKING.discard(worker)


async def _recheck(worker: Worker, q: Any, handoff: Any, exc: BaseException) -> bool:
    said = False
    while True:
        try:
            denied = await refused_commands(await q.client(), q, WORKER_SCRIPTS)
        except Exception:
            return said  # the check itself failed: the round's error is reported as is
        if not denied:
            handoff.down_until = 0.0  # claims again at once
            if said:
                log.warning(
                    "worker %s: the Redis user may run every command of queue %s's "
                    "scripts again; resuming",
                    worker.id,
                    q.name,
                )
                _walk_soon(q)
            return said
        if not said:
            log.error(
                "worker %s: %s. It happened while the worker ran (the user's rights "
                "changed): a script refused part-way may have left the jobs it was moving "
                "in no set (the worker walks the job records for them once the "
                "commands are allowed, if its user may SCAN; else `kitium-queue jobs "
                "orphans APP --repair` puts them back). The worker claims and records "
                "nothing until they are allowed (checked every %d s)",
                worker.id,
                safe_text(refused_error(q.name, denied)),
                RECHECK_S,
            )
            if worker.hooks.queue_error:
                worker.hooks.emit_queue_error(q.name, exc)
            said = True
        handoff.stand_down(RECHECK_S + 1)  # the waker claims nothing either
        for _ in range(RECHECK_S * 4):
            if worker.stopping:  # its stop goes on: the outcomes it holds wait for Redis
                handoff.down_until = 0.0
                return said
            await asyncio.sleep(0.25)


_WALKS: set[asyncio.Task[None]] = set()


def _walk_soon(q: Any) -> None:
    """The rights came back: put back the jobs a script refused part-way left in no set
    (``orphans.find_orphans``), in the background. A user without ``SCAN`` (the rules
    ``acl redis-rules`` writes for a worker) is told to run it as one that has it."""
    from .orphans import walk

    async def run() -> None:
        try:
            report = await walk(q, repair=True)
        except Exception as exc:
            log.error(
                "queue %s: the walk for job records a refused script left in no set "
                "failed (%s); run `kitium-queue jobs orphans APP --repair` as a Redis user "
                "allowed SCAN",
                q.name,
                safe_text(exc)[:300],
            )
            return
        if not report.orphans:
            log.info("queue %s: no job record was left in no set", q.name)

    task = asyncio.ensure_future(run())
    _WALKS.add(task)
    task.add_done_callback(_WALKS.discard)


async def refused(worker: Worker, exc: Exception, backoff: float) -> float:
    """The server refused outcomes for a reason of its own (out of memory, ...): they
    are kept; wait before offering them again, as after an outage."""
    if not worker.queue.ctx.damaged.failed(exc):  # a damaged key: at a bounded rate
        log.error(
            "worker %s: Redis refused to record %d outcome(s) on queue %s (%s: %s); "
            "keeping them, retrying in %.2f s",
            worker.id,
            worker.outcomes.held(),
            worker.queue.name,
            type(exc).__name__,
            safe_text(exc),
            backoff,
        )
    await asyncio.sleep(backoff)
    return min(backoff * 2, 5.0)


async def reply_too_big(worker: Worker, exc: BaseException, asked: int, client: Any) -> bool:
    """Whether a claim of ``asked`` jobs lost its reply because Redis closed the
    connection while sending it, though it answers a ``PING`` at once. Then the worker's
    claims ask for at most half as many jobs from now on (``Worker.claim_cap``), and a
    warning says why; the jobs of the lost reply run again when their leases end (each
    counted once as a stall)."""
    if asked <= 0 or not isinstance(exc, TRANSIENT_ERRORS):
        return False
    if "closed by server" not in str(exc).lower():
        return False
    try:
        await asyncio.wait_for(client.ping(), _PING_S)
    except Exception:
        return False  # Redis does not answer: an outage, reported as such
    before = worker.claim_cap
    worker.claim_cap = max(1, min(before, asked) // 2)
    log.warning(
        "worker %s: Redis closed the connection while sending the reply of a claim of %d "
        "job(s) of queue %s, and answers at once: the reply was likely bigger than the "
        "server's client-output-buffer-limit for normal clients (CONFIG GET "
        "client-output-buffer-limit). Claiming at most %d job(s) per call from now on; "
        "raise that limit (0 = none) or keep job payloads smaller. The jobs of the lost "
        "reply run again when their leases end",
        worker.id,
        asked,
        worker.queue.name,
        worker.claim_cap,
    )
    return True
