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
#: When a job held by a breaker that acts closed goes back to wait.
_LET_GO = (
    "this job goes back to wait at the next claim of one of the breaker's jobs, the next "
    "read of the breaker (get_stats, list_breakers, the CLI) or the breaker-events "
    "leader's next sweep (within seconds), at the latest when its park timer is due."
)


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
                    f"Redis type (damaged): it acts closed and holds no job; {_LET_GO} "
                    "Repair: create_breaker(..., replace=True) or remove_breaker()",
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
        if state == "missing":
            what = f"held by circuit breaker {bid!r}, whose record {key} is gone; "
            fix = " Repair: create_breaker(..., replace=True) or remove_breaker()"
        else:
            what = f"held by circuit breaker {bid!r} ({state}), which holds no job; "
            fix = ""
        return [
            Reason(
                "breaker-open",
                f"{what}{_LET_GO}{fix}",
                refs=refs,
                source=FEATURE,
            )
        ]

    return explain
