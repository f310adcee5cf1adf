"""What the queue needs to know about the Redis server it writes to.

* At connect, ``check_eviction``: a ``maxmemory-policy`` other than ``noeviction`` lets
  Redis delete keys — job records, state sets, leases — to make room, silently. That is
  refused with a clear ``ConfigurationError`` unless the queue opted out
  (``settings={"allow_eviction": True}``; the engine then reports the records it finds
  missing instead of failing, see ``JobInfo.damaged`` and the DLQ reasons).
* ``memory_report`` for ``health_check``: memory in use against ``maxmemory``, the
  policy, and the persistence that protects acknowledged jobs (AOF with its
  ``appendfsync``, RDB snapshots, or none).
* Job records found missing under such a policy are reported by ``missing.py``; keys
  evicted while workers run are watched for by ``evictwatch.py``.
* ``write_refused``: the library's error for a write Redis refused as a server (out of
  memory, a failed background save, a read-only replica, too few replicas for
  ``min-replicas-to-write``, or busy with another client's long script): nothing of
  that call was written, because Redis refuses a script before its first write and,
  once a script wrote, lets it finish (the transitions stay whole).

Servers that do not answer ``INFO`` (no ``+info``, some managed services) are not
checked: a log line says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import (
    ClusterError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from .connerrors import NOPERM
from .errors import ConfigurationError, WriteRefusedError
from .limits import get_logger
from .pools import ping

__all__ = [
    "ANSWERED_ERRORS", "WRITES_STALLED", "MemoryReport", "WriteRefusals", "answered_check",
    "check_eviction", "health_error", "memory_report", "node_info", "ping_refusal",
    "refuses_writes",
    "reply_text", "script_probe", "server_checks", "write_probe", "write_refused",
    "write_refused_cause", "writes_stalled",
]  # fmt: skip

log = get_logger(__name__)

#: The only policy under which Redis never deletes a queue's keys on its own.
SAFE_POLICY = "noeviction"
#: While Redis refuses writes, at most one report per this many seconds (queue, process).
REFUSAL_LOG_S = 30.0
#: A refusal has ended once a call succeeds this many seconds after the last refused one.
QUIET_S = 2.0


@dataclass(frozen=True, slots=True)
class MemoryReport:
    """Memory and persistence of the Redis server (``HealthStatus.memory``).

    ``maxmemory_bytes`` 0 means no limit; ``persistence`` is ``"aof (appendfsync
    everysec)"``, ``"rdb"``, ``"aof (...) + rdb"`` or ``"none"``.
    """

    used_bytes: int
    maxmemory_bytes: int
    policy: str
    persistence: str
    #: On a Cluster, the node the figures are from ("host:port"): the primary that
    #: holds the queue's hash slot. None on a single server.
    node: str | None = None
    #: Keys the server evicted since it started (``INFO stats``; None: not answered).
    evicted_keys: int | None = None

    @property
    def used_fraction(self) -> float | None:
        """Share of ``maxmemory`` in use (None without a limit)."""
        return self.used_bytes / self.maxmemory_bytes if self.maxmemory_bytes else None


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _node(client: Any, key: str | None) -> Any:
    """On a Cluster client, the primary that holds ``key``'s hash slot; else None."""
    find = getattr(client, "get_node_from_key", None)
    return None if key is None or find is None else find(key)


async def node_info(client: Any, section: str, key: str | None = None) -> dict[str, Any]:
    """``INFO section`` as one server's dict: on a Cluster, of the primary that holds
    ``key`` (one of a queue's keys: the node that holds the queue), or of the client's
    default node without one. Errors are raised."""
    node = _node(client, key)
    got = await (client.info(section, target_nodes=node) if node else client.info(section))
    if got and all(isinstance(v, dict) for v in got.values()) and not _one_server(got):
        got = next(iter(got.values()))  # answered per node: the first
    return dict(got) if isinstance(got, dict) else {}


def _one_server(info: dict[Any, Any]) -> bool:
    return any(k in info for k in ("role", "redis_version", "used_memory", "maxmemory"))


async def _info(client: Any, section: str, key: str | None = None) -> dict[str, Any] | None:
    """``INFO section`` of the server; on a Cluster, of the primary that holds ``key``
    (the queue's slot), or of the client's default node without a key."""
    try:
        got = await node_info(client, section, key)
    except (NoPermissionError, ResponseError) as exc:
        if _refuses_reads(exc):  # busy: no answer yet, not a server without INFO
            raise
        log.info(
            "Redis INFO %s not available (%s): server checks skipped", section, type(exc).__name__
        )
        return None
    return got or None


async def _policies(client: Any) -> dict[str, str] | None:
    """``maxmemory-policy`` of the server, or of every primary of a Cluster (a queue's
    slot may move to any of them), by node; None when ``INFO`` is not answered."""
    if getattr(client, "get_primaries", None) is None:
        info = await _info(client, "memory")
        return None if info is None else {"": _text(info.get("maxmemory_policy", SAFE_POLICY))}
    try:
        per = await client.info("memory", target_nodes=client.get_primaries())
    except (NoPermissionError, ResponseError) as exc:
        if _refuses_reads(exc):
            raise
        log.info("Redis INFO memory not available (%s): server checks skipped", type(exc).__name__)
        return None
    if isinstance(per, dict) and "maxmemory_policy" in per:  # a single primary
        per = {"": per}
    if not isinstance(per, dict):
        return None
    return {
        _text(name): _text(v.get("maxmemory_policy", SAFE_POLICY))
        for name, v in per.items()
        if isinstance(v, dict)
    }


_UNCHECKED = (
    "not checked: the server does not answer INFO (an ACL user without +info, or a "
    "service that disabled it); make sure it is noeviction, or job records may be "
    "evicted silently"
)
#: ``check_eviction`` says once per process that it could not check.
_unchecked_said: list[str] = []


async def check_eviction(client: Any, queue: str, allow_eviction: bool) -> None:
    """Refuse a server whose ``maxmemory-policy`` may evict the queue's keys (on a
    Cluster: any primary's, named)."""
    per = await _policies(client)
    if per is None:
        if not _unchecked_said:
            _unchecked_said.append(queue)
            log.warning("queue %s: Redis maxmemory-policy %s", queue, _UNCHECKED)
        return
    unsafe = {n: p for n, p in per.items() if p != SAFE_POLICY}
    if not unsafe:
        return
    policy = ", ".join(f"{p} on node {n}" if n else p for n, p in sorted(unsafe.items()))
    if allow_eviction:
        log.warning(
            "queue %s: Redis maxmemory-policy is %s: it may evict job records; "
            "the queue reports the records it finds missing (allow_eviction=True)",
            queue,
            policy,
        )
        return
    raise ConfigurationError(
        f"Redis maxmemory-policy is {policy} for queue {queue!r}: under memory pressure "
        "Redis would delete job records and state sets silently. Set "
        "'maxmemory-policy noeviction' (CONFIG SET maxmemory-policy noeviction, in "
        "redis.conf, or on a managed service in its parameter group or configuration), "
        "or accept the risk with settings={'allow_eviction': True}"
    )


def server_checks(
    memory: MemoryReport | None, role: str | None, *, allow_eviction: bool, max_memory: float
) -> list[tuple[str, bool, str]]:
    """The server checks of a readiness probe (``kitium-queue health`` and the
    dashboard's server page), each (name, ok, detail): memory in use below
    ``max_memory`` of ``maxmemory``, an eviction policy that keeps the queue's keys (or
    one the queue allowed), and a primary (a replica refuses writes). Without ``INFO``
    the memory check is left out and the eviction policy is said to be unchecked (not
    failed)."""
    out: list[tuple[str, bool, str]] = []
    if memory is None:
        out.append(("eviction policy", True, _UNCHECKED))
    else:
        frac = memory.used_fraction
        used = (
            "no maxmemory limit"
            if frac is None
            else f"{frac:.0%} of maxmemory used (limit {max_memory:.0%})"
        )
        out.append(("memory", frac is None or frac < max_memory, used))
        safe = memory.policy in (SAFE_POLICY, "")
        policy = f"maxmemory-policy {memory.policy or 'unknown'}"
        if not safe:
            policy += " may evict job records" + (
                " (allowed by settings)" if allow_eviction else ""
            )
        if memory.evicted_keys:
            policy += f"; {memory.evicted_keys} keys evicted since the server started"
        out.append(("eviction policy", safe or allow_eviction, policy))
    if role is not None:
        primary = role == "master"
        out.append(
            (
                "primary",
                primary,
                "the server is a primary"
                if primary
                else f"the server is a {role}: writes are refused",
            )
        )
    return out


async def memory_report(
    client: Any, *, config: bool = False, key: str | None = None
) -> MemoryReport | None:
    """Memory and persistence, or None when the server does not answer ``INFO``.

    From ``INFO`` alone: AOF on or off, and RDB when the server has saved a snapshot.
    With ``config`` (operator tools such as ``kitium-queue health``) it also reads
    ``appendfsync`` and the ``save`` rules with ``CONFIG GET``, when the user may: once
    refused, it is not sent again on ``client`` by this process (each refusal is an
    ``ACL LOG`` entry). On a Cluster, ``key`` (one of the queue's) picks the primary
    that holds the queue.
    """
    try:
        mem = await _info(client, "memory", key)
        per = await _info(client, "persistence", key)
        stats = await _info(client, "stats", key)
    except ResponseError:  # busy: reads refused too (health_check's error says so)
        return None
    if mem is None:
        return None
    parts = []
    if per is not None:
        # CONFIG GET refused (a managed service, an ACL user without it): what INFO
        # says stands, and it is not asked again.
        rules = await _config(client, "save", key) if config else None
        if str(per.get("aof_enabled", "0")) == "1":
            fsync = await _config(client, "appendfsync", key) if rules is not None else None
            parts.append(f"aof (appendfsync {fsync})" if fsync else "aof")
        saved = (
            int(per.get("rdb_saves", 0) or 0) > 0
            or int(per.get("rdb_last_bgsave_time_sec", -1) or -1) >= 0
        )
        if bool(rules) if rules is not None else saved:
            parts.append("rdb")
    return MemoryReport(
        used_bytes=int(mem.get("used_memory", 0) or 0),
        maxmemory_bytes=int(mem.get("maxmemory", 0) or 0),
        policy=_text(mem.get("maxmemory_policy", "")),
        persistence=" + ".join(parts) if parts else ("none" if per is not None else "unknown"),
        node=None if (node := _node(client, key)) is None else str(node.name),
        evicted_keys=None if stats is None else int(stats.get("evicted_keys", 0) or 0),
    )


# Clients whose CONFIG GET the server refused for good (the ACL, a renamed command): it
# is not sent again from this process, since each refusal adds an ACL LOG entry.
_CONFIG_REFUSED: weakref.WeakSet[Any] = weakref.WeakSet()


async def _config(client: Any, name: str, key: str | None = None) -> str | None:
    """A server setting ('' when it is empty), or None when ``CONFIG GET`` is refused
    (renamed away, not in the ACL user's commands: then not asked again on ``client``
    by this process); on a Cluster, of the primary that holds ``key``."""
    try:
        if client in _CONFIG_REFUSED:
            return None
    except TypeError:  # a client that takes no weak reference: asked each time
        pass
    node = _node(client, key)
    try:
        if node is not None:
            got = await client.config_get(name, target_nodes=node)
        else:
            got = await client.config_get(name)
    except (NoPermissionError, ResponseError) as exc:
        text = str(exc)
        if isinstance(exc, NoPermissionError) or NOPERM.search(text) or "unknown command" in text:
            with contextlib.suppress(TypeError):
                _CONFIG_REFUSED.add(client)
        return None
    if not got:
        return ""
    value = next(iter(got.values()))
    if isinstance(value, dict):  # a cluster client: per node
        value = next(iter(value.values()), "")
    return _text(value).strip()


#: Error replies of a server that refuses writes, what each means, what to do about it,
#: and whether reads go on meanwhile.
_REFUSALS = (
    (
        "OOM",
        "Redis is out of memory (maxmemory reached with the noeviction policy)",
        "free memory (see what holds it: redis-cli --bigkeys or MEMORY STATS; if the "
        "queue's finished jobs do, keep fewer: remove_on_complete / remove_on_fail, "
        "replay or remove DLQ jobs) or raise maxmemory",
        True,
    ),
    ("MISCONF", "Redis refuses writes because its last background save failed (MISCONF)",
     "fix the server's disk or persistence settings (see its log)", True),
    ("READONLY", "the server is a read-only replica",
     "point the queue at the primary (or use redis+sentinel:// to follow failovers)", True),
    (
        "NOREPLICAS",
        "Redis refuses writes because fewer replicas than its min-replicas-to-write are "
        "connected (NOREPLICAS)",
        "bring the replicas back (or lower min-replicas-to-write)",
        True,
    ),
    (
        "TRYAGAIN",
        "the queue's hash slot is moving between Redis Cluster nodes (resharding): calls "
        "on several of its keys are refused until all of them are on one node (TRYAGAIN)",
        "wait for the slot's migration to end (redis-cli --cluster reshard / rebalance; "
        "a queue with many jobs takes longer to move)",
        True,
    ),
    (
        "BUSY",
        "Redis is busy running a script or function for longer than its "
        "busy-reply-threshold (BUSY) and refuses every command, reads too",
        "find the long script (the client running it, SLOWLOG GET once it ends) and end it "
        "with SCRIPT KILL or FUNCTION KILL (possible while it has written nothing), or "
        "wait for it",
        False,
    ),
)  # fmt: skip


# A reply's leading code, whole ("BUSY" is not "BUSYGROUP"), with or without RESP's "-".
_CODE = {code: re.compile(rf"-?{code}\b") for code, *_ in _REFUSALS}

# redis-py 8.1 quotes the error's args tuple there: 'caused error: ("MISCONF ...",)'.
_PIPELINE_NOTE = re.compile(r"^Command # \d+ \(.*?\) of pipeline caused error: (?:\(['\"])?", re.S)


def refuses_writes(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it: a transaction aborted by its first command)
    is the server refusing writes as a whole: full, unable to save, or a replica."""
    return write_refused_cause(exc) is not None


class WriteRefusals:
    """Reports the server refusing writes (full, unable to save, a replica) when it
    starts, every ``REFUSAL_LOG_S`` while it lasts, and when it ends, per queue and
    process: a worker's claims, renewals and outcomes meet it many times a second, and
    each is retried. It ends once a call succeeded ``QUIET_S`` after the last refusal
    (on a full Redis some calls go through while others are refused)."""

    def __init__(self, queue: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.queue = queue
        self._clock = clock
        self.since: float | None = None
        self._last = self._logged = 0.0
        self._count = 0

    def failed(self, exc: BaseException) -> bool:
        """Whether ``exc`` is such a refusal (reported at a bounded rate)."""
        cause = write_refused_cause(exc)
        if cause is None:
            return False
        now = self._last = self._clock()
        self._count += 1
        if self.since is None or now - self._logged >= REFUSAL_LOG_S:
            log.error(
                "queue %s: %s%s. Workers hold their outcomes and retry; nothing is lost",
                self.queue,
                str(cause)[:600].rstrip("."),
                ""
                if self.since is None
                else f" ({self._count} calls refused in "
                f"{now - self._logged:.0f} s; refused for {now - self.since:.0f} s)",
            )
            self.since = now if self.since is None else self.since
            self._logged, self._count = now, 0
        return True

    def ok(self) -> None:
        """A call succeeded: report the end of a refusal (once it is ``QUIET_S`` old)."""
        if self.since is not None and self._clock() - self._last >= QUIET_S:
            log.warning(
                "queue %s: Redis accepts writes again (refused for %.1f s)",
                self.queue,
                self._last - self.since,
            )
            self.since = None


def write_refused_cause(exc: BaseException) -> WriteRefusedError | None:
    """The library's ``WriteRefusedError`` for ``exc`` when it (or what caused it: a
    transaction aborted by its first command) is the server refusing writes as a whole;
    else None."""
    seen: BaseException | None = exc
    for _ in range(3):
        if seen is None:
            break
        if isinstance(seen, WriteRefusedError):
            return seen
        text = reply_text(seen)
        got = write_refused(text) if isinstance(seen, RedisError) else None  # a reply, not any text
        if got is not None:
            return got
        seen = seen.__cause__ or seen.__context__
    return None


#: ``HealthStatus.error`` of a server that answers (the queue refuses its configuration,
#: a key of the queue is damaged, it refuses writes), by the name of the failed check.
ANSWERED_ERRORS = {
    "ConfigurationError": "configuration",
    "DamagedKeyError": "keys",
    "PermissionDeniedError": "permissions",
    "WriteRefusedError": "writes",
}


def answered_check(healthy: bool, error: str | None) -> str:
    """For a ``health_check`` result: the name of the check it failed although Redis
    answered (``ANSWERED_ERRORS``), or '' (healthy, or Redis did not answer)."""
    if healthy or not error:
        return ""
    return ANSWERED_ERRORS.get(error.split(":", 1)[0], "")


def reply_text(exc: BaseException) -> str:
    """The error reply ``exc`` carries, with the leading code redis-py took off the
    replies it has a class for, and without a pipeline's "Command # N" note."""
    text = _PIPELINE_NOTE.sub("", str(exc), count=1)
    if isinstance(exc, (OutOfMemoryError, ReadOnlyError)):
        text = ("OOM " if isinstance(exc, OutOfMemoryError) else "READONLY ") + text
    elif isinstance(exc, TryAgainError) or (
        type(exc) is ClusterError and text.startswith("TTL exhausted")
    ):  # redis-py's Cluster client gave up its redirections: nothing of the call ran
        text = "TRYAGAIN " + text
    return text


def _refuses_reads(exc: BaseException) -> bool:
    """Whether ``exc`` is a refusal of every command, reads too (``BUSY``)."""
    got = _refusal(reply_text(exc))
    return got is not None and not got[2]


#: A full Redis refuses what grows memory, not the scripts that write first what frees some.
_FULL_GOES_ON = (
    "; claims, lease renewals and outcomes go on: the workers drain the queue, which frees memory"
)


def health_error(text: str) -> str:
    """``HealthStatus.error`` for a server refusing writes with the reply ``text``."""
    what, todo, reads = _refusal(text) or ("Redis refuses writes", "see its log", True)
    full = _CODE["OOM"].match(text) is not None  # keep_running_when_full (lib_base.lua)
    return (
        f"WriteRefusedError: {what}: new jobs{'' if full else ', claims and outcomes'} are "
        f"refused until it accepts writes again{' (reads go on)' if reads else ''}"
        f"{_FULL_GOES_ON if full else ''}. To go on: {todo}. Redis said: {text[:200]}"
    )


async def ping_refusal(client: Any, timeout: float) -> str | None:
    """``PING`` the server: None for ``PONG``; for a server that answers but refuses
    writes, and with them ``PING`` (``MISCONF``, ``BUSY``: ``pools.ping``), what
    ``write_refused`` says about it, after ``WriteRefusedError:`` (as
    ``HealthStatus.error`` names errors). Other errors are raised."""
    exc = await ping(client, timeout)
    return None if exc is None else health_error(str(exc))


async def write_probe(client: Any, key: str, timeout: float) -> str | None:
    """Whether the server takes writes now, asked with a write that writes nothing:
    ``SET key "" XX`` on a key that never exists (``key``: the queue's
    ``write-probe``). Redis refuses it as it refuses the queue's writes: out of memory,
    unable to save, too few replicas for ``min-replicas-to-write``, a replica, busy.
    Returns the ``HealthStatus.error`` of such a refusal, else None (other errors, e.g.
    an ACL user without ``SET``, leave the question open). The queue's writes are
    scripts, so ``script_probe`` then asks whether the user may run them.

    Each probe gets ``timeout`` s (the health check's PING's bound): a server that
    answers PING but holds writes (``CLIENT PAUSE ... WRITE``, as a failover does) is
    reported as not accepting writes (``writes_stalled``) instead of waiting for it."""
    try:
        await asyncio.wait_for(client.set(key, b"", xx=True), timeout)
    except _NO_ANSWER:
        return _stalled(timeout)
    except RedisError as exc:
        text = reply_text(exc)
        if _refusal(text) is not None:
            return health_error(text)
    return await script_probe(client, key, timeout)


#: A script digest no server holds: ``EVALSHA`` of it answers ``NOSCRIPT`` when allowed.
_NO_SCRIPT = "0" * 40

# A probe that got no answer in time: asyncio's deadline, or redis-py's socket_timeout.
_NO_ANSWER = (asyncio.TimeoutError, RedisTimeoutError)

#: How ``HealthStatus.error`` begins for a server that answers PING but takes no write
#: in time (``writes_stalled``).
WRITES_STALLED = "WriteRefusedError: Redis answers PING but took no write within"


def _stalled(timeout: float) -> str:
    return (
        f"{WRITES_STALLED} {timeout:g} s: it is not accepting writes now (clients paused "
        "with CLIENT PAUSE ... WRITE, as during a failover or a switch-over, or a server "
        "too busy to run commands). New jobs, claims and outcomes wait, and time out, "
        "until it accepts writes again (reads go on). To go on: wait for the failover "
        "to end, or end a pause nobody meant to last (CLIENT UNPAUSE); the server's log "
        "says who paused it"
    )


def writes_stalled(error: str | None) -> bool:
    """Whether a ``HealthStatus.error`` says the server answers but took no write in
    time: anything that writes (the queue's scripts, its stats read too) would wait."""
    return bool(error) and str(error).startswith(WRITES_STALLED)


async def script_probe(client: Any, key: str, timeout: float) -> str | None:
    """Whether the Redis user may run the queue's scripts on its keys, asked with
    ``EVALSHA`` of a digest no server holds, declaring ``key`` (one of the queue's):
    ``NOSCRIPT`` means allowed and runs nothing. An ACL that revokes ``EVALSHA`` or the
    queue's key pattern answers ``NOPERM``: every transition would be refused, so that
    is the ``HealthStatus.error`` returned. No answer within ``timeout`` s is a server
    that holds writes (see ``write_probe``); any other answer leaves the question
    open."""
    try:
        await asyncio.wait_for(client.execute_command("EVALSHA", _NO_SCRIPT, 1, key), timeout)
    except _NO_ANSWER:
        return _stalled(timeout)
    except RedisError as exc:
        text = reply_text(exc)
        if isinstance(exc, NoPermissionError) or NOPERM.search(text):
            return (
                "PermissionDeniedError: the Redis user may not run the queue's scripts "
                f"(EVALSHA on {key!r}): every add, claim and outcome would be refused. "
                "To go on: grant the rules `kitium-queue acl redis-rules` prints (the commands "
                f"and key pattern the queue needs). Redis said: {text[:200]}"
            )
    return None


#: What ``MISCONF`` of a server that cannot write its AOF (not a failed snapshot) means.
_AOF = ("Redis refuses writes because it cannot write its append-only file (MISCONF: AOF "
        "write error)", "fix the disk under its AOF directory (its log: 'Error writing to "
        "the AOF file'); it takes writes once an AOF write succeeds (BGREWRITEAOF opens a "
        "new file)")  # fmt: skip


def _refusal(text: str) -> tuple[str, str, bool] | None:
    """What the server's refusal ``text`` means, what to do about it and whether reads
    go on, or None."""
    for code, what, todo, reads in _REFUSALS:
        if _CODE[code].match(text) or f" {code} " in text[:80]:
            aof = code == "MISCONF" and "AOF" in text[:200]  # its AOF, not a snapshot
            return (*_AOF, True) if aof else (what, todo, reads)
    return None


def write_refused(text: str) -> WriteRefusedError | None:
    """The library's error for a write the server refused, from its error reply."""
    got = _refusal(text)
    if got is None:
        return None
    return WriteRefusedError(
        f"{got[0]}; nothing of this call was written (Redis refused it before its first "
        f"write). To go on: {got[1]}, then try again. Redis said: {text[:300]}"
    )
