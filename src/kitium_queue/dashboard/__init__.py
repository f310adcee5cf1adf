"""The web dashboard: see and act on queues from a browser (``create_dashboard``).

An ASGI application on Starlette, rendered on the server with Jinja2 (optional extra
``dashboard``: ``pip install "kitium-job-queue[dashboard]"``, or
``pip install -e ".[dashboard]"`` in a clone). Serve it with
``kitium-queue dashboard APP --token TOKEN:PRINCIPAL:ROLE`` or mount it in a Starlette
or FastAPI application. The security model (tokens, roles, CSRF, escaping, headers) is
in docs/dashboard.md; ``auth.py`` says what each role may do; ``audit.py`` is the
Audit page of a dashboard given an audit log (``create_dashboard(access=...)``).
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from ..errors import install_hint

try:  # the packages are looked for here, imported with the app (``app.py``)
    for _extra in ("jinja2", "starlette"):
        if importlib.util.find_spec(_extra) is None:
            raise ModuleNotFoundError(f"No module named {_extra!r}", name=_extra)
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the dashboard needs the optional extra 'dashboard': "
        + install_hint("dashboard", "Starlette, Jinja2, uvicorn")
    ) from exc

from ..features import load_lazily
from .auth import ACTIONS, AUDIT_ACTIONS, DashboardToken

if TYPE_CHECKING:
    from .app import SECURITY_HEADERS, create_dashboard

#: Imported on first use: ``app.py`` loads Starlette and Jinja2 (the command line loads
#: it only to serve).
_LAZY = {"SECURITY_HEADERS": "app", "create_dashboard": "app"}

__all__ = [
    "ACTIONS",
    "AUDIT_ACTIONS",
    "SECURITY_HEADERS",
    "DashboardToken",
    "create_dashboard",
]


if not TYPE_CHECKING:  # a type checker sees the names above, and flags any other

    def __getattr__(name: str) -> Any:
        return load_lazily(__name__, __path__, _LAZY, name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
