"""In-process events (``queue.on``) and the durable per-queue event stream reader.

Event names: the core's (``QueueEvent``) and those each feature declares with
``declare_events`` when its module is loaded (a workflow's end, a breaker's change): the
core lists no feature's event. ``check_event_name`` (``queue.on``, webhook endpoints)
takes those, and a lowercase name of one's own unless it looks like a misspelt known one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import re
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .enums import QueueEvent
from .errors import ConfigurationError
from .limits import Hush, get_logger, printable
from .options import did_you_mean, shown

__all__ = [
    "PROGRESS_BYTES_FIELD",
    "EventData",
    "EventEmitter",
    "StreamEvent",
    "check_event_name",
    "check_handler",
    "declare_events",
    "known_events",
    "read_stream",
    "stream_entries",
    "stream_event",
]

log = get_logger(__name__)

#: A handler that keeps failing is logged (with a traceback) at most this often.
FAILURE_LOG_S = 60.0
#: Calls of one async handler under way at once, at most: an event that finds that
#: many is not delivered to it (``EventEmitter.dropped``), with a warning at most every
#: ``FAILURE_LOG_S``.
MAX_HANDLER_TASKS = 1000

Handler = Callable[["EventData"], "Awaitable[None] | None"]


def check_handler(event: Any, handler: Any) -> None:
    """Refuse an event ``handler`` that is not callable (``TypeError``), when it is
    added rather than at every event."""
    if not callable(handler):
        raise TypeError(
            f"event handler for {str(event)!r} must be a function taking the "
            f"EventData (sync or async), got {type(handler).__name__}"
        )


#: Event names raised in this process, each with who raises it: the core's events, then
#: those declared by features (when their modules are loaded) and by the application.
_KNOWN: dict[str, str] = {e.value: "core" for e in QueueEvent}
#: What an event name may be: lowercase letters, digits and ``. _ : -``, up to 64.
EVENT_FORM = re.compile(r"[a-z0-9][a-z0-9._:-]{0,63}")
_SEPARATORS = re.compile(r"[\s_-]+")
_WORDS = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")  # where a camelCase name's next word begins


def declare_events(owner: str, *names: str) -> None:
    """Declare event names raised in this process by ``owner`` (a feature's name, your
    application's): ``queue.on`` and webhook endpoints take them as they take the core's,
    and refuse a name close to one of them as a misspelling. A feature declares its events
    when its module is loaded. Declare a name of your own that is close to a known one
    (``job-complete``) to use it on purpose. Declaring a name again changes nothing. A
    handler added before a name close to its event was declared is logged (a warning)."""
    for name in names:
        if not isinstance(name, str) or not EVENT_FORM.fullmatch(name):
            raise ConfigurationError(
                f"declare_events: {shown(name)} is not an event name: lowercase letters, "
                "digits and . _ : - (up to 64 characters), like 'invoice-paid'"
            )
    new = [n for n in names if n not in _KNOWN]
    for n in new:
        _KNOWN[n] = str(owner)
    if new:
        # A feature module declares its names when it is imported, maybe while another
        # thread makes an emitter: the set is read under the lock that guards its adds.
        with _EMITTERS_LOCK:
            emitters = list(_EMITTERS)
        for emitter in emitters:
            emitter.recheck(new)


def known_events() -> dict[str, str]:
    """The event names known in this process (``declare_events``), each with its owner."""
    return dict(_KNOWN)


def _edits(a: str, b: str, most: int) -> int:
    """Edits from ``a`` to ``b`` (a character added, dropped, changed, or two neighbours
    swapped); ``most + 1`` when above ``most``."""
    if abs(len(a) - len(b)) > most:
        return most + 1
    before: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] * (len(b) + 1)
        for j in range(1, len(b) + 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], before[j - 2] + 1)
        if min(cur) > most:
            return most + 1
        before, prev = prev, cur
    return min(prev[-1], most + 1)


def _typo(form: str, known: str) -> bool:
    """Whether ``form`` is one typing slip away from ``known``: past the first word both
    share (``job-``, ``workflow-``: compared whole when they share none), one character
    added, dropped or changed, or two neighbours swapped, and the word begins as
    ``known``'s does. A word that begins otherwise is another word (``job-mailed``,
    ``job-restarted`` are not ``job-failed``, ``job-started``)."""
    head = known.partition("-")[0] + "-"
    if form.startswith(head) and len(known) > len(head):
        form, known = form[len(head) :], known[len(head) :]
    if not form or (form[0] != known[0] and form[:2] != known[1::-1]):
        return False
    return _edits(form, known, 1) <= 1


def misspelt(name: str, known: Collection[str]) -> str | None:
    """The known event ``name`` (not one) most likely stands for: the one it becomes once
    its case, ``_`` / ``-`` / spaces, a missing ``job-`` prefix or a missing final ``d``,
    ``ed`` or ``ing`` (after a word of three letters at least) are set right; else one a
    typing slip away (``_typo``) from one of those forms; None when no known name is that
    close."""
    base = _SEPARATORS.sub("-", _WORDS.sub("-", name[:200])).lower().strip("-")
    forms = [base] if base.startswith("job-") else [base, "job-" + base]
    ends = ("", "d", "ed", "ing") if len(base.rpartition("-")[2]) >= 3 else ("",)
    repaired = [f + end for f in forms for end in ends]
    for form in repaired:
        if form in known:
            return form
    names = sorted(known)
    for form in repaired:
        near = next((k for k in names if _typo(form, k)), None)
        if near is not None:
            return near
    return None


def check_event_name(
    event: Any,
    what: str = "queue.on",
    also: Iterable[str] = (),
    never: str = "a handler of it would never be called",
) -> str:
    """``event`` as an event name (a ``QueueEvent``, a declared name, or a lowercase name
    of your own), for ``what`` (``queue.on``, ``webhook event``); ``also``: more names
    known there; ``never``: what a misspelt one would come to. A name that looks like a
    misspelt known one (``misspelt``) or is not an event name's form raises
    ``ConfigurationError`` with the likely one."""
    known = _KNOWN.keys() | set(also)
    name = str(event) if isinstance(event, str) else event
    if isinstance(name, str) and name in known:
        return name
    near = misspelt(name, known) if isinstance(name, str) else None
    if near is not None:
        own = isinstance(name, str) and EVENT_FORM.fullmatch(name)
        raise ConfigurationError(
            f"{what}: no event is named {shown(name)}{did_you_mean(name, known, [near])}: "
            f"{never}"
            + (
                f" (a name of your own so close to a known one: declare it first, "
                f"kitium_queue.events.declare_events('my-app', {name!r}))"
                if own
                else ""
            )
        )
    if not isinstance(name, str) or not EVENT_FORM.fullmatch(name):
        raise ConfigurationError(
            f"{what}: {shown(event)} is not an event name"
            f"{did_you_mean(name, known) if isinstance(name, str) else ''}: events are "
            "named in lowercase letters, digits and . _ : - (up to 64 characters), like "
            "'job-completed'"
        )
    return name


@dataclass(slots=True)
class EventData:
    """What an ``on(...)`` handler receives.

    Attributes:
        event: the event name (a ``QueueEvent`` value).
        queue: queue name.
        job_id: the job concerned (None for queue-level events).
        job: the ``Job`` (worker events) or ``JobInfo`` (dead-letter), when at hand.
        result: the processor's return value (``job-completed``).
        error: the exception (``job-failed``, ``job-retrying``, ``queue-error``).
        delay_ms: delay before the next attempt (``job-retrying``).
        progress: reported progress (``job-progress``).
        extra: anything else the emitter knows (e.g. ``name`` for ``job-added``).
    """

    event: str
    queue: str
    job_id: str | None = None
    job: Any = None
    result: Any = None
    error: BaseException | None = None
    delay_ms: int | None = None
    progress: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


class EventEmitter:
    """Calls registered handlers; a failing handler is logged and never propagates.

    A handler must be callable (``on`` raises ``TypeError`` otherwise). Whatever a
    handler raises is contained, a ``BaseException`` subclass or a ``CancelledError``
    raised by a plain function too (only ``KeyboardInterrupt`` and ``SystemExit`` go
    on); the other handlers of the event still run. Each event is delivered to the
    handlers registered when it is emitted: one that adds or removes handlers (itself
    too) while it is called changes who gets the next event, never skips another
    handler of this one.

    An async handler runs each call in a task of its own. One whose calls do not end
    (a wait without a timeout) holds at most ``MAX_HANDLER_TASKS`` of them: each event
    that finds it at that bound is not delivered to it, counted in ``dropped``, and
    logged as a warning naming the handler at most every ``FAILURE_LOG_S`` (with how
    many were dropped meanwhile); once its calls end, it gets events again.

    ``closing`` gives a future done at the queue's next ``close()`` (``drain``): an
    ``events()`` loop ends there.

    Views (``add_view``) run before the handlers of each event and may rewrite its
    ``EventData`` in place (a compliance feature masks fields of ``result`` and
    ``progress`` there); a view that raises is logged and the event is not delivered,
    so a broken view never lets an unmasked value through.
    """

    __slots__ = ("__weakref__", "_closings", "_failed", "_full", "_handlers", "_running",
                 "_tasks", "_views", "dropped")  # fmt: skip

    def __init__(self) -> None:
        # Per handler (by id, while registered): when its last failure was logged, and
        # how many failed since without a log line (``failed``).
        self._failed: dict[int, Hush] = {}
        # Tuples, replaced (never changed in place) by on/off: an emit iterates the
        # tuple it read, whatever its handlers add or remove meanwhile.
        self._handlers: dict[str, tuple[Handler, ...]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._views: tuple[Callable[[EventData], None], ...] = ()
        # Per async handler (by id, while a call of it runs): its calls under way, and
        # when it was last said to be at ``MAX_HANDLER_TASKS`` (``_dropped``).
        self._running: dict[int, int] = {}
        self._full: dict[int, Hush] = {}
        #: Events not delivered to an async handler at ``MAX_HANDLER_TASKS``, counted.
        self.dropped = 0
        self._closings: set[asyncio.Future[None]] = set()
        with _EMITTERS_LOCK:
            _EMITTERS.add(self)

    def add_view(self, view: Callable[[EventData], None]) -> None:
        """Run ``view(data)`` on every event before its handlers (after the views added
        before it); adding the same view twice is a no-op."""
        if not any(v is view for v in self._views):
            self._views = (*self._views, view)

    def on(self, event: str, handler: Handler) -> None:
        """Call ``handler`` on every ``event``: ``TypeError`` for a handler that is not
        callable, ``ConfigurationError`` for a name that is no event's (``check_event_name``:
        ``completed``, ``job_completed``, ``JOB_COMPLETED`` name none, ``job-completed``
        does)."""
        check_handler(event, handler)
        key = check_event_name(event)
        self._handlers[key] = (*self._handlers.get(key, ()), handler)

    def recheck(self, declared: Collection[str]) -> None:
        """Names just ``declared`` (``declare_events``): warn about each handler added
        before, under a name close to one of them (a misspelling it would have refused).
        It may run in another thread than ``on`` (a feature module imported there): the
        names are read at once, then checked."""
        for key in tuple(self._handlers):
            near = None if key in _KNOWN else misspelt(key, declared)
            if near is not None:
                log.warning(
                    "queue.on(%r, ...) was added before %r was declared (by %s): no event is "
                    "named %r, so its handlers are never called; did you mean %r?",
                    key,
                    near,
                    _KNOWN[near],
                    key,
                    near,
                )

    def off(self, event: str, handler: Handler) -> None:
        key = str(event)
        handlers = list(self._handlers.get(key, ()))
        if handler in handlers:
            self._failed.pop(id(handlers[handlers.index(handler)]), None)
            self._full.pop(id(handlers[handlers.index(handler)]), None)
            handlers.remove(handler)
            if handlers:
                self._handlers[key] = tuple(handlers)
            else:
                del self._handlers[key]

    def wants(self, event: str) -> bool:
        return bool(self._handlers.get(event))

    def emit(self, data: EventData) -> None:
        handlers = self._handlers.get(data.event, ())
        if handlers and self._views:
            try:
                for view in self._views:
                    view(data)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException:
                log.exception(
                    "event view failed for %s (queue=%s job=%s); event not delivered",
                    data.event,
                    data.queue,
                    printable(data.job_id),
                )
                return
        for handler in handlers:
            if self._running.get(id(handler), 0) >= MAX_HANDLER_TASKS:
                self._dropped(handler, data)
                continue
            try:
                out = handler(data)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException:  # a plain call: a CancelledError here is its own
                self.failed(handler, data, "event handler")
                continue
            if inspect.isawaitable(out):
                task = asyncio.ensure_future(self._guard(out, handler, data))
                self._tasks.add(task)
                self._running[id(handler)] = self._running.get(id(handler), 0) + 1
                task.add_done_callback(functools.partial(self._ended, id(handler)))

    def _ended(self, handler_id: int, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        left = self._running.get(handler_id, 1) - 1
        if left > 0:
            self._running[handler_id] = left
        else:
            self._running.pop(handler_id, None)

    def _dropped(self, handler: Handler, data: EventData) -> None:
        """``data`` is not delivered to ``handler``, at ``MAX_HANDLER_TASKS``."""
        self.dropped += 1
        hush = self._full.get(id(handler))
        if hush is None:
            hush = self._full[id(handler)] = Hush()
        since = hush.say(FAILURE_LOG_S)
        if since is None:
            return
        log.warning(
            "async event handler %r has %d calls under way (they do not end: bound its "
            "waits with a timeout); %s (queue=%s job=%s) is not delivered to it%s",
            handler,
            MAX_HANDLER_TASKS,
            data.event,
            data.queue,
            printable(data.job_id),
            f"; {since} more events not delivered to it in the last {FAILURE_LOG_S:.0f} s"
            if since
            else "",
        )

    def failed(self, handler: Handler, data: EventData, what: str) -> None:
        """Log the exception being handled, raised by ``handler`` for ``data``: with its
        traceback at the first failure of that handler and then at most every
        ``FAILURE_LOG_S``, saying how many failed meanwhile (a handler failing at every
        event does not write a traceback per event)."""
        hush = self._failed.get(id(handler))
        if hush is None:
            hush = self._failed[id(handler)] = Hush()
        since = hush.say(FAILURE_LOG_S)
        if since is None:
            return
        log.exception(
            "%s %r for %s failed (queue=%s job=%s)%s",
            what,
            handler,
            data.event,
            data.queue,
            printable(data.job_id),
            f"; it failed {since} more times in the last {FAILURE_LOG_S:.0f} s, not logged"
            if since
            else "",
        )

    async def _guard(self, aw: Awaitable[None], handler: Handler, data: EventData) -> None:
        try:
            await aw
        except (KeyboardInterrupt, SystemExit, asyncio.CancelledError):
            raise
        except BaseException:
            self.failed(handler, data, "async event handler")

    def closing(self) -> asyncio.Future[None]:
        """A future of the running event loop, done at the queue's next ``close()``
        (``drain``); ``unwatch`` it once no longer waited for."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._closings.add(fut)
        return fut

    def unwatch(self, fut: asyncio.Future[None]) -> None:
        self._closings.discard(fut)

    async def drain(self, timeout: float = 5.0) -> None:
        """The queue closes: end its ``events()`` loops (``closing``), and wait for
        pending async handlers, ``timeout`` s at most."""
        closings, self._closings = self._closings, set()
        loop = asyncio.get_running_loop()
        for fut in closings:
            there = fut.get_loop()
            if there is loop:
                _done(fut)
            elif not there.is_closed():
                with contextlib.suppress(RuntimeError):  # that loop closed meanwhile
                    there.call_soon_threadsafe(_done, fut)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)


#: The emitters alive in this process: ``declare_events`` rechecks their handlers.
_EMITTERS: weakref.WeakSet[EventEmitter] = weakref.WeakSet()
#: Held while ``_EMITTERS`` is added to or read (an emitter made in one thread while a
#: feature module imported in another declares its names).
_EMITTERS_LOCK = threading.Lock()


def _done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


#: Field of a ``job-progress`` stream entry whose progress value was too large to copy
#: into the stream (above ``limits.MAX_PROGRESS_EVENT_BYTES`` encoded): its size in
#: bytes. The value itself is in the job record (``JobInfo.progress``).
PROGRESS_BYTES_FIELD = "progress_bytes"


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One entry of the durable event stream.

    ``fields`` holds the event's own fields as text. For ``job-progress``, ``progress``
    is the encoded (JSON) progress value. A value larger than
    ``limits.MAX_PROGRESS_EVENT_BYTES`` is not copied into the stream (so progress
    updates cannot fill Redis through it): the entry carries ``progress_bytes`` instead,
    and ``JobQueue.events()`` fills ``progress`` in from the job record, i.e. the job's
    progress when the event is read, which may be newer; it stays absent when the job
    is gone. ``read_stream`` yields entries as stored.
    """

    id: str
    event: str
    job_id: str
    fields: dict[str, str]


async def read_stream(
    client: Any,
    key: str,
    *,
    last_id: str = "$",
    block_ms: int = 5000,
    count: int = 500,
    follow: bool = True,
) -> AsyncIterator[StreamEvent]:
    """Yield stream events after ``last_id`` ("$" = only new ones, "0" = from the start).

    With ``follow=False`` it stops once no event arrived within ``block_ms``. "$" is
    resolved once, to the stream's newest entry now: asked again on every read, it would
    skip what was added between a read that timed out and the next one.
    """
    if last_id == "$":
        newest = await client.xrevrange(key, "+", "-", count=1)
        if newest:
            first = newest[0][0]
            last_id = first.decode() if isinstance(first, bytes) else first
        else:
            last_id = "0-0"
    while True:
        reply = await client.xread({key: last_id}, count=count, block=block_ms)
        if not reply:
            if not follow:
                return
            continue
        for entry_id, raw in stream_entries(reply):
            ev = stream_event(entry_id, raw)
            last_id = ev.id
            yield ev


def stream_event(entry_id: Any, raw: Any) -> StreamEvent:
    """The ``StreamEvent`` of one entry as ``XREAD`` / ``XRANGE`` return it. Fields are
    written as UTF-8 by the scripts; an entry added by another client may hold anything
    (other bytes, no ``e`` or ``id`` field), and must not stop the reader."""
    eid = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    fields_ = {
        (k.decode("utf-8", "backslashreplace") if isinstance(k, bytes) else str(k)): (
            v.decode("utf-8", "backslashreplace") if isinstance(v, bytes) else str(v)
        )
        for k, v in (raw or {}).items()
    }
    return StreamEvent(eid, fields_.pop("e", ""), fields_.pop("id", ""), fields_)


def stream_entries(reply: Any) -> list[tuple[Any, Any]]:
    """The ``(id, fields)`` entries of an ``XREAD`` / ``XREADGROUP`` reply, whichever
    protocol the connection speaks: RESP2 ``[[stream, [entries]], ...]``, RESP3
    ``{stream: [[entries]]}`` (a ``redis://...?protocol=3`` URL)."""
    if not reply:
        return []
    if isinstance(reply, Mapping):
        return [e for batches in reply.values() for batch in batches for e in batch]
    return [e for _stream, entries in reply for e in entries]
