"""``AuditLog``: the append-only, tamper-evident audit stream of a deployment.

One Redis stream per deployment (``<prefix>:{!access}:audit``) holds who did what to
which resource, when, with what outcome (``chain.py`` lists the fields). Every entry
carries an HMAC-SHA256 chained over the previous entry's MAC, made here with a key the
application holds; Redis never sees the key.

How an append stays ordered and race-free across processes without the key in Redis:

1. The writer knows the last entry of the chain (id, position ``n``, MAC), from its own
   previous append or from the script's reply.
2. It builds the new entries on top of it: ids from the Redis clock (learned from every
   reply; above the highest id the stream ever had), ``n`` + 1, ``prev`` = that MAC,
   and each entry's MAC.
3. ``append.lua`` appends them only if the stream still ends with that entry; otherwise
   it writes nothing and replies with the current last entry, and the writer builds
   them again on top of it (optimistic concurrency, like a compare-and-set). A writer
   killed at any point leaves either all of its entries or none.

Entries the library writes for administrative commands (``record``) are queued and
written in the background in batches of up to 100, in order; ``append`` waits until its
entry is in Redis (denied accesses and the application's own entries use it). A
process that dies between an administrative command and the flush (a few ms) loses that
entry, never the chain's integrity.
"""

from __future__ import annotations

import asyncio
import fnmatch
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson

from ...errors import ConfigurationError, KitiumQueueError
from ...limits import get_logger
from ...options import to_int, to_ms
from .chain import FIELDS, AuditKeys, Draft, entry_mac, parse_id
from .conn import Deployment, LuaScript
from .verify import RETENTION_ACTION, AuditHead, AuditReport, ChainCheck

__all__ = ["AuditEntry", "AuditLog", "Effect"]

log = get_logger(__name__)

_APPEND = LuaScript(__package__, "append")
#: Entries per append script call.
BATCH = 100
#: Entries the background writer holds before it drops the oldest (Redis unreachable).
MAX_PENDING = 10_000
#: Attempts of one append under contention before giving up.
MAX_TRIES = 200
_PAGE = 1000


@dataclass(frozen=True, slots=True)
class Effect:
    """A grant change written atomically with its audit entry (``append.lua``)."""

    kind: str  # "grant" | "revoke"
    hash_key: str
    set_key: str
    field: str
    value: str
    member: str


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
        }


@dataclass(slots=True)
class _Head:
    last_id: str
    n: int
    mac: str
    top: tuple[int, int]


def _decode(raw: Any) -> str:
    return raw.decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else str(raw)


def _fields(raw: Any) -> dict[str, str]:
    return {_decode(k): _decode(v) for k, v in raw.items()}


def _when(value: Any, what: str) -> int | None:
    """A time bound as ms since the epoch (int ms, float seconds not accepted)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ConfigurationError(f"{what} must be a timezone-aware datetime")
        return int(value.timestamp() * 1000)
    return to_int(value, what, minimum=0, maximum=2**48)


class AuditLog:
    """The audit stream of a deployment (see the module docstring).

    Args:
        redis: as ``JobQueue`` takes it, or a ``JobQueue`` (its connection and prefix).
        key: the MAC key (bytes or str, at least 16 bytes; e.g.
            ``secrets.token_hex(32)`` kept in your secret store). Without it the log can
            be queried (``authentic`` is None) but not written or verified.
        previous_keys: keys of entries written before a key change (verification only).
        prefix: key prefix (default: the queue's, or ``"kq"``).
        max_age: retention: ``trim()`` removes entries older than this (ms or
            timedelta; None: no age limit).
        max_entries: retention: ``trim()`` keeps at most this many entries.
    """

    def __init__(
        self,
        redis: Any = "memory://",
        *,
        key: bytes | str | None = None,
        previous_keys: Sequence[bytes | str] = (),
        prefix: str | None = None,
        max_age: int | timedelta | None = None,
        max_entries: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.deployment = (
            redis if isinstance(redis, Deployment) else Deployment(redis, prefix, name="audit log")
        )
        self.keys = AuditKeys(key, previous_keys) if key is not None else None
        self.max_age_ms = None if max_age is None else to_ms(max_age, "max_age", minimum=1)
        self.max_entries = (
            None
            if max_entries is None
            else to_int(max_entries, "max_entries", minimum=1, maximum=10**12)
        )
        self.stream = self.deployment.key("audit")
        self._clock = clock
        self._offset_ms = 0.0
        self._head: _Head | None = None
        self._lock: asyncio.Lock | None = None
        self._pending: list[Draft] = []
        self._task: asyncio.Task[None] | None = None
        self._dropped = 0

    # ------------------------------------------------------------------ writing
    def _need_key(self, what: str) -> AuditKeys:
        if self.keys is None:
            raise ConfigurationError(
                f"the audit log cannot {what} without its key: pass key= (audit_key= to "
                "AccessControlManager), the secret the application keeps for it"
            )
        return self.keys

    async def append(
        self,
        principal: str | None,
        action: str,
        resource: str,
        outcome: str = "ok",
        metadata: Any = None,
        *,
        strict: bool = True,
    ) -> str:
        """Write one entry and wait until it is in Redis; returns its id.

        ``action`` (at most 128 characters) and ``resource`` (512) are printable text;
        ``metadata`` a dict of ids and short facts (at most 4 KiB as JSON; values of keys
        naming secrets are replaced by ``***``). Raises ``ConfigurationError`` for bad
        input (``strict=False``, for entries the library writes: made safe instead),
        the connection's errors when Redis cannot take it.
        """
        self._need_key("be written")
        draft = Draft.make(principal, action, resource, outcome, metadata, strict=strict)
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        draft.waiters.append(fut)
        self._queue(draft)
        return await fut

    def record(
        self,
        principal: str | None,
        action: str,
        resource: str,
        outcome: str = "ok",
        metadata: Any = None,
    ) -> None:
        """Queue an entry the library writes (an administrative command seen by a
        lifecycle subscriber): never raises; odd text is made safe; written in the
        background within milliseconds (``flush()`` waits for it)."""
        if self.keys is None:
            return
        try:
            draft = Draft.make(principal, action, resource, outcome, metadata, strict=False)
        except ConfigurationError:  # pragma: no cover - strict=False does not refuse
            log.exception("audit entry for %s could not be made", action)
            return
        self._queue(draft)

    def _queue(self, draft: Draft) -> None:
        if len(self._pending) >= MAX_PENDING:
            dropped = next((d for d in self._pending if not d.waiters), None)
            if dropped is not None:
                self._pending.remove(dropped)
                self._dropped += 1
                log.error(
                    "audit log: %d entries held while Redis refuses them; dropped the "
                    "oldest (%s on %s)",
                    MAX_PENDING,
                    dropped.action,
                    dropped.resource,
                )
        self._pending.append(draft)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def flush(self) -> None:
        """Wait until every queued entry is written (or given up on)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def _drain(self) -> None:
        pause = 0.05
        while self._pending:
            batch = self._pending[:BATCH]
            try:
                ids = await self.write(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Awaited entries fail to their callers; recorded ones are retried.
                retry = [d for d in batch if not d.waiters]
                for d in batch:
                    for fut in d.waiters:
                        if not fut.done():
                            fut.set_exception(exc)
                del self._pending[: len(batch)]
                self._pending[0:0] = retry
                if retry:
                    log.warning(
                        "audit log: %d entries not written yet (%s: %s); retrying",
                        len(retry),
                        type(exc).__name__,
                        exc,
                    )
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 2.0)
                continue
            pause = 0.05
            del self._pending[: len(batch)]
            for d, entry_id in zip(batch, ids, strict=True):
                for fut in d.waiters:
                    if not fut.done():
                        fut.set_result(entry_id)

    async def write(
        self,
        drafts: Sequence[Draft],
        *,
        effect: Effect | None = None,
        trim: str | Callable[[list[str]], str] = "",
        meta_of: Callable[[str, int, str], str] | None = None,
    ) -> list[str]:
        """Append ``drafts`` now, in one script call (retried on contention); returns
        their ids, or [] when ``effect`` is a revoke of a missing grant.

        ``trim``: remove the entries below this id in the same call (or a function of
        the new ids giving it). ``meta_of(id, n, prev)``: the ``meta`` of the first
        draft, once its place is known (retention records name themselves).
        """
        keys = self._need_key("be written")
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            for attempt in range(MAX_TRIES):
                head = self._head or await self._fetch_head()
                ids, args = self._build(keys, head, drafts, meta_of)
                trim_to = trim(ids) if callable(trim) else trim
                effect_args = (
                    [effect.kind, effect.field, effect.value, effect.member]
                    if effect
                    else ["", "", "", ""]
                )
                script_keys = (
                    [self.stream, effect.hash_key, effect.set_key]
                    if effect
                    else [self.stream, self.stream, self.stream]
                )
                reply = await self.deployment.run(
                    _APPEND,
                    script_keys,
                    [head.last_id, len(drafts), trim_to, *effect_args, *args],
                )
                kind = _decode(reply[0])
                if kind == "ok":
                    self._learn_time(int(reply[1]))
                    self._head = _Head(ids[-1], head.n + len(drafts), args[-1], parse_id(ids[-1]))
                    return ids
                if kind == "conflict":
                    self._head = self._head_from(reply)
                    if attempt > 2:  # many writers at once: let the others through
                        await asyncio.sleep(random.uniform(0, 0.002 * min(attempt, 20)))
                    continue
                self._learn_time(int(reply[1]))
                if kind == "absent":
                    return []
                if kind == "gone":
                    raise _TrimPointGone()
                raise KitiumQueueError(f"audit append: unexpected reply {kind!r}")
        raise KitiumQueueError(
            f"audit log: could not append after {MAX_TRIES} attempts: other writers kept "
            "appending first; try again"
        )

    def _build(
        self,
        keys: AuditKeys,
        head: _Head,
        drafts: Sequence[Draft],
        meta_of: Callable[[str, int, str], str] | None,
    ) -> tuple[list[str], list[str]]:
        now = int(self._clock() * 1000 + self._offset_ms)
        ms, seq = head.top
        n, prev = head.n, head.mac
        ids: list[str] = []
        args: list[str] = []
        for i, d in enumerate(drafts):
            ms, seq = (now, 0) if now > ms else (ms, seq + 1)
            entry_id = f"{ms}-{seq}"
            n += 1
            if i == 0 and meta_of is not None:
                d.meta = meta_of(entry_id, n, prev)
            values = d.values(n, prev, keys.current)
            mac = entry_mac(self._key(keys), entry_id, values)
            ids.append(entry_id)
            args += [entry_id, *values, mac]
            prev = mac
        return ids, args

    @staticmethod
    def _key(keys: AuditKeys) -> bytes:
        key = keys.key(keys.current)
        assert key is not None
        return key

    def _learn_time(self, server_ms: int) -> None:
        self._offset_ms = server_ms - self._clock() * 1000

    def _head_from(self, reply: Sequence[Any]) -> _Head:
        self._learn_time(int(reply[4]))
        top = parse_id(_decode(reply[5]))
        return _Head(_decode(reply[1]), int(reply[2]), _decode(reply[3]), top)

    async def _fetch_head(self) -> _Head:
        # A call that cannot match (k = 0) answers with the chain's last entry.
        reply = await self.deployment.run(
            _APPEND, [self.stream] * 3, ["?", "0", "", "", "", "", ""]
        )
        return self._head_from(reply)

    # ------------------------------------------------------------------ reading
    async def _page(
        self, start: str, end: str, *, reverse: bool
    ) -> list[tuple[str, dict[str, str]]]:
        if reverse:
            raw = await self.deployment.call("xrevrange", self.stream, end, start, count=_PAGE)
        else:
            raw = await self.deployment.call("xrange", self.stream, start, end, count=_PAGE)
        return [(_decode(i), _fields(f)) for i, f in raw]

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
            page = await self._page(lo, hi, reverse=newest_first)
            for item in page:
                yield item
            if len(page) < _PAGE:
                return
            if newest_first:
                hi = "(" + page[-1][0]
            else:
                lo = "(" + page[-1][0]

    def _entry(self, entry_id: str, f: dict[str, str]) -> AuditEntry:
        try:
            meta = orjson.loads(f.get("meta", "{}"))
        except orjson.JSONDecodeError:
            meta = {"unreadable": f.get("meta", "")[:200]}
        if not isinstance(meta, dict):
            meta = {"value": meta}
        authentic: bool | None = None
        if self.keys is not None:
            key = self.keys.key(f.get("kid", ""))
            if key is not None and all(k in f for k in FIELDS):
                authentic = entry_mac(key, entry_id, [f[k] for k in FIELDS]) == f.get("mac")
            else:
                authentic = False if key is not None else None
        try:
            n: int | None = int(f.get("n", ""))
        except ValueError:
            n = None
        try:
            at = parse_id(entry_id)[0]
        except ValueError:
            at = 0
        return AuditEntry(
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

    async def query(
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
    ) -> list[AuditEntry]:
        """Entries matching every filter given, newest first by default.

        ``principal`` matches exactly; ``action`` and ``resource`` are exact names or
        shell-style globs (``queue.*``, ``acme-*``; ``fnmatch``, case-sensitive); ``since`` /
        ``until``: ms since the epoch or aware datetimes, inclusive. Stops after
        ``limit`` matches (1..100,000) or ``max_scan`` entries read.
        """
        lim = to_int(limit, "limit", minimum=1, maximum=100_000)
        scan = to_int(max_scan, "max_scan", minimum=1, maximum=10**9)
        act = None if action is None else _matcher(action, "action")
        res = None if resource is None else _matcher(resource, "resource")
        out: list[AuditEntry] = []
        seen = 0
        async for entry_id, f in self.entries(
            since_ms=_when(since, "since"),
            until_ms=_when(until, "until"),
            newest_first=newest_first,
        ):
            seen += 1
            if (
                (principal is None or f.get("who") == principal)
                and (outcome is None or f.get("out") == outcome)
                and (act is None or act(f.get("act", "")))
                and (res is None or res(f.get("res", "")))
            ):
                out.append(self._entry(entry_id, f))
                if len(out) >= lim:
                    break
            if seen >= scan:
                break
        return out

    async def verify(self, *, checkpoint: AuditHead | None = None) -> AuditReport:
        """Check the whole chain; see ``verify.py`` for what is reported.

        Reads a consistent range while others append and trim: first the stream's
        counter of entries ever added and its highest id, then the entries up to that
        id, page by page. If the first entry read was the start of a trim that ran
        meanwhile, its retention record lies beyond that id: it is looked for there.
        """
        keys = self._need_key("be verified")
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
            top = _decode(last) if last is not None else "+"
        check = ChainCheck(keys, checkpoint)
        async for entry_id, fields in self.entries(newest_first=False, end_id=top):
            check.feed(entry_id, fields)
        if top != "+" and check.unanchored():
            seen = 0
            async for entry_id, fields in self.entries(newest_first=True, start_id="(" + top):
                if fields.get("act") == RETENTION_ACTION:
                    check.consider_anchor(entry_id, fields)
                seen += 1
                if seen >= 10_000:
                    break
        return check.report(added)

    # ------------------------------------------------------------------ retention
    async def trim(
        self,
        *,
        max_age: int | timedelta | None = None,
        max_entries: int | None = None,
        principal: str | None = None,
        verify_first: bool = True,
    ) -> int:
        """Apply retention: remove entries older than ``max_age`` and beyond the newest
        ``max_entries`` (defaults: the log's own settings). Returns how many went.

        First an ``audit.retention`` record is appended naming the entry the log will
        start with (its id, ``n`` and ``prev``), then, in the same script call, the
        older entries are removed: ``verify`` accepts a log that starts there because a
        valid record says so, and reports any other missing start.

        Removing entries also removes the evidence of tampering among them, so by
        default the chain is verified first and a broken one is not trimmed
        (``KitiumQueueError`` naming the first problem); ``verify_first=False`` trims
        anyway, once the broken part has been examined.
        """
        age = self.max_age_ms if max_age is None else to_ms(max_age, "max_age", minimum=1)
        keep = (
            self.max_entries
            if max_entries is None
            else to_int(max_entries, "max_entries", minimum=1, maximum=10**12)
        )
        if age is None and keep is None:
            raise ConfigurationError("trim needs max_age or max_entries (or the log's own)")
        if verify_first:
            report = await self.verify()
            if not report.ok and report.first_problem is not None:
                p = report.first_problem
                raise KitiumQueueError(
                    f"the audit chain is broken ({p.kind} at {p.entry_id or 'the end'}: "
                    f"{p.detail}); trimming would remove the evidence: examine it (audit "
                    "verify / query), then trim with verify_first=False (--force)"
                )
        for _ in range(10):
            needed, first = await self._first_kept(age, keep)
            if not needed:
                return 0
            try:
                return await self._trim_to(first, age, keep, principal)
            except _TrimPointGone:
                continue  # another process trimmed meanwhile: look again
        return 0

    async def _first_kept(
        self, age: int | None, keep: int | None
    ) -> tuple[bool, tuple[str, dict[str, str]] | None]:
        """(whether anything goes, the entry the log should start with: None when every
        entry goes)."""
        candidates: list[tuple[str, dict[str, str]] | None] = []
        total = int(await self.deployment.call("xlen", self.stream))
        if total == 0:
            return False, None
        if age is not None:
            cutoff = int(self._clock() * 1000 + self._offset_ms) - age
            page = await self._page(str(max(cutoff, 0)), "+", reverse=False)
            candidates.append(page[0] if page else None)
        # Over the limit: trim so that ``keep`` entries remain, the retention record
        # included.
        if keep is not None and total > keep and keep == 1:
            candidates.append(None)
        elif keep is not None and total > keep:
            skip, lo = total + 1 - keep, "-"
            while True:
                page = await self._page(lo, "+", reverse=False)
                if len(page) > skip:
                    candidates.append(page[skip])
                    break
                if len(page) < _PAGE:
                    candidates.append(None)
                    break
                skip -= len(page)
                lo = "(" + page[-1][0]
        if None in candidates:
            return True, None
        found = [c for c in candidates if c is not None]
        if not found:
            return False, None
        latest = max(found, key=lambda c: parse_id(c[0]))
        oldest = await self._page("-", "+", reverse=False)
        if oldest and oldest[0][0] == latest[0]:
            return False, None  # it starts there already
        return True, latest

    async def _trim_to(
        self,
        first: tuple[str, dict[str, str]] | None,
        age: int | None,
        keep: int | None,
        principal: str | None,
    ) -> int:
        rules = {"max_age_ms": age, "max_entries": keep}
        draft = Draft.make(principal, RETENTION_ACTION, "audit", "ok", rules)

        def meta_of(entry_id: str, n: int, prev: str) -> str:
            if first is None:  # everything goes: the record itself is the new start
                start = {"first_id": entry_id, "first_n": n, "first_prev": prev}
            else:
                f = first[1]
                start = {"first_id": first[0], "first_n": int(f.get("n", "0") or 0),
                         "first_prev": f.get("prev", "")}  # fmt: skip
            return orjson.dumps({**rules, **start}).decode()

        before = int(await self.deployment.call("xlen", self.stream))
        await self.write(
            [draft], trim=(lambda ids: ids[0]) if first is None else first[0], meta_of=meta_of
        )
        after = int(await self.deployment.call("xlen", self.stream))
        return max(0, before + 1 - after)

    def watch(self, queue: Any) -> None:
        """Write every administrative command of ``queue`` (a ``JobQueue``) to this
        log (``subscriber.AdminAuditor``); watching twice is a no-op."""
        from .subscriber import AdminAuditor

        self._need_key("be written")
        if not any(
            isinstance(s, AdminAuditor) and s.audit is self for s in queue.hooks.subscribers
        ):
            queue.subscribe(AdminAuditor(self))

    async def close(self) -> None:
        """Write what is queued (within a few seconds), then release the connection."""
        if self._task is not None and not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 5.0)
            except (asyncio.TimeoutError, Exception):
                log.error(
                    "audit log: %d entries could not be written before close", len(self._pending)
                )
                self._task.cancel()
                for d in self._pending:  # nobody waits forever for an entry never written
                    for fut in d.waiters:
                        if not fut.done():
                            fut.set_exception(KitiumQueueError("the audit log was closed"))
                self._pending.clear()
        await self.deployment.close()


class _TrimPointGone(Exception):
    """The entry a trim would start the log with was removed meanwhile."""


def _matcher(value: object, what: str) -> Callable[[str], bool]:
    """An exact name, or a shell-style glob (``fnmatch``, case-sensitive)."""
    if not isinstance(value, str) or not value or len(value) > 512:
        raise ConfigurationError(f"{what} filter must be a str of 1 to 512 characters")
    if any(c in value for c in "*?["):
        return lambda s: fnmatch.fnmatchcase(s, value)
    return lambda s: s == value
