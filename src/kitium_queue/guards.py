"""Guards: callables that may refuse a call by raising, before anything of it runs.

Two choke points run them: every administrative command (``Admin.execute``, with an
``AdminCall``) and every read of job data and counts (``Queries``, with a ``ReadCall``).
A guard is ``fn(call)``, sync or async; it refuses by raising
(``PermissionDeniedError`` by convention) and lets the call through by returning. The
core only runs them: what a principal may do is decided by whichever guard a feature
installs (access control does, see ``features/access``).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .errors import ConfigurationError

__all__ = ["GuardList", "ReadCall", "ReadGuard"]

C = TypeVar("C")


@dataclass(frozen=True, slots=True)
class ReadCall:
    """A read that is about to run, as read guards see it.

    Attributes:
        queue: queue name.
        query: the method name (``get_job_status``, ``get_jobs_by_status``,
            ``get_stats``, ``events``, ``get_schedules``...).
        args: its arguments as given (ids, states, limits).
        principal: who reads (``identity.current_principal``, else the queue's
            default principal; None when nobody was named).
    """

    queue: str
    query: str
    args: dict[str, Any] = field(default_factory=dict)
    principal: str | None = None


#: A read guard: refuses a read by raising.
ReadGuard = Callable[[ReadCall], Awaitable[None] | None]


class GuardList(Generic[C]):
    """The guards of one choke point, in the order added.

    ``what`` names them in errors (``"admin guard"``, ``"read guard"``).
    """

    __slots__ = ("_guards", "_what")

    def __init__(self, what: str) -> None:
        self._what = what
        self._guards: tuple[Callable[[C], Awaitable[None] | None], ...] = ()

    def add(self, guard: Callable[[C], Awaitable[None] | None]) -> None:
        """Add ``guard`` after the others; adding the same guard twice is a no-op."""
        if not callable(guard):
            raise ConfigurationError(f"{self._what} must be callable, got {type(guard).__name__}")
        if not any(g is guard for g in self._guards):
            self._guards = (*self._guards, guard)

    def remove(self, guard: Callable[[C], Awaitable[None] | None]) -> None:
        """Remove ``guard`` (no-op if absent)."""
        self._guards = tuple(g for g in self._guards if g is not guard)

    @property
    def items(self) -> tuple[Callable[[C], Awaitable[None] | None], ...]:
        """The guards, in the order they run."""
        return self._guards

    def __bool__(self) -> bool:
        return bool(self._guards)

    async def run(self, call: C) -> None:
        """Call every guard with ``call``, in order; the first that raises stops it."""
        for guard in self._guards:
            out = guard(call)
            if inspect.isawaitable(out):
                await out
