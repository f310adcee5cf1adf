"""More feature pages of the dashboard, each in its own module: a module gives
``routes(dash, page)`` (its ``Route`` list, every handler wrapped in ``page`` so the
sign-in, roles and audit of every other page apply) and registers its pages in
``data.FEATURE_PAGES`` (the queue tabs), with a predicate where the feature has no job
option of its own. ``app.py`` serves what ``feature_routes`` collects here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .auth import ACTIONS, needs
from .data import feature_pages

if TYPE_CHECKING:
    from .app import Dashboard
    from .auth import Session

__all__ = ["QueueViews", "feature_routes", "not_found", "queue_context", "refused"]

#: Wraps a GET handler of a page (``app.py``'s guard).
PageWrap = Callable[[Callable[[Request, "Session"], Awaitable[Response]]], Any]

#: The modules of this package that serve more feature pages.
VIEW_MODULES: tuple[str, ...] = (
    "views_parking",
    "views_tenancy",
    "views_server",
    "views_governance",
)


def feature_routes(dash: Dashboard, page: PageWrap) -> list[Route]:
    """The routes of every module in ``VIEW_MODULES``, in order."""
    import importlib

    routes: list[Route] = []
    for name in VIEW_MODULES:
        module = importlib.import_module(f"{__package__}.{name}")
        routes += module.routes(dash, page)
    return routes


# -------------------------------------------------------------- what every page shares
class QueueViews:
    """The base of a page module's handlers: the dashboard, and its queue context and
    404 page as methods."""

    def __init__(self, dash: Dashboard) -> None:
        self.dash = dash

    def _common(self, queue: Any, session: Session) -> dict[str, Any]:
        return queue_context(queue, session)

    def _missing(self, request: Request, session: Session, what: str) -> Response:
        return not_found(self.dash, request, session, what)


def queue_context(queue: Any, session: Session) -> dict[str, Any]:
    """The template values of a queue's page: its name, its tabs, what the role may do."""
    return {
        "queue": queue.name,
        "features": feature_pages(queue),
        "can": {a: session.may(a) for a in ACTIONS},
    }


def not_found(dash: Dashboard, request: Request, session: Session, what: str) -> Response:
    """The 404 page saying ``what`` is missing."""
    return dash.render(request, "error.html", session, status=404, error=what)


def refused(
    dash: Dashboard, request: Request, session: Session, action: str, resource: str
) -> Response:
    """The 403 page for an action the session's role does not allow (recorded with
    ``note_refusal``)."""
    dash.note_refusal(session, action, resource)
    return dash.render(
        request,
        "error.html",
        session,
        status=403,
        heading="Refused",
        error=(
            f"{session.principal} ({session.role.value}) may not {action}: it needs the "
            f"{needs(action).value} role"
        ),
    )
