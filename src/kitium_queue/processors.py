"""What a registered processor is, and what its call gives (``runner.py`` uses them).

* ``check_processor(name, fn)``: an async generator function is refused. Its call
  returns an async generator, never a result, so every job it got would fail.
* ``runs_async(fn)``: whether the worker awaits the processor on its event loop (an
  ``async def``, an object with an ``async def __call__``, a ``functools.partial`` of
  either) or runs it in a thread.
* ``settled(result)``: a processor's call may return an awaitable (a sync decorator
  around an ``async def``, a ``def`` or lambda returning a coroutine, an ``async def``
  returning one it forgot to await). It is awaited on the worker's loop, as hooks are,
  never in the processor's thread.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from .errors import ConfigurationError

__all__ = ["MAX_AWAITS", "check_processor", "runs_async", "settled"]

#: Most awaits of what a processor returned (an awaitable giving an awaitable ...).
MAX_AWAITS = 8


def check_processor(name: str, fn: Callable[..., Any]) -> None:
    """Raise ``ConfigurationError`` if ``fn``, the processor of ``name``, cannot give a
    result (an async generator function)."""
    if _test(inspect.isasyncgenfunction, fn):
        raise ConfigurationError(
            f"processor for {name!r} is an async generator function: a processor must be "
            "a function or coroutine function returning the result; an async generator "
            "is not (return the result instead of yielding it)"
        )


def runs_async(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` is awaited on the event loop (else it runs in a thread)."""
    return _test(inspect.iscoroutinefunction, fn)


async def settled(result: Any) -> Any:
    """A processor's ``result``, with an awaitable it returned awaited (module
    docstring). Raises ``TypeError`` when awaits keep giving awaitables."""
    for _ in range(MAX_AWAITS):
        if not inspect.isawaitable(result):
            return result
        result = await result
    if inspect.iscoroutine(result):
        result.close()  # never run: no "never awaited" warning
    raise TypeError(
        f"the processor returned an awaitable that still gave an awaitable after "
        f"{MAX_AWAITS} awaits; return the result itself"
    )


def _test(check: Callable[[Any], bool], fn: Callable[..., Any]) -> bool:
    target = fn.func if isinstance(fn, functools.partial) else fn
    return check(target) or check(getattr(target, "__call__", None))  # noqa: B004
