"""Redaction of credentials in URLs, connection settings and error messages, and of
payload fields in JSON text.

One function, ``redact_url``, that fails closed: every message and printed URL of the
library goes through it (``ConnectionFactory.redact`` adds the passwords a connection
setting was given). ``redact_json_text`` puts a JSON text (a log line, a progress value
from the event stream) through the payload redactors, failing closed too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote

import orjson
from redis.asyncio.cluster import RedisCluster

from .errors import ConfigurationError

__all__ = [
    "REDACTED",
    "REDACTED_PLACEHOLDER",
    "check_delimited",
    "client_secrets",
    "mapping_secrets",
    "misplaced_secrets",
    "redact_json_text",
    "redact_url",
    "url_secrets",
]


#: What a redacted part of a URL or message is replaced with.
REDACTED = "***"
#: What ``redact_url`` returns when it cannot process its input at all.
REDACTED_PLACEHOLDER = "<redacted>"
# Option names whose values are secrets, in dicts and in URL query strings.
_SECRET_NAME = re.compile(r"pass(?:word|wd)?|pwd|secret|token|credential|auth", re.IGNORECASE)
# ``password=...`` / ``'sentinel_password': '...'`` / ``token: ...`` in free text: a
# word naming a secret, then what assigns it a value, then the value. Applied word by
# word (``_mask_params``), which keeps it linear on any input.
_SECRET_WORD = re.compile(r"pass(?:word|wd)?|pwd|secret|token|credential", re.IGNORECASE)
_WORD = re.compile(r"\w+")
_WORD_EDGE = re.compile(r"\w")
# A known secret this long is masked even inside a word (``_mask_whole``).
_MASKED_ANYWHERE = 8
_ASSIGNED = re.compile(r"(['\"]?\s*[=:]\s*)(?:'[^']*'?|\"[^\"]*\"?|[^&\s,;}'\"]*)")
# The hosts part of a URL in a text (once credentials are masked, it holds no ``@``).
_AUTHORITY = re.compile(
    r"(://(?:" + re.escape(REDACTED) + r"@)?)([^\s'\"<>/?#@]*)(?=[\s'\"<>/?#]|$)"
)
# Where Redis says a script or function raised ("... on @user_script:163."): an ``@``
# that delimits no credentials, read without it.
_SCRIPT_AT = re.compile(r"\bon @(user_script|user_function):(\d+)")
# A text that *is* a URL (as opposed to a message that mentions one).
_WHOLE_URL = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.\-]*://")
# The query string or fragment of a URL inside a message: up to the next space or quote.
_QUERY_IN_TEXT = re.compile(r"(://[^\s'\"<>?#]*)([?#][^\s'\"<>]*)")


def redact_url(value: object, secrets: Iterable[str] = ()) -> str:
    """``value`` (a URL, a message mentioning URLs, or a dict of connection options) with
    every credential removed, for messages, ``describe()`` and health output.

    It fails closed: anything that may be a credential goes, even if that also hides
    harmless text.

    * Credentials: whatever lies between the first ``://`` and the *last* ``@`` is
      replaced, so a password with unencoded ``/ ? # @ :`` or spaces, a user name, the
      hosts of a multi-host URL and any scheme spelling (``Redis://``, ``REDISS://``,
      ``redis+sentinel://``) are all covered. An ``@`` with no ``://`` before it (a URL
      without a scheme, a host written as ``user:pw@host``) hides everything before it.
    * Query strings and fragments (``?password=``, ``?sentinel_password=``) are dropped:
      to the end of the text when the text is a URL, to the next space or quote when a
      message mentions one; ``password=...``-like pairs are masked anywhere in the text.
      Only a database number given as ``?db=N`` stays (``unix://`` URLs have no other
      place for it), as ``?db=N`` alone.
    * ``secrets``: exact strings (passwords a caller knows of) masked wherever they occur
      whole, also inside texts that do not look like URLs (a parser's error message
      quoting a fragment of a malformed URL). One shorter than 8 characters only where
      it is not part of a longer word: a user name or password ``on`` is masked in
      ``'on'`` or ``:on@``, never inside ``connection``.
    * A mapping has the values of secret-looking keys masked and its ``url`` redacted.
    * Anything that cannot be processed (an object whose ``str()`` fails, an internal
      error) gives ``"<redacted>"``, never the input.
    """
    try:
        text = _as_text(value)
        known = {s for s in secrets if isinstance(s, str) and s}
        for secret in sorted(known, key=len, reverse=True):  # longest first: no remnants
            text = _mask_whole(text, secret)
        text = _SCRIPT_AT.sub(r"on \1:\2", text)
        last_at = text.rfind("@")
        if last_at >= 0:
            scheme_end = text.find("://")
            start = scheme_end + 3 if 0 <= scheme_end < text.find("@") else 0
            text = text[:start] + REDACTED + text[last_at:]
        text = _AUTHORITY.sub(lambda m: m.group(1) + _mask_ports(m.group(2)), text)
        if _WHOLE_URL.match(text):
            head, sep, rest = text.partition("://")
            cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=-1)
            text = head + sep + (rest[:cut] + _kept_query(rest[cut:]) if cut >= 0 else rest)
        else:
            text = _QUERY_IN_TEXT.sub(lambda m: m.group(1) + _kept_query(m.group(2)), text)
        return _mask_params(text)
    except Exception:
        return REDACTED_PLACEHOLDER


def _mask_whole(text: str, secret: str) -> str:
    """``text`` with ``secret`` replaced: a secret shorter than ``_MASKED_ANYWHERE``
    characters where it occurs whole, not continued by a letter, digit or ``_`` on a
    side where it ends in one (a one-letter user name is masked where it stands alone,
    quoted or delimited in a URL, and the words that merely contain it are left as they
    are); a longer one wherever it occurs (inside a word it is the credential all the
    same, after an escape such as ``\\x00``)."""
    if len(secret) >= _MASKED_ANYWHERE:
        return text.replace(secret, REDACTED)
    head = r"(?<!\w)" if _WORD_EDGE.match(secret[0]) else ""
    tail = r"(?!\w)" if _WORD_EDGE.match(secret[-1]) else ""
    return re.sub(head + re.escape(secret) + tail, lambda _: REDACTED, text)


def _kept_query(tail: str) -> str:
    """What a URL's query string and fragment ``tail`` (from its ``?`` or ``#``) shows:
    ``?db=N`` when the query selects a database (the first ``db``, as redis-py reads
    it, and only a number), nothing else (a password, a token, any option)."""
    if not tail.startswith("?"):
        return ""
    query = tail[1:].partition("#")[0]
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "db":
            return f"?db={value}" if value.isascii() and value.isdigit() else ""
    return ""


def _mask_params(text: str) -> str:
    """``text`` with the value after every secret-naming word (``password=x``,
    ``'password': 'x'``, ``token: x``) replaced."""
    out: list[str] = []
    pos = 0
    for word in _WORD.finditer(text):
        if word.start() < pos or not _SECRET_WORD.search(word.group()):
            continue
        value = _ASSIGNED.match(text, word.end())
        if value is None:
            continue
        # Keep the quote and separator, drop the value (and a quoted value's quotes).
        out += [text[pos : word.end()], value.group(1), REDACTED]
        pos = value.end()
    out.append(text[pos:])
    return "".join(out)


def _mask_ports(authority: str) -> str:
    """The hosts of a URL with every port that is not a plain number masked:
    ``redis://:secret`` (the ``@`` forgotten) puts the password where the port goes."""
    items = []
    for item in authority.split(","):
        end = item.find("]") + 1 if item.startswith("[") else 0  # [IPv6]:port
        if item.startswith("[") and end == 0:
            items.append(REDACTED)
            continue
        colon = item.find(":", end)
        port = item[colon + 1 :]
        if colon >= 0 and not (port.isascii() and port.isdigit()):
            item = item[: colon + 1] + REDACTED
        items.append(item)
    return ",".join(items)


def _as_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, Mapping):
        shown = (
            f"{str(k)!r}: "
            + (
                REDACTED
                if _SECRET_NAME.search(str(k))
                else _as_text(v)
                if isinstance(v, Mapping)
                else repr(redact_url(v))
            )
            for k, v in value.items()
        )
        return "{" + ", ".join(shown) + "}"
    return str(value)


def url_secrets(url: str) -> set[str]:
    """Every string of ``url`` that may be a credential, raw and percent-decoded: the
    whole userinfo, its password part (or the lone ``secret`` of ``scheme://secret@``)
    and the values of secret-looking query options."""
    found: set[str] = set()
    rest = url.partition("://")[2] if "://" in url else url
    userinfo, at, _ = rest.rpartition("@")
    if at:
        user, colon, password = userinfo.partition(":")
        found |= {userinfo, password if colon else user}
    for name, value in parse_qsl(url.partition("?")[2], keep_blank_values=True):
        if _SECRET_NAME.search(name):
            found.add(value)
    found |= {unquote(s) for s in found}
    return {s for s in found if s}


def mapping_secrets(options: Mapping[str, Any]) -> set[str]:
    """Secret values of a dict of connection options (nested ``tls`` dict included)."""
    found: set[str] = set()
    for key, value in options.items():
        if isinstance(value, Mapping):
            found |= mapping_secrets(value)
        elif isinstance(value, str) and value:
            if _SECRET_NAME.search(str(key)):
                found.add(value)
            elif key == "url":
                found |= url_secrets(value)
    return found


def misplaced_secrets(url: str) -> set[str]:
    """For messages about a URL that did not parse: when it has no ``@``, whatever sits
    where a port goes may be a password whose ``@`` was forgotten (``redis://:secret``),
    so none of it is shown. (With an ``@`` the credentials are delimited and known.)
    A port number (``_port_like``: up to 5 digits, spaces around allowed) hides
    nothing and stays, so ``'6380 '`` shows the stray space a parser complains of."""
    rest = url.partition("://")[2]
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in authority:
        return set()
    found: set[str] = set()
    for item in authority.split(","):
        tail = item.partition("]")[2] if item.startswith("[") else item.partition(":")[2]
        found |= {tail, *tail.split(":")}
    return {t for t in found if t and not _port_like(t)}


def _port_like(text: str) -> bool:
    """Whether ``text`` (what follows a host's ``:``) holds only port-sized numbers: up
    to 5 ASCII digits between ``:`` (``:6380`` after ``[::1]``), spaces around them
    allowed (``6380 ``). A longer number may be a PIN-like password: not port-like."""
    parts = [p.strip() for p in text.split(":")]
    return any(parts) and all(not p or (len(p) <= 5 and p.isascii() and p.isdigit()) for p in parts)


def check_delimited(url: str) -> None:
    """Refuse a URL whose credentials are not delimited unambiguously.

    An ``@`` after the first ``/``, ``?`` or ``#`` of the authority means a password (or
    an option value) holds one of those characters unencoded: the URL then parses to a
    different host, port or path, and the password would end up in error messages as a
    "port" or "database". Percent-encoding it is the fix. A URL whose authority is empty
    (``unix:///path/with@sign``) has no credentials to misplace.
    """
    rest = url.partition("://")[2]
    if rest.startswith("/"):
        return
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    if "@" in rest[end:]:
        raise ConfigurationError(
            f"redis URL {redact_url(url)!r} has an '@' after the host part: a password or "
            "option value containing '/', '?', '#' or '@' must be percent-encoded, e.g. "
            "urllib.parse.quote(password, safe='')"
        )


def client_secrets(client: Any) -> set[str]:
    """Passwords a ready-made client carries (best effort: only to mask them)."""
    found: set[str] = set()
    try:
        if isinstance(client, RedisCluster):
            kwargs = client.get_connection_kwargs()
        else:
            kwargs = client.connection_pool.connection_kwargs
        found |= mapping_secrets({k: v for k, v in kwargs.items() if isinstance(v, str)})
    except Exception:  # not a redis-py client: nothing known to mask
        pass
    return found


# Deeper nesting than any payload may have (the codec refuses more than 254 levels).
_JSON_DEPTH = 255


def redact_json_text(text: str, redact: Callable[[Any], Any]) -> str:
    """A JSON object or array in ``text`` through ``redact``, as JSON again; other text
    unchanged. Fails closed: JSON nested too deep to be read or written back (any text
    that opens more than 254 levels of brackets) comes back as ``REDACTED`` whole, so
    nesting cannot carry a field past the redactor."""
    if text[:1] not in ("{", "["):
        return text
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return REDACTED if _nesting_exceeds(text, _JSON_DEPTH) else text
    try:
        return orjson.dumps(redact(value)).decode()
    except (TypeError, RecursionError):  # orjson.JSONEncodeError: nested too deep
        return REDACTED


def _nesting_exceeds(text: str, limit: int) -> bool:
    """Whether ``text`` opens more than ``limit`` levels of ``[`` / ``{`` outside strings."""
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False
