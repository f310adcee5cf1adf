"""``CircuitBreakerManager`` and ``CircuitBreaker``: the Python side of circuit breakers.

Semantics (states, what counts as a failure, how held jobs come back): docs/breakers.md.
"""

from __future__ import annotations

import asyncio
import inspect
import secrets
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from redis.exceptions import ResponseError

from ...enums import CircuitBreakerState
from ...errors import (
    BreakerNotFoundError,
    CircuitOpenError,
    ConfigurationError,
    RetryLater,
)
from ...limits import clip, get_logger, printable
from ...options import to_int, to_ms
from .events import FEATURE, BreakerEvents
from .explain import make_explainer
from .lua import ADMISSION, RELEASE
from .model import (
    BreakerConfig,
    BreakerStats,
    BreakerTransition,
    FailureThreshold,
    check_breaker_id,
    check_threshold,
    parse_config,
)
from .model import _text as _s
from .script import SCRIPT, SCRIPT_NAME

if TYPE_CHECKING:
    from ...queue import JobQueue

__all__ = ["OPTION", "SCRIPT_NAME", "CircuitBreaker", "CircuitBreakerManager"]

log = get_logger(__name__)

T = TypeVar("T")

#: The job option that binds a job to a breaker.
OPTION = "circuit_breaker_id"
#: Most breakers ``list_breakers`` reads.
MAX_LISTED = 1000
#: The manager made on each queue in this process (``CircuitBreakerManager.for_queue``).
_INSTALLED: weakref.WeakKeyDictionary[Any, CircuitBreakerManager] = weakref.WeakKeyDictionary()


#: Seconds between two warnings about the same damaged key.
_WARN_EVERY = 60.0
_warned: dict[str, float] = {}


def warn_damaged(what: str) -> None:
    """Log a damaged breaker key (``what`` says which and how to repair it), at most
    once a minute for the same text."""
    now = time.monotonic()
    if now - _warned.get(what, -1e9) < _WARN_EVERY:
        return
    if len(_warned) > 1000:
        _warned.clear()
    _warned[what] = now
    log.warning("circuit breakers: %s", clip(printable(what), 1000))


def _wrong_type(exc: ResponseError) -> bool:
    return str(exc).startswith("WRONGTYPE")


def _normalize_option(value: Any, section: str) -> str:
    try:
        return check_breaker_id(value)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{section}: {OPTION}: {exc}") from None


class CircuitBreaker:
    """One breaker of a queue (from ``create_breaker`` or ``get_breaker``).

    Its state lives in Redis: every ``CircuitBreaker`` object of the same id, in any
    process, sees and changes the same breaker.
    """

    def __init__(self, manager: CircuitBreakerManager, config: BreakerConfig) -> None:
        self.manager = manager
        self.config = config

    @property
    def id(self) -> str:
        return self.config.id

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.id!r}, queue={self.manager.queue.name!r})"

    async def execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``fn(*args, **kwargs)`` through the breaker and return its result.

        ``fn`` may be an ``async def`` (awaited) or a plain function (run in a thread,
        so a blocking client does not stop the event loop); an awaitable it returns is
        awaited. While the breaker is open, or half-open with every probe place taken,
        ``fn`` is not called and ``CircuitOpenError`` is raised. The outcome counts in
        the breaker's window like a bound job's: returning is a success; raising is a
        failure (except ``RetryLater``, which counts nowhere), and the exception
        propagates; a cancelled call counts nowhere.
        """
        token = secrets.token_hex(8)
        reply = await self.manager.call("acquire", self.id, token)
        status = _s(reply[0])
        if status == "missing":
            raise self.manager.not_found(self.id)
        if status == "open":
            self.manager.count("breaker.rejected", self.id)
            raise CircuitOpenError(self.id, _s(reply[1]), int(reply[2]))
        if len(reply) > 2 and _s(reply[1]) == "damaged":
            warn_damaged(_s(reply[2]))  # runs as if the breaker were not there
        kind = "neutral"
        try:
            if inspect.iscoroutinefunction(fn):
                result = await fn(*args, **kwargs)
            else:
                result = await asyncio.to_thread(fn, *args, **kwargs)
                if inspect.isawaitable(result):
                    result = await result
            kind = "success"
            return result
        except (RetryLater, asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            raise  # not the dependency's failure
        except BaseException:  # an exception class of the caller's own too
            kind = "failure"
            raise
        finally:
            await self._record(token, kind)

    async def _record(self, token: str, kind: str) -> None:
        try:
            await asyncio.shield(self.manager.call("record", self.id, token, kind))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Not recorded: a probe's deadline (probe_timeout) still ends its half-open
            # period; the error itself is the caller's concern, not this one.
            log.warning(
                "circuit breaker %r: outcome not recorded (%s)", self.id, clip(str(exc), 200)
            )

    async def get_state(self) -> CircuitBreakerState:
        """The breaker's state now (``CircuitBreakerManager.get_state``)."""
        return await self.manager.get_state(self.id)

    async def get_stats(self) -> BreakerStats:
        """State and window counts (``CircuitBreakerManager.get_stats``)."""
        return await self.manager.get_stats(self.id)

    async def reset(self) -> BreakerStats:
        """Close the breaker now (``CircuitBreakerManager.reset``)."""
        return await self.manager.reset(self.id)

    async def force_open(self, duration: Any = None) -> BreakerStats:
        """Open the breaker now (``CircuitBreakerManager.force_open``)."""
        return await self.manager.force_open(self.id, duration)


class CircuitBreakerManager:
    """Circuit breakers of one queue, whose open state *holds* bound jobs.

    Create it in every process that uses the queue (producers, workers, the CLI's
    module), like ``queue.process`` registrations: it declares the job option
    ``circuit_breaker_id``, fills the ``admission`` and ``release`` Lua slots (so
    bound jobs are held while their breaker is open and their outcomes are counted,
    atomically with each transition) and adds the ``breaker-events`` leader service
    that reports state changes (``features/breakers/events.py``). Breaker definitions
    and state live in Redis under the queue's hash tag: every process shares them.
    ``default_failure_threshold`` (a ``FailureThreshold`` or dict): the threshold of a
    breaker created without one (default 50 % of at least 10 outcomes).

    Example::

        breakers = CircuitBreakerManager(queue)
        await breakers.create_breaker({
            "id": "payments-api", "job_name": "charge",
            "failure_threshold": {"percentage": 50, "min_requests": 20},
            "timeout": 30_000, "window": 60_000, "half_open_probes": 2,
        })
        await queue.add_job("charge", {...})          # bound by its name
        await queue.add_job("refund", {...}, circuit_breaker_id="payments-api")
        api = await breakers.get_breaker("payments-api")
        await api.execute(client.get, "/health")      # inline use

    Semantics: docs/breakers.md.
    """

    def __init__(
        self,
        queue: JobQueue,
        *,
        events: bool = True,
        default_failure_threshold: FailureThreshold | Mapping[str, Any] | None = None,
    ) -> None:
        self.queue = queue
        #: The threshold of a breaker created without one (None: 50 % of >= 10).
        self.default_failure_threshold: FailureThreshold | None = (
            None
            if default_failure_threshold is None
            else check_threshold(default_failure_threshold)
        )
        queue.declare_option(
            OPTION,
            feature=FEATURE,
            normalize=_normalize_option,
            doc="id of the circuit breaker that holds the job while it is open",
        )
        scripts = queue.scripts
        scripts.add_slot("admission", FEATURE, ADMISSION, fields=("n", "cb"))
        scripts.add_slot("release", FEATURE, RELEASE, fields=("cb",))
        scripts.add_fragment(SCRIPT_NAME, SCRIPT)
        if queue not in _INSTALLED:
            queue.add_explainer(make_explainer(queue))
        self.events: BreakerEvents | None = None
        if events:
            self.events = BreakerEvents(queue)
            queue.add_service(self.events)
        _INSTALLED.setdefault(queue, self)

    @classmethod
    def for_queue(cls, queue: JobQueue) -> CircuitBreakerManager:
        """The manager first made on ``queue`` in this process, or a new one without
        the event service when there is none (what tools that only have the queue use:
        a second manager would fill the slots again, moving its fragments last)."""
        got = _INSTALLED.get(queue)
        return got if got is not None else cls(queue, events=False)

    # ------------------------------------------------------------------ plumbing
    async def call(self, op: str, breaker_id: str, *args: Any) -> list[Any]:
        """Run one operation of the breaker script (``lua.py``)."""
        return cast(list[Any], await self.queue.run(SCRIPT_NAME, [op, breaker_id, *args]))

    def not_found(self, breaker_id: str) -> BreakerNotFoundError:
        return BreakerNotFoundError(
            f"no circuit breaker {breaker_id!r} in queue {self.queue.name!r}; create it "
            "with create_breaker() (list them with list_breakers())"
        )

    def count(self, name: str, breaker_id: str) -> None:
        metrics = self.queue.metrics
        if metrics is not None:
            try:
                metrics.increment(name, 1, {"queue": self.queue.name, "breaker": breaker_id})
            except Exception:
                log.exception("metrics adapter failed on %s", name)

    async def _admin(
        self, command: str, args: Mapping[str, Any], action: Callable[[], Awaitable[T]]
    ) -> T:
        return await self.queue.admin.execute(command, args, action)

    async def _view(
        self, breaker_id: str, reply: list[Any], *, change: bool = False
    ) -> BreakerStats:
        status = _s(reply[0])
        if status == "missing":
            raise self.not_found(breaker_id)
        if status == "damaged" and change:
            raise ConfigurationError(
                f"circuit breaker {breaker_id!r} of queue {self.queue.name!r} was not "
                f"changed: {clip(_s(reply[1]), 500)}"
            )
        st = BreakerStats.parse(breaker_id, reply)
        if st.damaged:
            warn_damaged(st.damaged)
        return st

    # ------------------------------------------------------------------ definitions
    async def create_breaker(
        self, config: BreakerConfig | Mapping[str, Any], *, replace: bool = False
    ) -> CircuitBreaker:
        """Define a breaker (closed) and return it.

        ``config``: a ``BreakerConfig`` or a dict of its fields (``id``, ``job_name``,
        ``failure_threshold`` {``percentage``, ``min_requests``}, ``timeout`` ms open,
        ``window`` ms, ``half_open_probes``, ``probe_timeout`` ms). An existing id is
        refused unless ``replace=True`` (the definition changes, the state is kept). A
        job name belongs to one breaker at most. An administrative command (guards,
        ``admin`` hook).
        """
        cfg = parse_config(config, self.default_failure_threshold)

        async def action() -> CircuitBreaker:
            th = cfg.failure_threshold
            reply = await self.call(
                "put",
                cfg.id,
                cfg.job_name or "",
                repr(float(th.percentage)),
                th.min_requests,
                cfg.timeout,
                cfg.window,
                cfg.half_open_probes,
                cfg.probe_timeout,
                "1" if replace else "0",
            )
            status = _s(reply[0])
            if status == "damaged":
                raise ConfigurationError(
                    f"circuit breaker {cfg.id!r} of queue {self.queue.name!r} was not "
                    f"defined: {clip(_s(reply[1]), 500)}"
                )
            if status == "exists":
                raise ConfigurationError(
                    f"circuit breaker {cfg.id!r} already exists in queue "
                    f"{self.queue.name!r}; pass replace=True to change its definition"
                )
            if status == "name-taken":
                raise ConfigurationError(
                    f"job name {cfg.job_name!r} is already bound to circuit breaker "
                    f"{_s(reply[1])!r}; a job name belongs to one breaker at most"
                )
            return CircuitBreaker(self, cfg)

        return await self._admin("create_breaker", {**cfg.to_dict(), "replace": replace}, action)

    async def remove_breaker(self, breaker_id: str) -> bool:
        """Delete a breaker; the jobs it held go back to wait. False if there was none.
        An administrative command."""
        bid = check_breaker_id(breaker_id)

        async def action() -> bool:
            return _s((await self.call("delete", bid))[0]) == "ok"

        return await self._admin("remove_breaker", {"id": bid}, action)

    async def get_breaker(self, breaker_id: str) -> CircuitBreaker | None:
        """The breaker ``breaker_id`` (its definition as stored), or None."""
        bid = check_breaker_id(breaker_id)
        await self.queue.queries.check("get_breaker", {"id": bid})
        reply = await self.call("get", bid)
        if _s(reply[0]) == "missing":
            return None
        return CircuitBreaker(self, BreakerStats.parse(bid, reply).config)

    async def get_state(self, breaker_id: str) -> CircuitBreakerState:
        """Its state now; a timeout that ended moves it to half-open first. Raises
        ``BreakerNotFoundError``."""
        bid = check_breaker_id(breaker_id)
        await self.queue.queries.check("get_breaker_state", {"id": bid})
        return (await self._view(bid, await self.call("get", bid))).state

    async def get_stats(self, breaker_id: str) -> BreakerStats:
        """State, since when, next probe time, window counts and failure rate, probes,
        held jobs; read atomically. Raises ``BreakerNotFoundError``."""
        bid = check_breaker_id(breaker_id)
        await self.queue.queries.check("get_breaker_stats", {"id": bid})
        return await self._view(bid, await self.call("get", bid))

    async def list_breakers(self) -> list[BreakerStats]:
        """Every breaker of the queue (up to 1000), oldest first, with its stats."""
        await self.queue.queries.check("list_breakers", {})
        return await self.all_stats()

    async def all_stats(self) -> list[BreakerStats]:
        """``list_breakers`` without the read guards: for the library's own reads on
        the application's behalf (the alerts' leader), never for a caller's."""
        client = await self.queue.client()
        key = self.queue.keys.extra("cb:ids")
        try:
            raw = await client.zrange(key, 0, MAX_LISTED - 1)
        except ResponseError as exc:
            if not _wrong_type(exc):
                raise
            warn_damaged(
                f"{key} holds another Redis type, not a sorted set: no breaker can be "
                "listed. Repair: delete that key, then create_breaker(..., replace=True) "
                "each breaker to list it again"
            )
            return []
        ids = []
        for i in raw:
            try:  # an entry written by hand may be no breaker id at all
                ids.append(check_breaker_id(_s(i)))
            except ConfigurationError:
                warn_damaged(
                    f"{key} holds an entry that is no breaker id ({clip(repr(_s(i)), 60)}); "
                    "it is skipped. Repair: remove it (ZREM)"
                )
        if not ids:
            return []
        calls = [self.queue.call(SCRIPT_NAME, ["get", i]) for i in ids]
        replies = await self.queue.scripts.pipeline(client, calls)
        out = []
        for bid, reply in zip(ids, replies, strict=True):
            if isinstance(reply, ResponseError):  # one breaker never hides the others
                st = BreakerStats.unreadable(bid, f"not readable: {clip(str(reply), 200)}")
            elif isinstance(reply, Exception):
                raise reply
            elif _s(reply[0]) == "missing":
                continue
            else:
                st = BreakerStats.parse(bid, reply)
            if st.damaged:
                warn_damaged(st.damaged)
            out.append(st)
        return out

    async def history(
        self, breaker_id: str | None = None, limit: int = 100
    ) -> list[BreakerTransition]:
        """The latest state changes (newest first), of one breaker or of all, from the
        breaker log (about the last 1000 changes of the queue are kept)."""
        n = to_int(limit, "limit", minimum=0, maximum=10_000)
        bid = check_breaker_id(breaker_id) if breaker_id is not None else None
        await self.queue.queries.check("breaker_history", {"id": bid, "limit": n})
        if n == 0:
            return []
        client = await self.queue.client()
        key = self.queue.keys.extra("cb:log")
        try:
            rows = await client.xrevrange(key, count=1000)
        except ResponseError as exc:
            if not _wrong_type(exc):
                raise
            warn_damaged(
                f"{key} holds another Redis type, not a stream: no state change can be "
                "read or logged. Repair: delete that key (DEL)"
            )
            return []
        out = []
        for entry_id, fields in rows:
            t = BreakerTransition.parse(entry_id, fields)
            if bid is None or t.breaker_id == bid:
                out.append(t)
                if len(out) >= n:
                    break
        return out

    # ------------------------------------------------------------------ operators
    async def reset(self, breaker_id: str, reason: str = "") -> BreakerStats:
        """Close the breaker now, whatever its state: its window starts empty and the
        jobs it held go back to wait. An administrative command."""
        bid = check_breaker_id(breaker_id)
        why = clip(printable(reason), 200)

        async def action() -> BreakerStats:
            return await self._view(bid, await self.call("reset", bid, why), change=True)

        return await self._admin("reset_breaker", {"id": bid, "reason": why}, action)

    async def force_open(
        self, breaker_id: str, duration: Any = None, reason: str = ""
    ) -> BreakerStats:
        """Open the breaker now, for ``duration`` ms (default: its ``timeout``); then it
        half-opens as usual. Bound jobs are held meanwhile. An administrative command."""
        bid = check_breaker_id(breaker_id)
        ms = 0 if duration is None else to_ms(duration, "duration", minimum=1)
        why = clip(printable(reason), 200)

        async def action() -> BreakerStats:
            return await self._view(bid, await self.call("open", bid, ms, why), change=True)

        return await self._admin("open_breaker", {"id": bid, "duration": ms, "reason": why}, action)
