"""The opens under way of a connection, counted for ``close()``.

A connection held aside (by a client of one connection, or by a Cluster transaction
from its ``WATCH``) serves nothing between its commands, and a call cancelled at its
read leaves it closed (redis-py closes a connection whose read was cut short) until
the next command opens it again. ``close()`` lets the calls under way on the queue's
client end (``context._serving``), and a closed connection serves one only while it is
being opened: the connection classes of the queue's clients count their opens in
``_kq_opening`` (``counting``), those of a pool (``pools.answering``: one server,
Sentinel) and those of every node of a Cluster (``clusterreplies.bound_class``). A
connection without the count (one opened before its client was given these classes)
is taken for one being opened while it is closed.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

__all__ = ["OPENS", "counting"]

#: The methods of redis-py's asyncio connections that open one: ``connect``, and
#: ``connect_check_health``, which it calls and which a command on a closed connection
#: calls itself.
OPENS = ("connect", "connect_check_health")

Method = Callable[..., Coroutine[Any, Any, Any]]


def counting(cls: type, names: Iterable[str] = OPENS) -> dict[str, Any]:
    """The attributes a subclass of asyncio connection class ``cls`` takes to count its
    opens under way: ``_kq_opening`` (0) and each of the coroutine methods ``names``
    that ``cls`` has, counted while it runs (however it ends: cancelled, failed)."""
    out: dict[str, Any] = {"_kq_opening": 0}
    for name in names:
        method = getattr(cls, name, None)
        if inspect.iscoroutinefunction(method):
            out[name] = _counted(method)
    return out


def _counted(method: Method) -> Method:
    @functools.wraps(method)
    async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        self._kq_opening += 1
        try:
            return await method(self, *args, **kwargs)
        finally:
            self._kq_opening -= 1

    return counted
