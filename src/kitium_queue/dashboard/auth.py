"""Who may use the dashboard and what each may do: tokens, roles, sessions, CSRF.

* **Tokens** name a principal and a role (``DashboardToken``). A person signs in with
  a token once; the dashboard then keeps a session in a signed cookie (HMAC-SHA256 with
  the dashboard's secret; ``HttpOnly``, ``SameSite=Strict``). The cookie carries no
  token, only a fingerprint of it, so a token removed from the configuration ends its
  sessions at once. GET requests also take ``Authorization: Bearer <token>``: without a
  CSRF token such a request can read, never act.
* **Roles** (``QueueRole``): a viewer reads; an operator also retries, removes and
  promotes jobs; a manager also pauses and resumes queues and groups, replays dead
  letters, changes schedules and breakers, rebuilds damaged parked sets and erases a
  data subject's jobs; an admin may do everything (``ACTIONS``). With an audit log
  (``create_dashboard(access=...)``) managers and admins read it, and admins verify its
  chain (``AUDIT_ACTIONS``).
* **CSRF**: every POST carries the session's CSRF token (an HMAC of the session's
  random nonce); a missing or wrong one is refused with 403 before anything runs.

The dashboard refuses to start without tokens unless it is explicitly told to serve
local clients only (``insecure_local``): then every loopback client is the principal
``local`` with the admin role, and anything else is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..enums import QueueRole
from ..errors import ConfigurationError
from ..identity import check_principal

__all__ = [
    "ACTIONS",
    "AUDIT_ACTIONS",
    "LOCAL_PRINCIPAL",
    "MIN_TOKEN_LENGTH",
    "Auth",
    "DashboardToken",
    "Session",
    "may",
    "needs",
    "parse_tokens",
]

#: Shortest token accepted (a token is a password: long and random).
MIN_TOKEN_LENGTH = 16
#: Longest token accepted.
MAX_TOKEN_LENGTH = 512
#: The principal of every client of an ``insecure_local`` dashboard.
LOCAL_PRINCIPAL = "local"
#: How long a session lasts (s).
SESSION_S = 12 * 3600
#: Most signed-out sessions one process remembers (until each would have expired).
MAX_ENDED = 100_000

_RANK = {QueueRole.VIEWER: 0, QueueRole.OPERATOR: 1, QueueRole.MANAGER: 2, QueueRole.ADMIN: 3}

#: The least role each action needs.
ACTIONS: Mapping[str, QueueRole] = {
    "retry": QueueRole.OPERATOR,
    "remove": QueueRole.OPERATOR,
    "promote": QueueRole.OPERATOR,
    "cancel": QueueRole.OPERATOR,
    "bulk-retry": QueueRole.OPERATOR,
    "bulk-remove": QueueRole.OPERATOR,
    "retry-delivery": QueueRole.OPERATOR,
    "pause": QueueRole.MANAGER,
    "resume": QueueRole.MANAGER,
    "pause-group": QueueRole.MANAGER,
    "resume-group": QueueRole.MANAGER,
    "replay-dlq": QueueRole.MANAGER,
    "pause-schedule": QueueRole.MANAGER,
    "resume-schedule": QueueRole.MANAGER,
    "remove-schedule": QueueRole.MANAGER,
    "reset-breaker": QueueRole.MANAGER,
    "open-breaker": QueueRole.MANAGER,
    "replay-webhooks": QueueRole.MANAGER,
    "rebuild-parked": QueueRole.MANAGER,
    "find-orphans": QueueRole.MANAGER,
    "erase-subject": QueueRole.MANAGER,
    "drain": QueueRole.ADMIN,
}


#: The least role of the audit page (``create_dashboard(access=...)``): managers and
#: admins read the deployment's audit log; only admins run the chain's verification.
AUDIT_ACTIONS: Mapping[str, QueueRole] = {
    "view-audit": QueueRole.MANAGER,
    "verify-audit": QueueRole.ADMIN,
}


def needs(action: str) -> QueueRole:
    """The least role ``action`` needs (an unknown action: admin)."""
    return ACTIONS.get(action) or AUDIT_ACTIONS.get(action) or QueueRole.ADMIN


def may(role: QueueRole, action: str) -> bool:
    """Whether ``role`` may run ``action`` (an unknown action: only an admin)."""
    return _RANK[role] >= _RANK[needs(action)]


@dataclass(frozen=True, slots=True)
class DashboardToken:
    """A secret that signs a principal in with a role.

    Args:
        token: the secret (at least ``MIN_TOKEN_LENGTH`` printable characters).
        principal: who uses it (recorded with every action, e.g. ``"alice@acme.com"``).
        role: a ``QueueRole`` or its value (``"viewer"``, ``"operator"``, ...).
    """

    token: str
    principal: str
    role: QueueRole | str = QueueRole.VIEWER

    def __post_init__(self) -> None:
        t = self.token
        if not isinstance(t, str) or not MIN_TOKEN_LENGTH <= len(t) <= MAX_TOKEN_LENGTH:
            raise ConfigurationError(
                f"a dashboard token must be a string of {MIN_TOKEN_LENGTH} to "
                f"{MAX_TOKEN_LENGTH} characters (use a long random one, e.g. "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        if not t.isprintable() or any(c.isspace() for c in t):
            raise ConfigurationError("a dashboard token must be printable text without spaces")
        check_principal(self.principal)
        try:
            role = QueueRole(self.role)
        except ValueError:
            raise ConfigurationError(
                f"unknown dashboard role {self.role!r}; use one of {[r.value for r in QueueRole]}"
            ) from None
        object.__setattr__(self, "role", role)

    @property
    def fingerprint(self) -> str:
        """What a session cookie carries instead of the token."""
        return hashlib.sha256(b"kq-dashboard\0" + self.token.encode()).hexdigest()[:32]

    def __repr__(self) -> str:  # never the token
        return f"DashboardToken(principal={self.principal!r}, role={str(self.role)!r})"


def parse_tokens(tokens: Any) -> list[DashboardToken]:
    """Tokens from what ``create_dashboard(tokens=...)`` accepts: ``DashboardToken``
    objects, ``"token:principal:role"`` strings, or a mapping ``token -> (principal,
    role)``. Duplicate tokens are refused."""
    out: list[DashboardToken] = []
    items: Iterable[Any]
    if tokens is None:
        return out
    if isinstance(tokens, Mapping):
        items = [DashboardToken(t, *v) for t, v in tokens.items()]
    elif isinstance(tokens, (str, DashboardToken)):
        items = [tokens]
    else:
        items = tokens
    for item in items:
        if isinstance(item, DashboardToken):
            out.append(item)
        elif isinstance(item, str):
            token, sep, rest = item.partition(":")
            principal, sep2, role = rest.rpartition(":")
            if not sep or not sep2:
                raise ConfigurationError(
                    "a dashboard token is given as TOKEN:PRINCIPAL:ROLE "
                    "(e.g. s3cr3t...:alice@acme.com:operator)"
                )
            out.append(DashboardToken(token, principal, role))
        else:
            raise ConfigurationError(
                f"dashboard tokens are DashboardToken objects or 'TOKEN:PRINCIPAL:ROLE' "
                f"strings, got {type(item).__name__}"
            )
    if len({t.fingerprint for t in out}) != len(out):
        raise ConfigurationError("the same dashboard token is given twice")
    return out


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in principal: who, with which role, and the session's CSRF token."""

    principal: str
    role: QueueRole
    csrf: str
    cookie: str | None = None  # a new cookie value to set (fresh session), else None

    def may(self, action: str) -> bool:
        """Whether this session's role allows ``action``."""
        return may(self.role, action)


def is_loopback(host: str | None) -> bool:
    """Whether a client address is on this machine."""
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host in ("localhost", "testclient")


def is_loopback_authority(authority: str | None) -> bool:
    """Whether a request's ``Host`` header names this machine: ``localhost`` (or a name
    under ``.localhost``) or a loopback address, with or without a port. A page of
    another site whose name was made to resolve to 127.0.0.1 (DNS rebinding) reaches a
    loopback listener with its own name here."""
    if not authority or len(authority) > 300:
        return False
    host, port = authority.strip().lower(), ""
    if host.startswith("["):  # [::1]:8080; nothing else after the bracket
        end = host.find("]")
        host, rest = (host[1:end], host[end + 1 :]) if end > 0 else ("", "")
        if rest and not rest.startswith(":"):
            return False
        port = rest[1:]
    elif host.count(":") == 1:
        host, _, port = host.partition(":")
    if port and not (port.isascii() and port.isdigit()):
        return False
    host = host.rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_bearer(header: str | None) -> bool:
    """Whether an ``Authorization`` header offers a bearer token (the scheme's name is
    case-insensitive, RFC 9110). Any other scheme (``Basic``: the credentials of a
    reverse proxy's own sign-in, which a browser sends along) is not the dashboard's."""
    if not header:
        return False
    scheme, sep, _ = header.strip().partition(" ")
    return bool(sep) and scheme.lower() == "bearer"


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


class Auth:
    """Token checks, sessions and CSRF tokens of one dashboard."""

    def __init__(
        self, tokens: list[DashboardToken], *, secret: bytes | None, insecure_local: bool
    ) -> None:
        if not tokens and not insecure_local:
            raise ConfigurationError(
                "the dashboard needs tokens (tokens=[DashboardToken(token, principal, "
                "role)] or --token TOKEN:PRINCIPAL:ROLE); to serve this machine only "
                "without them, pass insecure_local=True (--insecure-local)"
            )
        if secret is not None and (not isinstance(secret, bytes) or len(secret) < 16):
            raise ConfigurationError("the dashboard secret must be at least 16 bytes")
        self.tokens = {t.fingerprint: t for t in tokens}
        self.insecure_local = insecure_local and not tokens
        self.secret = secret or secrets.token_bytes(32)
        # Sessions signed out in this process (nonce -> expiry), until they expire.
        self._ended: dict[str, int] = {}

    # ------------------------------------------------------------------ tokens
    def by_token(self, token: str) -> DashboardToken | None:
        """The configured token equal to ``token`` (constant-time compare), or None."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
            return None
        found = None
        for t in self.tokens.values():
            if hmac.compare_digest(t.token.encode(), token.encode("utf-8", "replace")):
                found = t
        return found

    # ------------------------------------------------------------------ sessions
    def _sign(self, payload: str) -> str:
        mac = hmac.new(self.secret, payload.encode(), hashlib.sha256).digest()
        return _b64(mac)

    def csrf_of(self, nonce: str) -> str:
        """The CSRF token of the session with ``nonce``."""
        return self._sign("csrf:" + nonce)[:32]

    def new_session(self, fingerprint: str, principal: str, role: QueueRole) -> Session:
        """A fresh session (a new nonce, hence a new CSRF token) and its cookie."""
        nonce = secrets.token_urlsafe(16)
        expires = int(time.time()) + SESSION_S
        payload = f"{fingerprint}.{expires}.{nonce}"
        cookie = f"{payload}.{self._sign(payload)}"
        return Session(principal, role, self.csrf_of(nonce), cookie)

    def login(self, token: str) -> Session | None:
        """A new session for ``token``, or None when it is not a configured token."""
        t = self.by_token(token)
        if t is None:
            return None
        return self.new_session(t.fingerprint, t.principal, QueueRole(t.role))

    def session(self, cookie: str | None, client_host: str | None) -> Session | None:
        """The session a request's cookie names (checked: signature, expiry, token
        still configured), or None. An ``insecure_local`` dashboard gives loopback
        clients without a session a new one."""
        if self.insecure_local and not is_loopback(client_host):
            return None
        got = self._verify(cookie)
        if got is not None:
            return got
        if self.insecure_local:
            return self.new_session("local", LOCAL_PRINCIPAL, QueueRole.ADMIN)
        return None

    def _verify(self, cookie: str | None) -> Session | None:
        if not cookie or len(cookie) > 300:
            return None
        parts = cookie.split(".")
        if len(parts) != 4:
            return None
        fp, expires, nonce, sig = parts
        payload = f"{fp}.{expires}.{nonce}"
        if not hmac.compare_digest(sig.encode(), self._sign(payload).encode()):
            return None
        if not expires.isdigit() or int(expires) < time.time():
            return None
        if nonce in self._ended:
            return None  # signed out
        if self.insecure_local and fp == "local":
            return Session(LOCAL_PRINCIPAL, QueueRole.ADMIN, self.csrf_of(nonce))
        t = self.tokens.get(fp)
        if t is None:
            return None  # the token was removed: its sessions end
        return Session(t.principal, QueueRole(t.role), self.csrf_of(nonce))

    def end(self, cookie: str | None) -> tuple[str, int] | None:
        """Sign the session of ``cookie`` out: this process refuses it from now on
        (until it would have expired; at most ``MAX_ENDED`` remembered, oldest first
        forgotten). Returns the session's nonce and expiry (Unix seconds), or None
        when ``cookie`` is no valid session."""
        if self._verify(cookie) is None or cookie is None:
            return None
        _, expires, nonce, _ = cookie.split(".")
        now = time.time()
        self._ended = {n: e for n, e in self._ended.items() if e >= now}
        while len(self._ended) >= MAX_ENDED:
            del self._ended[next(iter(self._ended))]
        self._ended[nonce] = int(expires)
        return nonce, int(expires)

    @staticmethod
    def nonce_of(cookie: str) -> str:
        """The nonce of a cookie ``_verify`` accepted."""
        return cookie.split(".")[2]

    #: Whether an ``Authorization`` header offers a bearer token (``is_bearer``).
    offers_bearer = staticmethod(is_bearer)

    def bearer(self, header: str | None) -> Session | None:
        """A session for ``Authorization: Bearer <token>`` (read-only use: no CSRF
        token that a form could carry)."""
        if not is_bearer(header):
            return None
        assert header is not None
        t = self.by_token(header.strip()[len("Bearer ") :].strip())
        return None if t is None else Session(t.principal, QueueRole(t.role), "")

    def check_csrf(self, session: Session, given: Any) -> bool:
        """Whether ``given`` is the session's CSRF token."""
        if not session.csrf or not isinstance(given, str) or len(given) > 100:
            return False
        return hmac.compare_digest(session.csrf.encode(), given.encode("utf-8", "replace"))
