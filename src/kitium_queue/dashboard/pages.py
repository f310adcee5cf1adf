"""The dashboard's pages: each gathers what it shows through the queue's read API and
the features' managers, then renders its template (which escapes every value).

A feature's page is served only for a queue the feature is enabled on in this process
(``data.enabled``); its manager is the one the queue was enabled with
(``for_queue``/``of``), so nothing is declared twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from ..enums import JobStatus, QueueRole
from ..errors import ConfigurationError, DamagedKeyError, JobStateError, KitiumQueueError
from ..limits import clip
from ..presence import live_workers
from ..queries import JobPage
from .auth import Session
from .data import (
    MAX_PAGE,
    SCHEDULE_PAGE,
    Filter,
    enabled,
    overview_row,
    overview_rows,
    queue_row,
    render_value,
    schedule_page,
    search,
)
from .graph import layout
from .render import queue_segment
from .views import QueueViews

if TYPE_CHECKING:
    from .app import Dashboard

__all__ = ["STATES", "Pages"]

#: The state tabs of a queue page, in order.
STATES = ("waiting", "active", "delayed", "pending", "completed", "failed", "dlq")
#: States whose jobs get a "why?" link.
NOT_RUNNING = {"waiting", "delayed", "pending", "paused"}
_HIDDEN = "(hidden: this dashboard does not show payloads)"


def _q(value: str) -> str:
    return quote(value, safe="")


def _int_param(request: Request, key: str, default: int, most: int) -> int:
    raw = request.query_params.get(key, "")
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 15:
        return default
    return max(0, min(int(raw), most))


class Pages(QueueViews):
    """The GET handlers of one dashboard."""

    def __init__(self, dash: Dashboard, *, show_payloads: bool) -> None:
        super().__init__(dash)
        self.show_payloads = show_payloads

    # ------------------------------------------------------------------ helpers
    def _queue(self, request: Request) -> Any:
        return self.dash.queue(request.path_params["queue"])

    def _job_view(self, job: Any) -> dict[str, Any]:
        status = job.status.value
        return {
            "id": job.id,
            "name": job.name,
            "status": status,
            "attempts": job.attempts,
            "max_attempts": job.max_attempts,
            "created_at": job.created_at,
            "finished_at": job.finished_at,
            "delayed_until": job.delayed_until,
            "failed_reason": clip(job.failed_reason or "", 200),
            "why": status in NOT_RUNNING,
        }

    # ------------------------------------------------------------------ overview
    async def overview(self, request: Request, session: Session) -> Response:
        rows = await overview_rows(self.dash.queues.values(), session.principal, overview_row)
        return self.dash.render(request, "overview.html", session, rows=rows, live=True)

    async def api_stats(self, request: Request, session: Session) -> Response:
        rows = await overview_rows(self.dash.queues.values(), session.principal, overview_row)
        return JSONResponse({"queues": [r.to_dict() for r in rows]})

    async def api_explain(self, request: Request, session: Session) -> Response:
        queue = self._queue(request)
        if queue is None:
            return JSONResponse({"error": "no such queue"}, status_code=404)
        try:
            why = await queue.explain(request.path_params["job_id"][:1000])
        except ConfigurationError as exc:
            return JSONResponse({"error": clip(str(exc), 300)}, status_code=400)
        return JSONResponse(why.to_dict(), status_code=200 if why.status else 404)

    # ------------------------------------------------------------------ a queue
    async def queue(self, request: Request, session: Session) -> Response:
        queue = self._queue(request)
        if queue is None:
            return self._missing(request, session, "no such queue")
        params = request.query_params
        state = params.get("state", "waiting")
        if state not in STATES:
            state = "waiting"
        limit = _int_param(request, "limit", 50, MAX_PAGE) or 50
        job_id = params.get("id", "").strip()[:1000]
        found = None
        if job_id:
            try:
                found = await queue.get_job_status(job_id)
            except ConfigurationError:
                found = None
            if found is not None:
                url = f"{self.dash.base(request)}/q/{queue_segment(queue.name)}/jobs/{_q(job_id)}"
                return RedirectResponse(url, status_code=303)
        flt = Filter.of(params)
        # Hidden data is not searched (its matches would tell what it holds): a search by
        # a data field is refused with a note, not answered as if every job matched.
        data_search_off = not self.show_payloads and bool(flt.field or flt.value)
        if not self.show_payloads:
            flt = Filter(flt.name, flt.error)
        row = await queue_row(queue)
        page: JobPage | None = None
        found_search = None
        error = None
        try:
            if flt.empty:
                cursor = params.get("cursor") or None
                # The rows show no payload: the jobs are read without their data.
                page = await queue.list_jobs(
                    state,
                    limit=limit,
                    cursor=cursor[:2000] if cursor else None,
                    include_data=False,
                )
            else:
                offset = _int_param(request, "offset", 0, 2**40)
                found_search = await search(
                    queue, JobStatus(state), flt, offset=offset, limit=limit
                )
        except (ConfigurationError, DamagedKeyError) as exc:  # a key damaged by hand
            error = clip(str(exc), 300)
        jobs = page.jobs if page else found_search.jobs if found_search else []
        return self.dash.render(
            request,
            "queue.html",
            session,
            **self._common(queue, session),
            row=row,
            state=state,
            states=STATES,
            jobs=[self._job_view(j) for j in jobs],
            next_cursor=page.next_cursor if page else None,
            search=found_search,
            flt=flt,
            limit=limit,
            job_id=job_id,
            not_found=bool(job_id),
            error=error,
            data_search_off=data_search_off,
            show_payloads=self.show_payloads,
            live=True,
        )

    async def job(self, request: Request, session: Session) -> Response:
        queue = self._queue(request)
        if queue is None:
            return self._missing(request, session, "no such queue")
        job_id = request.path_params["job_id"][:1000]
        try:
            detail = await queue.get_job_detail(job_id)
        except ConfigurationError as exc:
            return self._missing(request, session, clip(str(exc), 300))
        if detail is None:
            return self._missing(
                request, session, f"no job {clip(job_id, 200)!r} in queue {queue.name!r}"
            )
        why = await queue.explain(job_id)
        logs = await queue.get_job_logs(job_id, -200, -1)
        shown = {
            k: (render_value(getattr(detail, k)) if self.show_payloads else _HIDDEN)
            for k in ("data", "result", "progress")
        }
        return self.dash.render(
            request,
            "job.html",
            session,
            **self._common(queue, session),
            job=detail,
            shown=shown,
            options=render_value(_shown_options(detail.options, session)),
            logs=logs,
            why=why,
        )

    # ------------------------------------------------------------------ feature pages
    async def schedules(self, request: Request, session: Session) -> Response:
        queue = self._queue(request)
        if queue is None:
            return self._missing(request, session, "no such queue")
        offset, error = _int_param(request, "offset", 0, 2**40), None
        try:
            items, total = await schedule_page(queue, offset)
        except DamagedKeyError as exc:  # the index overwritten by hand: said, not a 500
            items, total, error = [], 0, clip(str(exc), 300)
        return self.dash.render(
            request,
            "schedules.html",
            session,
            **self._common(queue, session),
            schedules=items,
            offset=offset,
            total=total,
            page=SCHEDULE_PAGE,
            error=error,
        )

    async def workflows(self, request: Request, session: Session) -> Response:
        queue = self._queue(request)
        if queue is None or not enabled(queue, "workflows"):
            return self._missing(request, session, "workflows are not enabled on this queue")
        from ..features.workflows import JobChainManager

        offset = _int_param(request, "offset", 0, 2**31)
        items = await JobChainManager.for_queue(queue).list_workflows(50, offset)
        return self.dash.render(
            request,
            "workflows.html",
            session,
            **self._common(queue, session),
            workflows=items,
            offset=offset,
        )

    async def workflow(self, request: Request, session: Session) -> Response:
        queue = self._queue(request)
        if queue is None or not enabled(queue, "workflows"):
            return self._missing(request, session, "workflows are not enabled on this queue")
        from ..features.workflows import JobChainManager

        try:
            status = await JobChainManager.for_queue(queue).get_workflow_status(
                request.path_params["wid"][:300]
            )
        except ConfigurationError as exc:
            return self._missing(request, session, clip(str(exc), 300))
        if status is None:
            return self._missing(request, session, "no such workflow (or its retention ended)")
        return self.dash.render(
            request,
            "workflow.html",
            session,
            **self._common(queue, session),
            wf=status,
            graph=layout(status.steps),
        )

    async def groups(self, request: Request, session: Session) -> Response:
        queue = self._queue(request)
        if queue is None or not enabled(queue, "groups"):
            return self._missing(request, session, "groups are not enabled on this queue")
        from ..features.groups import FIFOQueueManager

        mgr = FIFOQueueManager.for_queue(queue)
        cursor = request.query_params.get("cursor") or None
        error = None
        try:
            page = await mgr.list_groups(cursor[:600] if cursor else None, 50)
        except ConfigurationError as exc:  # a bad cursor: say so over the first page
            error = clip(str(exc), 300)
            page = await mgr.list_groups(None, 50)
        stats = []
        for g in page.groups:
            try:
                stats.append(await mgr.get_group_stats(g))
            except JobStateError as exc:  # a group key damaged by hand: said, others listed
                error = clip(str(exc), 300)
        return self.dash.render(
            request,
            "groups.html",
            session,
            **self._common(queue, session),
            groups=stats,
            error=error,
            next_cursor=page.cursor,
            total=await mgr.count_groups(),
        )

    async def breakers(self, request: Request, session: Session) -> Response:
        queue = self._queue(request)
        if queue is None or not enabled(queue, "breakers"):
            return self._missing(request, session, "circuit breakers are not enabled on this queue")
        from ..features.breakers import CircuitBreakerManager

        items = await CircuitBreakerManager.for_queue(queue).list_breakers()
        return self.dash.render(
            request, "breakers.html", session, **self._common(queue, session), breakers=items
        )

    async def webhooks(self, request: Request, session: Session) -> Response:
        queue = self._queue(request)
        if queue is None or not enabled(queue, "webhooks"):
            return self._missing(request, session, "webhooks are not enabled on this queue")
        from ..features.webhooks import WebhookManager

        mgr = WebhookManager.of(queue)
        if mgr is None:
            return self._missing(request, session, "no WebhookManager was made for this queue here")
        hooks = await mgr.list_webhooks()
        rows = []
        for h in hooks[:100]:
            try:
                recent = await mgr.get_delivery_history(h.id, limit=20)
            except KitiumQueueError:
                recent = []
            rows.append({"hook": h, "url": endpoint_url(h.url, session), "deliveries": recent})
        offset = _int_param(request, "offset", 0, 2**50)  # the DLQ, 50 a page
        dead = await mgr.list_dlq(50, offset=offset)
        return self.dash.render(
            request,
            "webhooks.html",
            session,
            **self._common(queue, session),
            hooks=rows,
            dead=dead,
            offset=offset,
            stats=await mgr.stats(),
        )

    async def workers(self, request: Request, session: Session) -> Response:
        queue = self._queue(request)
        if queue is None:
            return self._missing(request, session, "no such queue")
        return self.dash.render(
            request,
            "workers.html",
            session,
            **self._common(queue, session),
            workers=await live_workers(queue),
        )


def endpoint_url(url: str, session: Session) -> str:
    """A webhook URL as ``session`` may see it. An admin: without credentials or query
    (a token there is the receiver's password). Any other role: scheme, host and port
    only (``https://hooks.slack.com/…``), since for many receivers the path itself is
    the credential (``/services/T0/B0/<secret>``)."""
    if session.role is QueueRole.ADMIN:
        from ..redact import redact_url

        return redact_url(url)
    from ..features.webhooks.models import shown_url

    return shown_url(url)


def _shown_options(options: Any, session: Session) -> Any:
    """A job's options as its page shows them: its ``webhook_url`` as the webhooks page
    shows endpoints to the same reader (``endpoint_url``)."""
    url = options.get("webhook_url") if isinstance(options, dict) else None
    if not isinstance(url, str):
        return options
    return {**options, "webhook_url": endpoint_url(url, session)}
