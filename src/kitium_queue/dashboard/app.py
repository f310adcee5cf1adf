"""The dashboard as an ASGI application (Starlette): routes, sessions, security headers.

``create_dashboard(queues=[...], tokens=[...])`` returns the application; serve it
alone (``kitium-queue dashboard``, uvicorn) or mount it in an existing Starlette or
FastAPI app (``app.mount("/queues", create_dashboard(...))``): every link is built from
the mount path.

Every request but the sign-in page and the static files needs a session
(``auth.py``); every POST needs the session's CSRF token and, when the browser sends an
``Origin``, the dashboard's own. Every response carries a strict Content Security Policy
(scripts and styles only from the dashboard's own static files, no inline script),
``nosniff``, ``DENY`` framing, ``same-origin`` referrers (so browsers send
``Origin`` on the dashboard's own POSTs) and ``no-store``. Pages are rendered by
Jinja2 with autoescaping: every value, job data above all, is HTML-escaped. Each
request runs inside ``redacted_views()`` (protected payloads are shown redacted) and
``acting_as(<the session's principal>)``: on a queue protected by access control the
grants of the person signed in apply to every read and action, on top of their role,
and a refusal is a 403 page. With ``access=`` the dashboard records its actions and
refusals in the deployment's audit log and shows it (``audit.py``).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from redis.exceptions import NoPermissionError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from ..connerrors import permission_denied
from ..context import redacted_views
from ..errors import ConfigurationError, PermissionDeniedError
from ..identity import acting_as
from ..limits import clip
from .actions import run_action
from .audit import AuditPages, RoleRefusals, audit_of
from .auth import Auth, DashboardToken, Session, is_loopback_authority, needs, parse_tokens
from .data import outage_text
from .pages import Pages
from .render import SECURITY_HEADERS, DashboardApp, environment, queue_name
from .signouts import SignOuts
from .views import feature_routes

__all__ = ["SECURITY_HEADERS", "create_dashboard"]

SESSION_COOKIE = "kqd_session"

FLASH_COOKIE = "kqd_flash"
#: Largest POST body read (bytes).
MAX_BODY = 64 * 1024
#: Failed sign-ins per client and minute before further tries are refused.
MAX_FAILED_LOGINS = 20
_STATIC = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}


def _here(request: Request) -> str:
    # From the scope: ``request.url`` fails (a 500) on a query string that is not UTF-8,
    # which is kept here with such bytes percent-encoded.
    raw = request.scope.get("query_string", b"")
    query = quote(raw, safe="&=%+;,/?:@!$'()*~") if raw else ""
    # The path percent-encoded here (starlette's URL left "?" and "#" as they are: a queue
    # "a#b" lost "#b"), a job id with U+202E or \x9b too: `next` is the real address.
    path = str(request.scope.get("path") or "/")
    path = quote(path, safe="/:@!$&'()*+,;=~", errors="surrogatepass")
    return path + ("?" + query if query else "")


class Dashboard:
    """The application's state: queues, authentication, templates."""

    def __init__(
        self,
        queues: Mapping[str, Any],
        auth: Auth,
        *,
        refresh_ms: int,
        show_payloads: bool,
        title: str,
        access: Any = None,
    ) -> None:
        self.queues = dict(queues)
        self.auth = auth
        self.refresh_ms = refresh_ms
        self.title = title
        self.env = environment()
        self.pages = Pages(self, show_payloads=show_payloads)
        self.audit, self.access = audit_of(access)
        self.audit_pages = None if self.audit is None else AuditPages(self, self.audit)
        self.refusals = None if self.audit is None else RoleRefusals(self.audit, self.access)
        self._failed: dict[str, list[float]] = {}
        self.signouts = SignOuts(self.queues, auth)

    # ------------------------------------------------------------------ plumbing
    @staticmethod
    def base(request: Request) -> str:
        """The mount path of the dashboard ('' when served alone)."""
        return str(request.scope.get("root_path", "")).rstrip("/")

    async def session(self, request: Request) -> Session | None:
        """The request's session (cookie, or a bearer token for JSON reads). A wrong
        bearer token counts as a failed sign-in of the client's address (the same limit
        as the sign-in form's). A cookie signed out in any process serving this
        dashboard (recorded in Redis, see ``sign_out``) is no session."""
        host = request.client.host if request.client else None
        if self.auth.insecure_local and not is_loopback_authority(request.headers.get("host")):
            return None  # another site's name resolved to this machine (DNS rebinding)
        cookie = request.cookies.get(SESSION_COOKIE)
        got = self.auth.session(cookie, host)
        fresh = got is None or got.cookie is not None
        if cookie and not fresh and await self.signouts.ended(self.auth.nonce_of(cookie)):
            self.auth.end(cookie)  # remembered here too: no second look-up
            got = self.auth.session(cookie, host)
        header = request.headers.get("authorization")
        if got is None and self.auth.offers_bearer(header) and not self.auth.insecure_local:
            got = self.auth.bearer(header)
            if got is None:
                self.login_failed(host or "?")
        return got

    async def sign_out(self, cookie: str | None) -> None:
        """End the session of ``cookie`` here and in every process serving the same
        queues (``signouts.py``)."""
        await self.signouts.sign_out(cookie)

    def bearer_throttled(self, request: Request) -> bool:
        """Whether the request tries a bearer token (no other scheme: a proxy's Basic),
        without a session, from an address that failed to sign in too often in the last
        minute (refused before the token is checked)."""
        auth, host = self.auth, request.client.host if request.client else "?"
        if auth.insecure_local or not auth.offers_bearer(request.headers.get("authorization")):
            return False
        return (
            not self.login_allowed(host)
            and auth.session(request.cookies.get(SESSION_COOKIE), host) is None
        )

    def render(
        self,
        request: Request,
        template: str,
        session: Session | None,
        status: int = 200,
        **ctx: Any,
    ) -> Response:
        """Render ``template`` with the page's common context."""
        flash = self._flash(request)
        html = self.env.get_template(template).render(
            base=self.base(request),
            session=session,
            csrf=session.csrf if session else "",
            queues=list(self.queues),
            title=self.title,
            refresh_ms=self.refresh_ms,
            flash=flash,
            here=self.safe_next(request, _here(request)),
            audit_link=self.audit is not None and session is not None and session.may("view-audit"),
            access_link=self.access is not None
            and session is not None
            and session.may("view-access"),
            **ctx,
        )
        resp = HTMLResponse(html, status_code=status)
        if flash is not None:
            resp.delete_cookie(FLASH_COOKIE, path=self.base(request) or "/")
        return self.keep(request, session, resp)

    def keep(self, request: Request, session: Session | None, resp: Response) -> Response:
        """Set a new session's cookie on ``resp``."""
        if session is not None and session.cookie is not None:
            resp.set_cookie(
                SESSION_COOKIE,
                session.cookie,
                max_age=12 * 3600,
                path=self.base(request) or "/",
                httponly=True,
                samesite="strict",
                secure=request.scope.get("scheme") == "https",
            )
        return resp

    def _flash_sig(self, text: str) -> str:
        return hmac.new(self.auth.secret, b"flash:" + text.encode(), hashlib.sha256).hexdigest()[
            :32
        ]

    def set_flash(self, request: Request, resp: Response, ok: bool, text: str) -> None:
        """A one-time message shown by the next page (signed, so nobody else can plant
        one)."""
        value = ("1" if ok else "0") + clip(text, 500)
        quoted = quote(value, safe="")
        resp.set_cookie(
            FLASH_COOKIE,
            f"{self._flash_sig(value)}.{quoted}",
            max_age=60,
            path=self.base(request) or "/",
            httponly=True,
            samesite="strict",
            secure=request.scope.get("scheme") == "https",
        )

    def _flash(self, request: Request) -> tuple[bool, str] | None:
        raw = request.cookies.get(FLASH_COOKIE)
        if not raw or "." not in raw or len(raw) > 4000:
            return None
        sig, _, quoted = raw.partition(".")
        value = unquote(quoted)
        expected = self._flash_sig(value).encode()
        if not value or not hmac.compare_digest(sig.encode("utf-8", "replace"), expected):
            return None
        return value[0] == "1", value[1:]

    def queue(self, name: str) -> Any:
        """The configured queue ``name``, or None; ``name`` may be its URL segment
        (``render.queue_segment``: ``/`` written as ``~``)."""
        return self.queues.get(queue_name(name))

    @staticmethod
    def forbidden(text: str) -> Response:
        """A plain-text 403 (``PlainForbidden``)."""
        return PlainForbidden(text)

    def note_refusal(self, session: Session, action: str, resource: str) -> None:
        """Record that the session's role does not allow ``action`` on ``resource``
        (an ``access.denied`` entry with ``via: dashboard``, when the dashboard has an
        audit log)."""
        if self.refusals is not None:  # written within the bound (audit.RoleRefusals)
            role, least = session.role.value, needs(action).value
            meta = {"action": action, "role": role, "needs_role": least, "via": "dashboard"}
            self.refusals.note(session.principal, resource, meta)

    def safe_next(self, request: Request, target: str | None) -> str:
        """``target`` if it is a path inside the dashboard, else the overview."""
        base = self.base(request)
        home = base + "/"
        if not target or len(target) > 2000 or not target.startswith(home):
            return home
        try:
            parts = urlsplit(target)
        except ValueError:  # "//[x": not a URL at all
            return home
        if parts.scheme or parts.netloc or target.startswith("//") or "\\" in target:
            return home
        # A dot segment ("/dash/../admin", "%2e%2e" too) leads out of the dashboard.
        if any(seg in (".", "..") for seg in unquote(parts.path).split("/")):
            return home
        return target

    async def form(self, request: Request) -> dict[str, list[str]] | None:
        """The urlencoded body of a POST (None when too large or of another type)."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            return None
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return None
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return None
        try:
            return parse_qs(text, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
        except ValueError:  # more than MAX_FORM_FIELDS fields
            return None

    def same_origin(self, request: Request) -> bool:
        """False when the browser says the POST comes from another site."""
        origin = request.headers.get("origin")
        if origin is None:
            return True  # not a browser, or a browser that sent none: CSRF token decides
        try:
            netloc = urlsplit(origin).netloc
        except ValueError:  # "http://[::1": not a URL, so not this site
            return False
        return netloc == request.headers.get("host", "")

    def login_allowed(self, host: str) -> bool:
        now = time.monotonic()
        recent = [t for t in self._failed.get(host, []) if now - t < 60]
        self._failed[host] = recent
        if len(self._failed) > 10_000:  # bounded memory: forget everyone
            self._failed = {host: recent}
        return len(recent) < MAX_FAILED_LOGINS

    def login_failed(self, host: str) -> None:
        self._failed.setdefault(host, []).append(time.monotonic())


MAX_FORM_FIELDS = MAX_BODY // 4
TOO_MANY = "too many failed sign-ins from this address; wait a minute"
WRONG_CSRF = "missing or wrong CSRF token: reload the page and try again"
CROSS_SITE = (
    "cross-site request refused: the browser says this form comes from another site "
    "(Origin header); use the dashboard's own pages"
)


def _guard(
    dash: Dashboard, handler: Callable[[Request, Session], Awaitable[Response]], *, api: bool
) -> Callable[[Request], Awaitable[Response]]:
    """A route that needs a session: signs the request in (or sends it to the sign-in
    page / answers 401) and runs it inside ``redacted_views()`` and
    ``acting_as(<the session's principal>)``; a read or action a guard refuses
    (access control's grants) is a 403 page, or JSON for the API."""

    async def route(request: Request) -> Response:
        if dash.bearer_throttled(request):
            return JSONResponse({"error": TOO_MANY}, status_code=429)
        session = await dash.session(request)
        if session is None:
            if dash.auth.insecure_local:
                return PlainForbidden("this dashboard serves this machine only")
            if api:
                return JSONResponse({"error": "sign in first"}, status_code=401)
            nxt = quote(_here(request))
            return RedirectResponse(f"{dash.base(request)}/login?next={nxt}", status_code=303)
        try:
            with redacted_views(), acting_as(session.principal):
                resp = await handler(request, session)
        except (PermissionDeniedError, NoPermissionError) as exc:
            # NoPermissionError: a plain read the Redis user's ACL refused.
            if isinstance(exc, NoPermissionError):
                exc = permission_denied(str(exc))
            text = f"refused: {clip(str(exc), 500)}"
            if api:
                resp = JSONResponse({"error": text}, status_code=403)
            else:
                resp = dash.render(
                    request, "error.html", session, status=403, heading="Refused", error=text
                )
        except Exception as exc:  # Redis unreachable: a 503 saying so, not a bare 500
            if (down := outage_text(exc, dash.queues.values())) is None:
                raise
            resp = (
                JSONResponse({"error": down}, status_code=503)
                if api
                else dash.render(request, "error.html", session, status=503, error=down)
            )
        if dash.refusals is not None:  # the refusals noted by this request, audited first
            await dash.refusals.settle()
        return dash.keep(request, session, resp)

    return route


def PlainForbidden(text: str) -> Response:
    """A plain-text 403."""
    return Response(text, status_code=403, media_type="text/plain")


def _routes(dash: Dashboard) -> list[Route]:
    pages = dash.pages

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC:
            return Response("not found", status_code=404, media_type="text/plain")
        from importlib import resources

        body = (
            resources.files("kitium_queue.dashboard").joinpath("static").joinpath(name).read_bytes()
        )
        return Response(body, media_type=_STATIC[name], headers={"cache-control": "no-cache"})

    async def login_page(request: Request) -> Response:
        nxt = dash.safe_next(request, request.query_params.get("next"))
        return dash.render(request, "login.html", None, next=nxt, error=None)

    async def login(request: Request) -> Response:
        host = request.client.host if request.client else "?"
        if not dash.same_origin(request):
            return PlainForbidden(CROSS_SITE)
        if not dash.login_allowed(host):
            return Response(TOO_MANY, status_code=429)
        form = await dash.form(request) or {}
        token = (form.get("token") or [""])[0]
        nxt = dash.safe_next(request, (form.get("next") or [""])[0])
        session = dash.auth.login(token)
        if session is None:
            dash.login_failed(host)
            return dash.render(
                request, "login.html", None, status=401, next=nxt, error="unknown token"
            )
        return dash.keep(request, session, RedirectResponse(nxt, status_code=303))

    async def logout(request: Request, session: Session) -> Response:
        if not dash.same_origin(request):
            return PlainForbidden(CROSS_SITE)
        form = await dash.form(request) or {}
        if not dash.auth.check_csrf(session, (form.get("csrf") or [""])[0]):
            return PlainForbidden(WRONG_CSRF)
        await dash.sign_out(request.cookies.get(SESSION_COOKIE))
        resp = RedirectResponse(f"{dash.base(request)}/login", status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path=dash.base(request) or "/")
        return resp

    async def action(request: Request, session: Session) -> Response:
        queue = dash.queue(request.path_params["queue"])
        if queue is None:
            return dash.render(request, "error.html", session, status=404, error="no such queue")
        name = queue.name
        form = await dash.form(request)
        if form is None:
            return PlainForbidden("the form is missing, too large or not urlencoded")
        if not dash.same_origin(request):
            return PlainForbidden(CROSS_SITE)
        if not dash.auth.check_csrf(session, (form.get("csrf") or [""])[0]):
            return PlainForbidden(WRONG_CSRF)
        act = request.path_params["action"]
        back = dash.safe_next(request, (form.get("next") or [""])[0])
        outcome = await run_action(
            queue, act, form, session, show_payloads=dash.pages.show_payloads
        )
        if outcome.refused_role:
            dash.note_refusal(session, act, name)
        if outcome.confirm:
            fields = [(k, v) for k, vs in form.items() if k not in ("csrf", "confirm") for v in vs]
            return dash.render(
                request,
                "confirm.html",
                session,
                queue=name,
                action=act,
                outcome=outcome,
                fields=fields[:1000],
                back=back,
            )
        if outcome.status != 200:
            return dash.render(
                request,
                "error.html",
                session,
                status=outcome.status,
                heading="Refused" if outcome.status == 403 else None,
                error=outcome.message,
                back=back,
            )
        resp = RedirectResponse(back, status_code=303)
        dash.set_flash(request, resp, outcome.ok, outcome.message)
        return resp

    def page(fn: Callable[[Request, Session], Awaitable[Response]], *, api: bool = False) -> Any:
        return _guard(dash, fn, api=api)

    async def no_audit(request: Request, session: Session) -> Response:
        return dash.render(
            request,
            "error.html",
            session,
            status=404,
            error="this dashboard has no audit log (create_dashboard(access=...), --access)",
        )

    audit = dash.audit_pages

    return [
        Route("/static/{name}", static, methods=["GET"]),
        Route("/favicon.ico", lambda request: Response(status_code=204), methods=["GET"]),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", page(logout), methods=["POST"]),
        Route("/", page(pages.overview), methods=["GET"]),
        Route("/api/stats", page(pages.api_stats, api=True), methods=["GET"]),
        Route(
            "/api/q/{queue}/explain/{job_id:path}",
            page(pages.api_explain, api=True),
            methods=["GET"],
        ),
        Route("/q/{queue}", page(pages.queue), methods=["GET"]),
        Route("/q/{queue}/jobs/{job_id:path}", page(pages.job), methods=["GET"]),
        Route("/q/{queue}/schedules", page(pages.schedules), methods=["GET"]),
        Route("/q/{queue}/workflows", page(pages.workflows), methods=["GET"]),
        Route("/q/{queue}/workflows/{wid:path}", page(pages.workflow), methods=["GET"]),
        Route("/q/{queue}/groups", page(pages.groups), methods=["GET"]),
        Route("/q/{queue}/breakers", page(pages.breakers), methods=["GET"]),
        Route("/q/{queue}/webhooks", page(pages.webhooks), methods=["GET"]),
        Route("/q/{queue}/workers", page(pages.workers), methods=["GET"]),
        *feature_routes(dash, page),
        Route("/q/{queue}/action/{action}", page(action), methods=["POST"]),
        Route("/audit", page(audit.page if audit else no_audit), methods=["GET"]),
        Route("/audit/verify", page(audit.verify if audit else no_audit), methods=["POST"]),
    ]


def _queues(queues: Any) -> dict[str, Any]:
    from ..queue import JobQueue

    items: Iterable[Any]
    if isinstance(queues, JobQueue):
        items = [queues]
    elif isinstance(queues, Mapping):
        items = list(queues.values())
    else:
        items = list(queues)
    flat: list[tuple[Any, Any]] = []
    for q in items:
        members = getattr(q, "queues", None)
        if members and not isinstance(q, JobQueue):
            flat.extend((m, q) for m in members)
        else:
            flat.append((q, None))
    out: dict[str, Any] = {}
    for q, facade in flat:
        if not isinstance(q, JobQueue):
            raise ConfigurationError(
                f"the dashboard shows JobQueue objects (or façades with .queues), got "
                f"{type(q).__name__}"
            )
        if q.name in out and out[q.name] is not q:
            if facade is not None and hasattr(facade, "regions"):
                raise ConfigurationError(
                    f"{type(facade).__name__} has a copy of queue {q.name!r} in each region, "
                    "all under that name: give a dashboard the queues of one region "
                    "(manager.region(name).lane and .home), one dashboard per region"
                )
            raise ConfigurationError(f"two queues named {q.name!r}: give each queue once")
        out[q.name] = q
    if not out:
        raise ConfigurationError("the dashboard needs at least one queue (queues=[queue])")
    return out


def create_dashboard(
    *,
    queues: Any,
    tokens: Iterable[DashboardToken | str] | Mapping[str, Any] | None = None,
    insecure_local: bool = False,
    secret: bytes | None = None,
    refresh_ms: int = 2000,
    show_payloads: bool = True,
    title: str = "kitium-queue",
    access: Any = None,
) -> Starlette:
    """The dashboard of ``queues`` as an ASGI application.

    Args:
        queues: a ``JobQueue``, a list of them, or a mapping; a façade such as a
            ``PartitionedQueue`` stands for its member queues. Enable the queues'
            features (``FIFOQueueManager(queue)``, ...) in this process as in a worker:
            their pages and explanations show up for the queues they are enabled on.
        tokens: who may sign in: ``DashboardToken(token, principal, role)`` objects or
            ``"TOKEN:PRINCIPAL:ROLE"`` strings; roles are ``QueueRole`` values.
            Required, unless ``insecure_local``.
        insecure_local: serve without tokens, to clients on this machine only, each as
            the principal ``local`` with the admin role (development).
        secret: the key that signs session cookies (at least 16 bytes); default: a
            random one (sessions end when the process restarts). Give every process
            serving the same dashboard the same one.
        refresh_ms: how often open pages refresh counts and the throughput chart
            (0: never).
        show_payloads: False hides job data, results and progress everywhere (and the
            search by data field); encrypted payloads are always shown redacted.
        title: shown in the page header.
        access: an ``AccessControlManager`` (or just an ``AuditLog``): the dashboard
            records every action it runs and every refusal in that audit log (it
            watches each of its queues), and managers and admins get the Audit page
            (filters, paging, and for admins "verify chain"). Queues the manager
            protects (``acm.protect(queue)``) apply the grants of whoever is signed in
            to every read and action, on top of the dashboard role; a refusal is a 403
            page, audited. Without the audit key (an ``AuditLog`` opened without
            ``key=``) the page can read but records and verifies nothing.

    Example::

        from starlette.applications import Starlette
        from starlette.routing import Mount

        app = Starlette(routes=[Mount("/queues", create_dashboard(
            queues=[queue], tokens=["<32 random chars>:alice@acme.com:operator"]))])
    """
    if (
        not isinstance(refresh_ms, int)
        or isinstance(refresh_ms, bool)
        or not (refresh_ms == 0 or 250 <= refresh_ms <= 3_600_000)
    ):
        raise ConfigurationError("refresh_ms must be 0 (off) or from 250 to 3600000")
    auth = Auth(parse_tokens(tokens), secret=secret, insecure_local=bool(insecure_local))
    dash = Dashboard(
        _queues(queues),
        auth,
        refresh_ms=refresh_ms,
        show_payloads=bool(show_payloads),
        title=clip(str(title), 80),
        access=access,
    )
    for q in dash.queues.values():
        q.schedules  # noqa: B018 - enables the schedules' explainer on the queue
        if dash.audit is not None and dash.audit.keys is not None:
            dash.audit.watch(q)  # every action of the dashboard is recorded
    app = DashboardApp(routes=_routes(dash))
    app.state.dashboard = dash
    return app
