"""The dashboard's audit page (``create_dashboard(access=...)``): the deployment's audit
log, filtered and paged newest first, and the verification of its chain.

``access`` is an ``AccessControlManager`` (its audit log) or an ``AuditLog``. Managers
and admins see the page (``auth.AUDIT_ACTIONS``); admins run "verify chain" (a POST
with the session's CSRF token), which reads the whole chain and shows the first entry
altered, removed or inserted. The verification is itself recorded (``audit.verify``),
and so are the dashboard's own refusals (a role that may not do something:
``access.denied`` with ``via: dashboard``), next to the refusals of the grants.

Bounded: a page shows at most ``MAX_AUDIT_PAGE`` entries and one request reads at most
``AUDIT_SCAN`` entries, offering to go on from where it stopped; filter values are cut
to ``MAX_FILTER`` characters. Every value read from the log (principals, actions,
resources, metadata) is escaped by the template like everything else.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ..errors import ConfigurationError, KitiumQueueError
from ..limits import clip, get_logger
from .auth import Session
from .views import refused as refused_page

if TYPE_CHECKING:
    from ..features.audit import AuditEntry, AuditLog, AuditReport
    from .app import Dashboard

__all__ = [
    "AUDIT_SCAN",
    "MAX_AUDIT_PAGE",
    "AuditFilter",
    "AuditPages",
    "RoleRefusals",
    "audit_of",
]

log = get_logger(__name__)

#: Most entries on one page.
MAX_AUDIT_PAGE = 200
#: Entries one request reads at most (it offers to go on after them).
AUDIT_SCAN = 20_000
#: Longest filter value accepted.
MAX_FILTER = 512
#: Most characters of an entry's metadata shown.
MAX_META = 1000
#: The outcomes the filter offers.
OUTCOMES = ("ok", "denied", "error")
#: Refusals noted and not yet written, at most (more are dropped, logged).
MAX_NOTED = 10_000


def audit_of(access: Any) -> tuple[AuditLog | None, Any]:
    """The audit log behind ``create_dashboard(access=...)`` and the
    ``AccessControlManager`` it came from (None when ``access`` is an ``AuditLog``)."""
    if access is None:
        return None, None
    from ..features.access import AccessControlManager
    from ..features.audit import AuditLog

    if isinstance(access, AccessControlManager):
        return access.audit, access
    if isinstance(access, AuditLog):
        return access, None
    raise ConfigurationError(
        "access= takes an AccessControlManager (grants and their audit log) or an "
        f"AuditLog, got {type(access).__name__}"
    )


class RoleRefusals:
    """The dashboard's refusals by role (``access.denied``, ``via: dashboard``), written
    within the bound on refusals of access control (``features/audit/refusals.py``):
    per (principal, action, resource) and window, the first ``burst`` an entry each,
    the rest counted into one summary entry (``suppressed``, ``window_start``,
    ``window_end``, and ``via: dashboard``), so a session looping over a refused POST
    does not grow the log at its request rate. The bound is the manager's
    (``AccessControlManager(refusal_burst=, refusal_window=)``), or, for a plain
    ``AuditLog``, one of the defaults (10 per 10 s) owned here: its counts are summed
    up at the window's end, by the next refusal of the triple after it, by ``close()``
    (``app.state.dashboard.refusals.close()``) or by ``flush_refusals()`` of any
    ``AccessControlManager`` on the deployment.

    ``note`` is called while a page is made (synchronously); the request writes what
    was noted (``settle``) before its response goes out, as a refused call of access
    control is audited before it raises."""

    def __init__(self, audit: AuditLog, access: Any) -> None:
        from ..features.audit.refusals import RefusalBound

        self.audit = audit
        self.bound: RefusalBound = access.refusals if access is not None else RefusalBound(audit)
        self._owned = access is None
        self._noted: deque[tuple[str | None, str, dict[str, Any]]] = deque()

    def note(self, principal: str | None, resource: str, meta: dict[str, Any]) -> None:
        """Note one refusal (``meta``: action, role, needs_role, via) to be written."""
        if self.audit.keys is None:  # opened without its key: it records nothing
            return
        if len(self._noted) >= MAX_NOTED:
            log.error("dashboard: %d refusals not audited yet; this one is not", MAX_NOTED)
            return
        self._noted.append((principal, resource, meta))

    async def settle(self) -> None:
        """Write (or count) every refusal noted; an audit log that cannot take one is
        logged, and the refusal stands."""
        while self._noted:
            principal, resource, meta = self._noted.popleft()
            try:
                await self.bound.deny(principal, resource, meta)
            except Exception as exc:
                log.error(
                    "dashboard: the refusal of %s on %s could not be audited (%s: %s)",
                    clip(str(meta.get("action")), 100),
                    clip(resource, 200),
                    type(exc).__name__,
                    exc,
                )

    async def close(self) -> None:
        """Write what is noted and sum up the windows counted in this process (early)
        when the bound is the dashboard's own (a plain ``AuditLog``); the manager's
        ``close()`` does it for its bound."""
        await self.settle()
        if self._owned:
            await self.bound.close()


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """What the audit page lists: every given part must match.

    ``principal``: exactly; ``action`` / ``resource``: exact or a glob (``queue.*``,
    ``acme-*``); ``outcome``: ok, denied or error; ``since`` / ``until``: ms since the
    epoch or an ISO-8601 time (UTC unless it names an offset), inclusive.
    """

    principal: str = ""
    action: str = ""
    resource: str = ""
    outcome: str = ""
    since: str = ""
    until: str = ""

    @classmethod
    def of(cls, params: Mapping[str, Any]) -> AuditFilter:
        """From query parameters (each cut to ``MAX_FILTER`` characters, without
        characters that are not printable: no entry holds those; an unknown outcome is
        no filter)."""

        def get(k: str) -> str:
            text = str(params.get(k) or "")[: MAX_FILTER * 2]
            return "".join(c for c in text if c.isprintable()).strip()[:MAX_FILTER]

        outcome = get("outcome")
        return cls(
            principal=get("principal"),
            action=get("action"),
            resource=get("resource"),
            outcome=outcome if outcome in OUTCOMES else "",
            since=get("since"),
            until=get("until"),
        )

    def query_args(self) -> dict[str, Any]:
        """The filters of ``AuditLog.query_page``; ``ConfigurationError`` for a time
        that does not parse."""
        from ..features.audit.read import parse_time

        out: dict[str, Any] = {
            k: getattr(self, k)
            for k in ("principal", "action", "resource", "outcome")
            if getattr(self, k)
        }
        since, until = parse_time(self.since, "since"), parse_time(self.until, "until")
        if since is not None:
            out["since"] = since
        if until is not None:
            out["until"] = until
        return out

    def params(self) -> dict[str, str]:
        """The non-empty parts, for links."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}


def _authentic(value: bool | None) -> str:
    return "-" if value is None else "yes" if value else "NO"


def entry_view(e: AuditEntry) -> dict[str, Any]:
    """One row of the page (the template escapes every value)."""
    try:
        meta = orjson.dumps(e.metadata, option=orjson.OPT_SORT_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):
        meta = repr(e.metadata)
    return {
        "id": e.id,
        "at_ms": e.at_ms,
        "n": "-" if e.n is None else e.n,
        "principal": e.principal or "-",
        "action": e.action,
        "resource": e.resource,
        "outcome": e.outcome,
        "authentic": _authentic(e.authentic),
        "metadata": clip(meta, MAX_META),
        "damage": clip(e.damage, 300),
    }


def report_view(report: AuditReport) -> dict[str, Any]:
    """What the page shows of a verification."""
    return {
        "ok": report.ok,
        "entries": report.entries,
        "start": report.start,
        "head": None if report.head is None else str(report.head),
        "first": None if report.first_problem is None else report.first_problem.to_dict(),
        "problems": [p.to_dict() for p in report.problems[:20]],
        "more": max(0, len(report.problems) - 20) + report.more_problems,
    }


class AuditPages:
    """The audit page and the chain verification of one dashboard."""

    def __init__(self, dash: Dashboard, audit: AuditLog) -> None:
        self.dash = dash
        self.audit = audit

    def refused(self, request: Request, session: Session, action: str, resource: str) -> Response:
        """The 403 page for an action the session's role does not allow (recorded)."""
        return refused_page(self.dash, request, session, action, resource)

    # ------------------------------------------------------------------ the page
    async def page(self, request: Request, session: Session) -> Response:
        """``GET /audit``: entries matching the filter, newest first, paged."""
        if not session.may("view-audit"):
            return self.refused(request, session, "view-audit", "audit")
        return await self._render(request, session, AuditFilter.of(request.query_params))

    async def verify(self, request: Request, session: Session) -> Response:
        """``POST /audit/verify``: check the whole chain, show the result (admins)."""
        form = await self.dash.form(request)
        if form is None:
            return self.dash.forbidden("the form is missing, too large or not urlencoded")
        if not self.dash.same_origin(request) or not self.dash.auth.check_csrf(
            session, (form.get("csrf") or [""])[0]
        ):
            return self.dash.forbidden("missing or wrong CSRF token: reload the page and try again")
        if not session.may("verify-audit"):
            return self.refused(request, session, "verify-audit", "audit")
        checkpoint_text = (form.get("checkpoint") or [""])[0].strip()[:600]
        report: dict[str, Any] | None = None
        error = None
        try:
            from ..features.audit import AuditHead

            checkpoint = AuditHead.parse(checkpoint_text) if checkpoint_text else None
            await self.audit.flush()
            found = await self.audit.verify(checkpoint=checkpoint)
        except KitiumQueueError as exc:
            error = clip(str(exc), 300)
        else:
            report = report_view(found)
            self.audit.record(
                session.principal,
                "audit.verify",
                "audit",
                "ok",
                {
                    "intact": found.ok,
                    "entries": found.entries,
                    "checkpoint": bool(checkpoint),
                    "first_problem": report["first"],
                },
            )
        return await self._render(
            request, session, AuditFilter(), report=report, verify_error=error
        )

    async def _render(
        self, request: Request, session: Session, flt: AuditFilter, **extra: Any
    ) -> Response:
        params = request.query_params
        raw_limit = params.get("limit", "")
        limit = (
            min(int(raw_limit), MAX_AUDIT_PAGE)
            if raw_limit.isascii() and raw_limit.isdigit() and 0 < len(raw_limit) < 5
            else 50
        ) or 50
        cursor = (params.get("cursor") or "").strip()[:60] or None
        entries: list[dict[str, Any]] = []
        next_link = None
        scanned = 0
        error = None
        try:
            page = await self.audit.query_page(
                **flt.query_args(), limit=limit, max_scan=AUDIT_SCAN, cursor=cursor
            )
        except KitiumQueueError as exc:  # a bad filter, a damaged log, Redis unreachable
            error = clip(str(exc), 400)
        else:
            entries = [entry_view(e) for e in page.entries]
            scanned = page.scanned
            if page.next_cursor is not None:
                query = {**flt.params(), "limit": str(limit), "cursor": page.next_cursor}
                next_link = f"{self.dash.base(request)}/audit?{urlencode(query)}"
        return self.dash.render(
            request,
            "audit.html",
            session,
            flt=flt,
            outcomes=OUTCOMES,
            entries=entries,
            next_link=next_link,
            scanned=scanned,
            paged=cursor is not None,
            limit=limit,
            error=error,
            can_verify=session.may("verify-audit"),
            has_key=self.audit.keys is not None,
            audit_page=True,
            **extra,
        )
