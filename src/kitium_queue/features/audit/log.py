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
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ...errors import ConfigurationError, DamagedKeyError, KitiumQueueError
from ...limits import clip, get_logger, printable
from ...options import to_int, to_ms
from .chain import AuditKeys, Draft, entry_mac, parse_id
from .conn import Deployment, LuaScript
from .read import AuditEntry, AuditPage, AuditReader, damaged_stream, decode
from .retention import TrimPointGone, first_kept, trim_to
from .verify import AuditHead, AuditReport

__all__ = ["AuditEntry", "AuditLog", "AuditPage", "Effect"]

log = get_logger(__name__)

_APPEND = LuaScript(__package__, "append")
#: Entries per append script call.
BATCH = 100
#: Entries the background writer holds before it drops the oldest (Redis unreachable).
MAX_PENDING = 10_000
#: Attempts of one append under contention before giving up.
MAX_TRIES = 200


@dataclass(frozen=True, slots=True)
class Effect:
    """A change written atomically with its audit entry (``append.lua``): a grant
    (``"grant"`` / ``"revoke"``), or a compare-and-set of one hash field (``"cas"``:
    ``field`` is set to ``value`` only while it holds ``member``; ``"cas-new"``: only
    while it does not exist)."""

    kind: str  # "grant" | "revoke" | "cas" | "cas-new" | "denied" | "denied-flush"
    hash_key: str
    set_key: str
    field: str
    value: str | bytes
    member: str | bytes


def _refusal(stream: str, kind: str, reply: Sequence[Any]) -> KitiumQueueError:
    """The error for a reply of ``append.lua`` that wrote nothing for good."""
    if kind == "damaged":
        key = decode(reply[2])
        if key == stream:
            return damaged_stream(key, decode(reply[3]))
        return KitiumQueueError(
            f"the change was not made and nothing was audited: key {key} holds "
            "another Redis type than kitium-queue writes there (damaged or written by "
            "hand); inspect it, delete it, and make the change again"
        )
    if kind == "unchainable":
        at, why = clip(decode(reply[2]), 60), decode(reply[3])
        if why.startswith("the highest id"):
            fix = (
                f"keep a copy of the stream, remove the entries with such ids (XDEL) "
                f"and set its last id back (XSETID {stream} <id of the last entry "
                "left>)"
            )
        else:
            fix = (
                f"keep a copy of the stream, then remove that entry (XDEL {stream} "
                f"{at}): new entries follow the one before it, and verify keeps "
                "reporting the removal"
            )
        return DamagedKeyError(
            f"nothing was audited: the audit log cannot be continued after {at}: "
            f"{why}; it was changed outside kitium-queue. Run 'kitium-queue audit "
            f"verify' to see what was changed; {fix}"
        )
    return KitiumQueueError(f"audit append: unexpected reply {clip(kind, 40)!r}")


@dataclass(slots=True)
class _Head:
    last_id: str
    n: int
    mac: str
    top: tuple[int, int]


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
        self.reader = AuditReader(self.deployment, self.stream, self.keys)
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
                    printable(dropped.action),
                    printable(dropped.resource),
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
        replies: list[Any] | None = None,
    ) -> list[str]:
        """Append ``drafts`` now, in one script call (retried on contention); returns
        their ids, or [] (nothing written) when ``effect`` is a revoke of a missing
        grant or a compare-and-set whose field no longer holds the value expected.

        ``trim``: remove the entries below this id in the same call (or a function of
        the new ids giving it). ``meta_of(id, n, prev)``: the ``meta`` of the first
        draft, once its place is known (retention records name themselves).
        ``replies``: the script's last reply is added to it (the refusal bound's
        ``"suppressed"`` and ``"summary"`` replies write no entry and return []).
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
                kind = decode(reply[0])
                if replies is not None and kind != "conflict":
                    replies.append(reply)
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
                if kind in ("absent", "changed", "suppressed", "summary"):
                    return []
                if kind == "gone":
                    raise TrimPointGone()
                raise _refusal(self.stream, kind, reply)
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
        top = parse_id(decode(reply[5]))
        return _Head(decode(reply[1]), int(reply[2]), decode(reply[3]), top)

    async def _fetch_head(self) -> _Head:
        # A call that cannot match (k = 0) answers with the chain's last entry.
        reply = await self.deployment.run(
            _APPEND, [self.stream] * 3, ["?", "0", "", "", "", "", ""]
        )
        kind = decode(reply[0])
        if kind != "conflict":
            raise _refusal(self.stream, kind, reply)
        return self._head_from(reply)

    # ------------------------------------------------------------------ reading
    def entries(self, **kw: Any) -> AsyncIterator[tuple[str, dict[str, str]]]:
        """``AuditReader.entries``: every entry in a range, page by page."""
        return self.reader.entries(**kw)

    async def query(self, **filters: Any) -> list[AuditEntry]:
        """Entries matching every filter given, newest first by default
        (``AuditReader.query_page``: ``principal``, ``action``, ``resource``,
        ``outcome``, ``since``, ``until``, ``limit``, ``newest_first``, ``max_scan``,
        ``cursor``)."""
        return await self.reader.query(**filters)

    async def query_page(self, **filters: Any) -> AuditPage:
        """``query`` by pages: the entries and the ``next_cursor`` to pass as
        ``cursor=`` for the next page (``AuditReader.query_page``)::

            page = await log.query_page(action="access.*", limit=50)
            while page.next_cursor:
                page = await log.query_page(action="access.*", limit=50,
                                            cursor=page.next_cursor)
        """
        return await self.reader.query_page(**filters)

    async def verify(self, *, checkpoint: AuditHead | None = None) -> AuditReport:
        """Check the whole chain (``AuditReader.verify``; what is reported:
        ``verify.py``)."""
        self._need_key("be verified")
        return await self.reader.verify(checkpoint=checkpoint)

    def now_ms(self) -> int:
        """The Redis clock as this writer estimates it (ms)."""
        return int(self._clock() * 1000 + self._offset_ms)

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
                if p.kind == "unverifiable":
                    # Not a break: entries signed with keys not given (or a wrong key).
                    raise KitiumQueueError(
                        f"the audit chain was not trimmed: it cannot be verified with the "
                        f"keys given ({p.detail}); give them and trim again (or trim with "
                        "verify_first=False, --force, once you know why)"
                    )
                raise KitiumQueueError(
                    f"the audit chain is broken ({p.kind} at {p.entry_id or 'the end'}: "
                    f"{p.detail}); trimming would remove the evidence: examine it (audit "
                    "verify / query), then trim with verify_first=False (--force)"
                )
        for _ in range(10):
            needed, first = await first_kept(self, age, keep)
            if not needed:
                return 0
            try:
                return await trim_to(self, first, age, keep, principal)
            except TrimPointGone:
                continue  # another process trimmed meanwhile: look again
        return 0

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
