"""Why a job bound to a circuit breaker is not running (``queue.explain``).

Registered by ``CircuitBreakerManager`` on its queue. A job parked behind blocker
``cb:<id>`` is held by breaker ``<id>``: open (until when, and why it opened), or
half-open with every probe place taken (until the probes report or their deadline).
It reads the breaker's hash (``lua.py`` names the fields) and changes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...explain import JobFacts, Reason, at
from ...limits import reply_int, reply_text
from .events import FEATURE

if TYPE_CHECKING:
    from ...queue import JobQueue

__all__ = ["make_explainer"]


def make_explainer(q: JobQueue) -> Any:
    """The explainer of circuit breakers on queue ``q``."""

    async def explain(facts: JobFacts) -> list[Reason]:
        blocker = facts.blocker or ""
        if not blocker.startswith("cb:"):
            return []
        bid = blocker[3:]
        client = await q.client()
        st, until, why, po, pr, pdl = await client.hmget(
            q.keys.extra(f"cb:b:{bid}"), "st", "until", "why", "po", "pr", "pdl"
        )
        refs = (("breaker", bid),)
        reason = f" ({reply_text(why)[:200]})" if why else ""
        state = reply_text(st) or "missing"
        now = facts.now_ms
        if state == "open":
            end = reply_int(until)
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
            deadline = reply_int(pdl) or None
            when = f"; the probes must report by {at(deadline, now)}" if deadline else ""
            return [
                Reason(
                    "breaker-open",
                    f"circuit breaker {bid!r} is half-open with {reply_int(po)} of "
                    f"{reply_int(pr) or 1} probe(s) out: held jobs run once the probes "
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
