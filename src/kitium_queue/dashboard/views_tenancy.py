"""The dashboard's pages of multi-tenancy, payload encryption and multi-region queues:
``/q/<queue>/tenants``, ``/q/<queue>/encryption`` and ``/q/<queue>/regions``, what
``kitium-queue tenants list``, ``encryption status`` and ``regions status`` show.

Each page is read-only and served only for a queue its feature is enabled on in this
process (``data.FEATURE_PAGES``, registered below): tenancy by its job option
``tenant_id``, encryption by its job option ``encrypted`` (an ``EncryptionManager`` on
the queue), regions when the queue belongs to a ``GlobalQueueManager`` (the manager
provides the queue's ``region_lag_ms`` gauge). Otherwise the page is a 404, as every
other feature page.

Reads pass the queue's read guards: the encryption status through the feature's own
``rotation_status``; the tenants and regions pages call ``queue.queries.check`` with
``list_tenants`` / ``region_status`` (``can_view_job``, in the access feature's
``READ_PERMISSIONS``). Records read back from Redis are untrusted: a damaged tenant entry
or region record is listed as damaged (what is wrong with it), never a 500; every text
is clipped (``limits.clip``) and the templates escape it. No key material is ever read:
encryption shows key ids only.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import ConfigurationError, KitiumQueueError
from ..limits import clip, reply_text
from .auth import Session
from .data import FEATURE_PAGES, enabled
from .views import not_found, queue_context

if TYPE_CHECKING:
    from ..features.encryption.status import RotationStatus
    from ..features.regions import GlobalQueueManager
    from ..features.regions.stats import RegionStats
    from ..features.tenancy.model import QueueUsage
    from .app import Dashboard
    from .views import PageWrap

__all__ = ["MAX_TENANTS_PAGE", "TENANTS_PAGE", "global_manager_of", "routes"]

#: Tenants on one page unless ``?limit=`` says fewer or more (at most ``MAX_TENANTS_PAGE``).
TENANTS_PAGE = 50
MAX_TENANTS_PAGE = 200
#: HSCAN calls one page of tenants makes at most (removed tenants' tombstones are
#: walked but not shown): past them the page offers to go on.
MAX_SCANS = 20
#: Most key ids listed on the encryption page.
MAX_KEYS = 500
#: The gauge a ``GlobalQueueManager`` provides on its queues (``regions.manager``).
LAG_GAUGE = "region_lag_ms"
_TEXT = 300
_LONG = 2000


def global_manager_of(queue: Any) -> GlobalQueueManager | None:
    """The ``GlobalQueueManager`` ``queue`` belongs to in this process (it provides the
    queue's ``region_lag_ms`` gauge), or None."""
    ctx = getattr(queue, "ctx", None)
    gauges = getattr(ctx, "gauges", None)
    fn = gauges.get(LAG_GAUGE) if isinstance(gauges, dict) else None
    owner = getattr(fn, "__self__", None)
    if owner is None:
        return None
    from ..features.regions import GlobalQueueManager

    return owner if isinstance(owner, GlobalQueueManager) else None


FEATURE_PAGES["tenants"] = ("tenant_id", "multi-tenancy")
FEATURE_PAGES["encryption"] = ("encrypted", "encryption")
FEATURE_PAGES["regions"] = lambda q: global_manager_of(q) is not None


def _size(request: Request) -> int:
    raw = request.query_params.get("limit", "")
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 6:
        return TENANTS_PAGE
    return max(1, min(int(raw), MAX_TENANTS_PAGE))


# ---------------------------------------------------------------------------- tenants
@dataclass(slots=True)
class TenantRow:
    """One registry entry as the tenants page shows it; ``damaged`` says why an entry
    cannot be read (its other fields are then empty)."""

    tenant_id: str
    name: str = ""
    weight: str = ""
    max_queue_size: str = "-"
    max_concurrency: str = "-"
    rate_limit: str = "-"
    regions: str = "any"
    lookalike: str = ""
    usage: QueueUsage | None = None
    usage_error: str = ""
    damaged: str = ""


@dataclass(slots=True)
class TenantPage:
    """One page of the registry: its rows (by id), where the next page starts (None
    at the end), how many entries the registry holds (tombstones included), and an
    error about the registry as a whole."""

    rows: list[TenantRow]
    next_cursor: str | None
    entries: int | None
    error: str = ""


def _cursor(text: str) -> tuple[int, int] | None:
    """``"<hscan cursor>.<items of its batch already shown>"``; None if malformed."""
    scan, dot, skip = text.partition(".")
    if not dot or len(text) > 40 or not (scan + skip).isascii():
        return None
    if not (scan.isdigit() and skip.isdigit()) or int(scan) >= 2**64:
        return None  # Redis refuses a cursor beyond 64 bits
    return int(scan), int(skip)


def _limit(v: int | None) -> str:
    return "-" if v is None else str(v)


def _tenant_row(field: Any, raw: Any) -> TenantRow | None:
    """The row of one registry field (None for a removed tenant's tombstone)."""
    from ..features.tenancy import check_tenant_id
    from ..features.tenancy.install import StoredTenant

    tid = reply_text(field)
    shown = clip(tid, _TEXT)
    try:
        check_tenant_id(tid, existing=True)
    except ConfigurationError as exc:
        return TenantRow(shown, damaged=clip(f"the field is no tenant id: {exc}", _TEXT))
    entry = StoredTenant.parse(tid, raw)
    if entry is None or (entry.config is None and not entry.damaged):
        return None
    if entry.config is None:
        return TenantRow(shown, damaged=clip(entry.damaged, _TEXT))
    c = entry.config
    rl = c.quota.rate_limit
    return TenantRow(
        tenant_id=shown,
        name=clip(c.name, _TEXT),
        weight=f"{c.weight:g}",
        max_queue_size=_limit(c.quota.max_queue_size),
        max_concurrency=_limit(c.quota.max_concurrency),
        rate_limit="-" if rl is None else f"{rl.max}/{rl.duration}ms",
        regions=clip(", ".join(c.allowed_regions), _TEXT) or "any",
        lookalike=clip(c.lookalike or "", _TEXT),
    )


async def read_tenants(queue: Any, cursor: tuple[int, int], limit: int) -> TenantPage:
    """At most ``limit`` tenants of ``queue``'s registry from ``cursor`` (HSCAN, at most
    ``MAX_SCANS`` calls), each with its usage in ``queue`` (one pipeline for the page);
    a damaged entry is a row that says so, a registry key of another type an error."""
    from ..features.tenancy import TenantRegistry
    from ..features.tenancy import keys as tk

    reg = TenantRegistry.for_queue(queue)
    key = tk.registry(reg.prefix)
    client = await queue.client()
    rows: list[TenantRow] = []
    scan, skip = cursor
    following: str | None = f"{scan}.0"
    try:
        entries = int(await client.hlen(key))
        for _ in range(MAX_SCANS):
            nxt, batch = await client.hscan(key, scan, count=limit)
            items = list(batch.items())
            full = False
            for i in range(skip, len(items)):
                row = _tenant_row(*items[i])
                if row is not None:
                    rows.append(row)
                if len(rows) >= limit:
                    more = i + 1 < len(items)
                    following = f"{scan}.{i + 1}" if more else (f"{nxt}.0" if nxt else None)
                    full = True
                    break
            if full:
                break
            scan, skip = int(nxt), 0
            following = f"{scan}.0" if scan else None
            if not scan:
                break
    except ResponseError as exc:
        if "WRONGTYPE" not in str(exc):
            raise
        error = (
            f"the tenant registry {key} holds another Redis type than a hash (damaged or "
            "written by hand): no tenant can be read. Delete it and create the tenants again"
        )
        return TenantPage([], None, None, clip(error, _TEXT))
    rows.sort(key=lambda r: r.tenant_id)
    shown = [row for row in rows if not row.damaged]
    try:  # one round trip for the page, not one per tenant
        usages = await reg.get_usages([row.tenant_id for row in shown], queue.name)
    except KitiumQueueError as exc:
        for row in shown:
            row.usage_error = clip(str(exc), _TEXT)
    else:
        for row in shown:
            row.usage = usages.get(row.tenant_id)
    return TenantPage(rows, following, entries)


# ---------------------------------------------------------------------------- encryption
@dataclass(slots=True)
class KeyRow:
    """A key id on the encryption page (never the key): its state, and whether this
    process holds it."""

    key_id: str
    state: str
    held_here: bool


def key_rows(st: RotationStatus, held: list[str]) -> list[KeyRow]:
    """Every key id recorded for the queue, the current one and those held here:
    ``active`` (new jobs use it), ``decrypt-only, rotating out`` (the old key of a
    running rotation), ``decrypt-only`` (older ciphertexts may still need it), or
    ``held here, not recorded`` (this process holds it but has not recorded it yet)."""
    recorded = set(st.key_ids)
    ids = sorted(recorded | set(held) | ({st.current_key_id} if st.current_key_id else set()))
    rows = []
    for kid in ids[:MAX_KEYS]:
        if kid == st.current_key_id:
            state = "active"
        elif st.state == "running" and kid == st.from_key_id:
            state = "decrypt-only, rotating out"
        elif kid in recorded:
            state = "decrypt-only"
        else:
            state = "held here, not recorded"
        rows.append(KeyRow(clip(kid, _TEXT), state, kid in held))
    return rows


# ---------------------------------------------------------------------------- regions
@dataclass(slots=True)
class RegionRow:
    """One region on the regions page: ``stats`` as ``get_global_stats`` gives it,
    when it last answered a health check (ms ago, None: never), and what is damaged
    in its region record ("" when it reads well or could not be read)."""

    stats: RegionStats
    last_ok_ms: int | None
    damaged: str
    error: str
    primary: str
    position: str


_INT_FIELDS = ("epoch", "lease", "vepoch", "vuntil", "down", "former")


async def record_damage(manager: GlobalQueueManager, region: str) -> str:
    """What is wrong with ``region``'s record of the global queue (``<prefix>rg``),
    read as it is stored; "" when it reads well or the region does not answer."""
    copy = manager.region(region)
    key = copy.lane.keys.extra("rg")
    try:
        client = await copy.lane.client()
        raw = await asyncio.wait_for(client.hgetall(key), max(1.0, copy.timeout_s))
    except ResponseError as exc:
        if "WRONGTYPE" in str(exc):
            return f"{key} holds another Redis type, not a hash"
        return ""
    except Exception:  # unreachable: its health says so
        return ""
    rec = {reply_text(k): reply_text(v) for k, v in raw.items()}
    wrong = []
    if rec.get("self", region) != region:
        wrong.append(f"it names region {rec['self']!r}")
    for name in _INT_FIELDS:
        value = rec.get(name)
        if value is not None and not value.lstrip("-").isdigit():
            wrong.append(f"{name} is not an integer: {value!r}")
    names = manager.regions
    if rec.get("primary") and rec["primary"] not in names:
        wrong.append(f"primary {rec['primary']!r} is no configured region")
    return clip("; ".join(wrong), _LONG)


async def region_rows(manager: GlobalQueueManager) -> tuple[Any, list[RegionRow]]:
    """``get_global_stats()`` and each region's row."""
    st = await manager.get_global_stats()
    now = time.monotonic()
    rows = []
    for r in st.regions:
        copy = manager.region(r.region)
        last = None if copy.last_ok is None else int((now - copy.last_ok) * 1000)
        rows.append(
            RegionRow(
                stats=r,
                last_ok_ms=last,
                damaged=await record_damage(manager, r.region),
                error=clip(r.error, _TEXT),
                primary=clip(r.primary or "", _TEXT),
                position=clip(r.position, 100),
            )
        )
    return st, rows


# ---------------------------------------------------------------------------- routes
def routes(dash: Dashboard, page: PageWrap) -> list[Route]:
    """The routes of the tenants, encryption and regions pages (GET, each wrapped in
    ``page``: sign-in, roles, read guards as every other page)."""

    def missing(request: Request, session: Session, what: str) -> Response:
        return not_found(dash, request, session, what)

    async def tenants(request: Request, session: Session) -> Response:
        queue = dash.queue(request.path_params["queue"])
        if queue is None or not enabled(queue, "tenants"):
            return missing(request, session, "multi-tenancy is not enabled on this queue")
        limit = _size(request)
        given = request.query_params.get("cursor") or ""
        cursor = _cursor(given) if given else (0, 0)
        error = ""
        if cursor is None:
            error = "that page cursor is not one this page made: showing the first page"
            cursor = (0, 0)
        await queue.queries.check("list_tenants", {"cursor": clip(given, 40), "limit": limit})
        got = await read_tenants(queue, cursor, limit)
        return dash.render(
            request,
            "tenants.html",
            session,
            **queue_context(queue, session),
            tenants=got.rows,
            next_cursor=got.next_cursor,
            entries=got.entries,
            error=got.error or error,
            limit=limit,
            first=not given,
        )

    async def encryption(request: Request, session: Session) -> Response:
        queue = dash.queue(request.path_params["queue"])
        if queue is None or not enabled(queue, "encryption"):
            return missing(request, session, "encryption is not enabled on this queue")
        from ..features.encryption import EncryptionManager

        mgr = EncryptionManager.for_queue(queue)
        st = await mgr.rotation_status()  # guarded: rotation_status
        held = mgr.held_key_ids()
        every = len(set(st.key_ids) | set(held))
        return dash.render(
            request,
            "encryption.html",
            session,
            **queue_context(queue, session),
            st=st,
            keys=key_rows(st, held),
            more_keys=max(0, every - MAX_KEYS),
            current=clip(st.current_key_id or "", _TEXT),
            problems=clip(st.problems, _LONG),
            damaged=clip(st.damaged, _LONG),
            percent=round(st.fraction * 100, 1),
        )

    async def regions(request: Request, session: Session) -> Response:
        queue = dash.queue(request.path_params["queue"])
        manager = None if queue is None else global_manager_of(queue)
        if queue is None or manager is None:
            return missing(
                request, session, "this queue does not belong to a multi-region queue here"
            )
        await queue.queries.check("region_status", {})
        try:
            st, rows = await region_rows(manager)
        except ConfigurationError as exc:  # not initialized (yet) in this process
            st, rows = None, []
            error = clip(str(exc), _TEXT)
        else:
            error = ""
        return dash.render(
            request,
            "regions.html",
            session,
            **queue_context(queue, session),
            gs=st,
            regions=rows,
            error=error,
        )

    return [
        Route("/q/{queue}/tenants", page(tenants), methods=["GET"]),
        Route("/q/{queue}/encryption", page(encryption), methods=["GET"]),
        Route("/q/{queue}/regions", page(regions), methods=["GET"]),
    ]
