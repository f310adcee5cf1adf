"""The bound on ``access.denied`` entries: a refused call repeated in a loop cannot grow
the audit log at the caller's rate.

Per (principal, attempted action, resource) and window (``window_ms``, 10 s by
default), the first ``burst`` refusals (10) are written one entry each, before the
caller is refused, as every refusal was before. Past them, within the window, each
refusal is counted instead (the caller is still refused), in a small counter hash in
Redis, by the same ``append.lua`` call that decides whether an entry is written: no
read-then-write race between processes. The window's count then becomes ONE
``access.denied`` entry with ``suppressed`` (how many were counted), ``window_start``
and ``window_end`` (ms), written by whichever comes first:

* the next refusal of the same triple after the window (the summary goes first, in the
  same script call, then that refusal's own entry);
* the process that counted them, at the window's end (a timer) or when it closes
  (``close``: its windows are summed up early);
* any process's ``flush()`` (``AccessControlManager.flush_refusals``): counters with
  counted refusals are listed in a sorted set by the end of their window, so a count
  left by a process that died is summed up by the next flush anywhere.

Every summary is a compare-and-set on the counter's state: two processes never write the
same count twice, and none is dropped. So the log grows by at most ``burst`` + 1 entries
per window and triple, and the sum of the entries and their ``suppressed`` counts is the
number of refusals. A counter expires with its window when it counted nothing, and
``KEEP_MS`` (7 days) after it otherwise: a count nobody summed up by then is reported by
the next ``flush()`` (an error logged; it is gone).

Keys: ``<prefix>:{!access}:refusals`` (the sorted set) and
``<prefix>:{!access}:refusals:<32 hex digits>``, a SHA-256 of the triple: no principal,
action or resource text reaches a key name (no glob or hash-tag character of it can).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from ...errors import ConfigurationError, KitiumQueueError
from ...leader import cancel_and_wait
from ...limits import get_logger
from .chain import Draft
from .log import Effect
from .read import decode

if TYPE_CHECKING:
    from .log import AuditLog

__all__ = ["KEEP_MS", "RefusalBound"]

log = get_logger(__name__)

#: How long a counter that counted refusals is kept after its window (ms).
KEEP_MS = 7 * 24 * 3600 * 1000
#: Counters summed up per ``flush()`` call.
FLUSH_BATCH = 100
_MEMBER = re.compile(r"[0-9a-f]{32}")
_ACTION = "access.denied"
#: Metadata of a refusal its summary keeps besides the action and permission.
_KEPT = ("role", "needs_role", "via")


def _int(raw: Any) -> int | None:
    text = "" if raw is None else decode(raw)
    return int(text) if text.isdigit() and len(text) <= 15 else None


class RefusalBound:
    """Writes refusals to ``audit`` within the bound (see the module docstring)."""

    def __init__(self, audit: AuditLog, *, burst: int = 10, window_ms: int = 10_000) -> None:
        if not 1 <= burst <= 100_000:
            raise ConfigurationError(f"refusal_burst must be 1..100000, got {burst!r:.40}")
        if not 1 <= window_ms <= 86_400_000:
            raise ConfigurationError(f"refusal_window must be 1 ms..1 day, got {window_ms!r:.40}")
        self.audit = audit
        self.burst = burst
        self.window_ms = window_ms
        self.index = audit.deployment.key("refusals")
        self._args = f"{window_ms} {burst} {KEEP_MS}"
        #: Counters this process counted refusals in -> their window's end (Redis ms).
        self._held: dict[str, int] = {}
        self._timer: asyncio.Task[None] | None = None

    def member(self, principal: str | None, action: str, resource: str, via: str = "") -> str:
        """The counter's name of a triple (a hash: never the text itself); ``via``
        (``dashboard``: a refusal by the dashboard role) counts apart from the grants'
        refusals of the same triple, so a summary counts refusals of one kind."""
        h = hashlib.sha256(b"kq-refusal\x00")
        for part in (principal or "", action, resource, *((via,) if via else ())):
            raw = part.encode("utf-8", "surrogatepass")
            h.update(len(raw).to_bytes(4, "big") + raw)
        return h.hexdigest()[:32]

    def _effect(self, kind: str, member: str, state: str) -> Effect:
        return Effect(
            kind,
            self.audit.deployment.key(f"refusals:{member}"),
            self.index,
            member,
            self._args,
            state,
        )

    @staticmethod
    def _summary(
        principal: str | None, resource: str, meta: Mapping[str, Any], state: str
    ) -> Draft:
        start, end, count = (int(x) for x in state.split(" "))
        summary: dict[str, Any] = {"action": meta.get("action")}
        if "permission" in meta or "via" not in meta:
            summary["permission"] = meta.get("permission")
        # The dashboard's refusals (via: dashboard) keep what their entries say.
        summary.update({k: meta[k] for k in _KEPT if k in meta})
        summary.update(suppressed=count, window_start=start, window_end=end)
        return Draft.make(principal, _ACTION, resource, "denied", summary, strict=False)

    async def deny(self, principal: str | None, resource: str, meta: Mapping[str, Any]) -> bool:
        """Record one refusal (``meta``: ``action``, ``permission``, ``grants``; or the
        dashboard's ``action``, ``role``, ``needs_role``, ``via``): an entry, or a
        count. True when it was written as an entry."""
        member = self.member(
            principal, str(meta.get("action", "")), resource, str(meta.get("via") or "")
        )
        state = ""
        for _ in range(20):
            drafts = [] if not state else [self._summary(principal, resource, meta, state)]
            drafts.append(Draft.make(principal, _ACTION, resource, "denied", meta, strict=False))
            replies: list[Any] = []
            await self.audit.write(
                drafts, effect=self._effect("denied", member, state), replies=replies
            )
            kind = decode(replies[-1][0])
            if kind == "ok":
                return True
            if kind == "suppressed":
                self._hold(member, int(replies[-1][3]))
                return False
            if kind == "summary":
                state = " ".join(decode(x) for x in replies[-1][2:5])
                self._held.pop(member, None)
                continue
            state = ""  # changed: another process summed it up meanwhile
        raise KitiumQueueError("audit log: the refusal could not be recorded (contention)")

    def _hold(self, member: str, end: int) -> None:
        self._held[member] = end
        if self._timer is None or self._timer.done():
            self._timer = asyncio.get_running_loop().create_task(self._run_timer())

    async def _run_timer(self) -> None:
        pause = 0.5
        while self._held:
            wait = (min(self._held.values()) - self.audit.now_ms()) / 1000 + 0.01
            if wait > 0:
                await asyncio.sleep(wait)
            # Taken before the flush reads the index: a window ending while it runs is
            # still held (and summed up next round), not dropped unsummed.
            now = self.audit.now_ms()
            try:
                # Every due window this process counted in, not only one batch of the
                # index: a held window left out would wait for another process's flush.
                for _ in range(len(self._held) // FLUSH_BATCH + 1):
                    if await self._flush() < FLUSH_BATCH:
                        break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "audit log: counted refusals not summed up yet (%s: %s); retrying",
                    type(exc).__name__,
                    exc,
                )
                await asyncio.sleep(pause)
                pause = min(pause * 2, 30.0)
                continue
            pause = 0.5
            for m, end in list(self._held.items()):
                if end <= now:
                    del self._held[m]

    async def flush(self, *, held: bool = False) -> int:
        """Write the summary of every counter whose window is over (up to
        ``FLUSH_BATCH`` per call), and with ``held`` of every counter this process
        counted in, over or not. Returns how many summaries were written."""
        return await self._flush(held=held, written_only=True)

    async def _flush(self, *, held: bool = False, written_only: bool = False) -> int:
        """``flush``; returns how many counters of the index it took (``written_only``:
        how many summaries it wrote)."""
        dep = self.audit.deployment
        due = await dep.call(
            "zrangebyscore", self.index, "-inf", self.audit.now_ms(), start=0, num=FLUSH_BATCH
        )
        members = {decode(m) for m in due}
        if held:
            members |= set(self._held)
        written = 0
        for member in sorted(members):
            if not _MEMBER.fullmatch(member):
                log.error("audit log: %s holds a member no writer made; removed", self.index)
                await dep.call("zrem", self.index, member)
                continue
            written += await self._flush_one(member)
            if held:
                self._held.pop(member, None)
        return written if written_only else len(due)

    async def _flush_one(self, member: str) -> int:
        dep = self.audit.deployment
        key = dep.key(f"refusals:{member}")
        for _ in range(10):
            raw = await dep.call("hmget", key, "start", "end", "s", "who", "res", "meta")
            start, end, count = (_int(x) for x in raw[:3])
            if start is None or end is None or count is None:
                await dep.call("zrem", self.index, member)
                log.error(
                    "audit log: a count of refused calls (%s) expired or was damaged before "
                    "it was summed up; it is lost",
                    key,
                )
                return 0
            if count == 0:  # nothing counted: nothing to sum up
                await dep.call("zrem", self.index, member)
                return 0
            try:
                meta = orjson.loads(raw[5] or b"{}")
            except orjson.JSONDecodeError:
                meta = {}
            if not isinstance(meta, dict):
                meta = {}
            who = decode(raw[3]) if raw[3] else None
            state = f"{start} {end} {count}"
            draft = self._summary(who, decode(raw[4] or b""), meta, state)
            replies: list[Any] = []
            ids = await self.audit.write(
                [draft], effect=self._effect("denied-flush", member, state), replies=replies
            )
            if ids:
                return 1
            if decode(replies[-1][0]) == "absent":
                return 0
        return 0

    async def close(self) -> None:
        """Sum up the counts this process holds (windows ended early), stop the timer."""
        timer, self._timer = self._timer, None
        await cancel_and_wait(timer)  # again while a call took the cancel for its reply
        if self._held:
            try:
                await self.flush(held=True)
            except Exception as exc:
                log.error(
                    "audit log: counted refusals left in Redis for the next flush (%s: %s)",
                    type(exc).__name__,
                    exc,
                )
