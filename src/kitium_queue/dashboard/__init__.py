"""The web dashboard: see and act on queues from a browser (``create_dashboard``).

An ASGI application on Starlette, rendered on the server with Jinja2 (optional extra
``dashboard``: ``pip install "kitium-job-queue[dashboard]"``). Serve it with
``kitium-queue dashboard APP --token TOKEN:PRINCIPAL:ROLE`` or mount it in a Starlette
or FastAPI application. The security model (tokens, roles, CSRF, escaping, headers) is
in docs/dashboard.md; ``auth.py`` says what each role may do; ``audit.py`` is the
Audit page of a dashboard given an audit log (``create_dashboard(access=...)``).
"""

from __future__ import annotations

try:
    import jinja2  # noqa: F401
    import starlette  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the dashboard needs the optional extra 'dashboard': "
        'pip install "kitium-job-queue[dashboard]" (Starlette, Jinja2, uvicorn)'
    ) from exc

from .app import SECURITY_HEADERS, create_dashboard
from .auth import ACTIONS, AUDIT_ACTIONS, DashboardToken

__all__ = [
    "ACTIONS",
    "AUDIT_ACTIONS",
    "SECURITY_HEADERS",
    "DashboardToken",
    "create_dashboard",
]
