"""Starting and closing a queue's worker, and registering processors, so that a process
never ends up with a worker it cannot stop or a processor its worker does not run.

* ``Lifecycle`` — ``JobQueue.start()`` / ``close()``. One worker per queue and process: a
  ``start()`` while another is under way joins it (two startup hooks starting the same
  queue get one worker), and ``close()`` waits for a start under way before stopping.
  Before the worker starts, it gets the connections it needs to run, all at once: one
  refused by a limit on connections (the server's ``maxclients``, the process's open
  files) refuses the start with ``ConnectionLimitError`` saying which and what to do.
  Before, such a ``start()`` returned while its worker could never claim (its waker,
  or a pump lane, never got a connection), and only warnings said so. A refused start
  closes what it opened. Redis unreachable at start raises as before; an outage that
  begins once the first connection is open is the worker's to ride out, as it was.
  ``close()`` awaited from inside one of the worker's jobs cannot wait for that job (it
  is the caller): it starts the stop and returns at once; the worker stops once its jobs
  end (within ``shutdown_timeout``), then the connections are released.
  ``settled()``, which ``run_worker()`` awaits once its worker stopped, waits for every
  close under way to end, the one its SIGTERM started among them. Before, it returned
  as soon as the worker stopped while that close went on: a call made right after
  ``run_worker()`` took a connection of the client being closed, and the close then
  cut it under the call (``Connection closed by server.``, reported as a reply cut
  off by the server).
* ``mark_inside`` / ``inside`` — whether the caller runs inside a given worker: its pump
  and waker mark their context, and the tasks of the jobs they launch, and every task
  those start, inherit the mark (a ``ContextVar``).
* ``job_name_for_processor`` and ``Lifecycle.check_registration`` — what ``process`` and
  ``process_batch`` accept: a job name ``add_job`` accepts (never the function itself, as
  a bare ``@queue.process`` would pass it) and no silent replacement (``replace=True``
  says it is meant); ``Lifecycle.registered``: a processor registered while a worker of
  the queue runs here is used from its next job of that name (the worker resolves its
  processors again) and announced at once (its presence record, which ``explain`` and
  other processes' hand-offs read).
* ``detached``, ``stop_services``, ``end_tasks`` — steps of ``Worker.start`` / ``stop``;
  ``STOPPING`` and ``force_stops``: the stops under way, which a second SIGTERM/SIGINT
  forces (``serving.py``).
* ``close()`` from another event loop than the worker's: the stop is handed to the
  worker's loop and awaited when that loop runs (a worker in a thread of its own); a
  worker whose loop is gone (it ended without ``close()``: a failed test, a notebook
  cell) is forgotten, its jobs left leased until their leases expire, and the queue
  serves the next loop. Before, such a ``close()`` failed for ever ("Event loop is
  closed"), or blocked 35 s and then failed. Every ``close()`` lets go the workers of
  the queue whose loop was closed before they stopped (``forget_ended``, ``leftover.py``:
  a partitioned queue's too): their wake-up wait, still open in Redis, no longer claims
  the jobs a worker of the next loop is started for.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import weakref
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any

from . import evictwatch, leftover
from .connerrors import ConnectionLimitError
from .errors import ConfigurationError
from .limits import MAX_JOB_NAME_LENGTH, get_logger
from .options import check_text
from .pools import hold_connections
from .processors import check_processor
from .procpool import import_path

if TYPE_CHECKING:
    from .queue import JobQueue
    from .worker import Worker

__all__ = [
    "STOPPING",
    "Lifecycle",
    "closed_in",
    "detached",
    "end_tasks",
    "force_stops",
    "inside",
    "job_name_for_processor",
    "mark_inside",
    "start_services",
    "startable",
    "stop_budget",
    "stop_services",
]

log = get_logger("kitium_queue.worker")

# The worker whose pump or waker (or a job they launched, or a task started from one)
# runs the current task.
_INSIDE: contextvars.ContextVar[Any] = contextvars.ContextVar("kq_inside_worker", default=None)

# The queue and run (``leases.Run``) whose processor the current task runs (set by the
# runner as the processor starts; the tasks the processor starts inherit it).
_RUNNING: contextvars.ContextVar[tuple[Any, str, str] | None] = contextvars.ContextVar(
    "kq_running", default=None
)

#: The workers of this process whose stop is under way (``Worker.stop`` adds itself, and
#: leaves once stopped).
STOPPING: weakref.WeakSet[Worker] = weakref.WeakSet()


def force_stops(loop: asyncio.AbstractEventLoop, why: str) -> None:
    """Force the stops under way of the workers running in ``loop`` (``Worker.force``),
    saying so: a second SIGTERM/SIGINT (``why``) during a graceful stop."""
    workers = [w for w in list(STOPPING) if w.runner.loop is loop]
    for worker in workers:
        worker.force()
    if workers:
        log.warning(
            "%s received again: stopping %d worker(s) at once: running jobs are handed "
            "back now, and outcomes Redis has not taken yet are left (those jobs run again "
            "once their leases expire)",
            why,
            len(workers),
        )


def mark_running(queue: Any, run: Any) -> None:
    """Mark the current task (a job's run task, as its processor starts) as serving
    ``run`` of ``queue``: the processor and every task it starts see it in ``running``.
    Only the job's id and lease token are kept, not the run: the run holds its task,
    whose context would hold the run back (a cycle per job for the collector)."""
    _RUNNING.set((queue, run.job.id, run.token))


def running() -> tuple[Any, str, str] | None:
    """``(queue, job id, lease token)`` of the run whose processor the current task runs
    (or a task it started): features that must act for the run holding its job (fenced
    by the token) read it; None outside a run."""
    return _RUNNING.get()


def mark_inside(worker: Any) -> None:
    """Mark the current task (and the tasks it starts from now on) as run by ``worker``."""
    _INSIDE.set(worker)


def inside(worker: Any) -> bool:
    """Whether the caller runs inside ``worker``: in one of its jobs, an event handler it
    called, or a task started from either. Such a caller cannot wait for the worker to
    stop: the stop waits for it."""
    return worker is not None and _INSIDE.get() is worker


def startable(worker: Worker) -> JobQueue:
    """The queue of ``worker``, whose ``start()`` begins; ``RuntimeError`` when it was
    started before. A worker starts once: started again while it runs, it got a second
    set of loops; started again once stopped, it counted as running but never claimed
    (its stop was over: it stopped no more either), and its queue's ``start()`` then
    took it for running and started none, for good. ``queue.start()`` makes a new one.
    The queue's lifecycle knows it from now on (``Lifecycle.made``)."""
    if worker in worker.queue.lifecycle.running or worker._stop_task or worker._tasks:
        raise RuntimeError(
            f"worker {worker.id} of queue {worker.queue.name!r} was started already: a "
            "worker starts once; start the queue again with queue.start() (once this "
            "worker has stopped), which makes a new worker"
        )
    worker.queue.lifecycle.made.add(worker)
    return worker.queue


def detached(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    """A task running ``coro`` without the mark of the worker it was started from (it
    waits for that worker); the other context variables (who is acting) are kept."""
    ctx = contextvars.copy_context()
    ctx.run(_INSIDE.set, None)
    return ctx.run(asyncio.get_running_loop().create_task, coro, name=name)


#: The longest a stop waits for the waker's wait, ended through its wake key, to come
#: back with the reply of the claim riding on it (s); then it is cancelled.
WAKER_END_S = 2.0
#: The longest the write ending that wait may take (s): Redis hangs, the stop goes on.
WAKER_NUDGE_S = 0.5


async def end_waker(worker: Worker) -> None:
    """End the waker's wait when a claim rides on it (``Worker.stop``). Cancelling it
    would throw the claim's reply away, and Redis may have run the claim already (a job
    added just as the stop began): its jobs stayed leased to a worker gone, stalled
    until their leases ended. Instead a member is added to the worker's own wake key
    (``Worker.wake_key``, which its ``BZPOPMIN`` watches beside the marker): the wait
    returns, the claim runs, and its jobs are handed back at once (the stop's flush
    records them). A wait that does not come back within ``WAKER_END_S``, or a write
    that takes longer than ``WAKER_NUDGE_S`` (Redis unreachable), is cancelled, as
    before; so is the wait of a worker in an outage or a forced stop."""
    task = worker._waker_task
    if task is None or task.done():
        return
    key = worker.wake_key
    if worker._waker_claiming and not worker._outage and not worker._forced.is_set():
        try:
            client = await worker.queue.client()
            pipe = client.pipeline(transaction=True)
            pipe.zadd(key, {"stop": 0})
            pipe.pexpire(key, int(WAKER_END_S * 10_000))
            await asyncio.wait_for(pipe.execute(), WAKER_NUDGE_S)
            await asyncio.wait({task}, timeout=WAKER_END_S)
            # The member stays when the wait came back by itself just before.
            await asyncio.wait_for(client.delete(key), WAKER_NUDGE_S)
        except Exception:  # unreachable, refused: cancelled (its key expires by itself)
            pass
    if not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)


#: Services of a queue being started (``start_services``): a stop waits for their start.
_STARTING: weakref.WeakKeyDictionary[JobQueue, asyncio.Event] = weakref.WeakKeyDictionary()
#: The longest a stop waits for the services' start to end (s).
SERVICES_START_WAIT_S = 10.0


async def start_services(queue: JobQueue, worker_id: str) -> None:
    """Start the services that run alongside the worker (a failing one is logged)."""
    started = _STARTING[queue] = asyncio.Event()
    try:
        for svc in queue.services:
            try:
                await svc.start(queue)
            except Exception:
                log.exception("worker %s: service %s failed to start", worker_id, svc.name)
    finally:
        started.set()


def stop_budget(queue: JobQueue, wanted_s: float) -> tuple[float, asyncio.Event]:
    """For a service's ``stop()`` that lets work under way end: how long it may wait (at
    most ``wanted_s``, within what is left of the stopping worker's grace,
    ``shutdown_timeout``), and the event a forced stop (a second SIGTERM) sets, which
    ends the wait at once. No worker of ``queue`` stopping: ``wanted_s`` and an event
    nothing sets."""
    worker = next((w for w in list(STOPPING) if w.queue is queue), None)
    if worker is None:
        return wanted_s, asyncio.Event()
    if worker.stop_ends is not None:
        wanted_s = min(wanted_s, worker.stop_ends - asyncio.get_running_loop().time())
    return wanted_s, worker._forced


async def stop_services(queue: JobQueue, worker_id: str) -> None:
    """Stop the services, last started first (a failing one is logged). A stop begun
    while they start (a job that closes its queue, claimed while a service's start
    awaited Redis) first waits for that start to end: a service started after the
    stop passed it would run on without a worker."""
    started = _STARTING.get(queue)
    if started is not None and not started.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(started.wait(), SERVICES_START_WAIT_S)
    for svc in reversed(list(queue.services)):
        try:
            await svc.stop()
        except Exception:
            log.exception("worker %s: service %s failed to stop", worker_id, svc.name)


async def end_tasks(tasks: Iterable[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait until every one has ended."""
    tasks = list(tasks)
    pending = set(tasks)
    for t in pending:
        t.cancel()
    # A client library can swallow a cancellation that lands just as its reply arrives
    # (seen with blocking pops); that loop would then park on its next await for ever.
    # Cancel stragglers again until every loop has ended.
    while pending:
        _, pending = await asyncio.wait(pending, timeout=0.25)
        for t in pending:
            t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


_POLL_S = 0.1  # how often closed_in looks whether the workers' loop was closed


def _retrieved(done: asyncio.Future[None]) -> None:
    if not done.cancelled():
        done.exception()


async def closed_in(
    owner: asyncio.AbstractEventLoop, close: Callable[[], Coroutine[Any, Any, None]], what: str
) -> bool:
    """``close()`` of ``what`` awaited in another loop than ``owner``, its workers':
    True once ``close`` ran there (a loop running in another thread); False when that
    loop has ended (the caller forgets its workers); ``RuntimeError`` when it is idle
    (not running, not closed: its workers can be stopped only there)."""
    if owner.is_running():
        coro = close()
        try:
            done = asyncio.run_coroutine_threadsafe(coro, owner)
        except RuntimeError:  # closed since: ended
            coro.close()
            return False
        ran = asyncio.wrap_future(done)
        ran.add_done_callback(_retrieved)  # this caller may be gone (cancelled) by then
        # Not shielded: asyncio.wait leaves it be when this caller is cancelled (the stop
        # goes on in its own loop). Cancelled there, the workers' loop is ending
        # (asyncio.run cancels its tasks); closed before the close ran to its end (the
        # loop stopped first, or asyncio.run closed it with the close's task pending),
        # it never will: the caller forgets the workers (waiting, it hung for ever).
        while not ran.done() and not owner.is_closed():
            await asyncio.wait((ran,), timeout=_POLL_S)
        if ran.done() and not ran.cancelled():
            ran.result()  # close()'s own error, if any
            return True
        if inspect.getcoroutinestate(coro) == inspect.CORO_CREATED:
            coro.close()  # never begun there
        return False
    if not owner.is_closed():
        raise RuntimeError(
            f"close() of {what} awaited in another event loop than its worker's, which is "
            "not running now: await close() in the worker's loop"
        )
    return False


def job_name_for_processor(job_name: Any) -> str:
    """``job_name`` if ``add_job`` accepts it as a job name; else ``ConfigurationError``
    (and a clear one for a function given in its place: ``@queue.process`` used bare)."""
    if callable(job_name):
        name = getattr(job_name, "__name__", None)
        named = isinstance(name, str) and name.isidentifier()
        hint = name if named else "job-name"
        got = f"the function {name}" if named else f"a {type(job_name).__name__}"
        raise ConfigurationError(
            f"process() takes the job name first, then the function; it got {got} as the "
            f"job name (@queue.process used without one?): write @queue.process({hint!r}) "
            f"above the function, or queue.process({hint!r}, fn)"
        )
    return check_text(job_name, "job name", max_len=MAX_JOB_NAME_LENGTH)


class Lifecycle:
    """The worker of one ``JobQueue`` in this process, started and closed (module
    docstring); ``JobQueue.start`` / ``close`` / ``process`` delegate here."""

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue
        #: The worker ``start()`` made (None before it, and after a start that failed).
        self.worker: Worker | None = None
        #: The workers of this queue running in this process, from the start of their
        #: ``start()`` to the end of their ``stop()`` (``start()``'s, a partitioned
        #: queue's): each adds and removes itself.
        self.running: set[Any] = set()
        #: Every worker of this queue started in this process (``startable``), until a
        #: ``close()`` lets it go once its loop was closed before it stopped.
        self.made: weakref.WeakSet[Worker] = weakref.WeakSet()
        self._starting: asyncio.Future[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        #: The ``close()`` calls under way (outside the worker's jobs), each resolved
        #: once it has ended: ``settled()`` waits for them.
        self._releasing: set[asyncio.Future[None]] = set()

    async def start(self, make_worker: Callable[[], Worker]) -> None:
        """Start a worker made by ``make_worker`` unless one runs; join a start under
        way, and wait for a close a job started (``JobQueue.start``)."""
        while (pending := self._starting or self._closing) is not None:
            if pending is self._closing and inside(self.worker):
                raise RuntimeError(
                    f"start() of queue {self.queue.name!r} awaited from inside a job of the "
                    "worker being closed would wait for that job to end: start the queue "
                    "again from outside its jobs, once close() has returned"
                )
            await asyncio.shield(pending)
        if self.worker is not None and self.worker.running:
            return
        q = self.queue
        if q.worker_config.scheduler and not any(s.name == "scheduler" for s in q.services):
            from .features.scheduler import Scheduler

            q.services.append(Scheduler())
        if not q.connection.is_memory and not any(s.name == evictwatch.NAME for s in q.services):
            q.services.append(evictwatch.eviction_service(q))  # evictwatch.py
        worker = make_worker()  # may refuse its settings: nothing is under way yet
        self._starting = asyncio.get_running_loop().create_future()
        self.worker = worker
        try:
            await self._connections_for(worker)
            await worker.start()
        except BaseException:
            if not worker.running:
                # Never started: forget it, or close() would try to stop it. One that got
                # running before the failure stays, for close() to stop.
                self.worker = None
            raise
        finally:
            self._starting.set_result(None)
            self._starting = None

    async def _connections_for(self, worker: Worker) -> None:
        """Refuse a start whose worker cannot get the connections it needs to run
        (module docstring): the shared client first (Redis unreachable raises here, as
        it did in ``worker.start()``), then, all at once (``pools.hold_connections``),
        one per pump lane, one for the waker's blocking wait and those the services
        hold of their own (``Service.connections``: the scheduler's subscription), whose
        places are freed again for the worker to take."""
        q = self.queue
        opens = not q.ctx.connected  # this start connects the queue
        client = await q.client()
        if q.connection.is_memory:
            return
        lanes = 2 if worker.concurrency >= 2 else 1
        services = sum(int(getattr(s, "connections", 0)) for s in q.services)
        need = lanes + 1 + services
        got, failed = await hold_connections(client, need, keep=lanes)
        if failed is None:
            return
        if opens:  # its connection too: a refused start leaves the server as it found it
            await q.ctx.close()
        said = q.connection.error(failed, q.name) or failed
        raise ConnectionLimitError(
            f"queue {q.name!r} cannot start its worker: it needs {need} connections at "
            f"once to run ({lanes} for its pump lanes, 1 for the waker's blocking wait"
            f"{f', {services} for its services' if services else ''}) and could open only {got} of "
            f"them; nothing was claimed. {q.connection.redact(said)}"
        ) from None

    async def close(self) -> None:
        """Stop the worker (if any), then release the connections (``JobQueue.close``)."""
        q, worker = self.queue, self.worker
        owner = self._owner()
        if owner is not None and owner is not asyncio.get_running_loop():
            await self._close_from_elsewhere(owner)
            return
        if worker is not None and inside(worker):
            await worker.stop()  # starts the stop and returns: it waits for this caller
            if self._closing is None:
                self._closing = detached(self._close_after(worker), f"kq-close-{q.name}")
            return
        self.forget_ended()  # the workers a partitioned queue's close() forgot, too
        released = asyncio.get_running_loop().create_future()
        self._releasing.add(released)
        try:
            while self._starting is not None:  # stop what a start under way starts
                await asyncio.shield(self._starting)
            if self._closing is not None:  # a close a job started
                await asyncio.shield(self._closing)
            worker = self.worker
            if worker is not None:
                await worker.stop()
            if worker is not None and worker._forced.is_set():
                await q.emitter.drain(0.0)  # a forced stop waits for no event handler either
            else:
                await q.emitter.drain()
            await q.producer.settled()  # add_job calls waiting in its lanes (coalesce.py)
            await q.ctx.close()
        finally:
            self._releasing.discard(released)
            released.set_result(None)

    def _owner(self) -> asyncio.AbstractEventLoop | None:
        """The event loop of the running worker, or of a start under way (None: none)."""
        if self._starting is not None:
            return self._starting.get_loop()
        worker = self.worker
        return worker.runner.loop if worker is not None and worker.running else None

    async def _close_from_elsewhere(self, owner: asyncio.AbstractEventLoop) -> None:
        """``close()`` from another loop than the worker's (module docstring)."""
        q = self.queue
        if await closed_in(owner, self.close, f"queue {q.name!r}"):
            return
        worker, self.worker = self.worker, None
        if worker is not None and worker.running:
            log.warning(
                "queue %s: worker %s was left running when its event loop ended (close() "
                "was not awaited in that loop); forgotten now: the jobs it held stay leased "
                "and run again once their leases expire (lock_duration=%d ms)",
                q.name,
                worker.id,
                q.lock_duration_ms,
            )
            worker.running = False
            self.running.discard(worker)
            STOPPING.discard(worker)
        self.forget_ended()
        self._starting = self._closing = None
        self._releasing.clear()  # closes of that loop: they never end now
        await q.ctx.close()  # its connections belong to that loop: dropped, not awaited

    def forget_ended(self) -> None:
        """Let go the workers of this queue whose event loop was closed before they
        stopped, and what the queue's services and processors hold of those loops
        (``leftover.py``)."""
        gone = [w for w in list(self.made) if leftover.ended(w)]
        for worker in gone:
            self.made.discard(worker)
            worker.running = False
            self.running.discard(worker)
            STOPPING.discard(worker)
            leftover.let_go(worker)
        if gone:
            held = [*self.queue.services, *self.queue.processors.values()]
            leftover.let_go_held(held, {w.runner.loop for w in gone})

    async def settled(self) -> None:
        """Wait for the closes under way to finish: one a job started (``close`` from
        inside the worker) and those awaited elsewhere (a SIGTERM's, another task's),
        so that the connections they release are released once this returns."""
        if self._closing is not None:
            await asyncio.shield(self._closing)
        loop = asyncio.get_running_loop()
        pending = {f for f in self._releasing if f.get_loop() is loop}
        if pending:
            await asyncio.wait(pending)

    async def _close_after(self, worker: Worker) -> None:
        q = self.queue
        try:
            await worker.stopped.wait()
            await q.emitter.drain()
            await q.ctx.close()
        except Exception:
            log.exception("queue %s: releasing connections after the worker stopped failed", q.name)
        finally:
            self._closing = None

    def check_registration(self, job_name: str, replace: bool) -> None:
        """Refuse a processor for ``job_name`` that would replace another without
        ``replace``."""
        q = self.queue
        if job_name in q.processors and not replace:
            raise ConfigurationError(
                f"a processor for {job_name!r} is already registered on queue {q.name!r}; "
                "register each job name once, or pass replace=True to replace it"
            )

    def register(self, job_name: str, fn: Any, mode: str, replace: bool) -> None:
        """``JobQueue.process``'s registration of ``fn`` (checked) for ``job_name``."""
        if not callable(fn):
            raise ConfigurationError(f"processor for {job_name!r} must be callable")
        self.check_registration(job_name, replace)
        check_processor(job_name, fn)
        if mode == "process":
            if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
                getattr(fn, "__call__", None)  # noqa: B004
            ):
                raise ConfigurationError(
                    f"processor for {job_name!r}: mode='process' takes a plain function, "
                    "not an async def"
                )
            import_path(fn)
        self.queue.processors[job_name] = fn
        self.queue.processor_modes[job_name] = mode
        self.registered(job_name)

    def registered(self, job_name: str) -> None:
        """A processor was registered for ``job_name``: the workers of the queue running
        here use it from their next job of that name, and tell other processes they
        have it at once (their presence record, which ``explain`` reads)."""
        for worker in {*self.running, self.queue.worker}:
            if worker is None or not worker.running:
                continue
            worker.runner.procs.clear()
            worker.announce_soon()
