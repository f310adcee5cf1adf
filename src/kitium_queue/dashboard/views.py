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

if TYPE_CHECKING:
    from .app import Dashboard
    from .auth import Session

__all__ = ["feature_routes"]

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
