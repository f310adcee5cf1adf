"""``QueueContext``: what every component of one queue shares.

A ``JobQueue`` builds one context and hands it to its components (``Producer``,
``Queries``, ``Admin``, the worker): the queue's name and keys, the Lua scripts, the
connection, its checks (``connect_checks``) and the shared client, the serializer, the
settings resolved and checked at construction, the option registry (``jobspec``) and the
lifecycle subscribers (``hooks``). Components talk to Redis through ``run``/``call`` and
to subscribers through ``hooks``, and know nothing of each other."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoPermissionError

from .adapters import MetricsAdapter, TelemetryAdapter, check_adapter
from .authrefused import word_refusals
from .codec import Codec, Serializer
from .connection import ConnectionFactory
from .connerrors import permission_denied
from .damage import DamagedKeys
from .errors import ConfigurationError
from .events import EventEmitter
from .hooks import HookBus
from .jobspec import JobSpec, options_dict, resolve_policy
from .jobtexts import JobTexts
from .keys import QueueKeys
from .limits import get_logger
from .missing import MissingRecords
from .options import (
    MAX_CONCURRENCY,
    MAX_COUNT,
    MAX_EVENTS_MAX_LEN,
    MAX_LOG_LINES,
    MAX_PAYLOAD_LIMIT,
    BackoffOptions,
    DLQConfig,
    JobOptions,
    LimiterConfig,
    Policy,
    QueueSettings,
    RetryConfig,
    WorkerConfig,
    coerce,
    to_int,
    to_ms,
)
from .pools import drop_connections, ping, waiters_of
from .queueconfig import coerce_section
from .replies import ReplyChannel
from .scripts import ScriptCall, ScriptRegistry
from .serverinfo import check_eviction, write_refused_cause

if TYPE_CHECKING:
    from .barrier import WriteBarrier
    from .explain import Explainer
    from .job import JobInfo

__all__ = ["CLOSE_GRACE_S", "CONNECT_TIMEOUT_S", "QueueContext", "redacted_views"]

_REDACTING: ContextVar[bool] = ContextVar("kq_redacting", default=False)
_BINDING = threading.Lock()  # binding a queue to an event loop: threads' loops may race
log = get_logger(__name__)


@contextmanager
def redacted_views() -> Iterator[None]:
    """Inside the block, payload views of every queue hide protected payloads, as with
    ``redact_payloads``, without changing the queue: a server that shows jobs to people
    (the dashboard) wraps each request in it (a ``contextvars`` variable, so other
    requests and tasks of the process are not affected)."""
    token = _REDACTING.set(True)
    try:
        yield
    finally:
        _REDACTING.reset(token)


#: How long a server that accepted the connection gets to answer the first PING.
CONNECT_TIMEOUT_S = 10.0


class _LoopEnd:
    """Closes a connected client of the queue when its event loop ends, unless ``close()``
    released it before.

    An async generator parked in the client's loop: the loop closes it as it ends
    (``shutdown_asyncgens``, which ``asyncio.run``, ``asyncio.Runner`` and test runners
    call once the loop's tasks are cancelled), and the client is closed there, in its
    own loop. A queue used in an ``asyncio.run`` that ended without ``close()`` (the
    refused second loop of the README's "Processes and event loops") kept the sockets of
    a closed loop open until garbage collection, with a ``ResourceWarning`` each.
    """

    def __init__(self, client: Any, queue: str) -> None:
        self._client: Any = client
        self._queue = queue
        self._gen = self._parked()
        self._started = False  # an async generator's first step registers it: none else

    async def start(self) -> None:
        """Park in the running loop (its hooks for async generators register it), unless
        the loop is closing its generators already: it is ending, and only the caller's
        ``close()`` releases the client then."""
        if not getattr(asyncio.get_running_loop(), "_asyncgens_shutdown_called", False):
            self._started = True
            await self._gen.__anext__()

    async def _parked(self) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            _LEFT.discard(self)
            client, self._client = self._client, None
            if client is not None:  # the loop is ending and the client was not released
                await self._close(client)

    async def _close(self, client: Any) -> None:
        try:
            await client.aclose()
        except Exception as exc:
            log.warning(
                "queue %s: closing the connections it let go in their event loop failed "
                "(%s); they close with the process",
                self._queue,
                type(exc).__name__,
            )

    async def release(self) -> None:
        """In the client's own loop: stand down (the caller closes the client). Not
        while the loop's end is closing the generator already (a ``close()`` in the
        ``finally`` of an async generator of the app, closed at the same moment)."""
        self._client = None
        if self._started and not getattr(self._gen, "ag_running", False):
            await self._gen.aclose()

    def drop(self) -> None:
        """From anywhere, the client's loop not running (ended, or idle): close its
        sockets directly (``pools.drop_connections``), and stand down without the loop."""
        client, self._client = self._client, None
        if client is not None:
            drop_connections(client)
        if not self._started:
            return
        closing = self._gen.aclose()  # its ``finally`` awaits nothing now: done at once
        try:
            closing.send(None)
        except StopIteration:
            return
        closing.close()

    def leave(self, loop: asyncio.AbstractEventLoop) -> None:
        """The client's loop runs in another thread: its connections stay that loop's
        for ``LEFT_GRACE_S`` (calls under way there keep them), then are closed there,
        or when the loop ends if sooner."""
        _LEFT.add(self)

        async def done() -> None:
            client = self._client
            await self.release()  # the generator stands down: nothing to close at the end
            _LEFT.discard(self)
            if client is not None:
                await self._close(client)

        def fire() -> None:
            task = loop.create_task(done())
            _LEFT_TASKS.add(task)
            task.add_done_callback(_LEFT_TASKS.discard)

        with suppress(RuntimeError):  # that loop closed meanwhile
            loop.call_soon_threadsafe(loop.call_later, LEFT_GRACE_S, fire)


# Clients let go by close() in another event loop while theirs runs (another thread's): each
# is closed in its own loop LEFT_GRACE_S later, or when that loop ends (``_LoopEnd.leave``).
_LEFT: set[_LoopEnd] = set()
_LEFT_TASKS: set[asyncio.Task[None]] = set()
LEFT_GRACE_S = 10.0

#: How long ``close()`` lets the calls under way on the queue's client end before it
#: closes the client's connections (s); a call a reply deadline ends gives up sooner.
CLOSE_GRACE_S = 3.0
#: How often ``close()`` looks whether they have ended (s).
_CALLS_POLL_S = 0.01


def _taken(client: Any) -> tuple[list[Any], int]:
    """The connections of ``client`` taken out of its pool (of each node's, on a
    Cluster) and how many callers wait for one (``pools.waiters_of``; one that gave
    up stays in the line, done, until a connection comes back)."""
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        line: Any = waiters_of(pool)
        waiting = sum(1 for fut in line if not fut.done())
        return list(getattr(pool, "_in_use_connections", None) or ()), waiting
    out: list[Any] = []
    nodes = getattr(getattr(client, "nodes_manager", None), "nodes_cache", None)
    for node in (nodes or {}).values():
        free = {id(c) for c in getattr(node, "_free", ())}
        out.extend(c for c in getattr(node, "_connections", ()) if id(c) not in free)
    return out, 0


def _serving(conn: Any) -> bool | None:
    """What connection ``conn``, taken out of its pool, does: True while it serves a
    call (replies owed or being read, a command being sent, a packed exchange, an open
    under way, ``pools.answering``; on ``memory://`` a read under way, ``pools.yielding``;
    any other taken connection whose replies, ``connerrors.bound_replies``, or opens are
    not counted), None while it serves nothing (held between commands, or closed with no
    open under way, as a wait cancelled at its read or its open leaves it; a call about to
    send: look again), False when a subscription holds it (its holder lets it go)."""
    if getattr(conn, "_connect_callbacks", None):  # PubSub: subscriptions to renew
        return False
    reading = getattr(conn, "_kq_reading", None)  # memory://: its sends are answered at once
    if reading is not None:
        return True if reading else None
    transport: Any = getattr(getattr(conn, "_writer", None), "transport", None)
    protocol = getattr(transport, "get_protocol", None)  # memory:// has none
    if protocol is not None and isinstance(protocol(), ReplyChannel):
        return True  # the packed script path's, between taking and handing it back
    if protocol is not None and transport.get_write_buffer_size():
        return True  # a command being sent (not counted in owed under a socket_timeout)
    owed = getattr(conn, "__dict__", {}).get("_kq_owed")
    if owed is None or owed["reading"] or (owed["owed"] and conn.is_connected):
        return True  # none owed on a closed one (a wait cancelled at its open counts one)
    return None if conn.is_connected or getattr(conn, "_kq_opening", 1) == 0 else True


class QueueContext:
    """The shared state of one queue; built by ``JobQueue`` from its arguments (same
    names, same meaning, every value checked against its documented range here).

    Attributes (besides the arguments, coerced to their config classes):
        keys, scripts, connection, serializer: the queue's keys, Lua scripts, connection
            factory and payload serializer.
        lock_duration_ms, lock_renew_ms, stalled_interval_ms, shutdown_timeout_ms,
            limiter: the lease, stall and worker settings resolved to ms.
        jobspec: the option registry; ``defaults``: ``default_job_options`` validated;
            ``policy``: the execution policy of a job that sets no option.
        emitter: the in-process event handlers (``queue.on``).
        hooks: the lifecycle subscribers. ``JobQueue`` adds the built-in ``Observer``
            (events, metrics, logs, DLQ notification) first, before anyone else can.
        info_views: functions ``view(info, redact)`` that may rewrite each ``JobInfo``
            the queries return, in place, in the order added (a feature that protects
            payloads turns them back into what they hold for this process, or hides
            them). ``redact``: ``redact_payloads``.
        redact_payloads: set by tools that show jobs to people (the CLI): views hide
            protected payloads instead of revealing them (``redacted_views()`` does it
            for one block; views read ``redacting``).
        explainers: what ``explain`` asks besides the core (``queue.add_explainer``).
        gauges: named readings features provide (``queue.add_gauge``): a metric only a
            feature can compute (a global queue's replication lag), read by whoever
            watches metrics (alert rules) without importing the feature.
        redactors: functions ``redact(value) -> value`` returning a copy of a payload
            value (job data, a result, progress) with protected parts hidden (a
            compliance feature masks named fields). ``redact_value`` applies them.
            Applied to what tools show (``JobInfo`` payloads and JSON log lines when
            ``redacting``), to progress read from the durable event stream
            (``events()``), and, with ``redact_everywhere``, to every ``JobInfo`` and to
            the result and progress handed to ``queue.on`` handlers as well.
    """

    def __init__(
        self,
        name: str,
        *,
        redis: Any,
        prefix: str,
        default_job_options: JobOptions | Mapping[str, Any] | None,
        retry: RetryConfig | Mapping[str, Any] | None,
        dlq: DLQConfig | Mapping[str, Any] | None,
        settings: QueueSettings | Mapping[str, Any] | None,
        worker: WorkerConfig | Mapping[str, Any] | None,
        telemetry: TelemetryAdapter | None,
        metrics: MetricsAdapter | None,
        codecs: Sequence[Codec],
        events_max_len: int,
        idempotency_ttl: Any,
        max_payload_bytes: int,
        max_log_lines: int,
    ) -> None:
        self.name = name
        self.keys = QueueKeys(name, prefix)
        self.connection = ConnectionFactory(redis)
        self.retry = coerce_section(RetryConfig, retry, "retry")
        self.dlq = coerce_section(DLQConfig, dlq, "dlq")
        self.settings = coerce_section(QueueSettings, settings, "settings")
        self.worker_config = coerce_section(WorkerConfig, worker, "worker")
        self.telemetry = check_adapter(telemetry, "telemetry", ("start_span",))
        self.metrics = check_adapter(metrics, "metrics", ("increment", "observe"))
        self.serializer = Serializer(codecs)
        # Ranges: README "Limits and ranges". Checked here, at construction, so a bad
        # value never reaches a script (where it would fail after the job's first write).
        self.events_max_len = to_int(
            events_max_len, "events_max_len", minimum=0, maximum=MAX_EVENTS_MAX_LEN
        )
        self.idempotency_ttl = to_ms(idempotency_ttl, "idempotency_ttl", minimum=1)
        self.max_payload_bytes = to_int(
            max_payload_bytes, "max_payload_bytes", minimum=1, maximum=MAX_PAYLOAD_LIMIT
        )
        self.max_log_lines = to_int(
            max_log_lines, "max_log_lines", minimum=0, maximum=MAX_LOG_LINES
        )
        self.scripts = ScriptRegistry()
        #: Run on each new connection before use; one that raises refuses it (features').
        self.connect_checks: list[Callable[[Any], Awaitable[None]]] = []
        self.jobspec = JobSpec(name)
        self.defaults = self.jobspec.check(options_dict(default_job_options), "default_job_options")
        self._check_settings()
        self.policy = self._base_policy()
        self.emitter = EventEmitter()
        self.hooks = HookBus()
        self.info_views: list[Callable[[JobInfo, bool], None]] = []
        self.job_texts = JobTexts()  # progress and log-line filters, log views (jobtexts.py)
        self.redact_payloads = False
        #: Explainers of ``explain``: features add theirs with ``queue.add_explainer``.
        self.explainers: list[Explainer] = []
        #: Gauges: features add theirs with ``queue.add_gauge``.
        self.gauges: dict[str, Callable[[], Any]] = {}
        #: The write barrier: a command run after each enqueue and outcome, before they
        #: are acknowledged (``barrier.py``; None: none).
        self.write_barrier: WriteBarrier | None = None
        #: Reports job records found missing (evicted or deleted), at a bounded rate.
        self.missing = MissingRecords(name)
        #: Reports keys of the layout damaged outside kitium-queue, at a bounded rate.
        self.damaged = DamagedKeys(name)
        self.redactors: list[Callable[[Any], Any]] = []
        self.redact_everywhere = False
        #: The principal this queue acts for when no ``identity.acting_as`` block is
        #: active (stamped on admin calls; None: nobody in particular).
        self.principal: str | None = None
        self._client: Any = None
        self._loop_end: _LoopEnd | None = None
        self._connect_lock: asyncio.Lock | None = None
        # The releases of clients under way in close(): another close() waits for them.
        self._releases: set[asyncio.Future[None]] = set()
        # The event loop the client's connections belong to (in_its_loop).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._argv_head: tuple[str, str, str] = (self.keys.base, "", str(self.events_max_len))

    @property
    def redacting(self) -> bool:
        """Whether payload views hide protected payloads now (or in redacted_views())."""
        return self.redact_payloads or _REDACTING.get()

    def redact_value(self, value: Any) -> Any:
        """``value`` through every redactor (the value itself when there is none)."""
        for redact in self.redactors:
            value = redact(value)
        return value

    # ------------------------------------------------------------------ settings
    def _check_settings(self) -> None:
        s = self.settings
        to_int(s.max_stalled_count, "settings.max_stalled_count", minimum=0, maximum=MAX_COUNT)
        if not isinstance(s.allow_eviction, bool):
            raise ConfigurationError(
                f"settings.allow_eviction must be True or False, got {s.allow_eviction!r}"
            )
        self.lock_duration_ms = to_ms(s.lock_duration, "settings.lock_duration")
        if self.lock_duration_ms < 100:
            raise ConfigurationError("settings.lock_duration must be at least 100 ms")
        renew = to_ms(s.lock_renew_time, "settings.lock_renew_time", allow_none=True, minimum=1)
        self.lock_renew_ms = renew if renew is not None else max(50, self.lock_duration_ms // 2)
        if self.lock_renew_ms >= self.lock_duration_ms:
            raise ConfigurationError(
                f"settings.lock_renew_time ({self.lock_renew_ms} ms) must be shorter than "
                f"lock_duration ({self.lock_duration_ms} ms), or leases expire between renewals"
            )
        self.stalled_interval_ms = to_ms(
            s.max_stalled_interval, "settings.max_stalled_interval", minimum=1
        )
        w = self.worker_config
        to_int(w.concurrency, "worker.concurrency", minimum=1, maximum=MAX_CONCURRENCY)
        self.shutdown_timeout_ms = to_ms(w.shutdown_timeout, "worker.shutdown_timeout")
        self.limiter: LimiterConfig | None = None
        if w.limiter is not None:
            lim = coerce(LimiterConfig, w.limiter, "worker.limiter")
            limit_max = to_int(lim.max, "worker.limiter.max", minimum=1, maximum=MAX_COUNT)
            dur = to_ms(lim.duration, "worker.limiter.duration", minimum=1)
            self.limiter = LimiterConfig(limit_max, dur)

    def _base_policy(self) -> Policy:
        r = self.retry
        attempts = to_int(r.max_attempts, "retry.max_attempts", minimum=1, maximum=MAX_COUNT)
        backoff = BackoffOptions(r.backoff_type, r.backoff_delay, r.max_backoff_delay)
        return resolve_policy(self.defaults, Policy(attempts=attempts, backoff=backoff))[0]

    # ------------------------------------------------------------------ connection
    @property
    def connected(self) -> bool:
        """Whether the shared client is connected (``client()`` would not connect)."""
        return self._client is not None

    async def client(self) -> Any:
        """The shared Redis client (connects and loads the scripts on first use)."""
        if self._client is not None:
            self.in_its_loop()
            return self._client
        self.in_its_loop()  # bound before the first await: another loop is refused
        lock = self._connect_lock
        assert lock is not None  # made when the loop was bound
        async with lock:
            if self._client is None:
                client = await self._connect()
                if self.connection.owns(client):  # a client passed in stays its owner's
                    self._loop_end = _LoopEnd(client, self.name)
                    await self._loop_end.start()
                self._client = client
        return self._client

    def in_its_loop(
        self, owner: asyncio.AbstractEventLoop | None = None
    ) -> asyncio.AbstractEventLoop:
        """The running event loop, once checked to be the queue's: the first call binds
        the queue to it, before anything is awaited, so that of several loops starting at
        once (threads, ``asyncio.run`` per call) one goes on and the others are refused
        at once, with nothing written (they hung, or joined the first loop's batch and
        connect lock). A loop that ended before the queue connected frees it; one that
        connected keeps it until ``close()``. ``owner``: refuse also a loop other than
        this one, unless it is closed (the loop of a batch under way)."""
        loop, bound = asyncio.get_running_loop(), self._loop
        if owner is not None and owner is not loop:
            if not owner.is_closed():
                raise self._elsewhere(owner)
        elif bound is loop:
            return loop
        with _BINDING:
            bound = self._loop
            if bound is None or (self._client is None and bound.is_closed()):
                self._loop, self._connect_lock = loop, asyncio.Lock()
                return loop
            end = self._loop_end
            if bound is not loop and bound.is_closed() and end is not None:
                # Refused until close(), as documented; the sockets of the ended loop
                # need not wait for it (nor for garbage collection).
                self._loop_end = None
                end.drop()
        if bound is loop:
            return loop
        raise self._elsewhere(bound)

    def _elsewhere(self, bound: asyncio.AbstractEventLoop) -> RuntimeError:
        return RuntimeError(
            f"queue {self.name!r} is used from another event loop than the one it belongs "
            f"to, where it was first used ({'now closed' if bound.is_closed() else 'another'}; "
            "asyncio.run and asgiref's async_to_sync start a new loop per call, and a "
            "forked process cannot use its parent's). Create one JobQueue per event loop "
            "and process, await queue.close() before using it in another loop, or call "
            "from blocking code through SyncJobQueue"
        )

    async def _connect(self) -> Any:
        conn = self.connection
        client = conn.client()
        word_refusals(client, conn, self.name)  # its later refusals of AUTH name the queue
        # Errors are raised "from None": the message says it all, and a chain of
        # redis-py internals would only bury it (the original stays __context__).
        try:
            # A server that accepts the connection but never answers (plain text sent
            # to a TLS port, a stalled proxy) fails here within seconds.
            await ping(client, CONNECT_TIMEOUT_S)
            if not conn.is_memory:
                await check_eviction(client, self.name, bool(self.settings.allow_eviction))
            await self.scripts.load(client)
            for check in self.connect_checks:
                await check(client)
        except NoPermissionError as exc:
            await self._discard(client)
            raise permission_denied(str(exc)) from None
        except ConfigurationError:
            await self._discard(client)
            raise
        except Exception as exc:
            await self._discard(client)
            refused = write_refused_cause(exc)  # busy with a long script: reads refused too
            if refused is not None:
                raise refused from None
            # connection.error is the one place that turns redis-py's and the socket's
            # errors into the library's, saying what to check.
            wrapped = conn.error(exc, self.name, timeout_s=CONNECT_TIMEOUT_S)
            if wrapped is None:
                raise
            raise wrapped from None
        return client

    async def _discard(self, client: Any) -> None:
        if self.connection.owns(client):
            await client.aclose()

    async def close(self) -> None:
        """Release the shared client (a later ``client()`` connects again, from the
        moment this begins).

        The calls under way on it end first: its connections are closed once none
        serves a call (``_calls_end``), within ``CLOSE_GRACE_S``; those still under
        way then are cut (a record read says the queue was closed while it ran, other
        calls fail with the connection error). A close() that finds another under way
        returns once that one released its client too.

        Awaited in another loop than the client's: its connections belong to that loop.
        If it no longer runs (ended, or idle), their sockets are closed here without it;
        if it runs in another thread, they are closed there when it ends."""
        client, self._client = self._client, None
        end, self._loop_end = self._loop_end, None
        bound = self._loop
        elsewhere = bound is not None and bound is not asyncio.get_running_loop()
        self._loop, self._connect_lock = None, None
        if client is not None and elsewhere:
            assert bound is not None
            if end is not None and bound.is_running():
                end.leave(bound)
            elif end is not None:
                end.drop()
            return
        loop = asyncio.get_running_loop()
        if client is not None:
            await self._release(client, end, loop)
        under_way = {f for f in self._releases if f.get_loop() is loop}
        if under_way:  # another close() releases an earlier client: done once it is
            await asyncio.wait(under_way)

    async def _release(
        self, client: Any, end: _LoopEnd | None, loop: asyncio.AbstractEventLoop
    ) -> None:
        """``close``'s release of ``client`` (``_releases`` holds it meanwhile)."""
        self.scripts.forget(client)
        released = loop.create_future()
        self._releases.add(released)
        try:
            if self.connection.owns(client):  # a client passed in stays open
                await self._calls_end(client)
        finally:  # cancelled while it waited: closed all the same
            try:
                if end is not None:
                    await end.release()
                await self._discard(client)
            finally:
                self._releases.discard(released)
                released.set_result(None)

    async def _calls_end(self, client: Any) -> None:
        """Wait until no connection of ``client`` serves a call and no caller waits for
        one, ``CLOSE_GRACE_S`` at most (``_serving``). Not waited for: the connections
        the packed script path keeps between calls, those subscriptions hold, and one
        idle between commands (held aside, as by a client of one connection; closed too,
        with no open under way) once it is seen so twice in a row (at the first look a
        call may be about to send on it)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CLOSE_GRACE_S
        once = False
        while True:
            calls, idle = self._calls(client)
            if not calls and (not idle or once):
                # A caller of the pool's line handed a connection is in no list until it
                # takes it, at the loop's next turn: the last look is after that turn.
                await asyncio.sleep(0)
                calls, now_idle = self._calls(client)
                if not calls and (not now_idle or once):
                    return
            if loop.time() >= deadline:
                break
            once = not calls
            await asyncio.sleep(_CALLS_POLL_S)
        log.warning(
            "queue %s: close() waited %g s for %d call(s) under way on its connections; "
            "closing them now (those calls fail)",
            self.name,
            CLOSE_GRACE_S,
            calls,
        )

    def _calls(self, client: Any) -> tuple[int, bool]:
        """``_calls_end``'s look: how many calls are under way on ``client`` (callers
        waiting for a connection too), and whether one of its connections serves
        nothing (``_serving``: None)."""
        conns, waiting = _taken(client)
        pool = getattr(client, "connection_pool", None)
        kept = self.scripts._idle.get(pool) if pool is not None else None
        kept_ids = {id(c) for c in kept or ()}
        states = [_serving(c) for c in conns if id(c) not in kept_ids]
        return waiting + states.count(True), None in states

    def argv_head(self) -> tuple[str, str, str]:
        """What every script takes first: key prefix, now ('' = Redis clock), events cap."""
        return self._argv_head

    async def run(self, script: str, args: Sequence[Any] = ()) -> Any:
        """Run ``script`` on the queue's keys with ``args`` after the shared head."""
        client = await self.client()
        return await self.scripts.call(client, script, self.keys.all, (*self._argv_head, *args))

    def call(self, script: str, args: Sequence[Any] = ()) -> ScriptCall:
        """``run``'s call, unsent (for a pipeline of script calls)."""
        return ScriptCall(script, self.keys.all, (*self._argv_head, *args))
