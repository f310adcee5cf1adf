"""``SyncJobQueue`` and ``SyncPartitionedQueue``: the producer, query, admin and schedule
methods for synchronous code (Django, Flask, scripts). Each runs a private event loop in a
background thread and delegates to a ``JobQueue`` (or ``PartitionedQueue``) living there,
so the blocking and the asyncio clients share one implementation.

Every blocking method is the twin of a method of ``api.QueueAPI``, made by ``blocking``
from its declaration: same signature and docstring, and mypy sees the signature with the
result type unwrapped from the coroutine. ``SyncQueueClient`` declares one twin for every
operation that has one (``Operation.blocking``; ``tests/test_facades.py`` checks it).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import os
import threading
import warnings
import weakref
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

from redis.exceptions import RedisError

from .api import OPERATIONS, QueueAPI
from .authrefused import word_refusals
from .blocking import BlockingScripts
from .features.partitioned import PartitionedQueue
from .jobspec import options_dict
from .limits import get_logger
from .options import JobOptions
from .producer import Producer
from .queue import JobQueue, QueueStats
from .scripts import REPLY_TIMEOUT_S

__all__ = ["HOP", "SyncJobQueue", "SyncPartitionedQueue", "SyncQueueClient", "blocking"]

_UNSET: Any = object()

#: What a direct implementation (``SyncQueueClient._direct``) returns when it cannot
#: serve a call from the caller's thread: the call then runs on the loop thread.
HOP: Any = object()

#: How long after a ``SyncJobQueue.add_job`` served from the caller's thread its
#: ``enqueued`` hooks run, at most, on the loop thread (metrics, local events).
ANNOUNCE_DELAY_S = 0.002

log = get_logger(__name__)

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S", bound="SyncQueueClient")


def blocking(
    declared: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[Any, P], R]:
    """The blocking twin of a coroutine method declared in ``QueueAPI``: it runs the
    method of the client's queue on the client's event loop thread and waits for it.

    An iterator argument (a generator of jobs, say) is read into a list first, here in
    the caller's thread, so the caller's code never runs on the loop thread.
    """
    op = OPERATIONS[declared.__name__]
    name = op.name

    def twin(self: SyncQueueClient, /, *args: P.args, **kwargs: P.kwargs) -> R:
        self._in_its_process()
        args_ = [list(a) if isinstance(a, Iterator) else a for a in args]
        kwargs_ = {k: list(v) if isinstance(v, Iterator) else v for k, v in kwargs.items()}
        direct = self._direct.get(name)
        if direct is not None:
            result = direct(*args_, **kwargs_)
            if result is not HOP:
                return cast(R, result)
        coro: Coroutine[Any, Any, R] = getattr(self.queue, name)(*args_, **kwargs_)
        return self._call(coro)

    twin.__name__ = name
    twin.__qualname__ = f"SyncQueueClient.{name}"
    twin.__doc__ = (
        f"{op.doc}\n\nBlocking: runs ``{name}`` of the client's queue and returns its "
        "result: on the client's event-loop thread, or in the calling thread where the "
        "client serves the call itself (``add_job`` on one plain Redis server)."
    )
    twin.__dict__["__signature__"] = op.signature()
    return twin


class SyncQueueClient:
    """The background loop, and the blocking twin of every producer, query, admin and
    schedule method of ``QueueAPI`` (both blocking clients share them)."""

    queue: QueueAPI

    def __init__(self, name: str, make: Callable[[], Coroutine[Any, Any, QueueAPI]]) -> None:
        # ``make``: a coroutine function building the asyncio queue inside the loop.
        self._pid = os.getpid()  # a forked child has neither the loop thread nor the sockets
        self._loop = asyncio.new_event_loop()
        self._loop.set_default_executor(_ExitSafeExecutor())
        self._thread = threading.Thread(
            target=_serve, args=(self._loop,), name=f"kq-sync-{name}", daemon=True
        )
        self._thread.start()
        self._closed = False
        # close() has begun: calls still under way then end with a clear error, and new
        # ones are refused (``_call``).
        self._closing = False
        # One close() at a time: others (threads, a signal handler) wait for it, then return.
        self._close_lock = threading.RLock()
        # The calls under way (their futures), so that close() can end those the stopped
        # loop will never finish: without that, their threads waited for ever.
        self._calls: set[concurrent.futures.Future[Any]] = set()
        self._calls_lock = threading.Lock()
        # Operations a client serves from the caller's thread, without a hop to the loop
        # thread: name -> a function taking the twin's arguments, returning HOP when it
        # cannot serve that call.
        self._direct: dict[str, Callable[..., Any]] = {}
        # The blocking connections of the direct add_job (None: no direct path), and the
        # hooks of jobs it added, waiting to run on the loop thread (_announce).
        self._blocking: BlockingScripts | None = None
        # A direct add_job's duplicate-check read, bound once (not made per add).
        self._dup_read: Callable[..., Any] = self._read_duplicate
        self._connected: set[int] = set()  # members whose first use has connected them
        self._announcements: collections.deque[Callable[[], None]] = collections.deque()
        self._announce_armed = False
        try:
            self.queue = self._call(make())
        except BaseException:
            # Bad configuration: do not leave the loop thread behind.
            self._stop_loop()
            raise
        # A client dropped without close(): its loop thread, which holds no reference to
        # it, ran for good (a thread and an event loop leaked per client).
        what = f"{type(self).__name__} {name!r}"
        self._finalizer = weakref.finalize(
            self, _abandoned, self._pid, self._loop, self.queue, what
        )
        self._finalizer.atexit = False  # at exit the daemon thread just ends, as before

    def _in_its_process(self) -> None:
        """Refuse a call in a process forked after the client was made: its loop thread
        is not there (the call hung for good) and its connections are the parent's
        (replies crossed: a caller got another process's job id)."""
        if os.getpid() != self._pid:
            raise RuntimeError(
                f"{type(self).__name__} was made in process {self._pid}, before this "
                "process was forked from it: its event-loop thread and connections stay "
                "there. Make the client after the fork (gunicorn: in post_fork, or without "
                "--preload; multiprocessing: in the child, or the 'spawn' start method)"
            )

    def _closed_under(self, exc: BaseException) -> None:
        """A connection error of a call that ``close()`` took the connection away from:
        raised as the documented ``RuntimeError`` (else nothing happens)."""
        if self._closing:
            raise self._ended_by_close() from exc

    def _ended_by_close(self) -> RuntimeError:
        """The error of a call ``close()`` ended while it was under way."""
        return RuntimeError(
            f"{type(self).__name__} was closed while the call was under way (a write "
            "may have been made: add a job again with an idempotency_key)"
        )

    def _off_loop_thread(self) -> None:
        """Refuse a blocking call made on the client's own event-loop thread (where a
        lifecycle subscriber or a ``queue.on`` handler runs): it would wait for ever for
        the loop it blocks."""
        if threading.current_thread() is self._thread:
            raise RuntimeError(
                f"{type(self).__name__} methods cannot be called from its own event-loop "
                "thread (a lifecycle subscriber or queue.on handler runs there): await the "
                "asyncio queue's method instead (client.queue), or call from another thread"
            )

    def _call(self, coro: Coroutine[Any, Any, T], *, closing: bool = False) -> T:
        """Run ``coro`` on the loop thread and wait for it. Refused once ``close()`` has
        begun, but for close()'s own steps (``closing``): every call handed over before
        is then queued ahead of them, so close() ends it (its calls of other threads
        end, ``_cancel_others``). A call handed over while close() ran started after
        the calls were cancelled and was cut by the loop's stop, never to end: its
        coroutine was collected pending ("Event loop is closed"), its caller told the
        call was cut although its write may have been made (a read's reply had come)."""
        try:
            self._in_its_process()
            self._off_loop_thread()
        except RuntimeError:
            coro.close()
            raise
        with self._calls_lock:
            if self._closed or (self._closing and not closing):
                coro.close()
                raise RuntimeError(f"{type(self).__name__} is closed")
            fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
            self._calls.add(fut)
        try:
            return fut.result()
        except concurrent.futures.CancelledError:
            if self._closing:
                raise self._ended_by_close() from None
            raise
        except (RedisError, OSError) as exc:
            self._closed_under(exc)
            raise
        except BaseException:
            # The caller gave up (Ctrl-C, a request timeout raised by a signal handler):
            # the call stops too. It ran on, holding a connection, until Redis answered.
            fut.cancel()
            raise
        finally:
            self._calls.discard(fut)

    @property
    def name(self) -> str:
        return self.queue.name

    # One line per twin, so that mypy sees each (signature, result type).
    add_job = blocking(QueueAPI.add_job)
    add_jobs = blocking(QueueAPI.add_jobs)
    get_job_status = blocking(QueueAPI.get_job_status)
    get_job_detail = blocking(QueueAPI.get_job_detail)
    explain = blocking(QueueAPI.explain)
    get_job_logs = blocking(QueueAPI.get_job_logs)
    get_jobs_by_status = blocking(QueueAPI.get_jobs_by_status)
    list_jobs = blocking(QueueAPI.list_jobs)
    get_dlq_jobs = blocking(QueueAPI.get_dlq_jobs)
    get_stats = blocking(QueueAPI.get_stats)
    health_check = blocking(QueueAPI.health_check)
    pause = blocking(QueueAPI.pause)
    resume = blocking(QueueAPI.resume)
    drain = blocking(QueueAPI.drain)
    clear = blocking(QueueAPI.clear)
    retry_job = blocking(QueueAPI.retry_job)
    remove_job = blocking(QueueAPI.remove_job)
    cancel_job = blocking(QueueAPI.cancel_job)
    bulk_retry = blocking(QueueAPI.bulk_retry)
    replay_dlq = blocking(QueueAPI.replay_dlq)
    promote_delayed = blocking(QueueAPI.promote_delayed)
    promote_job = blocking(QueueAPI.promote_job)
    recover_stalled = blocking(QueueAPI.recover_stalled)
    schedule_job = blocking(QueueAPI.schedule_job)
    schedule_every = blocking(QueueAPI.schedule_every)
    get_schedules = blocking(QueueAPI.get_schedules)
    get_schedule = blocking(QueueAPI.get_schedule)
    update_schedule = blocking(QueueAPI.update_schedule)
    remove_schedule = blocking(QueueAPI.remove_schedule)
    pause_schedule = blocking(QueueAPI.pause_schedule)
    resume_schedule = blocking(QueueAPI.resume_schedule)

    def close(self) -> None:
        """Close the connections and stop the background loop. Any thread may call it,
        any number of times: a close() that finds another under way waits for it."""
        if self._closed:
            return
        if os.getpid() != self._pid:  # a forked child: the loop and sockets are the parent's
            self._closed = True
            return
        self._off_loop_thread()
        with self._close_lock:
            # Closed by another thread meanwhile, or this thread's own close() is under way
            # (a signal handler interrupted it): that close() finishes the job. Before, two
            # at once cancelled each other's steps and raised RuntimeError or worse.
            if self._closed or self._closing:
                return
            with self._calls_lock:  # from here on, calls are refused (``_call``)
                self._closing = True
            self._finalizer.detach()
            try:
                if self._announcements:

                    async def announce_now() -> None:
                        self._run_announcements()

                    self._call(announce_now(), closing=True)
                self._call(self.queue.close(), closing=True)
                # Calls other threads still wait for end now (cancelled: a clear error).
                self._call(_cancel_others(), closing=True)
                # One of them may have connected the queue again after it closed (a first
                # connect under way then, a partition's by a direct add_job): released
                # again now that none runs, or its connection stayed open for good.
                self._call(self.queue.close(), closing=True)
            finally:
                self._stop_loop()
                # The blocking connections no call uses; each add under way in another
                # thread ends as it would have, then drops its own (``_add_job_direct``).
                self._drop_unused()

    def _add_job_direct(
        self,
        job_name: str,
        data: Any = None,
        options: JobOptions | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """``add_job`` from the caller's thread over the blocking connections (installed
        in ``_direct`` by a client that has them), or HOP when the call belongs to the
        asyncio path (enqueue middleware, a write barrier, tracing)."""
        if self._closed or self._closing:  # refused once close() began, as ``_call`` does
            raise RuntimeError(f"{type(self).__name__} is closed")
        member, producer, options, kwargs = self._place(options, kwargs)
        if not producer.blocking_ready():
            return HOP
        ctx = producer.ctx
        if member not in self._connected:
            # The first use connects as the asyncio client does (PING, the eviction
            # policy check, SCRIPT LOAD), and fails with the same errors.
            self._call(ctx.client())
            self._connected.add(member)
        blocking, keys, scripts = self._blocking, ctx.keys.all, ctx.scripts
        assert blocking is not None

        def run(args: Sequence[Any]) -> Any:
            try:
                return blocking.call("enqueue", keys, args, scripts)
            except (RedisError, OSError) as exc:
                self._closed_under(exc)
                raise
            finally:
                if self._closing:  # close() began under this call: nothing it took stays open
                    self._drop_unused()

        inner = producer.add_job_blocking(
            job_name, data, options, kwargs, run, self._announce, self._dup_read
        )
        return self._public_id(member, inner)

    def _read_duplicate(self, *command: Any) -> Any:
        """A duplicate check's read (``dupcheck.check_blocking``) over the blocking
        connections, for a direct ``add_job`` (``_dup_read``: bound once)."""
        blocking = self._blocking
        assert blocking is not None
        try:
            return blocking.command(*command)
        except (RedisError, OSError) as exc:
            self._closed_under(exc)
            raise
        finally:
            if self._closing:
                self._drop_unused()

    def _drop_unused(self) -> None:
        """Close the blocking connections no call is using (``BlockingScripts.close``);
        a call under way drops what it took when it ends (``_add_job_direct``)."""
        if self._blocking is not None:
            self._blocking.close()

    def _place(
        self, options: JobOptions | Mapping[str, Any] | None, kwargs: dict[str, Any]
    ) -> tuple[int, Producer, JobOptions | Mapping[str, Any] | None, dict[str, Any]]:
        """Which member a direct ``add_job`` goes to: its index, its producer, and the
        options and keyword arguments to hand it."""
        raise NotImplementedError

    def _public_id(self, member: int, inner: str) -> str:
        """The id a direct ``add_job`` returns for job ``inner`` of member ``member``."""
        return inner

    def _announce(self, fn: Callable[[], None]) -> None:
        # Hooks of jobs added from the caller's thread run on the loop thread, a moment
        # later and in order: one wake-up of the loop per ANNOUNCE_DELAY_S, not one per
        # job (waking another thread per add would cost more than the add itself).
        self._announcements.append(fn)
        if self._loop.is_closed():
            # close() ran under this add, after its job was written: the job is added, so
            # its caller gets the id, and its hooks run here (the loop thread is gone).
            self._run_announcements()
            return
        if not self._announce_armed:
            self._announce_armed = True
            try:
                self._loop.call_soon_threadsafe(
                    self._loop.call_later, ANNOUNCE_DELAY_S, self._run_announcements
                )
            except RuntimeError:  # closed just now
                self._run_announcements()

    def _run_announcements(self) -> None:
        # Disarm first: an add that appends after this point arms the next run itself.
        self._announce_armed = False
        pending = self._announcements
        while pending:
            # close() and a late add (_announce, _stop_loop) may both run this after the
            # loop closed: the other may take the last hook between the check and here.
            # Its job is written: never raise into the add that returns its id.
            try:
                fn = pending.popleft()
            except IndexError:
                break
            try:
                fn()
            except Exception:  # subscribers' errors are caught further in; this is a bug
                log.exception("queue %s: reporting jobs added from blocking code failed", self.name)

    def _stop_loop(self) -> None:
        with self._calls_lock:
            self._closed = True
            left = list(self._calls)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()
        if self._announcements:  # of adds that ended as the loop stopped: run them here
            self._run_announcements()
        # A call handed over as the loop stopped never runs: its caller gets the error.
        for fut in left:
            if not fut.done():
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    fut.set_exception(self._ended_by_close())

    def __enter__(self: S) -> S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    """The loop thread: runs the loop until it is stopped, then closes it (a client
    collected without close() has nobody else to do that)."""
    loop.run_forever()
    loop.close()


def _abandoned(pid: int, loop: asyncio.AbstractEventLoop, queue: QueueAPI, what: str) -> None:
    """A client collected without ``close()``: close its queue and stop its loop, on the
    loop thread, without waiting here (a collection may run in any thread, that one too)."""
    if os.getpid() != pid or loop.is_closed():  # a forked child: the loop is the parent's
        return
    warnings.warn(f"unclosed {what}: call close()", ResourceWarning, stacklevel=1)

    async def shut() -> None:
        try:
            await asyncio.wait_for(queue.close(), 5.0)
        except Exception:
            log.warning("queue %s: closing a client dropped without close() failed", queue.name)
        finally:
            loop.stop()

    with contextlib.suppress(RuntimeError):  # its loop is closed already
        asyncio.run_coroutine_threadsafe(shut(), loop)


class _ExitSafeExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor, where asyncio resolves host names. Once the
    interpreter has begun to exit (the main thread returned, atexit), executors refuse
    new work: a connection opened then (a non-daemon thread's or an atexit handler's
    call, ``redis://localhost``) failed as "cannot reach Redis". The work runs in the
    loop thread then."""

    def submit(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[T]:
        try:
            return super().submit(fn, *args, **kwargs)
        except RuntimeError:  # "cannot schedule new futures after interpreter shutdown"
            fut: concurrent.futures.Future[T] = concurrent.futures.Future()
            try:
                fut.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                fut.set_exception(exc)
            return fut


async def _cancel_others(timeout_s: float = 5.0) -> None:
    """Cancel every other task of the running loop (the calls of other threads still
    under way when the client closes) and wait for them to end, up to ``timeout_s``."""
    me = asyncio.current_task()
    others = [t for t in asyncio.all_tasks() if t is not me]
    for task in others:
        task.cancel()
    if others:
        await asyncio.wait(others, timeout=timeout_s)


class SyncJobQueue(SyncQueueClient):
    """Blocking client with ``JobQueue``'s producer, query, admin and schedule methods.

    Takes the same arguments as ``JobQueue``. Thread-safe. Use ``close()`` (or a
    ``with`` block) to stop its background loop.

    Example::

        queue = SyncJobQueue("emails", redis="redis://localhost:6379/0")
        job_id = queue.add_job("send-email", {"to": "a@b.c"}, attempts=5)
        print(queue.get_job_status(job_id))
    """

    queue: JobQueue

    def __init__(self, name: str, **config: Any) -> None:
        async def make() -> JobQueue:
            return JobQueue(name, **config)

        super().__init__(name, make)
        # add_job from the caller's thread over a blocking connection (one round trip,
        # no hop to the loop thread) when the queue talks to one plain Redis server.
        ctx = self.queue.producer.ctx
        pool = ctx.connection.sync_pool(reply_timeout_s=REPLY_TIMEOUT_S)
        self._blocking = BlockingScripts(ctx.scripts, pool) if pool is not None else None
        if self._blocking is not None:
            word_refusals(pool, ctx.connection, ctx.name)  # a refused AUTH names the queue
            self._direct["add_job"] = self._add_job_direct

    def _place(
        self, options: JobOptions | Mapping[str, Any] | None, kwargs: dict[str, Any]
    ) -> tuple[int, Producer, JobOptions | Mapping[str, Any] | None, dict[str, Any]]:
        return 0, self.queue.producer, options, kwargs


class SyncPartitionedQueue(SyncQueueClient):
    """Blocking client of a ``PartitionedQueue``: its producer, query and admin methods.

    Takes the same arguments as ``PartitionedQueue``; ids are the full
    ``"<partition>:<id>"`` ones. Schedules belong on a plain queue (``SyncJobQueue``):
    the schedule methods raise ``ConfigurationError`` here. ``add_job`` runs in the
    caller's thread where ``SyncJobQueue``'s does (one plain Redis server, no enqueue
    middleware): the job is placed there, and the partitions share one pool of
    blocking connections.

    Example::

        orders = SyncPartitionedQueue("orders", partitions=6, redis="redis://localhost:6379")
        job_id = orders.add_job("charge", {"order": 42}, partition_key="customer-7")
    """

    queue: PartitionedQueue

    def __init__(self, name: str, *, partitions: int, **config: Any) -> None:
        async def make() -> PartitionedQueue:
            return PartitionedQueue(name, partitions=partitions, **config)

        super().__init__(name, make)
        # add_job from the caller's thread, as SyncJobQueue does: the partitions share one
        # server, so one pool of blocking connections serves them all.
        pool = self.queue.connection.sync_pool(reply_timeout_s=REPLY_TIMEOUT_S)
        if pool is not None:
            word_refusals(pool, self.queue.connection, self.queue.name)
            first = self.queue.queues[0].producer.ctx.scripts
            self._blocking = BlockingScripts(first, pool)
            self._direct["add_job"] = self._add_job_direct

    def _place(
        self, options: JobOptions | Mapping[str, Any] | None, kwargs: dict[str, Any]
    ) -> tuple[int, Producer, JobOptions | Mapping[str, Any] | None, dict[str, Any]]:
        pq = self.queue
        key = kwargs.pop(pq.member_key, _UNSET) if pq.member_key else _UNSET
        opts = {**options_dict(options), **kwargs}
        if key is not _UNSET:
            # As PartitionedQueue.add_job: the key inside ``options`` wins over the keyword.
            opts.setdefault(pq.member_key, key)
        # Placement takes partition_key out of the options it reads (and rewrites full ids
        # into ids within the partition): a call handed to the loop thread gets the
        # caller's own arguments (the twin keeps them) and is placed again there.
        if not pq.count_record.current():  # not confirmed lately: asked first (one call)
            self._call(pq.count_record.confirm())
        i = pq.place(opts)
        return i, pq.queues[i].producer, None, opts

    def _public_id(self, member: int, inner: str) -> str:
        return self.queue.full_id(member, inner)

    @property
    def partitions(self) -> int:
        return self.queue.partitions

    def partition_of(self, key: str) -> int:
        """The partition a key maps to (see ``PartitionedQueue.partition_of``)."""
        return self.queue.partition_of(key)

    def parse_id(self, job_id: str) -> tuple[int, str] | None:
        """``(partition, inner id)`` of a full id, or None (see ``PartitionedQueue.parse_id``)."""
        return self.queue.parse_id(job_id)

    def partition_stats(self) -> list[QueueStats]:
        """Stats of each partition, in partition order."""
        return self._call(self.queue.partition_stats())
