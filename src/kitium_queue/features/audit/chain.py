"""The audit log's records and their chain: fields, bounds, keys and MACs.

Each entry of the audit stream holds these fields (``FIELDS``), all text:

====== =====================================================================
``n``    its position in the log, 1 for the first entry ever (trimming keeps it)
``prev`` the MAC of the entry before it ("" for the first entry ever)
``who``  the principal that acted ("" when nobody was named)
``act``  the action (``queue.pause``, ``access.grant``, ``access.denied``, or the
         application's own, e.g. ``add_job``)
``res``  the resource acted on (a queue name, a queue pattern, ...)
``out``  the outcome: ``ok``, ``denied`` or ``error``
``meta`` a JSON object of details (ids, limits, the permission needed...), never
         payloads or secrets
``kid``  the id of the key that made the MAC (``AuditKeys``)
``mac``  HMAC-SHA256 over the stream id and all the fields above, hex
====== =====================================================================

The MAC covers the entry's stream id (its time) and ``prev``, so every entry is bound
to its place: editing one breaks its MAC, removing one breaks the next entry's link,
inserting one needs a MAC only the key holder can make. The key never leaves the
application: MACs are computed here and Redis only stores them.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from ...errors import ConfigurationError
from ...limits import clip, safe_text
from ...redact import redact_url

__all__ = [
    "DAMAGE",
    "FIELDS",
    "MAX_ACTION_LEN",
    "MAX_META_BYTES",
    "MAX_RESOURCE_LEN",
    "OUTCOMES",
    "AuditKeys",
    "Draft",
    "clean_metadata",
    "entry_mac",
    "parse_id",
    "parse_n",
    "secret_name",
]

#: The MACed fields of an entry, in MAC order (``mac`` itself is stored after them).
FIELDS = ("n", "prev", "who", "act", "res", "out", "meta", "kid")
#: Outcomes an entry may record.
OUTCOMES = ("ok", "denied", "error")
MAX_ACTION_LEN = 128
MAX_RESOURCE_LEN = 512
MAX_WHO_LEN = 256
#: Largest ``meta`` (JSON, UTF-8).
MAX_META_BYTES = 4096
_MAX_META_DEPTH = 4
_MAX_META_STRING = 1024
_MIN_KEY_BYTES = 16
_DOMAIN = b"kq-audit/1\x00"
_SECRET_NAME = re.compile(
    r"pass(?:word|wd)?|pwd|secret|token|credential|auth|api[-_]?key|private|cookie|session",
    re.IGNORECASE,
)
# Names that are secrets only as a whole word of the name (``user_pin``, ``pinCode``,
# ``X-OTP``), not inside another word (``pinned``, ``spinner``, ``hotplug``)...
_SECRET_WORDS = frozenset(
    {"pin", "otp", "totp", "hotp", "jwt", "hmac", "cvv", "cvc", "bearer", "privkey",
     "signingkey", "accesskey", "cardnumber"}
)  # fmt: skip
# ...and pairs of words (``signing_key``, ``cardNumber``).
_SECRET_PAIRS = frozenset(
    {("signing", "key"), ("access", "key"), ("encryption", "key"), ("master", "key"),
     ("card", "number"), ("card", "no"), ("card", "num")}
)  # fmt: skip
# The words of a name: snake_case, kebab-case, dotted and camelCase parts.
_NAME_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
# A value that mentions a URL, whose credentials (``postgres://user:pw@host``) go.
_URL_MARK = "://"
_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_N = re.compile(r"[1-9][0-9]{0,14}")
#: Not a field: what the reader found wrong with an entry besides its MAC (a value cut
#: to size, a field twice, fields no entry has, bytes that are not UTF-8). No entry can
#: hold it (the reader keeps only the ``FIELDS`` and ``mac``).
DAMAGE = "!damage"


def parse_id(entry_id: str) -> tuple[int, int]:
    """A stream id ``"<ms>-<seq>"`` as numbers; ``ValueError`` if it is not one."""
    m = _ID.fullmatch(entry_id)
    if m is None or max(int(m.group(1)), int(m.group(2))) >= 2**64:
        raise ValueError(f"not a stream id: {entry_id[:60]!r}")
    return int(m.group(1)), int(m.group(2))


def parse_n(text: str | None) -> int | None:
    """An entry's position ``n`` as the writer writes it (1 to 15 digits, no sign, no
    leading zero, ASCII), or None for anything else."""
    return int(text) if text is not None and _N.fullmatch(text) else None


def _key_bytes(key: object, what: str) -> bytes:
    if isinstance(key, str):
        raw = key.encode("utf-8", "surrogatepass")
    elif isinstance(key, (bytes, bytearray, memoryview)):
        raw = bytes(key)
    else:
        raise ConfigurationError(
            f"{what} must be bytes or str (a secret the application keeps), got "
            f"{type(key).__name__}"
        )
    if len(raw) < _MIN_KEY_BYTES:
        raise ConfigurationError(
            f"{what} is {len(raw)} bytes; use at least {_MIN_KEY_BYTES} random bytes, e.g. "
            "secrets.token_bytes(32) or secrets.token_hex(32)"
        )
    return raw


class AuditKeys:
    """The keys of the audit chain: the current one (new entries) and earlier ones
    (entries written before a key change still verify).

    Each key is known by its id: the first 12 hex digits of a SHA-256 of a fixed label
    and the key (the id names the key; it reveals nothing usable about it). Keys are
    never written to Redis or logged.
    """

    __slots__ = ("_keys", "current")

    def __init__(self, key: bytes | str, previous: Sequence[bytes | str] = ()) -> None:
        if isinstance(previous, (str, bytes)):
            raise ConfigurationError("previous audit keys must be a list of keys, not one key")
        first = _key_bytes(key, "audit_key")
        self._keys: dict[str, bytes] = {}
        self.current = self._add(first)
        for i, old in enumerate(previous):
            self._add(_key_bytes(old, f"previous audit key #{i}"))

    def _add(self, raw: bytes) -> str:
        kid = hashlib.sha256(b"kq-audit-key-id\x00" + raw).hexdigest()[:12]
        self._keys.setdefault(kid, raw)
        return kid

    def key(self, kid: str) -> bytes | None:
        """The key with id ``kid``, or None when it is not held."""
        return self._keys.get(kid)

    @property
    def ids(self) -> tuple[str, ...]:
        """The ids of the keys held, the current one first."""
        return tuple(self._keys)

    def __repr__(self) -> str:  # never the keys themselves
        return f"AuditKeys(current={self.current!r}, held={len(self._keys)})"


def entry_mac(key: bytes, entry_id: str, values: Sequence[str]) -> str:
    """The MAC of an entry: HMAC-SHA256 over a fixed label, the stream id and the
    ``FIELDS`` values, each length-prefixed (so no two entries encode alike)."""
    h = hmac.new(key, _DOMAIN, hashlib.sha256)
    for part in (entry_id, *values):
        raw = part.encode("utf-8", "surrogatepass")
        h.update(len(raw).to_bytes(4, "big"))
        h.update(raw)
    return h.hexdigest()


def _text(value: object, limit: int, what: str, *, strict: bool) -> str:
    """``value`` as a bounded line of text: control and format characters and lone
    surrogates replaced; over ``limit`` characters clipped (or refused when
    ``strict``)."""
    if not isinstance(value, str):
        if strict:
            raise ConfigurationError(f"{what} must be a str, got {type(value).__name__}")
        value = safe_text(value)
    if strict and len(value) > limit:
        raise ConfigurationError(f"{what} is {len(value)} characters; the limit is {limit}")
    out = []
    for ch in value[:limit]:
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs"):
            if strict:
                raise ConfigurationError(
                    f"{what} {clip(repr(value), 80)} holds a control or format character "
                    f"or a lone surrogate (U+{ord(ch):04X}); use printable text"
                )
            ch = "\ufffd"
        out.append(ch)
    return "".join(out)


def secret_name(name: str) -> bool:
    """Whether a metadata key (or a header's name) names a secret, whose value is
    masked: it holds ``password``, ``token``, ``secret``, ``auth``, ``api_key``,
    ``cookie``, ``session``, ``private``... anywhere, or one of ``_SECRET_WORDS`` /
    ``_SECRET_PAIRS`` as whole words (``user_pin`` and ``signingKey``, not ``pinned``)."""
    if _SECRET_NAME.search(name):
        return True
    words = [w.lower() for w in _NAME_WORD.findall(name)]
    return any(w in _SECRET_WORDS for w in words) or any(
        pair in _SECRET_PAIRS for pair in itertools.pairwise(words)
    )


def _meta_text(value: str) -> str:
    """A metadata string: the credentials of a URL in it masked (``redact_url``), then
    clipped (after: a cut could leave a password without its ``@``)."""
    if _URL_MARK in value:
        value = redact_url(value)
    return clip(value.encode("utf-8", "replace").decode("utf-8"), _MAX_META_STRING)


def _meta_value(value: Any, depth: int) -> Any:
    if value is None or isinstance(value, (bool, int)):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
            return str(value)
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return _meta_text(value)
    if depth >= _MAX_META_DEPTH:
        return "[nested too deep]"
    if isinstance(value, Mapping):
        return _meta_dict(value, depth + 1)
    # A header as a pair, ["Authorization", "Bearer ..."]: its value goes.
    pair = isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], str)
    if pair and secret_name(value[0]):
        return [_meta_text(value[0]), "***"]
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_meta_value(v, depth + 1) for v in list(value)[:100]]
    return clip(safe_text(value), 200)


def _meta_dict(value: Mapping[Any, Any], depth: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in list(value.items())[:100]:
        full = k if isinstance(k, str) else safe_text(k)
        name = _text(full, 64, "key", strict=False)
        # Two keys that read alike once cleaned and clipped ("k\n", "k\t") both stay.
        n = 2
        while name in out:
            name = f"{_text(full, 58, 'key', strict=False)}~{n}"
            n += 1
        # The whole name decides (a clipped one can lose the word that names a secret).
        out[name] = "***" if secret_name(full) else _meta_value(v, depth)
    return out


def clean_metadata(metadata: object, *, strict: bool = True) -> str:
    """``metadata`` as the JSON text of an entry's ``meta``.

    A mapping is kept with at most 100 keys per level, 4 levels deep, strings clipped
    to 1024 characters, keys to 64; the value of any key that names a secret
    (``password``, ``token``, ``secret``, ``api_key``, ``authorization``, ``pin``,
    ``signing_key``...: ``secret_name``) is replaced by ``***``, and so is the value
    of a pair ``[name, value]`` whose name does (a header such as ``["Authorization",
    "Bearer ..."]``); the credentials of a URL in a string (``postgres://user:pw@host``)
    are masked (``redact.redact_url``); values that are not JSON become their text. ``strict``
    (the application's own entries): a result above ``MAX_META_BYTES`` or a metadata
    that is not a mapping is refused with ``ConfigurationError``; otherwise (entries
    the library writes) it is cut down to a note instead.
    """
    if metadata is None:
        return "{}"
    if not isinstance(metadata, Mapping):
        if strict:
            raise ConfigurationError(
                f"audit metadata must be a dict (ids and short facts), got "
                f"{type(metadata).__name__}"
            )
        metadata = {"value": metadata}
    raw = orjson.dumps(_meta_dict(metadata, 1)).decode()
    if len(raw.encode()) > MAX_META_BYTES:
        if strict:
            raise ConfigurationError(
                f"audit metadata is {len(raw.encode())} bytes as JSON, above "
                f"{MAX_META_BYTES}: record ids and short facts, never payloads"
            )
        raw = orjson.dumps({"truncated": True, "bytes": len(raw.encode())}).decode()
    return raw


@dataclass(slots=True)
class Draft:
    """An entry to append, before it has a place in the chain (``n``, ``prev``, id)."""

    who: str
    action: str
    resource: str
    outcome: str = "ok"
    meta: str = "{}"
    #: Not stored: whoever awaits the append gets its id here.
    waiters: list[Any] = field(default_factory=list)

    @classmethod
    def make(
        cls,
        who: str | None,
        action: object,
        resource: object,
        outcome: str = "ok",
        metadata: object = None,
        *,
        strict: bool = True,
    ) -> Draft:
        """A checked entry: ``strict`` (the application's entries) refuses bad text
        with ``ConfigurationError``; otherwise (the library's) it is made safe."""
        if outcome not in OUTCOMES:
            raise ConfigurationError(f"outcome must be one of {OUTCOMES}, got {outcome!r:.40}")
        act = _text(action, MAX_ACTION_LEN, "action", strict=strict)
        if not act:
            raise ConfigurationError("action must not be empty (e.g. 'export_report')")
        return cls(
            who=_text(who or "", MAX_WHO_LEN, "principal", strict=strict),
            action=act,
            resource=_text(resource, MAX_RESOURCE_LEN, "resource", strict=strict),
            outcome=outcome,
            meta=clean_metadata(metadata, strict=strict),
        )

    def values(self, n: int, prev: str, kid: str) -> list[str]:
        """The ``FIELDS`` values of this entry at position ``n`` after ``prev``."""
        return [str(n), prev, self.who, self.action, self.resource, self.outcome, self.meta, kid]
