"""What every dashboard response shares: its security headers, and the Jinja2
environment its pages are rendered with (autoescaping; every printed value passes
``visible`` first; a value a form posts back is written with the ``exact`` filter)."""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, Template, select_autoescape
from markupsafe import Markup, escape
from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["SECURITY_HEADERS", "DashboardApp", "environment", "exact", "visible"]

#: Headers on every response.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
}


class SecurityHeaders:
    """ASGI middleware: ``SECURITY_HEADERS`` on every response of the dashboard."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.headers = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    *((k, v) for k, v in self.headers if k not in names),
                ]
            await send(message)

        await self.app(scope, receive, with_headers)


class DashboardApp(Starlette):
    """The dashboard's Starlette application: ``SecurityHeaders`` wraps the whole
    middleware stack, so the headers are on every response, Starlette's own 500 page
    included (middleware added the usual way runs inside the error handler)."""

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeaders(super().build_middleware_stack())


def _fmt_time(ms: Any) -> str:
    if not isinstance(ms, int) or ms <= 0:
        return "-"
    try:
        return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return str(ms)


#: Characters no page shows as they are: C0 controls but tab and line breaks, DEL, C1
#: controls, the bidirectional marks, embeddings, overrides and isolates (which could make
#: a job id or name read as another: U+202E turns the text after it around), and lone
#: surrogates (which UTF-8 cannot encode).
_UNSHOWN = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


#: What ``exact`` cannot write as it is: a lone surrogate (UTF-8 cannot encode it) and
#: NUL (HTML reads it as U+FFFD) get their escape as ``visible`` writes it.
_NOT_EXACT = re.compile("[\x00\ud800-\udfff]")
#: C1 controls: HTML reads ``&#x9b;`` as U+203A (the windows-1252 table), so ``exact``
#: writes them as they are, through a mark holding the code point and this process's
#: nonce (``visible`` would escape the character itself when a macro's output passes
#: it); ``_Template.render`` turns the marks back into the characters once the page is
#: whole. Text from elsewhere cannot forge a mark: it does not know the nonce.
_C1 = re.compile("[\x80-\x9f]")
_NONCE = secrets.token_hex(16)
#: Only C1 code points: even a mark with the nonce (were it ever to leak) cannot put
#: back '<' or any other character that means something in HTML.
_MARK = re.compile(f"\ufdd0([89][0-9a-f]){_NONCE}\ufdd1")


def exact(value: Any) -> Markup:
    """``value`` for an attribute a form posts back (a hidden field, a checkbox): the
    text itself, HTML-escaped, not ``visible``'s escapes, so a button acts on the id it
    was shown for even when that id holds a bidirectional mark or a control character
    (the escaped text would name another id). Those characters are written as numeric
    character references (``&#x202e;``; a carriage return too, which HTML would read as
    a line feed), C1 controls as they are (above). Shown text keeps passing ``visible``."""
    text = str(escape(_NOT_EXACT.sub(lambda m: ascii(m.group())[1:-1], str(value))))
    text = _C1.sub(lambda m: f"\ufdd0{ord(m.group()):02x}{_NONCE}\ufdd1", text)
    text = _UNSHOWN.sub(lambda m: f"&#x{ord(m.group()):x};", text)
    return Markup(text.replace("\r", "&#xd;"))


class _Template(Template):
    """A page template whose ``render`` puts back what ``exact`` marked."""

    def render(self, *args: Any, **kwargs: Any) -> str:
        html = super().render(*args, **kwargs)
        return _MARK.sub(lambda m: chr(int(m.group(1), 16)), html) if "\ufdd0" in html else html


def visible(value: Any) -> Any:
    """Every value a template prints, before HTML escaping: text with a control
    character or a lone surrogate gets it as an escape (``\\x1b``, ``\\udcff``), so
    an id or a query parameter cannot drive a terminal or break the page's encoding."""
    if isinstance(value, str) and _UNSHOWN.search(value):
        shown = _UNSHOWN.sub(lambda m: ascii(m.group())[1:-1], value)
        # Markup (already escaped) stays markup: the escapes are plain ASCII.
        return Markup(shown) if isinstance(value, Markup) else shown
    return value


#: What stands for ``/`` in a queue's URL segment (``/q/<segment>/...``). Queue names
#: may hold ``/`` (a global queue's ``<name>/<region>``) but never ``~``; a ``%2F`` would
#: be decoded before routing and split the path.
QUEUE_SLASH = "~"


def queue_segment(name: object) -> str:
    """The URL path segment of queue ``name`` (``/`` written as ``~``, then quoted)."""
    return quote(str(name).replace("/", QUEUE_SLASH), safe="")


def queue_name(segment: str) -> str:
    """The queue name a URL path segment stands for (``queue_segment`` reversed)."""
    return segment.replace(QUEUE_SLASH, "/")


def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("kitium_queue.dashboard", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=visible,
    )
    env.template_class = _Template
    env.filters["ts"] = _fmt_time
    env.filters["q"] = lambda v: quote(str(v), safe="")
    env.filters["qn"] = queue_segment
    env.filters["exact"] = exact
    return env
