"""Delay before the next attempt of a failed job."""

from __future__ import annotations

import functools
import inspect
import random
from collections.abc import Callable, Mapping
from typing import Any

from .errors import ConfigurationError
from .limits import clamp_delay_ms
from .options import Policy

__all__ = ["UnknownStrategyError", "check_strategy", "retry_delay"]


class UnknownStrategyError(ConfigurationError):
    """The job's custom backoff strategy cannot be used in this worker's process: it is
    not registered there, or what is registered under its name is not a plain function
    (not callable, or an ``async def``: a delay is needed at once, never awaited)."""


def check_strategy(name: str, fn: object) -> None:
    """Refuse at registration (``queue.register_backoff``) a strategy ``retry_delay``
    cannot use: ``fn`` must be callable, and a plain function, never an ``async def``
    (nor a ``functools.partial`` of one, nor an object whose ``__call__`` is one): the
    delay is needed at once, in the middle of recording the failure, and is never
    awaited. Raises ``TypeError`` saying what was given and what to give instead."""
    wanted = (
        "register a plain function: def strategy(attempts_made, error, job) returning "
        "the delay in ms (or None to stop retrying)"
    )
    if not callable(fn):
        raise TypeError(
            f"backoff strategy {name!r} is not callable (a {type(fn).__name__}); {wanted}"
        )
    if _is_async(fn):
        raise TypeError(
            f"backoff strategy {name!r} is an async def (or a partial or object whose "
            f"__call__ is one): the worker needs the delay at once and never awaits "
            f"it; {wanted}, not an async def"
        )


def _is_async(fn: object) -> bool:
    """Whether calling ``fn`` gives a coroutine or an async generator (not a value)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        return True
    if inspect.isroutine(fn) or inspect.isclass(fn):
        return False
    call = type(fn).__call__  # the class's: what a call runs
    return inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call)


def retry_delay(
    policy: Policy,
    attempts_made: int,
    error: BaseException,
    job: Any,
    strategies: Mapping[str, Callable[..., Any]],
) -> int | None:
    """Milliseconds to wait before the next attempt, or None to stop retrying.

    exponential: ``delay * 2**(attempts_made - 1)``; fixed: ``delay``; custom: the
    registered strategy's return value. Capped by ``max_delay``; ``jitter`` adds up to
    that many ms at random. Raises ``UnknownStrategyError`` when the custom strategy is
    not registered, not callable or returns an awaitable (an ``async def``).
    """
    b = policy.backoff
    base = int(b.delay or 0)  # type: ignore[arg-type]  # normalized to ms
    if b.type == "fixed":
        delay: float = base
    elif b.type == "exponential":
        delay = base * (2 ** min(max(attempts_made - 1, 0), 62))
    else:
        fn = strategies.get(b.strategy or "")
        if fn is None:
            raise UnknownStrategyError(
                f"custom backoff strategy {b.strategy!r} is not registered on this worker; "
                "call queue.register_backoff(name, fn) in the worker's process too"
            )
        if not callable(fn):
            raise UnknownStrategyError(
                f"custom backoff strategy {b.strategy!r} is registered as a "
                f"{type(fn).__name__}, not a function"
            )
        out = fn(attempts_made, error, job)
        if inspect.isawaitable(out):
            if inspect.iscoroutine(out):
                out.close()  # never awaited: no "was never awaited" warning either
            raise UnknownStrategyError(
                f"custom backoff strategy {b.strategy!r} returned an awaitable; register "
                "a plain function (def, not async def) that returns the delay in ms or None"
            )
        if out is None:
            return None
        delay = float(out)
    if b.max_delay is not None:
        delay = min(delay, float(b.max_delay))  # type: ignore[arg-type]
    if policy.jitter_ms:
        delay += random.randint(0, policy.jitter_ms)
    # A strategy may return anything numeric (inf, NaN, 2**70): clamp to the documented
    # range here so a bad value never reaches Redis or raises OverflowError.
    return clamp_delay_ms(delay)
