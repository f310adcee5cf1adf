"""Why a job bound to a circuit breaker is not running (``queue.explain``).

Registered by ``CircuitBreakerManager`` on its queue. A job parked behind blocker
``cb:<id>`` is held by breaker ``<id>``: open (until when, and why it opened), or
half-open with every probe place taken (until the probes report or their deadline).
It reads the breaker's hash (``lua.py`` names the fields) and changes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from ...explain import JobFacts, Reason, at
from ...limits import reply_int, reply_text
from .events import FEATURE

if TYPE_CHECKING:
    from ...queue import JobQueue

__all__ = ["make_explainer"]

_MAX_MS = 1_125_899_906_842_624
_STATES = ("closed", "open", "half-open")


def _ms(value: Any) -> int:
    """A time read from the breaker's hash; 0 when it is none (damaged)."""
    n = reply_int(value)
    return n if 0 <= n <= _MAX_MS else 0


def make_explainer(q: JobQueue) -> Any:
    """The explainer of circuit breakers on queue ``q``."""

    async def explain(facts: JobFacts) -> list[Reason]:
        blocker = facts.blocker or ""
        if not blocker.startswith("cb:"):
            return []
        bid = blocker[3:]
        client = await q.client()
        key = q.keys.extra(f"cb:b:{bid}")
        refs = (("breaker", bid),)
        try:
            st, until, why, po, pr, pdl = await client.hmget(
                key, "st", "until", "why", "po", "pr", "pdl"
            )
        except ResponseError as exc:
            if not str(exc).startswith("WRONGTYPE"):
                raise
            return [
                Reason(
                    "breaker-open",
                    f"held by circuit breaker {bid!r}, whose record {key} holds another "
                    "Redis type (damaged): it holds no new job, and those it held go back to "
                    "wait when its timer is due, or at once when it is repaired with "
                    "create_breaker(..., replace=True) or remove_breaker()",
                    refs=refs,
                    source=FEATURE,
                )
            ]
        reason = f" ({reply_text(why)[:200]})" if why else ""
        state = reply_text(st)[:40] or "missing"
        if st is not None and state not in _STATES:
            state = f"damaged state {state!r}, read as closed; reset() repairs it"
        now = facts.now_ms
        if state == "open":
            end = _ms(until)
            return [
                Reason(
                    "breaker-open",
                    f"circuit breaker {bid!r} is open{reason}: bound jobs are held until it "
                    f"lets probes through {at(end, now)}",
                    until_ms=end,
                    refs=refs,
                    source=FEATURE,
                )
            ]
        if state == "half-open":
            deadline = _ms(pdl) or None
            when = f"; the probes must report by {at(deadline, now)}" if deadline else ""
            return [
                Reason(
                    "breaker-open",
                    f"circuit breaker {bid!r} is half-open with {_ms(po)} of "
                    f"{_ms(pr) or 1} probe(s) out: held jobs run once the probes "
                    f"succeed{when}",
                    until_ms=deadline,
                    refs=refs,
                    source=FEATURE,
                )
            ]
        return [
            Reason(
                "breaker-open",
                f"held by circuit breaker {bid!r} ({state}); it goes back to wait at the "
                "breaker's next step (within about a second)",
                refs=refs,
                source=FEATURE,
            )
        ]

    return explain
