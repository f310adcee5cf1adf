"""Leader-only services: housekeeping that one process of a queue runs at a time.

``LeaderLease`` is a lease on a named role of one queue, in the key
``<prefix>:{<queue>}:leader:<role>`` (the queue's hash tag, so cluster-safe):

* **acquire**: ``SET key <random token> NX PX lease_ms`` and, in the same script, ``INCR``
  of ``leader:<role>:term``. Every acquisition gets a new, higher *term* (fencing number):
  pass it along with the leader's writes elsewhere, and refuse a write whose term is
  lower than one already seen, so a deposed leader that still runs cannot overwrite its
  successor's work.
* **renew**: compare-and-renew (``PEXPIRE`` only while the key still holds our token).
* **release**: compare-and-delete.

``LeaderService(name, body)`` plugs into ``queue.add_service``: every worker process
campaigns; the one holding the lease runs ``body(term)``. Its body is cancelled

* when a renewal answers that the lease is gone (deleted, or expired and taken), at the
  next renewal: within one renew interval;
* when renewals have failed (Redis unreachable or silent) for ``lease_ms - renew_ms / 2``
  since the last one that succeeded was *sent*. Redis counts the lease from when it
  executed that renewal, which is later, so the body stops before the lease can expire
  and before any other process can be elected — as long as the Redis server's clock
  does not jump forward: Redis keeps the lease's expiry in wall-clock time, so such a
  step ends it at once, and another process may lead while this body runs until its
  next renewal (within one renew interval). Fence the body's writes with ``term``.

A process that dies simply stops renewing: another one is elected once its lease expires
(at most ``lease_ms``). A graceful stop cancels the body, then releases the lease, so a
successor is elected at its next attempt.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .connerrors import permission_denied, refused
from .errors import AccessDeniedError, ConfigurationError, PermissionDeniedError
from .limits import get_logger, safe_text
from .runends import bounded
from .serverinfo import refuses_writes, write_refused_cause

if TYPE_CHECKING:
    from .queue import JobQueue

__all__ = [
    "RECANCEL_S",
    "REFUSED_RETRY_S",
    "LeaderBody",
    "LeaderLease",
    "LeaderService",
    "OutageCauses",
    "OutageLog",
    "Refusals",
    "every",
]

log = get_logger(__name__)

#: Errors that mean "Redis is unreachable right now": keep retrying. A refusal for lack
#: of permission is an ``OSError`` too (``PermissionDeniedError``): ``connection.outage``
#: and ``connerrors.refused`` tell them apart (``Refusals`` says a refusal).
NET_ERRORS: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    asyncio.TimeoutError,
)

#: Seconds between the tries of a call the Redis ACL refused (``OutageLog.pause``).
REFUSED_RETRY_S = 5.0

LeaderBody = Callable[[int], Awaitable[Any]]


class Refusals:
    """Calls refused for lack of permission (``refused(exc)``: the Redis ACL refused a
    command or key). Redis answered, so no "Redis unreachable" is said: each reason is
    said once, naming the loop (``who``), Redis's reason and what to do, and once every
    call refused works again, that is said once too ("permitted again"). ``call`` tells
    apart the calls of one loop (a leader's lease taken, and renewed)."""

    def __init__(self, who: str, logger: Any = None) -> None:
        self.who, self.log = who, log if logger is None else logger
        self.said: dict[str, set[str]] = {}  # call -> the reasons it was refused for

    def failed(self, exc: BaseException, call: str = "") -> bool:
        """Whether ``exc`` is a refusal (then said, unless its reason was already)."""
        if not refused(exc):
            return False
        text = refusal_text(exc)
        if not any(text in reasons for reasons in self.said.values()):
            self.log.error(
                "%s: refused for lack of permission, not an outage (%s)%s; trying again "
                "until the Redis user is allowed it",
                self.who,
                text,
                ""
                if "redis-rules" in text or isinstance(exc, AccessDeniedError)
                else "; `kitium-queue acl redis-rules` prints the rules a user needs",
            )
        self.said.setdefault(call, set()).add(text)
        return True

    def ok(self, call: str | None = "") -> None:
        """``call`` (None: every call) worked: its refusals are over; once none is
        left, "permitted again" is said."""
        if not self.said:
            return
        if call is None:
            self.said.clear()
        elif self.said.pop(call, None) is None or self.said:
            return
        self.log.warning(
            "%s: permitted again (the Redis ACL allows what it refused); resuming", self.who
        )


def refusal_text(exc: BaseException) -> str:
    """A refusal as said in a log: the library's error, without what a pipeline's error
    quotes of the command's arguments (job data may be among them)."""
    if not isinstance(exc, PermissionDeniedError):
        exc = permission_denied(safe_text(exc).rpartition("caused error: ")[2])
    return f"{type(exc).__name__}: {safe_text(exc)[:600]}"


class OutageCauses:
    """What is said while Redis is unreachable: the first error, once, then each new kind
    of error once per outage (the server back, but refusing the credentials after a
    password change: said with what to check) -- never once per failed retry. A call
    the Redis ACL refused is no outage: said as a refusal (``Refusals``)."""

    def __init__(self, who: str, logger: Any, connection: Any = None, queue: str = "") -> None:
        self.who, self.log, self.connection, self.queue = who, logger, connection, queue
        self.kinds: set[str] = set()
        self.refusals = Refusals(who, logger)
        self.down = False  # "Redis unreachable" said, "reachable again" not yet

    def report(self, exc: BaseException, first: bool, held: int | None = None) -> None:
        """``exc`` met during an outage; ``first``: it starts one."""
        if self.refusals.failed(exc):
            return
        kind = type(exc).__name__
        if first or not self.down:
            self.down = True
            self.kinds = {kind}
            text = exc if self.connection is None else self.connection.redact(exc)
            cause = self._cause(exc) if isinstance(exc, AuthenticationError) else f"{kind}: {text}"
            then = "; retrying" if held is None else f"; holding {held} outcome(s), retrying"
            self.log.warning("%s: Redis unreachable (%s)%s", self.who, cause, then)
        elif kind not in self.kinds:
            self.kinds.add(kind)
            self.log.warning("%s: still no Redis, now: %s", self.who, self._cause(exc))

    def back(self) -> str:
        """What the end of an outage (or refusal) is said as: "Redis is reachable
        again", or, after refusals only, "permitted again"."""
        down, self.down = self.down, False
        only_refused = bool(self.refusals.said) and not down
        self.refusals.said.clear()
        if only_refused:
            return "permitted again (the Redis ACL allows what it refused)"
        return "Redis is reachable again"

    def _cause(self, exc: BaseException) -> str:
        wrapped = None if self.connection is None else self.connection.error(exc, self.queue)
        if wrapped is not None:  # says where, what happened and what to check
            return str(wrapped)
        if isinstance(exc, AuthenticationError):
            return f"{type(exc).__name__}: {exc}; check the username and password in redis="
        return f"{type(exc).__name__}: {exc}"


class OutageLog:
    """Logs an outage once when it starts and once when it ends, as the worker does, and
    paces retries (``pause``: exponential backoff from 50 ms to 1 s). An outage is Redis
    unreachable, Redis refusing writes (full, unable to save, a replica), or an error
    nobody expected (logged with its traceback): none of them ends a loop that uses it.
    A call the Redis ACL refused is no outage: said once as a refusal (``Refusals``,
    ``call`` naming the call when a loop makes several), tried again every
    ``REFUSED_RETRY_S``, and said once more when ``ok(call)`` finds it permitted again."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.down = False
        self.backoff = 0.05
        self._back = "Redis is reachable again"
        self._causes = OutageCauses(what, log)
        self.refusals = self._causes.refusals

    def failed(self, exc: BaseException, call: str = "") -> None:
        if self.refusals.failed(exc, call):
            if self.down and self._back == "Redis is reachable again":
                self.reached()  # Redis answered: it is reachable, though it refuses
            return
        if self.down and self._back == "Redis is reachable again" and isinstance(exc, NET_ERRORS):
            self._causes.report(exc, first=False)
        if not self.down:
            self.down = True
            cause = write_refused_cause(exc)
            if cause is not None:
                self._back = "Redis accepts writes again"
                log.warning("%s: %s; retrying", self.what, cause)
            elif isinstance(exc, NET_ERRORS):
                self._back = "Redis is reachable again"
                self._causes.report(exc, first=True)
            else:
                self._back = "working again"
                log.error("%s failed; retrying", self.what, exc_info=exc)

    async def pause(self, exc: BaseException, call: str = "") -> None:
        self.failed(exc, call)
        if refused(exc):
            await asyncio.sleep(REFUSED_RETRY_S)
            return
        await asyncio.sleep(self.backoff)
        self.backoff = min(self.backoff * 2, 1.0)

    def ok(self, call: str | None = "") -> None:
        """Redis answered ``call`` (None: every call of the loop): an outage is over,
        and a refusal of ``call``."""
        self.reached()
        self.refusals.ok(call)

    def reached(self) -> None:
        """Redis answered, without running what a refusal refused: an outage is over."""
        self.backoff = 0.05
        if self.down:
            self.down = False
            log.warning("%s: %s", self.what, self._back)


def check_name(value: str, what: str, max_len: int = 100) -> str:
    """Refuse names that are empty, long, unprintable or contain spaces or braces."""
    if (
        not isinstance(value, str)
        or not value
        or len(value) > max_len
        or not value.isprintable()
        or any(c.isspace() or c in "{}" for c in value)
    ):
        raise ConfigurationError(
            f"{what} must be 1-{max_len} printable characters without spaces or braces, "
            f"got {value!r}"
        )
    return value


class LeaderLease:
    """The lease on role ``role`` of ``queue`` (see the module docstring).

    ``term`` is the fencing number of the current holding (None when not held);
    ``retry_after_ms`` is how long the current holder's lease still runs after a failed
    ``acquire``.
    """

    def __init__(self, queue: JobQueue, role: str, *, lease_ms: int = 10_000) -> None:
        check_name(role, "leader role")
        if not isinstance(lease_ms, int) or lease_ms < 100:
            raise ConfigurationError(f"lease_ms must be an int >= 100, got {lease_ms!r}")
        self.queue = queue
        self.role = role
        self.lease_ms = lease_ms
        self.key = queue.keys.extra(f"leader:{role}")
        self.term_key = self.key + ":term"
        self.token: str | None = None
        self.term: int | None = None
        self.retry_after_ms = 0

    async def _call(self, script: str, keys: list[str], args: list[Any]) -> Any:
        client = await self.queue.client()
        return await self.queue.scripts.call(client, script, keys, args)

    async def acquire(self) -> int | None:
        """Take the lease if nobody holds it; returns the new term, or None."""
        # A fresh token per attempt: a reply lost in transit leaves at worst a lease
        # nobody renews, which expires; it can never be mistaken for a later holding.
        token = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(8)}"
        ok, value = await self._call(
            "leader_acquire", [self.key, self.term_key], [token, self.lease_ms]
        )
        if int(ok) == 1:
            self.token, self.term = token, int(value)
            return self.term
        self.retry_after_ms = max(int(value), 0)
        return None

    async def renew(self) -> bool:
        """Extend the lease by ``lease_ms`` if still ours; False: it was lost."""
        if self.token is None:
            return False
        ok = int(await self._call("leader_renew", [self.key], [self.token, self.lease_ms]))
        if not ok:
            self.token = self.term = None
        return ok == 1

    async def release(self) -> bool:
        """Give the lease up (only if still ours); True if it was deleted."""
        token, self.token, self.term = self.token, None, None
        if token is None:
            return False
        return int(await self._call("leader_release", [self.key], [token])) == 1

    def forget(self) -> None:
        """Drop the holding locally (it was lost, or is about to expire unrenewed)."""
        self.token = self.term = None

    async def holder(self) -> str | None:
        """Token of the current holder (``host:pid:random``), or None."""
        client = await self.queue.client()
        raw = await client.get(self.key)
        return raw.decode() if isinstance(raw, bytes) else raw

    async def current_term(self) -> int:
        """The latest term handed out for this role (0: never held)."""
        client = await self.queue.client()
        return int(await client.get(self.term_key) or 0)


class LeaderService:
    """A ``Service`` running ``body(term)`` in at most one process of the queue at a time.

    Args:
        name: the role (and the service name): key ``leader:<name>`` of the queue.
        body: ``async def body(term: int)``; runs while this process leads and is
            cancelled when it stops leading. If it returns or raises, the lease is
            released and this process campaigns again after one renew interval.
        lease_ms: lease length; another process takes over at most this long after the
            leader died.
        renew_ms: renewal interval (default ``lease_ms // 3``), below ``lease_ms / 2``.

    ``term`` is the current term while leading (None otherwise); ``terms`` lists every
    term this instance held.

    Example::

        async def compact(term: int) -> None:
            while True:
                await do_housekeeping(fence=term)
                await asyncio.sleep(60)

        queue.add_service(LeaderService("compact", compact))
    """

    def __init__(
        self,
        name: str,
        body: LeaderBody,
        *,
        lease_ms: int = 10_000,
        renew_ms: int | None = None,
    ) -> None:
        self.name = check_name(name, "leader service name")
        if not isinstance(lease_ms, int) or lease_ms < 100:
            raise ConfigurationError(f"lease_ms must be an int >= 100, got {lease_ms!r}")
        renew = lease_ms // 3 if renew_ms is None else renew_ms
        if not isinstance(renew, int) or renew < 10 or 2 * renew >= lease_ms:
            raise ConfigurationError(
                f"renew_ms must be an int >= 10 and below lease_ms / 2 ({lease_ms / 2:.0f}), "
                f"got {renew_ms!r}: the lease must survive a failed renewal"
            )
        self.body = body
        self.lease_ms = lease_ms
        self.renew_ms = renew
        self.lease: LeaderLease | None = None
        self.term: int | None = None
        self.terms: list[int] = []
        self._task: asyncio.Task[None] | None = None
        self._outage = OutageLog(f"leader service {self.name}")

    @property
    def is_leader(self) -> bool:
        return self.term is not None

    def forget_loops(self, loops: set[asyncio.AbstractEventLoop]) -> None:
        """Its campaign's event loop (one of ``loops``) ended without ``close()``
        (``leftover.py``): the term held there is dropped (its body never runs again), so
        ``term`` and ``is_leader`` no longer say this process leads before a campaign of
        the next loop wins. The lease in Redis expires by itself."""
        task = self._task
        if task is not None and task.get_loop() in loops:
            self.term = None
            if self.lease is not None:
                self.lease.forget()

    # ------------------------------------------------------------------ service
    async def start(self, queue: JobQueue) -> None:
        if self._task is not None and not self._task.done():
            return  # already campaigning
        if self.lease is None or self.lease.queue is not queue:
            self.lease = LeaderLease(queue, self.name, lease_ms=self.lease_ms)
        self._task = asyncio.get_running_loop().create_task(
            self._campaign(), name=f"kq-leader-{self.name}-{queue.name}"
        )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        # The campaign's cleanup (cancel the body, then release) may take a moment;
        # cancel again if the body swallows a cancellation, but never hang the stop
        # (nor leave it to run on when this stop is cancelled: an outer stop, below).
        interrupted = await _end(task, 20)
        if not task.done():
            log.warning("leader service %s did not stop within 5 s", self.name)
        if interrupted:
            raise asyncio.CancelledError

    # ------------------------------------------------------------------ campaign
    async def _campaign(self) -> None:
        lease = self.lease
        assert lease is not None
        loop = asyncio.get_running_loop()
        renew_s = self.renew_ms / 1000
        while True:
            sent = loop.time()
            try:
                term = await bounded(lease.acquire(), renew_s)
            except Exception as exc:  # unreachable, writes refused, ...: never ends
                await self._outage.pause(exc, "acquire")
                continue
            if term is None:
                # Not taken: Redis answered, but what a refusal refused (the taking and
                # its new term) did not run, so no "permitted again" yet.
                self._outage.reached()
                # Sleep until the holder's lease would expire, but look again at least
                # every renew interval: a graceful release frees it earlier.
                await asyncio.sleep(min(max(lease.retry_after_ms, 1) / 1000, renew_s))
                continue
            self._outage.ok("acquire")
            await self._lead(term, sent)
            await asyncio.sleep(renew_s)

    async def _lead(self, term: int, sent: float) -> None:
        lease = self.lease
        assert lease is not None
        loop = asyncio.get_running_loop()
        lease_s, renew_s = self.lease_ms / 1000, self.renew_ms / 1000
        # Local deadline: lease length from when the last good renewal was sent, less
        # half a renew interval for the body to wind down before Redis lets it expire.
        margin = renew_s / 2
        deadline = sent + lease_s - margin
        next_renew = sent + renew_s
        self.term = term
        self.terms.append(term)
        log.info(
            "leader service %s: leading queue %s in term %d", self.name, lease.queue.name, term
        )
        body = loop.create_task(self._run_body(term), name=f"kq-leader-body-{self.name}")
        lost = False
        try:
            while True:
                wait = min(next_renew, deadline) - loop.time()
                if wait > 0:
                    await asyncio.wait({body}, timeout=wait)
                if body.done():
                    return
                now = loop.time()
                if now >= deadline:
                    lost = True
                    since = now - deadline + lease_s - margin
                    log.warning(
                        "leader service %s: no renewal for %.1f s; stepping down %s (term %d)",
                        self.name,
                        since,
                        "before the lease expires"
                        if since < lease_s
                        else "(the lease has expired: another process may lead already; "
                        "a process stopped or starved this long, e.g. SIGSTOP or a blocked "
                        "event loop)",
                        term,
                    )
                    return
                try:
                    ok = await bounded(lease.renew(), max(deadline - now, 0.001))
                except Exception as exc:  # a renewal not made: the deadline decides
                    self._outage.failed(exc, "renew")
                    next_renew = loop.time() + min(renew_s / 4, 0.25)
                    continue
                self._outage.ok("renew")
                if not ok:
                    lost = True
                    log.warning(
                        "leader service %s: lease lost (expired or taken over); term %d ends",
                        self.name,
                        term,
                    )
                    return
                deadline = now + lease_s - margin
                next_renew = now + renew_s
        finally:
            await _cancel(body, self.name)
            self.term = None
            if lost:
                lease.forget()
            else:
                # Only after the body stopped: a successor must never overlap it.
                try:
                    await bounded(asyncio.shield(lease.release()), 1.0)
                except asyncio.CancelledError:
                    pass  # stopping: the lease expires by itself
                except Exception:
                    pass  # unreachable, refusing writes: likewise (the campaign goes on)

    async def _run_body(self, term: int) -> None:
        try:
            await self.body(term)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(
                "leader service %s: body failed in term %d; stepping down", self.name, term
            )


#: Seconds between the cancels of a task that ran on after one (``cancel_and_wait``).
RECANCEL_S = 0.25


async def cancel_and_wait(task: asyncio.Future[Any] | None) -> None:
    """End a service's background ``task`` (None, or done already: nothing to do):
    cancel it and wait for it to end, its ``CancelledError`` swallowed (an error it
    ended with is raised). It is cancelled again every ``RECANCEL_S`` while it runs on:
    before Python 3.12, ``asyncio.wait_for`` drops a cancel that lands as what it waits
    for ends (gh-86296), and redis-py's command write waits so, so a loop whose call
    was under way took the cancel as the reply and ran on for ever (a worker's stop,
    and ``close()``, waited for it in vain). A cancel of the caller meanwhile cuts
    neither the wait short nor the stop that called it (it is swallowed)."""
    if task is None:
        return
    await _end(task, None)
    exc = None if task.cancelled() else task.exception()
    if exc is not None:
        raise exc


async def every(interval_ms: int, step: Callable[[], Awaitable[Any]], what: str) -> None:
    """Run ``await step()`` now and then every ``interval_ms``, until cancelled: the
    body of a periodic leader-only service. Redis being unreachable is simply tried
    again at the next interval, as is Redis refusing writes (the worker reports it); a
    step the Redis ACL refused is said once (``Refusals``), and when it works again;
    any other error is logged (as ``what`` failing) and the loop goes on. A cancel that
    a call of ``step`` took for its reply (``cancel_and_wait``) ends it after the step."""
    refusals = Refusals(what)
    while True:
        try:
            await step()
        except Exception as exc:
            if not (refusals.failed(exc) or isinstance(exc, NET_ERRORS) or refuses_writes(exc)):
                log.exception("%s failed", what)
        else:
            refusals.ok()
        if _cancel_dropped():
            raise asyncio.CancelledError
        await asyncio.sleep(interval_ms / 1000)


def _cancel_dropped() -> bool:
    """Whether the running task was cancelled and the cancel never reached it: a call
    of the step took it for its reply (``cancel_and_wait``: gh-86296). Python 3.10
    cannot tell: no."""
    probe = getattr(asyncio.current_task(), "cancelling", None)
    return probe is not None and probe() > 0


async def _end(task: asyncio.Future[Any], tries: int | None) -> bool:
    """Cancel ``task`` every ``RECANCEL_S`` until it ended (at most ``tries`` times;
    None: no limit), waiting on even if this coroutine is cancelled meanwhile; returns
    whether it was."""
    interrupted, n = False, 0
    while not task.done() and (tries is None or n < tries):
        n += 1
        task.cancel()
        try:
            await asyncio.wait({task}, timeout=RECANCEL_S)
        except asyncio.CancelledError:
            interrupted = True  # the task must still end first
    return interrupted


async def _cancel(task: asyncio.Task[Any], name: str) -> None:
    """Cancel ``task`` and wait until it ended, even if this coroutine is cancelled
    (stop() cancels the campaign again; the body must still end first)."""
    await _end(task, 40)
    if not task.done():
        log.warning("leader service %s: body ignores cancellation", name)
    elif not task.cancelled():
        task.exception()  # retrieved; _run_body already logged it
