"""A worker left running when its event loop ended without ``close()`` (a hand-run loop
closed while its worker ran, a notebook's), let go by the queue's next ``close()``
(``Lifecycle.forget_ended``), so that a worker started in the next loop runs the jobs
added there at once.

Everything such a worker holds stays bound to the ended loop: none of it runs again, and
none of it can be cancelled or awaited there (asyncio raises "Event loop is closed").
Letting it go:

* closes the sockets of its blocking client here (``pools.drop_connections``). Its
  waker's ``BZPOPMIN`` was still open in Redis, with the claim sent right behind it: the
  first jobs added after the loop ended (those the next worker was started for) were
  claimed for the worker gone, and stayed "active", never run, until their leases
  expired. Jobs it claimed before (and those it ran) still wait for their leases;
* clears the attributes of the queue's services and processors that hold tasks of that
  loop (a task, or a list or set of them: a leader service's campaign, the eviction
  watch's delayed start, a batch processor's running batches), to None or without
  them: the next worker's start starts the services again (a leader service took its
  campaign for under way and never campaigned again), and its stop no longer fails on
  them ("service eviction-watch failed to stop: RuntimeError: Event loop is closed");
  a leader service one of them keeps (an encryption rotation's) is cleared likewise;
* tells those services (``forget_loops``): the scheduler closes the sockets of its
  subscription's client of that loop (they stayed open, subscribed, until the process
  ended), a leader service drops the term it held there (``term`` and ``is_leader``
  said it led until it won a campaign in the new loop, when nothing of it ran);
* keeps the tasks of that loop the worker and those services ran (theirs, and every
  task of the queue's named ``kq-...``) until the process ends. Collected, a pending
  task's coroutine is closed in whatever loop runs then, and its cleanup acts there on
  what belongs to the ended loop: a leader service's cancels its body ("Event loop is
  closed"), the scheduler's subscription starts its teardown in the new loop, and
  asyncio reports each task "destroyed but it is pending". Kept, none of that runs.
  (They were kept before too, by accident: the connections the script path keeps aside
  held the worker, and so their own pool, through a reply timer's context.)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .leader import LeaderService
from .pools import drop_connections

if TYPE_CHECKING:
    from .worker import Worker

__all__ = ["ended", "keep", "let_go", "let_go_held"]

#: The tasks of ended loops kept from collection (module docstring).
_KEPT: set[asyncio.Task[Any]] = set()


def ended(worker: Worker) -> bool:
    """Whether ``worker``'s event loop was closed before the worker stopped."""
    loop = worker.runner.loop
    return loop is not None and loop.is_closed() and not worker.stopped.is_set()


def let_go(worker: Worker) -> None:
    """Let ``worker`` (``ended``) go: its blocking client's sockets closed, its tasks
    kept (module docstring). Its shared client is the queue's (``close()`` drops it)."""
    loop = worker.runner.loop
    bclient = worker._bclient
    if bclient is not None and worker.queue.connection.owns(bclient):
        drop_connections(bclient)
    keep(r.task for r in list(worker.leases.runs.values()) if r.task is not None)
    keep(t for t in asyncio.all_tasks(loop) if t.get_name().startswith("kq-"))
    for part in (worker, worker.leases, worker.runner, worker.outcomes, worker._presence):
        for _, value in _attributes(part):
            keep(_of_loops(value, {loop}))


def let_go_held(holders: Iterable[Any], loops: set[Any]) -> None:
    """Clear the attributes of ``holders`` (the queue's services and processors) that
    hold tasks or futures of ``loops``, closed, and keep those tasks (module docstring).
    A holder with a ``forget_loops(loops)`` method is told first (the scheduler closes
    its subscription's sockets, a leader service drops the term it held there), and a
    leader service a holder keeps in an attribute (an encryption rotation's) is let go
    as well."""
    todo, seen = list(holders), set[int]()
    for holder in todo:  # grows with the leader services found
        if id(holder) in seen:
            continue
        seen.add(id(holder))
        forget = getattr(holder, "forget_loops", None)
        if callable(forget):
            forget(loops)
        for name, value in _attributes(holder):
            if isinstance(value, LeaderService):
                todo.append(value)
            dead = _of_loops(value, loops)
            if not dead:
                continue
            keep(dead)
            if isinstance(value, asyncio.Future):
                with contextlib.suppress(AttributeError):  # read-only
                    setattr(holder, name, None)
            elif isinstance(value, list):
                value[:] = [v for v in value if v not in dead]
            else:  # a set
                value.difference_update(dead)


def _attributes(obj: Any) -> list[tuple[str, Any]]:
    try:
        return list(vars(obj).items())
    except TypeError:  # no __dict__ (None, __slots__)
        return []


def _of_loops(value: Any, loops: set[Any]) -> list[asyncio.Future[Any]]:
    """The futures of ``loops`` that ``value`` is, or holds (a list or a set of them)."""
    items = value if isinstance(value, (list, set)) else (value,)
    return [v for v in items if isinstance(v, asyncio.Future) and v.get_loop() in loops]


def keep(futures: Iterable[Any]) -> None:
    """Keep the pending tasks among ``futures``, of a loop that ended, until the process
    ends, and never report them destroyed pending (module docstring)."""
    for fut in futures:
        if isinstance(fut, asyncio.Task) and not fut.done():
            _KEPT.add(fut)
            # Nor reported destroyed pending should the process's end collect it.
            with contextlib.suppress(AttributeError):
                fut._log_destroy_pending = False  # type: ignore[attr-defined]
