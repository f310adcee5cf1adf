"""Live workers: each running worker announces itself, and anyone can list who is alive.

A worker writes a small record of itself when it starts and again every
``HEARTBEAT_MS`` (its id, host, pid, concurrency, the job names it has processors for,
how many jobs it runs and has processed, how often its event loop was blocked and the
longest such block: ``loopwatch.py``), with a TTL of ``PRESENCE_TTL_MS``; a worker
that stops deletes it, one that dies lets it expire. The TTL runs on the Redis clock, so
hosts whose clocks disagree still agree on who is alive.

Keys (``QueueKeys``): ``workers`` (ZSET, an index: worker id -> when it last announced
itself) and ``worker(id)`` (HASH, the record). ``live_workers`` reads the index and
keeps the workers whose record still exists; the writers drop index entries older than
an hour. ``live_workers`` also drops the entries whose record it found gone (a worker
killed without its stop: up to ``PRUNE_MAX`` a call, each only if its record is still
gone, in one script), so a fleet whose workers crash often does not read their records
again at every call; a reader whose user may not write (a read-only ACL user, a
replica, a server that holds writes) leaves them, and its read answers all the same.

What it is for: an operator's view of the fleet (the dashboard), and the "why is this
job not running?" answer *no live worker has a processor for its name*
(``explain.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from redis.exceptions import NoPermissionError, RedisError, ResponseError

from .connection import TRANSIENT_ERRORS
from .connerrors import NOPERM, permission_denied
from .jobspec import CORE, FEATURE_HOWTO
from .limits import get_logger, printable, reply_int, reply_text
from .serverinfo import refuses_writes

if TYPE_CHECKING:
    from .keys import QueueKeys

__all__ = [
    "HEARTBEAT_MS",
    "PRESENCE_TTL_MS",
    "Presence",
    "WorkerPresence",
    "live_workers",
]

log = get_logger(__name__)

#: How often a running worker renews its record (ms).
HEARTBEAT_MS = 5_000
#: What EXEC answers when the MULTI before it was refused (redis-py raises only this).
EXEC_WITHOUT_MULTI = "EXEC without MULTI"
#: Every this many heartbeats a worker compares the features of the live workers of its
#: queue with its own (``Presence.compare``).
FLEET_CHECK_BEATS = 6
#: (worker, feature) pairs a worker remembers having warned about.
_MAX_WARNED = 1_000
#: How long a record lives without renewal (ms): three missed heartbeats.
PRESENCE_TTL_MS = 3 * HEARTBEAT_MS
#: Longest ``leave`` takes, the heartbeat under way and the delete together (s): past
#: it both are cancelled (nothing of the worker's is left under way on the queue's
#: connections) and the record expires by itself, within ``PRESENCE_TTL_MS``.
LEAVE_WAIT_S = 2.0
#: Longest ``leave`` waits for the calls it cancelled to end (s).
_CANCEL_WAIT_S = 0.5
#: Index entries older than this are dropped by the writers (ms).
_STALE_MS = 3_600_000
#: Most job names a record lists (a worker with more shows the first ones).
MAX_NAMES = 200
#: Most blocked episodes of the event loop a record may say (larger values read as this).
MAX_LOOP_BLOCKED = 1_000_000_000
#: Longest block of the event loop a record may say (ms; larger values read as this).
MAX_LOOP_BLOCKED_MS = 10 * 365 * 86_400_000
#: Most workers ``live_workers`` reads.
MAX_WORKERS = 1000
#: Most index entries of gone records one ``live_workers`` call drops.
PRUNE_MAX = 100
#: Longest a ``live_workers`` call waits for that drop (s): a server that holds writes
#: (``CLIENT PAUSE WRITE``) must not hold a read.
PRUNE_WAIT_S = 1.0
#: How long a client whose user was refused the drop does not try it again (s).
PRUNE_REFUSED_S = 300.0

#: Drops the index entries (KEYS[1], ids in ARGV) whose record (KEYS[i + 1]) is gone, in
#: one step: a member written again since it was read (a worker that announced itself
#: again, a workflow created again under its id) keeps its entry. Returns how many.
PRUNE_INDEX = """
local n = 0
for i, id in ipairs(ARGV) do
  if redis.call('exists', KEYS[i + 1]) == 0 then
    n = n + redis.call('zrem', KEYS[1], id)
  end
end
return n
"""
# Clients whose user the ACL refused the drop -> when (time.monotonic()).
_refused: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()


@dataclass(frozen=True, slots=True)
class WorkerPresence:
    """What a live worker said about itself at its last heartbeat.

    Attributes:
        id: the worker id (``host:pid:random``), as on the jobs it claims (``w``).
        host, pid: where it runs.
        concurrency: jobs it may run at once.
        running: jobs it ran at its last heartbeat.
        processed: outcomes it recorded since it started.
        processors: the job names it has a processor for (``"*"``: any name).
        options: the feature options its queue declares (``jobspec.FEATURE_HOWTO``
            keys: the features enabled in its process).
        features: the features whose step runs when one of its jobs ends (the
            ``release`` slot's fragments, ``slots.py``): what its finished jobs do not
            skip.
        started_at, seen_at: when it started and last announced itself (ms, its clock).
        stopping: a stop of it has begun (it takes no more jobs).
        features_known: its record lists its features (False for a release from before
            they were announced: ``features`` is then empty, not known to be).
        loop_blocked, loop_longest_ms: how many times code it ran blocked its event loop
            past ``worker.loop_block_warn`` since it started, and the longest of those
            blocks (ms, at least that long): its watchdog's counts (``loopwatch.py``) at
            its last heartbeat; 0 for a release that does not say.
    """

    id: str
    host: str
    pid: int
    concurrency: int
    running: int
    processed: int
    processors: tuple[str, ...]
    started_at: int
    seen_at: int
    options: tuple[str, ...] = ()
    features: tuple[str, ...] = ()
    stopping: bool = False
    features_known: bool = True
    loop_blocked: int = 0
    loop_longest_ms: int = 0

    def can_process(self, job_name: str) -> bool:
        """Whether it has a processor for jobs named ``job_name``."""
        return job_name in self.processors or "*" in self.processors

    def to_dict(self) -> dict[str, Any]:
        """Plain data (``--json``, the dashboard's API)."""
        return {
            "id": self.id,
            "host": self.host,
            "pid": self.pid,
            "concurrency": self.concurrency,
            "running": self.running,
            "processed": self.processed,
            "processors": list(self.processors),
            "started_at": self.started_at,
            "seen_at": self.seen_at,
            "options": list(self.options),
            "features": list(self.features),
            "stopping": self.stopping,
            "loop_blocked": self.loop_blocked,
            "loop_longest_ms": self.loop_longest_ms,
        }

    def loop_blocked_text(self) -> str:
        """The blocked episodes of its event loop, said shortly: ``3 (longest 1.2 s)``,
        ``1 (longest 250 ms)``, or ``-`` for none (or a record that does not say)."""
        if self.loop_blocked <= 0:
            return "-"
        ms = self.loop_longest_ms
        longest = f"{ms} ms" if ms < 1000 else f"{ms / 1000:.1f} s"
        return f"{self.loop_blocked} (longest {longest})"


class Presence:
    """The heartbeat of one worker (``Worker`` runs ``run()`` and calls ``leave()``)."""

    def __init__(
        self,
        keys: QueueKeys,
        client: Any,
        worker: Any,
        names: Iterable[str],
        on_needs: Callable[[Any], None] | None = None,
    ) -> None:
        self.keys = keys
        #: Given the queue's ``needs`` hash at each heartbeat (``handoff.py``).
        self.on_needs = on_needs
        self.client = client
        self.worker = worker
        # The queue's processors mapping (read at each beat: one registered while the
        # worker runs is listed from the next), or any iterable of names.
        self._names = names
        self.started_at = int(time.time() * 1000)
        self.host = socket.gethostname()
        self._warned: set[tuple[str, str]] = set()
        self._refusal_quiet_until = 0.0  # a failed heartbeat is said once a minute
        self._soon: set[asyncio.Future[None]] = set()  # beat_soon's heartbeats under way
        self._stop_said = False  # a heartbeat saying the worker stops was written

    @property
    def names(self) -> list[str]:
        """The job names listed (sorted, at most ``MAX_NAMES``)."""
        return sorted({str(n) for n in self._names})[:MAX_NAMES]

    def record(self) -> dict[str, str]:
        """The fields written at each heartbeat."""
        w = self.worker
        # The event loop's watchdog (``loopwatch.py``); a worker without one says 0.
        watch = getattr(getattr(w, "leases", None), "loopwatch", None)
        return {
            "host": self.host,
            "pid": str(os.getpid()),
            "conc": str(w.concurrency),
            "run": str(len(w.leases.runs)),
            "done": str(w.processed),
            "names": orjson.dumps(self.names).decode(),
            "opts": orjson.dumps(feature_options(w.queue)).decode(),
            "feat": orjson.dumps(self.features).decode(),
            "stop": "1" if getattr(w, "stopping", False) else "0",
            "blk": str(_bounded(getattr(watch, "blocked", 0), MAX_LOOP_BLOCKED)),
            "blkms": str(_bounded(getattr(watch, "longest_ms", 0), MAX_LOOP_BLOCKED_MS)),
            "start": str(self.started_at),
            "seen": str(int(time.time() * 1000)),
        }

    async def beat(self) -> None:
        """Write the record once (atomically: index, record, TTL)."""
        now = int(time.time() * 1000)
        key = self.keys.worker(self.worker.id)
        record = self.record()
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, mapping=record)
        pipe.pexpire(key, PRESENCE_TTL_MS)
        pipe.zadd(self.keys.workers, {self.worker.id: now})
        pipe.zremrangebyscore(self.keys.workers, "-inf", now - _STALE_MS)
        await pipe.execute()
        self._stop_said = self._stop_said or record["stop"] == "1"
        if self.on_needs is not None:
            try:
                raw = await self.client.hgetall(self.keys.needs)
            except ResponseError:  # damaged (another type), or refused: read as no needs
                raw = None
            self.on_needs(raw)

    def beat_soon(self) -> None:
        """``beat`` in a task (a processor registered while the worker runs, a stop that
        began): ``leave`` waits for it, or a record written after the worker left would
        list it alive until its TTL."""
        task = asyncio.ensure_future(self.beat())
        self._soon.add(task)
        task.add_done_callback(self._soon.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def announce(self, timeout_s: float = 2.0) -> None:
        """One heartbeat, waited for at most ``timeout_s``: what a starting worker does,
        so that it is listed alive (``explain``, the dashboard) once ``start()`` returns.
        An outage or a slow server only delays the record until ``run``'s next beat."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._try_beat(), timeout_s)

    @property
    def features(self) -> list[str]:
        """This worker's features whose step runs when a job ends (``release`` slot)."""
        return sorted(self.worker.queue.scripts.slot_names("release"))

    async def run(self, *, announced: bool = False) -> None:
        """Announce the worker every ``HEARTBEAT_MS`` until cancelled (``announced``: the
        first heartbeat was just written, wait before the next); an outage only delays
        the next heartbeat. Every ``FLEET_CHECK_BEATS`` beats, ``compare``."""
        beats = 0
        while True:
            if not announced:
                await self._try_beat()
            announced = False
            # Up to 10 % sooner: the heartbeats of many queues started at once drift apart.
            await asyncio.sleep(HEARTBEAT_MS / 1000 * random.uniform(0.9, 1.0))
            if beats % FLEET_CHECK_BEATS == 0:
                with contextlib.suppress(*TRANSIENT_ERRORS):
                    await self.compare()
            beats += 1

    async def compare(self) -> list[tuple[str, str]]:
        """Warn (once per worker and feature) about each live worker of the queue that
        runs without a feature this worker has: the jobs it finishes skip that feature's
        step (a rolling deploy's previous release, a process that forgot a manager).
        Returns the (worker id, feature) pairs found lacking."""
        mine = set(self.features)
        if not mine:
            return []
        found: list[tuple[str, str]] = []
        for w in await live_workers(self.worker.queue):
            if w.id == self.worker.id or not w.features_known:
                continue  # an earlier release does not say: no warning it may not need
            for feature in sorted(mine - set(w.features)):
                found.append((w.id, feature))
                if (w.id, feature) in self._warned:
                    continue
                if len(self._warned) >= _MAX_WARNED:
                    self._warned.clear()
                self._warned.add((w.id, feature))
                log.warning(
                    "queue %s: live worker %s runs without the %s feature, which worker %s "
                    "has: the jobs it finishes skip that feature's step when they end (a "
                    "message group's turn, a tenant's ticket, a workflow's dependents, a "
                    "concurrency slot, an effectively-once key, a webhook). Enable the "
                    "feature, with the same arguments, in every process of the queue (a "
                    "worker of a previous release may still run)",
                    self.worker.queue.name,
                    printable(w.id),
                    feature,
                    self.worker.id,
                )
        return found

    async def _try_beat(self) -> None:
        try:
            await self.beat()
        except asyncio.CancelledError:
            raise
        except TRANSIENT_ERRORS:
            pass  # the worker's own loops report the outage
        except Exception as exc:
            if refuses_writes(exc):  # full, cannot save, a replica: said at a bounded rate
                # (on a full Redis the claims go on and report nothing: without this, the
                # worker would say nothing while listings show it dead).
                self.worker.queue.ctx.damaged.refusals.failed(exc)
                return
            text = str(exc)
            # Said once a minute at most, whatever it is (a beat every HEARTBEAT_MS).
            now = time.monotonic()
            if now < self._refusal_quiet_until:
                return
            self._refusal_quiet_until = now + 60.0
            if EXEC_WITHOUT_MULTI in text:
                # redis-py drops the refusal of MULTI itself and raises what EXEC then
                # answers: the user lacks +multi (or +exec).
                text = f"MULTI refused ({text}): the Redis user lacks +multi or +exec"
            elif not (isinstance(exc, NoPermissionError) or NOPERM.search(text)):
                log.exception(
                    "worker %s: heartbeat failed (said again at most once a minute)",
                    self.worker.id,
                )
                return
            # The ACL refused it: worded as every refusal is (a pipeline's error quotes
            # the command's arguments: only Redis's reason).
            key = self.keys.worker(self.worker.id)
            reason = f"{text.rpartition('caused error: ')[2].strip()}; heartbeat of {key}"
            log.error(
                "worker %s: heartbeat refused: %s. The worker goes on, but is not listed "
                "among the live workers (dashboard, explain) until it may write its record "
                "(said again at most once a minute)",
                self.worker.id,
                permission_denied(reason),
            )

    async def leave(self, *, unanswered: bool = False) -> None:
        """Delete the record (a stopped worker is not alive), once the heartbeats sent
        by ``beat_soon`` are done, all within ``LEAVE_WAIT_S``. ``unanswered``: Redis
        did not answer the stop's flush, so nothing is sent. A record not deleted (Redis
        did not answer, or refused) expires by itself, and the log says so once. What
        is still under way is cancelled: a heartbeat waiting on a Redis that stopped
        answering (up to its 15 s reply deadline) would hold the queue's ``close()``."""
        why = "Redis did not take the stop's flush in time (said above)" if unanswered else ""
        pending = set(self._soon)
        if not unanswered:
            task = asyncio.ensure_future(self._delete())
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            pending.add(task)
            try:
                await asyncio.wait({task}, timeout=LEAVE_WAIT_S)
            finally:
                task.cancel()  # no-op once done; a cancelled stop() leaves it too
            if not task.done():
                why = f"Redis did not answer within {LEAVE_WAIT_S:g} s"
            elif not task.cancelled() and task.exception() is not None:
                why = f"deleting it failed ({type(task.exception()).__name__})"
        pending = {t for t in pending if not t.done()}
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending, timeout=_CANCEL_WAIT_S)
        if why:
            log.warning(
                "worker %s: its presence record is left to expire (within %d s; queue %s "
                "lists it among the live workers%s until then): %s",
                self.worker.id,
                PRESENCE_TTL_MS // 1000,
                self.worker.queue.name,
                ", as stopping," if self._stop_said else "",
                why,
            )

    async def _delete(self) -> None:
        """``leave``'s steps: the heartbeats under way end, then the record goes."""
        if self._soon:
            await asyncio.wait(set(self._soon))
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.keys.worker(self.worker.id))
        pipe.zrem(self.keys.workers, self.worker.id)
        await pipe.execute()


def _bounded(raw: Any, most: int) -> int:
    """``raw`` (a record's field, or a count) as an int from 0 to ``most``; 0 when it is
    missing or not an integer."""
    return max(0, min(reply_int(raw), most))


def _names(raw: Any) -> tuple[str, ...]:
    try:
        got = orjson.loads(raw or b"[]")
    except orjson.JSONDecodeError:
        return ()
    if not isinstance(got, list):
        return ()
    return tuple(str(n) for n in got[:MAX_NAMES] if isinstance(n, str))


async def live_workers(queue: Any, limit: int = MAX_WORKERS) -> list[WorkerPresence]:
    """The workers of ``queue`` (anything with ``keys`` and an async ``client()``) whose
    record is alive, most recently seen first; at most ``limit`` (up to 1000) are read.
    Records written by others are untrusted: a damaged field reads as empty or 0."""
    n = max(0, min(int(limit), MAX_WORKERS))
    if n == 0:
        return []
    client = await queue.client()
    keys: QueueKeys = queue.keys
    ids = await client.zrevrange(keys.workers, 0, n - 1)
    if not ids:
        return []
    pipe = client.pipeline(transaction=False)
    for i in ids:
        pipe.hgetall(keys.worker(reply_text(i)))
    out: list[WorkerPresence] = []
    gone: list[Any] = []
    for i, h in zip(ids, await pipe.execute(raise_on_error=False), strict=True):
        if isinstance(h, Exception):
            if isinstance(h, ResponseError) and "WRONGTYPE" in str(h):
                continue  # a record overwritten by hand with another type: not readable
            raise h
        if not h:
            gone.append(i)  # expired: the worker is gone
            continue
        out.append(
            WorkerPresence(
                id=reply_text(i),
                host=reply_text(h.get(b"host"))[:255],
                pid=reply_int(h.get(b"pid")),
                concurrency=reply_int(h.get(b"conc")),
                running=reply_int(h.get(b"run")),
                processed=reply_int(h.get(b"done")),
                processors=_names(h.get(b"names")),
                started_at=reply_int(h.get(b"start")),
                seen_at=reply_int(h.get(b"seen")),
                options=_names(h.get(b"opts")),
                features=_names(h.get(b"feat")),
                stopping=h.get(b"stop") == b"1",
                features_known=b"feat" in h,
                loop_blocked=_bounded(h.get(b"blk"), MAX_LOOP_BLOCKED),
                loop_longest_ms=_bounded(h.get(b"blkms"), MAX_LOOP_BLOCKED_MS),
            )
        )
    if gone:
        await _prune(client, keys, gone[:PRUNE_MAX])
    return out


async def _prune(client: Any, keys: QueueKeys, ids: list[Any]) -> None:
    """Drop the index entries ``ids`` whose record is still gone (``PRUNE_INDEX``); never
    raises: a refusal (ACL, a replica, a full server), an outage or a server that holds
    writes for more than ``PRUNE_WAIT_S`` leaves them for a later call or the writers."""
    try:
        refused_at = _refused.get(client)
    except TypeError:  # a client that cannot be weakly referenced: never remembered
        refused_at = None
    if refused_at is not None and time.monotonic() - refused_at < PRUNE_REFUSED_S:
        return
    names = [keys.worker(reply_text(i)) for i in ids]
    try:
        await asyncio.wait_for(
            client.eval(PRUNE_INDEX, 1 + len(ids), keys.workers, *names, *ids), PRUNE_WAIT_S
        )
    except (RedisError, OSError, asyncio.TimeoutError) as exc:
        if isinstance(exc, NoPermissionError) or NOPERM.search(str(exc)):
            with contextlib.suppress(TypeError):  # not weakly referenceable
                _refused[client] = time.monotonic()


def feature_options(queue: Any) -> list[str]:
    """The options a feature declares or took over on ``queue`` in this process (the
    ``FEATURE_HOWTO`` ones first): which features are enabled here, as presence tells
    the others (``handoff.py`` hands a job needing one to a worker listing it)."""
    spec = queue.ctx.jobspec
    first = [o for o in FEATURE_HOWTO if o in spec]
    more = sorted(s.name for s in spec.specs() if s.feature != CORE and s.name not in first)
    return first + more
