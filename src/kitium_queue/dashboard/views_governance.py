"""The dashboard's pages of data subjects (``/q/<queue>/compliance``), of stored results
(``/q/<queue>/results``) and of access grants (``/access``): what ``kitium-queue
compliance``, ``kitium-queue result`` and ``kitium-queue access list`` show.

* **compliance**, shown when a ``ComplianceManager`` is on the queue in this process
  (its job option ``subject_id``): how many subjects the index holds
  (``subject_count``), the retention rules in force (periods: erasure; limits), the
  payload fields redacted, and a look-up of one subject's jobs (``subject_jobs``): how
  many, and their ids, paged, each linking to its job. A subject id is personal data,
  so the look-up is a POST (with the session's CSRF token): the id is never in a URL
  (address bar, history, access logs, ``Referer``), and this module logs nothing and
  records nothing of it. A manager gets "Erase…" (action ``erase-subject``, in
  ``actions.py``): the confirmation page shows how many jobs would be erased, then
  ``ComplianceManager.erase_subject`` runs through the admin choke point, whose audit
  record names the subject only by its SHA-256 digest.
* **results**, shown when effectively-once is on the queue in this process
  (``IdempotencyManager``, its job option ``idempotency_window``): the manager's
  settings, and a look-up by idempotency key or job id
  (``get_execution_result``: an execution record, else a completed job's result, also
  after retention removed the job). The result is shown as a job's result is on its
  page: hidden when the dashboard hides payloads (``show_payloads=False``), redacted
  as the queue's queries redact it (protected payloads, ``redact_fields``).
* **access**, with ``create_dashboard(access=<AccessControlManager>)``, for admins
  only (``ACCESS_ACTION``; a refusal is audited like the audit page's): every grant,
  by principal then pattern, with its role, permissions, what it allows, who granted
  it and when, and a ``lookalike`` badge on a principal whose letters mix scripts.

Every read is bounded (``SUBJECT_SCAN`` ids of a subject, ``MAX_PAGE`` rows a page,
``MAX_GRANT_PRINCIPALS`` principals' grants read a page) and passes the queue's read
guards first (``subject_count``, ``subject_jobs``, ``get_execution_result``,
``get_result``); values read from Redis are clipped and escaped by the templates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import ConfigurationError, KitiumQueueError, PermissionDeniedError
from ..limits import clip
from .data import FEATURE_PAGES, MAX_PAGE, enabled, render_value
from .views import QueueViews, refused

if TYPE_CHECKING:
    from ..features.compliance import ComplianceManager
    from .app import Dashboard
    from .auth import Session
    from .views import PageWrap

__all__ = ["ACCESS_ACTION", "SUBJECT_SCAN", "compliance_of", "routes"]

#: Most ids of one subject read per look-up (the count says "more than" past it).
SUBJECT_SCAN = 10_000
#: Ids of a subject, or grants, on a page unless ``limit`` says otherwise.
PAGE = 50
#: Principals whose grants one page of ``/access`` reads at most.
MAX_GRANT_PRINCIPALS = 200
#: The role check of ``/access``: not in ``auth.ACTIONS``, so only admins may
#: (``auth.needs`` of an unknown action).
ACCESS_ACTION = "view-access"
_HIDDEN = "(hidden: this dashboard does not show payloads)"
_SHOWN = 300
_NO_FORM = "the form is missing, too large or not urlencoded"
_WRONG_CSRF = "missing or wrong CSRF token: reload the page and try again"

FEATURE_PAGES["compliance"] = ("subject_id", "compliance")
FEATURE_PAGES["results"] = ("idempotency_window", "effectively-once")


def compliance_of(queue: Any) -> ComplianceManager:
    """The ``ComplianceManager`` installed on ``queue`` in this process;
    ``ConfigurationError`` when there is none (nothing is installed by asking)."""
    if not enabled(queue, "compliance"):
        raise ConfigurationError(
            f"compliance is not enabled on queue {queue.name!r} in this process "
            "(ComplianceManager(queue))"
        )
    from ..features.compliance import ComplianceManager

    return ComplianceManager.for_queue(queue)


def routes(dash: Dashboard, page: PageWrap) -> list[Route]:
    """The routes of these pages, each wrapped in ``page`` (sign-in, roles, guards)."""
    views = GovernanceViews(dash)
    return [
        Route("/q/{queue}/compliance", page(views.compliance), methods=["GET"]),
        Route("/q/{queue}/compliance", page(views.subject_lookup), methods=["POST"]),
        Route("/q/{queue}/results", page(views.results), methods=["GET"]),
        Route("/access", page(views.access), methods=["GET"]),
    ]


def _number(raw: str, default: int, most: int) -> int:
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 15:
        return default
    return max(0, min(int(raw), most))


def _duration(ms: int | None) -> str:
    """``ms`` as days, hours, minutes or seconds (the largest whole unit), with ms."""
    if ms is None:
        return "-"
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000)):
        if ms >= size and ms % size == 0:
            return f"{ms // size} {unit} ({ms} ms)"
    return f"{ms} ms"


def _retention(mgr: ComplianceManager) -> dict[str, Any]:
    """The retention rules in force (``Retention.to_dict``, as ``compliance retention``
    prints them), the redacted fields, the service's interval."""
    rules = mgr.retention.to_dict()
    return {
        "interval": _duration(rules["interval_ms"]),
        "states": [
            {
                "state": state,
                "period": _duration(rule["period_ms"]),
                "erases": rule["period_ms"] is not None,
                "count": "-" if rule["count"] is None else rule["count"],
                "age": _duration(rule["age_ms"]),
            }
            for state, rule in rules["states"].items()
        ],
        "redact_fields": [clip(p, _SHOWN) for p in mgr.redactor.paths],
        "redact_everywhere": mgr.redact_everywhere,
    }


class GovernanceViews(QueueViews):
    """The handlers of the compliance, results and access pages of one dashboard."""

    # ------------------------------------------------------------------ compliance
    async def compliance(self, request: Request, session: Session) -> Response:
        """``GET /q/<queue>/compliance``: subjects, retention, the look-up form."""
        return await self._compliance(request, session, None)

    async def subject_lookup(self, request: Request, session: Session) -> Response:
        """``POST /q/<queue>/compliance``: one subject's jobs (the id in the body only)."""
        form = await self.dash.form(request)
        if form is None:
            return self.dash.forbidden(_NO_FORM)
        if not self.dash.same_origin(request) or not self.dash.auth.check_csrf(
            session, (form.get("csrf") or [""])[0]
        ):
            return self.dash.forbidden(_WRONG_CSRF)
        return await self._compliance(request, session, form)

    async def _compliance(
        self, request: Request, session: Session, form: dict[str, list[str]] | None
    ) -> Response:
        queue = self.dash.queue(request.path_params["queue"])
        if queue is None or not enabled(queue, "compliance"):
            return self._missing(
                request,
                session,
                "compliance (ComplianceManager) is not enabled on this queue in this process",
            )
        mgr = compliance_of(queue)
        subjects: int | None = None
        subjects_error = None
        try:
            subjects = await mgr.subject_count()
        except PermissionDeniedError:
            raise
        except (KitiumQueueError, RedisError) as exc:  # the index damaged, Redis away
            subjects_error = clip(queue.connection.redact(exc), 500)
        lookup = None if form is None else await self._lookup(mgr, form)
        return self.dash.render(
            request,
            "compliance.html",
            session,
            **self._common(queue, session),
            subjects=subjects,
            subjects_error=subjects_error,
            retention=_retention(mgr),
            lookup=lookup,
            scan=SUBJECT_SCAN,
        )

    async def _lookup(self, mgr: ComplianceManager, form: dict[str, list[str]]) -> dict[str, Any]:
        """The ids of the subject the form names (as given: never stripped, logged or
        put in a link), ``SUBJECT_SCAN`` at most, sorted, one page of them."""
        subject = (form.get("subject_id") or [""])[0][:1000]
        limit = _number((form.get("limit") or [""])[0], PAGE, MAX_PAGE) or PAGE
        offset = _number((form.get("offset") or [""])[0], 0, SUBJECT_SCAN)
        out: dict[str, Any] = {"subject": subject, "limit": limit, "offset": offset}
        try:
            found = await mgr.subject_jobs(subject, SUBJECT_SCAN + 1)
        except PermissionDeniedError:
            raise
        except (KitiumQueueError, RedisError) as exc:  # a bad id (not shown), a damaged index
            out["error"] = clip(mgr.queue.connection.redact(exc), 500)
            return out
        ids = sorted(found[:SUBJECT_SCAN])
        shown = ids[offset : offset + limit]
        out.update(
            count=len(ids),
            more=len(found) > SUBJECT_SCAN,
            ids=[(i, clip(i, _SHOWN)) for i in shown],
            next_offset=offset + limit if offset + limit < len(ids) else None,
            prev_offset=max(0, offset - limit) if offset else None,
        )
        return out

    # ------------------------------------------------------------------ results
    async def results(self, request: Request, session: Session) -> Response:
        """``GET /q/<queue>/results?key=``: the result under a key or job id."""
        queue = self.dash.queue(request.path_params["queue"])
        if queue is None or not enabled(queue, "results"):
            return self._missing(
                request,
                session,
                "effectively-once (IdempotencyManager) is not enabled on this queue in this "
                "process",
            )
        from ..features.idempotency import IdempotencyManager

        mgr = IdempotencyManager.for_queue(queue)  # the settings it was enabled with
        key = request.query_params.get("key", "")[:1000]
        found = None
        error = None
        if key:
            try:
                found = await mgr.get_execution_result(key)
            except PermissionDeniedError:
                raise
            except (KitiumQueueError, RedisError) as exc:  # a bad key, an undecodable result
                error = clip(queue.connection.redact(exc), 500)
        shown = None
        if found is not None:
            shown = render_value(found.result) if self.show_payloads else _HIDDEN
        return self.dash.render(
            request,
            "results.html",
            session,
            **self._common(queue, session),
            settings={
                "window": mgr.window,
                "exactly_once": mgr.exactly_once,
                "derive_keys": mgr.derive_keys,
                "ttl": _duration(queue.idempotency_ttl),
            },
            key=key,
            found=found,
            shown=shown,
            error=error,
        )

    @property
    def show_payloads(self) -> bool:
        """The dashboard's ``show_payloads`` (as its job pages apply it)."""
        return bool(self.dash.pages.show_payloads)

    # ------------------------------------------------------------------ access grants
    async def access(self, request: Request, session: Session) -> Response:
        """``GET /access``: every grant, paged (admins)."""
        acm = self.dash.access
        if acm is None:
            return self._missing(
                request,
                session,
                "this dashboard has no access control (create_dashboard(access="
                "AccessControlManager(...)), --access)",
            )
        if not session.may(ACCESS_ACTION):
            return refused(self.dash, request, session, ACCESS_ACTION, "access")
        params = request.query_params
        who = params.get("principal", "")[:600]
        limit = _number(params.get("limit", ""), PAGE, MAX_PAGE) or PAGE
        start, skip = _cursor(params.get("cursor", ""))
        grants: list[dict[str, Any]] = []
        next_link = None
        error = None
        try:
            grants, nxt = await _grants(acm, who, start, skip, limit)
        except (KitiumQueueError, RedisError) as exc:  # a bad principal, Redis away
            error = clip(str(exc), 500)
        else:
            if nxt is not None:
                query = {"principal": who, "limit": str(limit), "cursor": nxt}
                query = {k: v for k, v in query.items() if v}
                next_link = f"{self.dash.base(request)}/access?{urlencode(query)}"
        return self.dash.render(
            request,
            "access.html",
            session,
            access_page=True,
            grants=grants,
            principal=who,
            limit=limit,
            next_link=next_link,
            paged=bool(start or skip),
            error=error,
        )


def _cursor(text: str) -> tuple[int, int]:
    """``"<principal index>.<grants of it already shown>"``; (0, 0) if malformed."""
    first, _, second = text.partition(".")
    if not (first.isascii() and first.isdigit() and second.isascii() and second.isdigit()):
        return 0, 0
    if len(first) > 9 or len(second) > 9:
        return 0, 0
    return int(first), int(second)


async def _grants(
    acm: Any, who: str, start: int, skip: int, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of grants (as ``access list`` orders them: by principal, then
    pattern) from principal ``start`` on, its first ``skip`` grants already shown, and
    the cursor of the next page (None at the end). A principal listed whose grants
    cannot be read (its key damaged, every grant unparsable: logged by the store) is a
    row saying so."""
    from ..identity import check_principal

    store = acm.grants
    if who:
        principals = [check_principal(who, existing=True)]
    else:
        principals = await store.principals()
    rows: list[dict[str, Any]] = []
    index = start
    read = 0
    while index < len(principals) and read < MAX_GRANT_PRINCIPALS:
        p = principals[index]
        entries = await store.read(p)
        read += 1
        if not entries and not skip:
            rows.append({"principal": clip(p, _SHOWN), "damaged": True})
        for n, e in enumerate(entries[skip:], start=skip):
            if len(rows) >= limit:
                return rows, f"{index}.{n}"
            rows.append(_grant_row(e))
        skip = 0
        index += 1
        if len(rows) >= limit and index < len(principals):
            return rows, f"{index}.0"
    return rows, (f"{index}.0" if index < len(principals) else None)


def _grant_row(e: Any) -> dict[str, Any]:
    """One grant as ``access list`` shows it (``AccessEntry.to_dict``), clipped."""
    d = e.to_dict()
    return {
        "principal": clip(d["principal_id"], _SHOWN),
        "pattern": clip(d["queue_pattern"], _SHOWN),
        "role": d["role"] or "-",
        "permissions": ", ".join(d["permissions"]) or "-",
        "effective": ", ".join(d["effective"]),
        "by": clip(d["granted_by"] or "-", _SHOWN),
        "at": d["granted_at"],
        "lookalike": d["lookalike"],
        "damaged": False,
    }
