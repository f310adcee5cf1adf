"""Reading the audit log: entries by range, queries with filters, verification of the
whole chain while others append and trim (``AuditReader``; ``AuditLog`` delegates)."""

from __future__ import annotations

import fnmatch
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson

from ...errors import ConfigurationError, DamagedKeyError
from ...limits import safe_text
from ...options import to_int
from .chain import DAMAGE, FIELDS, MAX_WHO_LEN, OUTCOMES, AuditKeys, entry_mac, parse_id, parse_n
from .conn import Deployment, LuaScript
from .verify import RETENTION_ACTION, AuditHead, AuditReport, ChainCheck

__all__ = [
    "PAGE",
    "AuditEntry",
    "AuditPage",
    "AuditReader",
    "damaged_stream",
    "decode",
    "parse_time",
]

#: Entries read per round trip.
PAGE = 500
#: The longest value read (bytes): every value the writer makes is shorter (``meta`` at
#: most 4096 bytes); a longer one, written by hand, is cut to this and noted. With
#: ``PAGE`` it bounds one read to a few MB whatever the stream holds.
MAX_VALUE_BYTES = 4200
_READ = LuaScript(__package__, "read")


def damaged_stream(key: str, found: str) -> DamagedKeyError:
    """The error for an audit stream key that holds another Redis type."""
    exc = DamagedKeyError(
        f"the audit log key {key} holds a Redis {found[:20]}, not a stream: it was replaced "
        "outside kitium-queue and the log's entries are gone from it. Keep it for "
        "examination (RENAME it aside), then delete it: a new log starts with its first "
        "entry (verify with your last checkpoint reports the loss)"
    )
    exc.key, exc.found, exc.expected = key, found[:20], "stream"
    return exc


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One entry of the audit log, as ``query`` returns it.

    Attributes:
        id: its stream id (``<ms>-<seq>``, Redis clock).
        at_ms: when it was written (ms since the epoch).
        n: its position in the log (1 for the first entry ever).
        principal: who acted (None when nobody was named).
        action, resource, outcome: what was done, to what, and how it ended.
        metadata: the details (a dict; never payloads or secrets).
        authentic: its own MAC checked with a held key (True / False), or None when
            the log was opened without the key. (Whether entries around it were removed
            is ``verify``'s question.)
    """

    id: str
    at_ms: int
    n: int | None
    principal: str | None
    action: str
    resource: str
    outcome: str
    metadata: dict[str, Any] = field(default_factory=dict)
    authentic: bool | None = None
    damage: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at_ms": self.at_ms,
            "n": self.n,
            "principal": self.principal,
            "action": self.action,
            "resource": self.resource,
            "outcome": self.outcome,
            "metadata": self.metadata,
            "authentic": self.authentic,
            "damage": self.damage,
        }


@dataclass(slots=True)
class AuditPage:
    """One page of ``AuditLog.query_page``.

    Attributes:
        entries: the matching entries, in the order asked.
        next_cursor: pass it as ``cursor=`` (with the same filters) for the next page;
            None when the range was read to its end.
        scanned: how many entries were read to find these.
    """

    entries: list[AuditEntry] = field(default_factory=list)
    next_cursor: str | None = None
    scanned: int = 0


def decode(raw: Any) -> str:
    """Text read from Redis (bytes that are not UTF-8 shown escaped)."""
    return raw.decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else str(raw)


def _fields(kept: Any, notes: Any) -> dict[str, str]:
    """An entry as ``read.lua`` returns it: its known fields, and what else is wrong
    with it under ``DAMAGE``."""
    out: dict[str, str] = {}
    damage: list[str] = []
    for i in range(0, len(kept) - 1, 2):
        name, raw = decode(kept[i]), kept[i + 1]
        try:
            out[name] = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        except UnicodeDecodeError:
            out[name] = decode(raw)
            damage.append(f"field {name} is not UTF-8")
    for i in range(0, len(notes) - 1, 2):
        what, detail = decode(notes[i]), decode(notes[i + 1])
        if what == "big":
            name, _, size = detail.partition(" ")
            damage.append(f"field {name} is {size} bytes (cut to {MAX_VALUE_BYTES})")
        elif what == "dup":
            damage.append(f"field {detail} appears twice")
        else:
            damage.append(f"{detail} fields no entry has")
    if damage:
        out[DAMAGE] = "; ".join(damage)
    return out


def parse_time(value: str | None, what: str) -> int | None:
    """A time bound given as text (a command-line option, a form field): ms since the
    epoch, or an ISO-8601 time (``2025-01-31T12:00:00Z``; UTC when no offset is given).
    None for None or blank; ``ConfigurationError`` naming ``what`` otherwise."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isascii() and text.isdigit() and len(text) <= 15:
        return int(text)
    try:
        iso = text[:64]
        if iso[-1:] in ("Z", "z"):  # Python 3.10's fromisoformat takes no "Z"
            iso = iso[:-1] + "+00:00"
        when = datetime.fromisoformat(iso)
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        ms = int(when.timestamp() * 1000)
    except (ValueError, OverflowError, OSError):
        raise ConfigurationError(
            f"{what} must be ms since the epoch or an ISO-8601 time such as "
            f"2025-01-31T12:00:00Z, got {text[:60]!r}"
        ) from None
    if ms < 0:
        raise ConfigurationError(f"{what} must not be before 1970, got {text[:60]!r}")
    return ms


#: The largest part of a stream id (ms and sequence are unsigned 64-bit numbers).
_MAX_ID = 2**64 - 1


def describe_damage(f: dict[str, str]) -> str:
    """What is wrong with entry ``f`` that shows without the key ("" when nothing)."""
    found = [f[DAMAGE]] if DAMAGE in f else []
    missing = [k for k in (*FIELDS, "mac") if k not in f]
    if missing:
        found.append(f"field{'s' if len(missing) > 1 else ''} {', '.join(missing)} missing")
    if "n" in f and parse_n(f["n"]) is None:
        found.append(f"its position n {f['n'][:30]!r} is no number")
    if "out" in f and f["out"] not in OUTCOMES:
        found.append(f"its outcome {f['out'][:30]!r} is none of {', '.join(OUTCOMES)}")
    return "; ".join(found)


def _filter_text(value: object, what: str, limit: int) -> str:
    """A filter value: printable text of 1 to ``limit`` characters (no entry holds a
    control character or a lone surrogate, so such a filter is a mistake)."""
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise ConfigurationError(f"{what} filter must be a str of 1 to {limit} characters")
    bad = next((c for c in value if not c.isprintable()), None)
    if bad is not None:
        raise ConfigurationError(
            f"{what} filter holds a control character, a lone surrogate or another "
            f"character that is not printable (U+{ord(bad):04X}); give printable text"
        )
    return value


def _cursor(value: object) -> tuple[int, int]:
    """A ``cursor`` of ``query_page``: the stream id of the entry a page ended at."""
    try:
        if isinstance(value, str):
            at = parse_id(value)
            if max(at) <= _MAX_ID:
                return at
    except ValueError:
        pass
    raise ConfigurationError(
        f"cursor must be the next_cursor of an audit page (an entry id such as "
        f"1700000000000-0), got {str(value)[:60]!r}"
    )


def _when(value: Any, what: str) -> int | None:
    """A time bound as ms since the epoch (int ms, float seconds not accepted)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ConfigurationError(f"{what} must be a timezone-aware datetime")
        return int(value.timestamp() * 1000)
    return to_int(value, what, minimum=0, maximum=2**48)


def _matcher(value: object, what: str) -> Callable[[str], bool]:
    """An exact name, or a shell-style glob (``fnmatch``, case-sensitive)."""
    value = _filter_text(value, what, 512)
    if any(c in value for c in "*?["):
        return lambda s: fnmatch.fnmatchcase(s, value)
    return lambda s: s == value


class AuditReader:
    """Reads the audit stream ``stream`` of ``deployment``; ``keys`` (or None) checks
    each entry's own MAC for ``authentic`` and verifies the chain."""

    def __init__(self, deployment: Deployment, stream: str, keys: AuditKeys | None) -> None:
        self.deployment = deployment
        self.stream = stream
        self.keys = keys

    def _need_keys(self) -> AuditKeys:
        if self.keys is None:
            raise ConfigurationError(
                "the audit log cannot be verified without its key: pass key= (audit_key= "
                "to AccessControlManager), the secret the application keeps for it"
            )
        return self.keys

    async def page(
        self, start: str, end: str, *, reverse: bool
    ) -> list[tuple[str, dict[str, str]]]:
        """Up to ``PAGE`` entries from ``start`` to ``end`` (``read.lua``: values cut to
        ``MAX_VALUE_BYTES``, damage noted under ``DAMAGE``); ``DamagedKeyError`` when
        the stream key holds another type."""
        reply = await self.deployment.run(
            _READ,
            [self.stream],
            [start, end, PAGE, "1" if reverse else "0", MAX_VALUE_BYTES],
        )
        if decode(reply[0]) == "damaged":
            raise damaged_stream(self.stream, decode(reply[1]))
        return [
            (decode(reply[i]), _fields(reply[i + 1], reply[i + 2]))
            for i in range(1, len(reply) - 2, 3)
        ]

    async def entries(
        self,
        *,
        since_ms: int | None = None,
        until_ms: int | None = None,
        newest_first: bool,
        start_id: str | None = None,
        end_id: str | None = None,
    ) -> AsyncIterator[tuple[str, dict[str, str]]]:
        """Every entry in the range (times in ms, or stream ids), page by page, in the
        order asked."""
        lo = start_id or ("-" if since_ms is None else str(since_ms))
        hi = end_id or ("+" if until_ms is None else f"{until_ms}-{2**63 - 1}")
        while True:
            page = await self.page(lo, hi, reverse=newest_first)
            for item in page:
                yield item
            if len(page) < PAGE:
                return
            if newest_first:
                hi = "(" + page[-1][0]
            else:
                lo = "(" + page[-1][0]

    def entry(self, entry_id: str, f: dict[str, str]) -> AuditEntry:
        try:
            meta = orjson.loads(f.get("meta", "{}"))
        except orjson.JSONDecodeError:
            meta = {"unreadable": f.get("meta", "")[:200]}
        if not isinstance(meta, dict):
            meta = {"value": meta}
        authentic: bool | None = None
        whole = DAMAGE not in f and all(k in f for k in (*FIELDS, "mac"))
        if self.keys is not None:
            key = self.keys.key(f.get("kid", ""))
            if key is not None and whole:
                authentic = entry_mac(key, entry_id, [f[k] for k in FIELDS]) == f.get("mac")
            elif key is not None or not whole:  # damaged: not authentic whatever its kid
                authentic = False
        n = parse_n(f.get("n"))
        try:
            at = parse_id(entry_id)[0]
        except ValueError:
            at = 0
        return AuditEntry(
            damage=describe_damage(f),
            id=entry_id,
            at_ms=at,
            n=n,
            principal=f.get("who") or None,
            action=f.get("act", ""),
            resource=f.get("res", ""),
            outcome=f.get("out", ""),
            metadata=meta,
            authentic=authentic,
        )

    async def query(self, **filters: Any) -> list[AuditEntry]:
        """Entries matching every filter given, newest first by default: the entries
        of ``query_page`` (same arguments)."""
        return (await self.query_page(**filters)).entries

    async def query_page(
        self,
        *,
        principal: str | None = None,
        action: str | None = None,
        resource: str | None = None,
        outcome: str | None = None,
        since: int | datetime | None = None,
        until: int | datetime | None = None,
        limit: int = 100,
        newest_first: bool = True,
        max_scan: int = 100_000,
        cursor: str | None = None,
    ) -> AuditPage:
        """One page of the entries matching every filter given, newest first by
        default, and the cursor of the next page.

        ``principal`` matches exactly; ``action`` and ``resource`` are exact names or
        shell-style globs (``queue.*``, ``acme-*``; ``fnmatch``, case-sensitive); ``since`` /
        ``until``: ms since the epoch or aware datetimes, inclusive. Stops after
        ``limit`` matches (1..100,000) or ``max_scan`` entries read; ``cursor``: the
        ``next_cursor`` of the previous page (the page goes on after that entry, in
        the order asked, within ``since`` / ``until``).
        """
        lim = to_int(limit, "limit", minimum=1, maximum=100_000)
        if principal is not None:
            _filter_text(principal, "principal", MAX_WHO_LEN)
        if outcome is not None and outcome not in OUTCOMES:
            raise ConfigurationError(
                f"outcome filter must be one of {', '.join(OUTCOMES)}, got "
                f"{safe_text(outcome)[:40]!r}"
            )
        scan = to_int(max_scan, "max_scan", minimum=1, maximum=10**9)
        act = None if action is None else _matcher(action, "action")
        res = None if resource is None else _matcher(resource, "resource")
        since_ms, until_ms = _when(since, "since"), _when(until, "until")
        start_id = end_id = None
        if cursor is not None:
            at = _cursor(cursor)
            if at == ((0, 0) if newest_first else (_MAX_ID, _MAX_ID)):
                return AuditPage([], None, 0)  # nothing lies beyond the first or last id
            after = f"({at[0]}-{at[1]}"
            # Within the time range whatever the cursor says.
            if newest_first and (until_ms is None or at[0] <= until_ms):
                end_id = after
            elif not newest_first and (since_ms is None or at[0] >= since_ms):
                start_id = after
        out: list[AuditEntry] = []
        seen = 0
        async for entry_id, f in self.entries(
            since_ms=since_ms,
            until_ms=until_ms,
            newest_first=newest_first,
            start_id=start_id,
            end_id=end_id,
        ):
            seen += 1
            if (
                (principal is None or f.get("who") == principal)
                and (outcome is None or f.get("out") == outcome)
                and (act is None or act(f.get("act", "")))
                and (res is None or res(f.get("res", "")))
            ):
                out.append(self.entry(entry_id, f))
            if len(out) >= lim or seen >= scan:
                return AuditPage(out, entry_id, seen)
        return AuditPage(out, None, seen)

    async def verify(self, *, checkpoint: AuditHead | None = None) -> AuditReport:
        """Check the whole chain; see ``verify.py`` for what is reported.

        Reads a consistent range while others append and trim: first the stream's
        counter of entries ever added and its highest id, then the entries up to that
        id, page by page. If the first entry read was the start of a trim that ran
        meanwhile, its retention record lies beyond that id: it is looked for there.
        """
        keys = self._need_keys()
        added: int | None = None
        top = "+"
        try:
            info = await self.deployment.call("xinfo_stream", self.stream)
        except Exception:  # no stream yet, or a server that refuses XINFO: no counter
            info = None
        if info:
            raw = info.get("entries-added")
            added = None if raw is None else int(raw)
            last = info.get("last-generated-id")
            top = decode(last) if last is not None else "+"
        check = ChainCheck(keys, checkpoint)
        try:
            async for entry_id, fields in self.entries(newest_first=False, end_id=top):
                check.feed(entry_id, fields)
        except DamagedKeyError as exc:  # not a stream (now): nothing more to read
            check.lost(f"{exc.found or 'another type'}")
            return check.report(None)
        if top != "+" and check.unanchored():
            seen = 0
            async for entry_id, fields in self.entries(newest_first=True, start_id="(" + top):
                if fields.get("act") == RETENTION_ACTION:
                    check.consider_anchor(entry_id, fields)
                seen += 1
                if seen >= 10_000:
                    break
        return check.report(added)
