"""The registry's set of queues (``keys.registry_queues``): who is in it, and who left.

Every process that uses tenancy on a queue adds the queue to the set (``install``'s
``_attach``: first its own ``keys.registered`` mark, then the set); the registry's
readers (``TenantRegistry.queues``, ``get_tenant_usage``, the copies of every change
and ``sync``: ``install.propagate``) take out the queues that are gone, none of whose
keys is left (``keys.presence``), so that nothing is read from, or written back into,
a queue that was deleted. A queue with jobs, or one only cleared (which keeps its mark,
its tenants' quotas and its counters), stays. A queue registering while a reader takes
it out is put back (``prune``). A queue registered by hand (``TenantRegistry.sync``'s
``queues``) must be there (``check_queues``): a name that is no queue is refused, never
registered. See docs/tenancy.md.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

from redis.exceptions import NoPermissionError, ResponseError

from ...connerrors import NOPERM
from ...errors import ConfigurationError, PermissionDeniedError
from ...keys import QueueKeys, check_key_part
from ...limits import get_logger, printable
from ...options import shown
from ..audit.conn import DEPLOYMENT_TAG, LuaScript
from . import keys as tk
from .lua import run_script, run_scripts

__all__ = [
    "TN_PRESENT",
    "QueueRefused",
    "check_queues",
    "declared",
    "is_refusal",
    "live_queues",
    "members",
    "prune",
    "queue_names",
    "refusal",
    "register",
]

log = get_logger(__name__)

TN_PRESENT = LuaScript(__package__, "tn_present")


async def members(client: Any, key: str) -> set[Any]:
    """The members of set ``key``; none (logged) when it holds another type."""
    try:
        return set(await client.smembers(key))
    except ResponseError as exc:
        if "WRONGTYPE" not in str(exc):
            raise
        log.warning(
            "tenant registry: key %s holds another Redis type than a set of queue names "
            "(damaged or written by hand); no queue is listed or copied to. Delete it: "
            "queues register again at their next sync",
            key,
        )
        return set()


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


async def live_queues(client: Any, prefix: str, names: Iterable[Any]) -> list[str]:
    """``names`` (members of the registry's set of queues) without the queues that are
    gone, which leave the set (``prune``). Gone: none of the queue's keys is left
    (``tk.presence``: no job in any state, no parked job, no schedule, no counter, no
    tenancy key), as deleting the queue's keys leaves it; a queue with jobs, or one
    that was only cleared, stays. Read in one pipeline (``tn_present.lua`` per queue,
    each under its own hash tag, read-only: ``EVALSHA_RO``, which a Redis user that may
    only read the queues' keys may run). A name that is no queue name is skipped and
    kept (a later release may accept it); when the check cannot be made (a Redis user
    that may not read a queue's keys), every queue is kept."""
    kept: list[str] = []
    calls: list[tuple[list[str], list[Any]]] = []
    for raw in names:
        name = _text(raw)
        try:
            qk = QueueKeys(name, prefix)
        except ConfigurationError:
            continue  # not a queue name: not written by a queue
        kept.append(name)
        calls.append((tk.presence(qk), []))
    if not calls:
        return []
    try:
        found = await run_scripts(client, TN_PRESENT, calls, readonly=True)
    except (NoPermissionError, ResponseError) as exc:
        log.debug("tenant registry: which queues are gone was not checked (%s)", exc)
        return kept
    gone = [n for n, f in zip(kept, found, strict=True) if int(f) == 0]
    lost = set(await prune(client, prefix, gone)) if gone else set()
    return [n for n in kept if n not in lost]


async def prune(client: Any, prefix: str, names: Iterable[str]) -> list[str]:
    """Take the queues ``names``, found gone (none of their keys left), out of the
    registry's set; returns those still gone, for the caller to skip. Each is checked
    again after its removal and put back if it is there again: a queue registering
    meanwhile writes its ``tk.registered`` key before it adds itself to the set
    (``_attach``), so either this check sees that key or its own add comes after the
    removal; it is never lost (nor when the check fails: then it is put back). A Redis
    user that may not change the set leaves the queues in it (still returned)."""
    key, out = tk.registry_queues(prefix), list[str]()
    may_write = True
    for name in names:
        qk = QueueKeys(name, prefix)
        if may_write:
            try:
                removed = await client.srem(key, name)
            except (NoPermissionError, ResponseError) as exc:
                log.debug("tenant registry: gone queues left in %s (%s)", key, exc)
                may_write, removed = False, 0
            if removed:
                # Not read-only: the check that decides must read what the primary holds
                # (a client reading replicas might run EVALSHA_RO on one lagging behind).
                try:
                    back = int(await run_script(client, TN_PRESENT, tk.presence(qk), []))
                except (NoPermissionError, ResponseError) as exc:
                    if not isinstance(exc, NoPermissionError) and not NOPERM.search(str(exc)):
                        with contextlib.suppress(Exception):
                            await client.sadd(key, name)
                        raise
                    # A user that may change the set but not run scripts on the queue's
                    # keys: not checked again, so kept.
                    log.debug("tenant registry: queue %s not checked again (%s)", name, exc)
                    back = 1
                except BaseException:
                    with contextlib.suppress(Exception):
                        await client.sadd(key, name)  # not checked again: kept
                    raise
                if back:
                    await client.sadd(key, name)  # registered again meanwhile
                    continue
                log.info(
                    "tenant registry: queue %s is gone (none of its keys is left); it "
                    "is no longer registered (it registers again when tenancy is used "
                    "on it)",
                    printable(name)[:200],
                )
        # Not removed here: taken out by another reader (which checks it again), or
        # this user may not: gone all the same.
        out.append(name)
    return out


def declared(quantum: int, fair_dispatch: bool, enforce_quotas: bool) -> dict[str, int]:
    """The fields of a queue's declarations hash (``tk.declarations``) for the way a
    process enables tenancy on it: ``tn_put.lua`` refills a tenant's lane by them when a
    copy leaves it more room (none written: no refill until the workers' heal)."""
    return {"quantum": quantum, "fair": int(fair_dispatch), "quotas": int(enforce_quotas)}


async def register(
    client: Any, prefix: str, name: str, declarations: Mapping[str, int] | None = None
) -> None:
    """Register queue ``name`` with the registry, as a process using tenancy on it does
    (``install._attach``): its ``tk.registered`` mark first, then its declarations when
    given (``declared``: this process enables tenancy on it), then the registry's set
    (``prune``'s order). The mark refused for lack of permission: ``QueueRefused`` (the
    queue's keys were refused, not the registry's)."""
    qk = QueueKeys(name, prefix)
    try:
        await client.set(tk.registered(qk), "1")
    except ResponseError as exc:
        if is_refusal(exc):
            raise QueueRefused(name, exc) from exc
        raise
    if declarations is not None:
        with contextlib.suppress(ResponseError):  # damaged: no refill at copy time
            await client.hset(tk.declarations(qk), mapping=dict(declarations))
    await client.sadd(tk.registry_queues(prefix), name)


async def check_queues(client: Any, prefix: str, names: Iterable[str]) -> None:
    """Refuse (``ConfigurationError``, naming them) the queues of ``names`` that are not
    there: none of their keys exists (``tk.presence``) and no worker of theirs announced
    itself (``QueueKeys.workers``), as a name mistyped. Registered, such a name would stay
    in the registry's set for good (its registration mark keeps it there) and receive a
    copy of every tenant change. Read from the primary (``tn_present.lua``, one call per
    queue under its own hash tag); a refusal for lack of permission: ``QueueRefused``."""
    missing: list[str] = []
    for name in names:
        qk = QueueKeys(name, prefix)
        try:
            found = await run_script(client, TN_PRESENT, [*tk.presence(qk), qk.workers], [])
        except ResponseError as exc:
            if is_refusal(exc):
                raise QueueRefused(name, exc) from exc
            raise
        if int(found) == 0:
            missing.append(name)
    if missing:
        listed = ", ".join(repr(printable(n)[:200]) for n in missing)
        one = len(missing) == 1
        raise ConfigurationError(
            f"{'queue' if one else 'queues'} {listed} not found under key prefix {prefix!r}: "
            f"none of {'its' if one else 'their'} keys exists and no worker of "
            f"{'it' if one else 'theirs'} announced itself (a mistyped name?); nothing was "
            "registered. Check the name (a queue registers itself once a process that "
            "enables tenancy on it adds a job with a tenant or starts a worker)"
        )


def queue_names(queues: Iterable[str] | None) -> list[str] | None:
    """``queues`` checked (a name that is no str refused, not compared), sorted; None:
    every registered queue (read by the caller); a single str is refused, not split."""
    if queues is None:
        return None
    if isinstance(queues, (str, bytes)):
        raise ConfigurationError(
            f"queues must be a list of queue names, got the single "
            f"{type(queues).__name__} {shown(queues)}: pass [{shown(queues)}]"
        )
    return sorted(check_key_part(name, "queue name") for name in queues)


class QueueRefused(NoPermissionError):
    """Redis refused a call on the keys of queue ``queue`` for lack of permission (a
    usage read, a quota copy): ``refusal`` then names that queue's keys, not the
    registry's. A ``NoPermissionError``, as the refusal it stands for."""

    def __init__(self, queue: str, exc: BaseException) -> None:
        super().__init__(str(exc))
        self.queue = queue


def is_refusal(exc: BaseException) -> bool:
    """Whether Redis refused ``exc``'s command for lack of permission (``NOPERM``, or a
    script's call refused by the ACL)."""
    return isinstance(exc, NoPermissionError) or (
        isinstance(exc, ResponseError) and NOPERM.search(str(exc)) is not None
    )


_COMMAND = re.compile(r"permissions to run the '([\w|.-]{1,60})' command")


def refusal(exc: BaseException, prefix: str, detail: str, *, write: bool) -> PermissionDeniedError:
    """The error for ``exc``, a refusal (``is_refusal``) of one of the registry's calls
    (``detail``: its text, redacted): which keys or command, and what to grant. ``write``:
    the call changes tenants (read and write access needed), else it only reads."""
    queue = exc.queue if isinstance(exc, QueueRefused) else None
    if queue is None:
        what, keys = "the tenant registry's keys", tk.registry(prefix) + "*"
    else:
        what, keys = (
            f"the keys of queue {printable(queue)[:200]!r}",
            QueueKeys(queue, prefix).base + "*",
        )
    command = _COMMAND.search(detail)
    if command is not None:
        # The read-only script commands go together (EVAL_RO after a script cache flush).
        grant = "+evalsha_ro +eval_ro" if command[1] in ("evalsha_ro", "eval_ro") else None
        return PermissionDeniedError(
            f"Redis refused the command {command[1]} to the tenant registry's Redis user for "
            f"lack of permission ({detail}): grant it ({grant or '+' + command[1]}; "
            "docs/tenancy.md, Redis ACL, lists what reading and changing tenants need)"
        )
    head = f"Redis refused the tenant registry access to {what} for lack of permission ({detail})"
    if "can't run this command" in detail:
        need = "its Redis user needs every command the tenancy scripts call"
    elif not write:
        need = (
            f"its Redis user needs read access to them (%R~{keys}, or ~{keys}), and, with "
            "read access only, the commands evalsha_ro and eval_ro (Redis 7.0+: without "
            "them the reads run with evalsha, which Redis checks as writing their keys)"
        )
    elif queue is None:
        need = (
            f"changing tenants needs read and write access to them (~{keys}; the "
            "--access admin rules of `kitium-queue acl redis-rules` cover "
            f"~{prefix}:{{{DEPLOYMENT_TAG}}}:*)"
        )
    else:
        need = (
            "changes are stored in the registry first, then copied into every registered "
            "queue, which needs read and write access to each queue's keys "
            f"(~{keys} for this one: `kitium-queue acl redis-rules --queue "
            f"{printable(queue)[:200]} --feature tenancy`); the queue's workers copy them "
            "at their next sync, or run TenantRegistry.sync() with such a user"
        )
    return PermissionDeniedError(f"{head}: {need} (docs/tenancy.md, Redis ACL)")
