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

from redis.exceptions import RedisError, ResponseError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import DamagedKeyError, KitiumQueueError, PermissionDeniedError
from ..limits import clip, reply_text
from ..parking import ParkStats, park_stats, parked_in
from .auth import ACTIONS
from .data import FEATURE_PAGES, MAX_PAGE, enabled, feature_pages

if TYPE_CHECKING:
    from .app import Dashboard
    from .auth import Session
    from .views import PageWrap

__all__ = ["alerts_on", "parking_on", "routes"]

#: Blockers listed (the largest first).
TOP_BLOCKERS = 50
#: Ids of one blocker on a page (``limit=`` up to ``MAX_PAGE``).
MAX_IDS = 50
#: Flow-control keys whose counters are read (exact patterns, keys with parked jobs,
#: keys of running jobs from one page of the owners hash).
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
    (asked without enabling it)."""
    from ..features.flowcontrol import FEATURE, OPTION_NAMES

    spec = queue.jobspec.get(OPTION_NAMES[1])
    return spec is not None and spec.feature == FEATURE


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


def _damage(reply: Any) -> str | None:
    """The damage a pipeline reply reports (a key of another type), else None."""
    if isinstance(reply, ResponseError):
        return clip(str(reply), 200)
    return None


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
    """The largest blockers with the health of each one's set: ``ok``, ``missing`` (the
    index counts jobs but the set is gone: they are stranded) or ``damaged``."""
    client = await queue.client()
    pipe = client.pipeline(transaction=False)
    for name, _ in stats.top:
        pipe.type(queue.keys.parked(name))
    kinds = await pipe.execute(raise_on_error=False) if stats.top else []
    rows = []
    for (name, count), kind in zip(stats.top, kinds, strict=True):
        found = reply_text(kind) if not isinstance(kind, Exception) else "unknown"
        health = "ok" if found == "zset" else "missing" if found == "none" else "damaged"
        rows.append(
            {
                "name": name,
                "shown": clip(name, _SHOWN),
                "count": count,
                "health": health,
                "found": found,
                "key": queue.keys.parked(name),
            }
        )
    return rows


async def _flow(queue: Any, stats: ParkStats) -> dict[str, Any] | None:
    """The flow-control declarations in force and the counters of their keys, or None
    when flow control is not declared here."""
    if not flow_on(queue):
        return None
    from ..features.flowcontrol import concurrency_key, concurrency_owners_key, rate_key

    flow = queue.flow
    keys = queue.keys
    client = await queue.client()
    cc = [p for p in flow.concurrency_limits if not p.endswith("*")]
    rl = [p for p in flow.rate_limits if not p.endswith("*")]
    for name, _ in stats.top:  # the keys jobs are parked behind
        kind, _, key = name.partition(":")
        if kind == "cc" and key not in cc:
            cc.append(key)
        elif kind == "rl" and key not in rl:
            rl.append(key)
    owners_damaged = None
    if flow.concurrency_limits:
        try:  # one page of the running jobs' keys
            _, page = await client.hscan(concurrency_owners_key(keys), 0, count=MAX_FLOW_KEYS)
            for v in page.values():
                key = reply_text(v)
                if key not in cc:
                    cc.append(key)
        except ResponseError as exc:
            owners_damaged = clip(str(exc), 200)
    cc, rl = cc[:MAX_FLOW_KEYS], rl[:MAX_FLOW_KEYS]
    pipe = client.pipeline(transaction=False)
    pipe.time()
    pipe.zcard(keys.active)
    for k in cc:
        pipe.scard(concurrency_key(keys, k))
    for k in rl:
        pipe.hmget(rate_key(keys, k), "w", "n")
        pipe.pttl(keys.hold(k))
    got = await pipe.execute(raise_on_error=False)
    now_s, now_us = got[0]
    now = int(now_s) * 1000 + int(now_us) // 1000
    counters: list[dict[str, Any]] = []
    for i, k in enumerate(cc):
        reply = got[2 + i]
        cap = flow.limit_of(k, flow.concurrency_limits)
        counters.append(
            {
                "kind": "concurrency",
                "key": clip(k, _SHOWN),
                "limit": "-" if cap is None else f"{cap} running",
                "damaged": _damage(reply),
                "current": None if _damage(reply) else f"{int(reply)} running",
                "full": cap is not None and not _damage(reply) and int(reply) >= cap,
            }
        )
    base = 2 + len(cc)
    for i, k in enumerate(rl):
        window, held = got[base + 2 * i], got[base + 2 * i + 1]
        lim = flow.limit_of(k, flow.rate_limits)
        bad = _damage(window) or _damage(held)
        row = {
            "kind": "rate",
            "key": clip(k, _SHOWN),
            "limit": "-" if lim is None else f"{lim.max} per {lim.duration} ms",
            "damaged": bad,
            "current": None,
            "full": False,
        }
        if not bad:
            opened, used = _number(window[0]), _number(window[1]) or 0
            if isinstance(held, int) and held > 0:
                row["current"] = f"held by RateLimited for {held} ms more"
                row["full"] = True
            elif lim is None or opened is None or not opened <= now < opened + lim.duration:
                row["current"] = "no window open"
            else:
                row["current"] = f"{used} started; window ends in {opened + lim.duration - now} ms"
                row["full"] = used >= lim.max
        counters.append(row)
    active = got[1]
    return {
        "rate_limits": [
            {"pattern": clip(p, _SHOWN), "limit": f"{r.max} per {r.duration} ms"}
            for p, r in list(flow.rate_limits.items())[:MAX_FLOW_KEYS]
        ],
        "concurrency_limits": [
            {"pattern": clip(p, _SHOWN), "limit": f"{c} running"}
            for p, c in list(flow.concurrency_limits.items())[:MAX_FLOW_KEYS]
        ],
        "global_cap": flow.global_concurrency,
        "active": None if _damage(active) else int(active),
        "active_damaged": _damage(active),
        "park_rate_limited": flow.park_rate_limited,
        "counters": counters,
        "owners_damaged": owners_damaged,
    }


# ---------------------------------------------------------------------- the pages
class ParkingViews:
    """The GET handlers of the parked and alerts pages of one dashboard."""

    def __init__(self, dash: Dashboard) -> None:
        self.dash = dash

    def _common(self, queue: Any, session: Session) -> dict[str, Any]:
        return {
            "queue": queue.name,
            "features": feature_pages(queue),
            "can": {a: session.may(a) for a in ACTIONS},
        }

    def _missing(self, request: Request, session: Session, what: str) -> Response:
        return self.dash.render(request, "error.html", session, status=404, error=what)

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
