"""Jobs this worker has no processor for while another live worker of the queue has one:
``Handoff``.

A rolling deploy that adds a job type runs old workers, without its processor, beside
new ones with it. Failing such a job on an old worker would spend its attempts there (an
old worker fails fast, so it would dead-letter most of them). So when the runner finds
no processor for a job's name it asks ``Handoff.peer``: if a live worker other than this
one lists a processor for that name in its presence record (``presence.py``), the job is
deferred without spending an attempt (``RetryLater``, as the encryption feature defers a
job sealed under a key this process lacks), for that worker to take. When no live worker
has one, the job fails like any other error: retried while attempts remain, then
dead-lettered.

Claims do not look at job names, so this worker keeps taking such jobs, and its runs of
them end at once: deferred straight away, they went back to it far more often than to
the busy worker that can run them (with one worker of each kind, that worker got about
its concurrency of them per deferral). Two things bound it (``hold``): the job is first
held for ``HOLD_S`` in the slot it took, so this worker takes at most its concurrency of
them per ``HOLD_S`` and the capable worker runs the others at its full rate; and the
deferrals are spread (``AWAY_MS``, +-50 %), so jobs that were held together do not all
come due at one moment, when this worker, with the most free slots, would take most of
them again. And when every job this worker holds is being handed on (it runs nothing of
its own), it claims nothing until the last of them comes due (``AWAY_S_MAX`` after its
hold: ``down_left``), passing its wake-ups on, so the capable worker takes them: without
that, a job that holds a turn (a FIFO group's head) went round and round while the
deferring worker, the first to see it due, took it back (a group of six such jobs took up
to 30 s). Once per job: a job back here after a stand-down for it (its capable worker is
busy) is held without another, or this worker, taking that job again each time it comes
due, would run none of its own until that worker is free. A job may still go round a few
times before the capable worker takes it.

The same goes for a job that needs a feature this process has not enabled (``gap``): a
job whose options name FIFO groups, a tenant, encryption, a breaker, ... (a feature option
of ``jobspec.FEATURE_HOWTO``) reaching an old worker without that feature during a
rolling deploy. Run there, it would run without the feature: out of its group's order,
outside its tenant's quota, its processor handed the encrypted envelope, and the
feature's turn or ticket left held (the features heal those later). When a live worker
declares the option (its presence record lists the features enabled in its process),
the job is held and deferred for it without spending an attempt; when none does, it
runs here as before.

Options a feature declares beyond that list (``idempotency_window``, a tracing option,
...) count the same way: a job carrying an option this process does not declare, or
``delivery_guarantee='exactly-once'`` where no feature took that option over, is handed
to a live worker whose record lists the option (``plain_options``).

Some features need *every* job's end step, whatever its options: a registered webhook
endpoint wants every job's end, and a job ended by a worker without the webhooks feature
would never reach it. Such a feature says so in the queue's ``needs`` hash (``require``;
``release`` when it no longer does). Each worker reads that hash with its heartbeat
(``note_needs``); while it lacks a feature named there and a live worker has it (its
record's release-step features), every job it takes is handed to that worker the same
way, and it claims nothing for ``STAND_DOWN_S`` (``down_left``: the worker's pump
and waker read it), so the jobs it would take run on the capable worker instead of going
round between the two. With no such worker alive, jobs run here as before (and the
heartbeat warns).

The presence records are read at most every ``PEERS_REFRESH_S`` seconds (one read shared
by the runs waiting for it), and each name's handing back is logged at most once every
``NOTE_EVERY_S`` seconds per worker.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable
from typing import Any

from .errors import RetryLater
from .jobspec import CORE, FEATURE_HOWTO
from .limits import MAX_ID_LENGTH, get_logger, printable
from .presence import WorkerPresence, live_workers

__all__ = [
    "AWAY_MS",
    "AWAY_S_MAX",
    "HOLD_S",
    "NOTE_EVERY_S",
    "PEERS_REFRESH_S",
    "STAND_DOWN_S",
    "Handoff",
    "plain_options",
    "release",
    "require",
]

log = get_logger("kitium_queue.worker")

#: Option values that do not ask for the feature (``encrypted=False``).
_UNSET = (None, False, "", 0)

#: How long a job is held in this worker's slot before it is deferred (seconds).
HOLD_S = 0.5
#: How long a deferred job waits before a worker may claim it, on average (ms).
AWAY_MS = 500
#: The longest a deferred job waits before a worker may claim it (seconds).
AWAY_S_MAX = AWAY_MS * 1.5 / 1000
#: The live workers' records are read again after this many seconds, not sooner.
PEERS_REFRESH_S = 3.0
#: At most one log line per job name and worker in this many seconds.
NOTE_EVERY_S = 60.0
#: Names whose last log line is remembered (beyond it, the oldest are forgotten).
_MAX_NOTED = 1_000
#: How long a worker lacking a feature every job needs claims nothing after it handed
#: a job to a live worker that has it (seconds).
STAND_DOWN_S = 3.0
#: Most features a queue's ``needs`` hash is read for, and the longest how-to kept.
_MAX_NEEDS = 64
_MAX_HOW = 300
#: What to do for the options whose feature is not in ``FEATURE_HOWTO``'s list.
_MORE_HOWTO = {
    "delivery_guarantee": ("effectively-once delivery", "create IdempotencyManager(queue)"),
}


def plain_options(spec: Any) -> frozenset[str]:
    """The job options a worker with job spec ``spec`` runs as the producer meant: those
    it declares, except a core option a feature takes over elsewhere
    (``delivery_guarantee``, whose 'exactly-once' needs one). A job carrying any other
    option is checked by ``Handoff.gap``."""
    return frozenset(
        s.name for s in spec.specs() if not (s.feature == CORE and s.name == "delivery_guarantee")
    )


def _howto(option: str) -> tuple[str, str]:
    return (
        FEATURE_HOWTO.get(option)
        or _MORE_HOWTO.get(option)
        or (
            f"the feature declaring option {option!r}",
            "enable that feature as the other workers of the queue do",
        )
    )


async def require(queue: Any, feature: str, how: str) -> None:
    """Say that every job of ``queue`` needs the end step of ``feature`` (the name of its
    ``release`` slot fragment): workers without it hand their jobs to a live worker that
    has it (module docstring). ``how``: what to do in a process to enable it."""
    client = await queue.client()
    await client.hset(queue.keys.needs, feature, how[:_MAX_HOW])


async def release(queue: Any, feature: str) -> None:
    """Undo ``require``: jobs of ``queue`` no longer need ``feature`` everywhere."""
    client = await queue.client()
    await client.hdel(queue.keys.needs, feature)


class Handoff:
    """Hands jobs this worker cannot run to the live workers that can (module docstring).

    Args:
        queue: the queue consumed (its ``keys`` and ``client()`` read the presence).
        worker_id: this worker's id (its own record never counts as a peer).
        clock: monotonic seconds (tests).
        running: how many jobs this worker holds (its leases); with it, a worker whose
            every job is being handed on claims nothing until they come due (``hold``).
    """

    def __init__(
        self,
        queue: Any,
        worker_id: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        running: Callable[[], int] | None = None,
    ) -> None:
        self.queue = queue
        self.worker_id = worker_id
        self._clock = clock
        self._running = running
        #: Jobs being held by ``hold`` right now.
        self._held: set[str] = set()
        #: Jobs a stand-down was for (``hold``): one back here after it is held without
        #: another (its capable worker is busy), else this worker would run none of its
        #: own jobs until that worker is free.
        self._stood_for: set[str] = set()
        self._workers: tuple[WorkerPresence, ...] = ()
        self._read_at: float | None = None
        self._lock = asyncio.Lock()
        self._noted: dict[str, float] = {}
        spec = queue.ctx.jobspec
        #: The job options this process runs as meant (the runner checks a job's
        #: options against them before it runs the job: ``gap``).
        self.plain = plain_options(spec)
        self._spec, self._spec_seen = spec, spec.version
        #: The features every job of the queue needs (the ``needs`` hash, as last read
        #: by ``note_needs``) that this process lacks: feature -> how to enable it.
        self.lacking: dict[str, str] = {}
        #: Every feature the ``needs`` hash names (a peer taking the jobs has them all).
        self.needs: frozenset[str] = frozenset()
        #: Until when (``clock``) this worker claims nothing: ``down_left`` (also set
        #: while the Redis user may not run a command of the queue's scripts: rounds.py).
        self.down_until = 0.0

    @property
    def holding(self) -> int:
        """How many jobs ``hold`` is holding right now."""
        return len(self._held)

    def stand_down(self, seconds: float) -> None:
        """Claim nothing for ``seconds`` from now (``down_left``; a longer stand-down
        already under way is kept)."""
        self.down_until = max(self.down_until, self._clock() + seconds)

    def down_left(self) -> float:
        """Seconds this worker still claims nothing for (0: it claims): it lacks a
        feature every job needs and handed a job to a live worker that has it."""
        if not self.down_until:
            return 0.0
        left = self.down_until - self._clock()
        if left <= 0:
            self.down_until = 0.0
            return 0.0
        return left

    def note_needs(self, raw: Any) -> None:
        """Take the queue's ``needs`` hash as read (untrusted: names and texts are
        bounded; a damaged reply reads as no needs)."""
        lacking: dict[str, str] = {}
        needs: set[str] = set()
        if isinstance(raw, dict):
            mine = set(self.queue.scripts.slot_names("release"))
            for k, v in list(raw.items())[:_MAX_NEEDS]:
                name = k.decode(errors="replace") if isinstance(k, bytes) else str(k)
                if not name or len(name) > MAX_ID_LENGTH:
                    continue
                needs.add(name)
                if name not in mine:
                    how = v.decode(errors="replace") if isinstance(v, bytes) else str(v)
                    lacking[name] = how[:_MAX_HOW]
        self.needs, self.lacking = frozenset(needs), lacking

    async def peer(self, name: str) -> str | None:
        """The id of a live worker of the queue, other than this one and not stopping,
        that has a processor for jobs named ``name``; ``None`` when there is none (or
        when the records could never be read)."""
        for w in await self._live():
            if self._takes(w, name):
                return w.id
        return None

    async def gap(self, run: Any, deferred: Callable[[Any, RetryLater], None]) -> bool:
        """Whether ``run``'s job needs a feature this process lacks that a live worker
        has: then it was held and handed to ``deferred`` (module docstring). False: run
        it here."""
        lacking = self.lacking
        if lacking:
            for w in await self._live():
                # A peer that has every needed feature (two workers each lacking another
                # one would defer to each other for good), the job's processor, and is
                # not stopping.
                if self._takes(w, run.job.name) and self.needs.issubset(w.features):
                    what = ", ".join(sorted(lacking))
                    how = "; ".join(lacking[f] for f in sorted(lacking) if lacking[f])
                    how = how or "enable it"
                    self.stand_down(STAND_DOWN_S)
                    retry = await self.hold(run.job.id, f"the {what} feature", w.id, how)
                    deferred(run, retry)
                    return True
        if self._spec.version != self._spec_seen:  # a feature declared since: counts now
            self._spec_seen, self.plain = self._spec.version, plain_options(self._spec)
        opts = run.job.options
        need = next((o for o in opts if o not in self.plain and self._asks(o, opts[o])), None)
        if need is None:
            return False
        peer = next(
            (
                w.id
                for w in await self._live()
                if self._takes(w, run.job.name) and need in w.options
            ),
            None,
        )
        if peer is None:
            return False
        feature, how = _howto(need)
        deferred(run, await self.hold(run.job.id, f"{feature} (option {need!r})", peer, how))
        return True

    def _takes(self, w: WorkerPresence, name: str) -> bool:
        # Whether live worker ``w`` can take a job named ``name`` from this one.
        return w.id != self.worker_id and not w.stopping and w.can_process(name)

    def _asks(self, option: str, value: Any) -> bool:
        # Whether a job's option asks for its feature: set, and not the core default
        # (``delivery_guarantee='at-least-once'`` asks for nothing).
        if value in _UNSET:
            return False
        spec = self._spec.get(option)
        return spec is None or value != spec.default

    async def missing(self, job_id: str, name: str, registered: Iterable[str]) -> RetryLater:
        """Job ``job_id``'s name has no processor among those ``registered`` here: the
        ``RetryLater`` that defers it for a live worker that has one (after ``hold``);
        raises ``LookupError`` naming the missing processor when none has."""
        peer = await self.peer(name)
        if peer is None:
            known = sorted(registered) or ["none"]
            raise LookupError(
                f"no processor registered for job name {name!r} on queue "
                f"{self.queue.name!r} (registered: {', '.join(known)}); register one with "
                f"queue.process({name!r}, fn)"
            )
        return await self.hold(job_id, name, peer)

    async def hold(self, job_id: str, name: str, peer: str, how: str = "") -> RetryLater:
        """What the runner does with job ``job_id`` (named ``name``) that live worker
        ``peer`` can run: hold it for ``HOLD_S`` (module docstring), then return the
        ``RetryLater`` that defers it without spending an attempt. Logs it at most once
        per name every ``NOTE_EVERY_S``. ``how``: what to do in this process to run such
        jobs (a feature missing here, ``gap``; else its processor is missing)."""
        now = self._clock()
        last = self._noted.get(name)
        if last is None or now - last >= NOTE_EVERY_S:
            if len(self._noted) >= _MAX_NOTED:
                self._noted = {n: t for n, t in self._noted.items() if now - t < NOTE_EVERY_S}
                while len(self._noted) >= _MAX_NOTED:
                    del self._noted[next(iter(self._noted))]
            self._noted[name] = now
            if how:
                log.warning(
                    "queue %s: worker %s runs without %s, which live worker %s has: such "
                    "jobs are deferred for it without spending an attempt (job %s, and "
                    "others for %d s without another line); %s in every process",
                    printable(self.queue.name),
                    printable(self.worker_id),
                    name,
                    printable(peer),
                    printable(job_id),
                    NOTE_EVERY_S,
                    how,
                )
            else:
                log.warning(
                    "queue %s: worker %s has no processor for %r, but live worker %s has "
                    "one: such jobs are deferred for it without spending an attempt (job "
                    "%s, and others of that name for %d s without another line)",
                    printable(self.queue.name),
                    printable(self.worker_id),
                    printable(name),
                    printable(peer),
                    printable(job_id),
                    NOTE_EVERY_S,
                )
        self._held.add(job_id)
        try:
            running = self._running
            if running is not None and self.holding >= running() and job_id not in self._stood_for:
                # Every job this worker holds is handed on: let them come due elsewhere.
                if len(self._stood_for) >= _MAX_NOTED:
                    self._stood_for.clear()
                self._stood_for.update(self._held)
                self.stand_down(HOLD_S + AWAY_S_MAX)
            await asyncio.sleep(HOLD_S)
        finally:
            self._held.discard(job_id)
        what = f"{name} is not enabled" if how else f"no processor for {name!r}"
        return RetryLater(
            AWAY_MS * random.uniform(0.5, 1.5),
            f"{what} on worker {self.worker_id}; deferred without spending an attempt "
            f"for live worker {peer}, which has it",
        )

    async def _live(self) -> tuple[WorkerPresence, ...]:
        if not self._stale():
            return self._workers
        async with self._lock:
            if self._stale():  # else another run read them while this one waited
                try:
                    self._workers = tuple(await live_workers(self.queue))
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # Keep what was read last (never read: no peer, so the job fails as
                    # any error would); the worker's own loops report an outage.
                    log.debug(
                        "queue %s: live workers could not be read: %s",
                        printable(self.queue.name),
                        printable(exc),
                    )
                self._read_at = self._clock()
        return self._workers

    def _stale(self) -> bool:
        return self._read_at is None or self._clock() - self._read_at >= PEERS_REFRESH_S
