"""Grants in Redis, and the per-process cache that keeps checks off the network.

Keys (deployment-wide, ``audit/conn.py``): ``<prefix>:{!access}:grants:<principal>``,
a HASH queue pattern -> the grant as JSON (permissions, role, who granted it, when);
``<prefix>:{!access}:principals``, a SET of the principals holding any grant. A grant
change is written by the audit log's append script together with its audit entry
(``Effect``): both or neither.

The cache: a principal's grants are read with one ``HGETALL`` and kept for
``cache_ttl_ms``; so a grant or revoke made by another process takes effect here within
that bound (in the process that made it, at once: a read begun before the change is
neither cached nor shared with the checks after it). Concurrent checks of a principal
whose grants are not cached share one read. A grant read back from Redis that does not
parse (edited by hand, damaged) grants nothing and is logged; so does a grants key of
another Redis type (the principal's checks are refused: fail closed), and a principals
set of another type lists no principal.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from redis.exceptions import ResponseError

from ...enums import QueueRole
from ...errors import ConfigurationError
from ...limits import get_logger, printable
from ..audit.chain import Draft
from ..audit.conn import Deployment
from ..audit.log import AuditLog, Effect
from .glob import QueuePattern
from .model import AccessEntry, Permission, QueuePermissions

__all__ = ["GrantStore", "Grants"]

log = get_logger(__name__)

#: Principals whose grants one process keeps cached at most.
MAX_CACHED = 10_000
#: Queue names per principal whose verdicts are memoized at most.
MAX_MEMO = 1024


@dataclass(slots=True)
class Grants:
    """The grants of one principal, compiled, with verdicts memoized per queue name."""

    entries: list[tuple[QueuePattern, frozenset[Permission], AccessEntry]]
    expires: float
    memo: dict[str, tuple[frozenset[Permission], tuple[str, ...]]]

    def on(self, queue: str) -> tuple[frozenset[Permission], tuple[str, ...]]:
        """What the principal may do on ``queue``, and the patterns that allow it."""
        got = self.memo.get(queue)
        if got is None:
            perms: set[Permission] = set()
            via: list[str] = []
            for pattern, allowed, _ in self.entries:
                if pattern.matches(queue):
                    perms |= allowed
                    via.append(pattern.text)
            got = (frozenset(perms), tuple(via))
            if len(self.memo) >= MAX_MEMO:
                self.memo.clear()
            self.memo[queue] = got
        return got


def _encode(entry: AccessEntry) -> str:
    return orjson.dumps(
        {
            "perms": sorted(p.value for p in entry.permissions.permissions()),
            "role": entry.role.value if entry.role else None,
            "by": entry.granted_by,
            "at": entry.granted_at,
        }
    ).decode()


def _decode(principal: str, pattern: str, raw: bytes) -> AccessEntry | None:
    try:
        data = orjson.loads(raw)
        perms = [Permission(p) for p in data.get("perms") or ()]
        role = QueueRole(data["role"]) if data.get("role") else None
        by, at = data.get("by"), data.get("at")
        return AccessEntry(
            principal,
            pattern,
            QueuePermissions.of(perms),
            role,
            by if isinstance(by, str) else None,
            at if isinstance(at, int) and not isinstance(at, bool) else None,
        )
    except (orjson.JSONDecodeError, ValueError, TypeError, AttributeError, KeyError) as exc:
        log.warning(
            "access: the grant of %s on %s in Redis does not parse (%s); it grants nothing",
            printable(principal)[:200],
            printable(pattern)[:200],
            type(exc).__name__,
        )
        return None


class GrantStore:
    """Reads, writes and caches grants (see the module docstring)."""

    def __init__(
        self,
        deployment: Deployment,
        audit: AuditLog | None,
        *,
        cache_ttl_ms: int,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.deployment = deployment
        self.audit = audit
        self.cache_ttl_s = cache_ttl_ms / 1000
        self._now = monotonic
        self._cache: dict[str, Grants] = {}
        self._loading: dict[str, asyncio.Future[Grants]] = {}
        # Bumped by every forget(): a read that began before a grant change of this
        # process is not cached (its reply may predate the change).
        self._generation = 0
        self.principals_key = deployment.key("principals")

    def key(self, principal: str) -> str:
        return self.deployment.key("grants:" + principal)

    # ------------------------------------------------------------------ reading
    def cached(self, principal: str) -> Grants | None:
        """The principal's grants if cached and fresh, else None."""
        got = self._cache.get(principal)
        if got is not None and got.expires > self._now():
            return got
        return None

    async def load(self, principal: str) -> Grants:
        """The principal's grants: from the cache, else from Redis (one read shared by
        concurrent callers)."""
        got = self.cached(principal)
        if got is not None:
            return got
        pending = self._loading.get(principal)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Grants] = asyncio.get_running_loop().create_future()
        self._loading[principal] = fut
        generation = self._generation
        try:
            entries = await self.read(principal)
            grants = Grants(
                [(QueuePattern(e.queue_pattern), e.effective(), e) for e in entries],
                self._now() + self.cache_ttl_s,
                {},
            )
            if self.cache_ttl_s > 0 and generation == self._generation:
                if len(self._cache) >= MAX_CACHED:
                    for old in list(self._cache)[: MAX_CACHED // 10]:
                        del self._cache[old]
                self._cache[principal] = grants
            fut.set_result(grants)
            return grants
        except Exception as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: concurrent waiters re-raise it themselves
            raise
        except BaseException:
            fut.cancel()
            raise
        finally:
            if self._loading.get(principal) is fut:
                del self._loading[principal]

    def forget(self, principal: str | None = None) -> None:
        """Drop the cached grants of ``principal`` (of everyone when None). A read of
        them under way is neither cached nor shared with later checks: its reply may
        predate the change that made this call."""
        self._generation += 1
        if principal is None:
            self._cache.clear()
            self._loading.clear()
        else:
            self._cache.pop(principal, None)
            self._loading.pop(principal, None)

    async def _damaged(self, method: str, key: str, what: str) -> Any:
        """``method`` on ``key``, or None (logged) when the key holds another type."""
        try:
            return await self.deployment.call(method, key)
        except ResponseError as exc:
            if "WRONGTYPE" not in str(exc):
                raise
            log.warning(
                "access: key %s holds another Redis type than kitium-queue writes there "
                "(damaged or written by hand); %s. Inspect and delete it, then grant again",
                printable(key)[:300],
                what,
            )
            return None

    async def read(self, principal: str) -> list[AccessEntry]:
        """The grants of ``principal`` as stored, ordered by pattern."""
        raw: dict[Any, bytes] | None = await self._damaged(
            "hgetall", self.key(principal), "it grants nothing (every check is refused)"
        )
        if raw is None:
            return []
        out = []
        for k, v in sorted(raw.items()):
            pattern = k.decode("utf-8", "backslashreplace") if isinstance(k, bytes) else str(k)
            entry = _decode(principal, pattern, v)
            if entry is not None:
                out.append(entry)
        return out

    async def principals(self) -> list[str]:
        """Every principal holding a grant, sorted."""
        raw = await self._damaged("smembers", self.principals_key, "no principal is listed")
        return sorted(m.decode("utf-8", "backslashreplace") for m in raw or ())

    # ------------------------------------------------------------------ writing
    def _audit(self) -> AuditLog:
        if self.audit is None:
            raise ConfigurationError("grant changes need the audit log (internal error)")
        return self.audit

    async def put(self, entry: AccessEntry, by: str | None) -> AccessEntry:
        """Store ``entry`` (replacing the principal's grant on the same pattern) with
        its audit entry, atomically."""
        stamped = AccessEntry(
            entry.principal_id,
            entry.queue_pattern,
            entry.permissions,
            entry.role,
            by,
            int(time.time() * 1000),
        )
        meta = {
            "principal": entry.principal_id,
            "role": entry.role.value if entry.role else None,
            "permissions": sorted(p.value for p in entry.permissions.permissions()),
        }
        draft = Draft.make(by, "access.grant", entry.queue_pattern, "ok", meta, strict=False)
        effect = Effect(
            "grant",
            self.key(entry.principal_id),
            self.principals_key,
            entry.queue_pattern,
            _encode(stamped),
            entry.principal_id,
        )
        await self._audit().write([draft], effect=effect)
        self.forget(entry.principal_id)
        return stamped

    async def delete(self, principal: str, pattern: str, by: str | None) -> bool:
        """Remove the grant of ``principal`` on ``pattern`` (exactly as granted) with its
        audit entry, atomically; False (and no entry) when there was none."""
        meta = {"principal": principal}
        draft = Draft.make(by, "access.revoke", pattern, "ok", meta, strict=False)
        effect = Effect("revoke", self.key(principal), self.principals_key, pattern, "", principal)
        ids = await self._audit().write([draft], effect=effect)
        self.forget(principal)
        return bool(ids)
