"""The dashboard's pages of parked jobs and flow control (``/q/<queue>/parked``) and of
alert rules (``/q/<queue>/alerts``).

* **parked**, shown when a feature that parks jobs is on for the queue in this process
  (a fragment fills the ``admission`` slot: flow control, groups, workflows, breakers,
  tenancy, a custom admission check): the blockers holding the most parked jobs with
  their counts and the health of each one's set (``parking.park_stats``), the ids
  parked behind a chosen blocker, paged (``parking.parked_in``), the flow-control
  declarations in force with their current counters, the timers, and the slot errors
  (``parking.slot_errors``: a ``damaged:<key>`` entry with its repair). A manager gets
  "Rebuild parked sets" (action ``rebuild-parked``: a dry run's report on the confirm
  page first, then ``parking.rebuild_parked``).
* **alerts**, shown when an ``AlertManager`` is installed on the queue in this process:
  each rule with its threshold and ``clear_below``, its current value, state (firing or
  clear) and since when, and the latest recorded changes.

Every read is bounded (``TOP_BLOCKERS``, ``MAX_IDS``, ``MAX_FLOW_KEYS``,
``MAX_SLOT_ERRORS``, ``HISTORY``) and passes the queue's read guards first; a key damaged
outside kitium-queue is shown as damaged, never fails the page.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import DamagedKeyError, KitiumQueueError, PermissionDeniedError
from ..limits import clip, reply_text
from ..parking import ParkStats, blocker_sets, park_stats, parked_in
from .data import FEATURE_PAGES, MAX_PAGE, enabled
from .views import QueueViews

if TYPE_CHECKING:
    from .app import Dashboard
    from .auth import Session
    from .views import PageWrap

__all__ = ["alerts_on", "parking_on", "routes"]

#: Blockers listed (the largest first).
TOP_BLOCKERS = 50
#: Ids of one blocker on a page (``limit=`` up to ``MAX_PAGE``).
MAX_IDS = 50
#: Flow-control keys of each kind whose counters are read (exact patterns, keys with
#: parked jobs, keys of running jobs from one page of the owners hash).
MAX_FLOW_KEYS = 100
#: Slot errors listed.
MAX_SLOT_ERRORS = 100
#: Latest alert changes listed.
HISTORY = 20
#: Longest blocker name accepted in a link (``cc:`` + a 512-character key).
MAX_BLOCKER = 600
_SHOWN = 300  # characters of a name shown (links keep it whole)


# ---------------------------------------------------------------------- predicates
def parking_on(queue: Any) -> bool:
    """Whether a feature that parks jobs is on for ``queue`` in this process: a fragment
    fills the ``admission`` slot, where jobs are parked (``admit_park``)."""
    scripts = getattr(queue, "scripts", None)
    return scripts is not None and bool(scripts.slot_names("admission"))


def flow_on(queue: Any) -> bool:
    """Whether flow control (``queue.flow``) was declared on ``queue`` in this process
    (asked without enabling it: ``flowstate.flow_declared``)."""
    from ..features.flowstate import flow_declared

    return flow_declared(queue)


def alerts_on(queue: Any) -> bool:
    """Whether an ``AlertManager`` is installed on ``queue`` in this process."""
    from ..features.alerts import AlertManager

    return AlertManager.of(queue) is not None


FEATURE_PAGES["parked"] = parking_on
FEATURE_PAGES["alerts"] = alerts_on


def routes(dash: Dashboard, page: PageWrap) -> list[Route]:
    """The routes of these pages, each wrapped in ``page`` (sign-in, roles, guards)."""
    views = ParkingViews(dash)
    return [
        Route("/q/{queue}/parked", page(views.parked), methods=["GET"]),
        Route("/q/{queue}/alerts", page(views.alerts), methods=["GET"]),
    ]


# ---------------------------------------------------------------------- helpers
def _int_param(request: Request, key: str, default: int, most: int) -> int:
    raw = request.query_params.get(key, "")
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 15:
        return default
    return max(0, min(int(raw), most))


def _number(value: Any) -> int | None:
    try:
        return int(float(reply_text(value)))
    except (TypeError, ValueError, OverflowError):
        return None


def _slot_rows(errors: Mapping[str, str]) -> list[dict[str, Any]]:
    """The slot errors, damaged keys first: what failed, when, the message (with the
    repair for a damaged key)."""
    rows = []
    for name, value in sorted(
        errors.items(), key=lambda kv: (not kv[0].startswith("damaged:"), kv[0])
    ):
        stamp, _, text = value.partition(" ")
        at = int(stamp) if stamp.isdigit() and len(stamp) <= 15 else None
        damaged = name.startswith("damaged:")
        rows.append(
            {
                "damaged": damaged,
                "what": clip(name[len("damaged:") :] if damaged else name, _SHOWN),
                "at": at,
                "message": clip(text if at is not None else value, 1500),
            }
        )
        if len(rows) >= MAX_SLOT_ERRORS:
            break
    return rows


async def _blockers(queue: Any, stats: ParkStats) -> list[dict[str, Any]]:
    """The largest blockers with the health of each one's set (``parking.blocker_sets``):
    ``ok``, ``missing`` (the index counts jobs but the set is gone: they are stranded)
    or ``damaged``."""
    return [
        {**b.to_dict(), "health": b.state, "shown": clip(b.name, _SHOWN)}
        for b in await blocker_sets(queue, stats.top)
    ]


def _counter(c: dict[str, Any], now: int) -> dict[str, Any]:
    """One counter of ``flow_state`` as the page shows it."""
    row = {"kind": c["kind"], "key": clip(c["key"], _SHOWN), "damaged": c["damaged"]}
    row["full"] = c["full"]
    if c["kind"] == "concurrency":
        row["limit"] = "-" if c["limit"] is None else f"{c['limit']} running"
        row["current"] = None if c["damaged"] else f"{c['running']} running"
        return row
    row["limit"] = "-" if c["max"] is None else f"{c['max']} per {c['duration']} ms"
    if c["damaged"]:
        row["current"] = None
    elif c["held_ms"] is not None:
        row["current"] = f"held by RateLimited for {c['held_ms']} ms more"
    elif c["window_ends_ms"] is None:
        row["current"] = "no window open"
    else:
        left = c["window_ends_ms"] - now
        row["current"] = f"{c['started']} started; window ends in {left} ms"
    return row


async def _flow(queue: Any, stats: ParkStats) -> dict[str, Any] | None:
    """The flow-control declarations in force and the counters of their keys
    (``flowstate.flow_state``), or None when flow control is not declared here."""
    if not flow_on(queue):
        return None
    from ..features.flowstate import flow_state

    state = await flow_state(queue, [name for name, _ in stats.top], MAX_FLOW_KEYS)
    return {
        **state,
        "rate_limits": [
            {"pattern": clip(r["pattern"], _SHOWN), "limit": f"{r['max']} per {r['duration']} ms"}
            for r in state["rate_limits"]
        ],
        "concurrency_limits": [
            {"pattern": clip(c["pattern"], _SHOWN), "limit": f"{c['max']} running"}
            for c in state["concurrency_limits"]
        ],
        "counters": [_counter(c, state["now_ms"]) for c in state["counters"]],
    }


# ---------------------------------------------------------------------- the pages
class ParkingViews(QueueViews):
    """The GET handlers of the parked and alerts pages of one dashboard."""

    async def parked(self, request: Request, session: Session) -> Response:
        """``/q/<queue>/parked``: blockers, the ids behind one, flow control, slot errors."""
        queue = self.dash.queue(request.path_params["queue"])
        if queue is None or not enabled(queue, "parked"):
            return self._missing(
                request,
                session,
                "no feature that parks jobs (flow control, groups, workflows, breakers, "
                "tenancy) is enabled on this queue in this process",
            )
        await queue.queries.check("get_stats", {})
        # A count or due time written by hand (inf) is named among the slot errors.
        stats = await park_stats(queue, TOP_BLOCKERS)
        blockers = await _blockers(queue, stats)
        params = request.query_params
        chosen = params.get("blocker")
        if chosen is None and blockers:
            chosen = blockers[0]["name"]
        limit = _int_param(request, "limit", MAX_IDS, MAX_PAGE) or MAX_IDS
        offset = _int_param(request, "offset", 0, 2**40)
        ids: list[str] = []
        ids_error = None
        more = False
        if chosen is not None and len(chosen) > MAX_BLOCKER:
            ids_error = f"a blocker's name has at most {MAX_BLOCKER} characters"
            chosen = None
        elif chosen:
            args = {"status": "pending", "limit": limit, "offset": offset}
            await queue.queries.check("get_jobs_by_status", args)
            try:
                ids = await parked_in(queue, chosen, limit + 1, offset)
            except DamagedKeyError as exc:  # the set of another type: named, with its repair
                ids_error = clip(str(exc), 1000)
            more = len(ids) > limit
            ids = ids[:limit]
        return self.dash.render(
            request,
            "parked.html",
            session,
            **self._common(queue, session),
            stats=stats,
            blockers=blockers,
            chosen=chosen,
            chosen_shown=clip(chosen or "", _SHOWN),
            ids=[(i, clip(i, _SHOWN)) for i in ids],
            ids_error=ids_error,
            offset=offset,
            limit=limit,
            next_offset=offset + limit if more else None,
            prev_offset=max(0, offset - limit) if offset else None,
            flow=await _flow(queue, stats),
            slot_errors=_slot_rows(stats.slot_errors),
        )

    async def alerts(self, request: Request, session: Session) -> Response:
        """``/q/<queue>/alerts``: the rules, their value and state, the latest changes."""
        queue = self.dash.queue(request.path_params["queue"])
        if queue is None or not enabled(queue, "alerts"):
            return self._missing(
                request, session, "no AlertManager is installed on this queue in this process"
            )
        from ..features.alerts import AlertManager

        mgr = AlertManager.of(queue)
        if mgr is None:  # uninstalled meanwhile
            return self._missing(request, session, "no AlertManager for this queue here")
        states = {s.rule: s for s in await mgr.states()}
        history = await mgr.history(HISTORY)
        values: dict[str, float] = {}
        values_error = None
        try:
            values = await mgr.values()
        except PermissionDeniedError:
            raise
        except (KitiumQueueError, RedisError) as exc:
            values_error = clip(queue.connection.redact(exc), 500)
        except (ValueError, OverflowError) as exc:  # a figure damaged by hand ("nan")
            values_error = clip(f"a record they are read from is damaged: {exc}", 500)
        damaged = await self._alert_damage(queue)
        last: dict[str, Any] = {}
        for t in history:
            last.setdefault(t.rule, t)
        rules = []
        for r in mgr.rules:
            st = states.get(r.name)
            state = "clear" if st is None or st.state == "ok" else st.state
            rules.append(
                {
                    "rule": r,
                    "state": "damaged" if state == "unknown" else state,
                    "since": None if st is None else st.since_ms,
                    "seen": None if st is None else st.value,
                    "value": values.get(r.name),
                    "last": last.get(r.name),
                }
            )
        return self.dash.render(
            request,
            "alerts.html",
            session,
            **self._common(queue, session),
            rules=rules,
            history=[
                {
                    "at": _number(t.id.split("-", 1)[0]),
                    "rule": clip(t.rule, 100),
                    "state": clip(t.state, 20),
                    "metric": clip(t.metric, 100),
                    "value": clip(t.value, 100),
                    "threshold": clip(t.threshold, 100),
                }
                for t in history
            ],
            values_error=values_error,
            damaged=damaged,
            interval_ms=mgr.interval_ms,
        )

    @staticmethod
    async def _alert_damage(queue: Any) -> list[dict[str, str]]:
        """The alerts' keys holding another type than theirs (written outside
        kitium-queue), with what to do."""
        client = await queue.client()
        wanted = (("alerts:state", "hash"), ("alerts:log", "stream"))
        pipe = client.pipeline(transaction=False)
        for suffix, _ in wanted:
            pipe.type(queue.keys.extra(suffix))
        kinds = await pipe.execute(raise_on_error=False)
        out = []
        for (suffix, expected), kind in zip(wanted, kinds, strict=True):
            found = "unknown" if isinstance(kind, Exception) else reply_text(kind)
            if found not in ("none", expected):
                out.append(
                    {
                        "key": queue.keys.extra(suffix),
                        "found": found,
                        "expected": expected,
                        "fix": "delete it: the rules' changes are recorded again from the "
                        "next evaluation (the states start clear)",
                    }
                )
        return out
