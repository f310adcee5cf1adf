"""What a TLS setting that lets no connection open means, said in the library's words
(``connerrors.translate_error``, ``pools``): a TLS file named in ``redis=`` that does not
exist (``missing_tls_files``), a handshake refused by a certificate (``tls_failure``),
and whether a setting speaks TLS at all (``uses_tls``); ``TLSConfigurationError``."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import ConfigurationError, ConnectionUnavailableError

__all__ = [
    "PLAIN_TO_TLS_PORT", "TLS_FILE_OPTIONS", "TLSConfigurationError", "missing_tls_files",
    "no_tls_there", "tls_failure", "tls_files_missing", "uses_tls",
]  # fmt: skip

#: The options that name files the TLS handshake reads when a connection opens.
TLS_FILE_OPTIONS = ("ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile")


def missing_tls_files(options: Mapping[str, Any]) -> list[str]:
    """``option='path'`` for each TLS file option in ``options`` whose path does not
    exist (paths are not secrets). Never raises."""
    out = []
    try:
        for name in TLS_FILE_OPTIONS:
            path = options.get(name)
            if isinstance(path, str) and path and not os.path.exists(path):
                out.append(f"{name}={path[:300]!r}")
    except Exception:  # only to word a message
        return []
    return out


def tls_files_missing(missing: Sequence[str], detail: str = "") -> str:
    """What to say of TLS files (``missing_tls_files``) that do not exist; ``detail``:
    the error's own text, shown in brackets after them."""
    shown = f" ({detail})" if detail else ""
    return (
        f"the TLS file(s) named in redis= do not exist: {', '.join(missing)}{shown}; check "
        "the paths (they are read each time a connection opens). They are read before "
        "anything is sent, so no connection was opened: the server was not reached, and "
        "its own checks (the password, its certificate) come once the files are there"
    )


def uses_tls(options: Mapping[str, Any]) -> bool:
    """Whether connection ``options`` (a parsed URL's, a dict's) open TLS connections."""
    cls = options.get("connection_class")
    return options.get("ssl") is True or "SSL" in getattr(cls, "__name__", "")


#: What a connection without TLS that the server closed while it opened may mean.
PLAIN_TO_TLS_PORT = (
    "a port that expects TLS closes a plain-text connection at once: use rediss:// (with "
    "ssl_ca_certs) if it does; otherwise "
)
_NOT_AN_OUTAGE = "a TLS configuration problem, not an outage"
_CA_HOWTO = "?ssl_ca_certs=/path/ca.pem in the rediss:// URL, tls={'ca_certs': ...} in a dict"


def tls_failure(text: str) -> tuple[str, bool] | None:
    """What to check when a TLS handshake failed (``text``: redis-py's error quoting
    OpenSSL's, e.g. ``[SSL: CERTIFICATE_VERIFY_FAILED] ...``) and whether the setting
    is at fault rather than the server's availability; None when ``text`` is no TLS
    failure. Never quotes a secret (it reads ``text`` only to pick the advice)."""
    low = text.lower()
    if "certificate_verify_failed" in low or "certificate verify failed" in low:
        if "mismatch" in low:
            return (
                f"the server's certificate does not name the host given in redis= "
                f"({_NOT_AN_OUTAGE}): connect with a host name the certificate lists, or, "
                "trusting the CA alone, set ssl_check_hostname=false (in the rediss:// "
                "URL; tls={'check_hostname': False} in a dict)",
                True,
            )
        if "expired" in low:
            return (f"the server's certificate has expired ({_NOT_AN_OUTAGE}): renew it", True)
        return (
            f"the server's certificate is not signed by a CA this client trusts "
            f"({_NOT_AN_OUTAGE}): set ssl_ca_certs to the CA that signed it ({_CA_HOWTO}), "
            "or check the server's certificate if it changed",
            True,
        )
    if "certificate required" in low or "certificate_required" in low:
        return (
            f"the server requires a client certificate ({_NOT_AN_OUTAGE}): set "
            "ssl_certfile and ssl_keyfile (tls={'certfile': ..., 'keyfile': ...} in a dict)",
            True,
        )
    if "alert unknown ca" in low or "alert bad certificate" in low:
        return (
            f"the server does not accept the client certificate ({_NOT_AN_OUTAGE}): check "
            "ssl_certfile and ssl_keyfile against the CA the server trusts",
            True,
        )
    if "[ssl" in low or "ssl handshake" in low:
        return (
            "check that the port expects TLS (rediss:// for a TLS port, redis:// for a "
            "plain one) and the TLS settings in redis= (ssl_ca_certs; ssl_certfile and "
            "ssl_keyfile when the server asks for a client certificate)",
            False,
        )
    return None


class TLSConfigurationError(ConfigurationError, ConnectionUnavailableError):
    """No connection could be opened because of the TLS configuration: a TLS file named
    in ``redis=`` that does not exist, or a certificate the handshake refused (not
    signed by a trusted CA, for another host name, expired; a client certificate the
    server requires or refuses). A ``ConfigurationError`` (the setting, or the server's
    certificate, must change: trying again does not help) and a
    ``ConnectionUnavailableError`` (nothing reached Redis; ``kitium-queue health``
    reports it as unreachable, exit 3)."""


def no_tls_there(form: str) -> str:
    """What to add to "cannot reach" of a TLS setting (``form``: ``"+cluster"``,
    ``"+sentinel"``): that a port without TLS never answers the TLS handshake."""
    return (
        f"; and that those ports expect TLS: a port without TLS never answers the TLS "
        f"handshake of rediss{form}:// (use redis{form}:// there)"
    )
