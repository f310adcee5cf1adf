"""Credentials refused once a queue is connected: ``CredentialsRefusedError``.

A queue's first connection words a refused ``AUTH`` (``redis_urls.auth_refused``: a
password needed where none was given, or the credentials given refused, never shown).
Its later connections did not: after a password change on the server (``CONFIG SET
requirepass``, ``ACL SETUSER``) and its clients dropped (``CLIENT KILL``, a restart),
every call that opened a connection with the old credentials raised redis-py's bare
``AuthenticationError``. A connection open refused so raises ``CredentialsRefusedError``
with the first connection's words instead: where every connection opens (a pool's
connections, asyncio and blocking: ``pools.answering``) and on a Cluster client's calls
and pipelines (``clusterconn``). ``word_refusals`` marks the clients a queue builds
with its connection setting and name, so their refusals name the queue; those of a
client passed in (it may serve several queues) name the server's address. Nothing is
done on a call that succeeds, nor per job.

Sentinels that refuse the credentials a setting gives them (``sentinel_password``,
``sentinel_username``), or ask for some when none were given, leave redis-py with no
primary (``MasterNotFoundError``): ``no_primary`` says so, where it said that no sentinel
named a primary and to check the sentinel addresses and the service name.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Mapping
from typing import Any

from redis.asyncio.sentinel import MasterNotFoundError
from redis.exceptions import AuthenticationError

from .errors import ConnectionUnavailableError
from .pools import CheckedSentinelPool, ConnectFailedError
from .redact import redact_url
from .redis_urls import auth_refused
from .tlswords import no_tls_there, uses_tls

__all__ = [
    "CredentialsRefusedError", "NoPrimaryError", "SentinelPool", "credentials_refused",
    "no_primary", "word_refusals",
]  # fmt: skip

#: Where a connection (or a Cluster client) keeps ``(factory, queue)``: who words its
#: refusals (``connection.ConnectionFactory.error``) and for which queue.
_MARK = "_kq_refusals_for"


class CredentialsRefusedError(ConnectFailedError, AuthenticationError):
    """Redis refused the credentials of a new connection (a changed or wrong password,
    none given to a server that now asks for one, an unknown or disabled user); the
    message says which, and what to check, never the password. Nothing of the call
    reached Redis. The library's ``ConnectionUnavailableError`` (a
    ``ConnectFailedError``), as at the first connection, and still redis-py's
    ``AuthenticationError``, which handlers written for it catch. Trying again helps
    only once the credentials in ``redis=`` are the server's."""


def credentials_refused(exc: BaseException, holder: Any) -> BaseException:
    """The error to raise, from ``exc``, for redis-py's ``AuthenticationError`` met by
    ``holder`` (a connection, or a Cluster client) while it opened a connection: ``exc``
    itself when it is the library's already."""
    if isinstance(exc, CredentialsRefusedError):
        return exc
    text = ""
    mark = getattr(holder, "__dict__", {}).get(_MARK)
    if mark is not None:
        factory, queue = mark
        with contextlib.suppress(Exception):  # only to word the message
            said = factory.error(exc, queue)
            text = str(said) if said is not None else ""
    if not text:
        text = _unmarked(exc, holder)
    return CredentialsRefusedError(text)


def _unmarked(exc: BaseException, holder: Any) -> str:
    """The words of a refusal on a client no queue marked: the server's address (a
    Cluster's nodes), the error's text without the password the holder has."""
    where: Any = getattr(holder, "kq_where", None)
    if isinstance(exc, MasterNotFoundError):  # the sentinels refused (``SentinelPool``)
        where = "Redis Sentinel"
    if where is None:
        try:
            where = f"Redis at {holder._host_error()}"
        except Exception:  # only to word a message
            where = "Redis"
    secret = getattr(holder, "password", None)
    cause = redact_url(exc, [secret] if isinstance(secret, str) and secret else [])
    cause = cause.strip().rstrip(".").strip() or type(exc).__name__
    return auth_refused(str(where), "", cause, {})


def word_refusals(holder: Any, factory: Any, queue: str) -> None:
    """Have the refusals of ``holder``'s connections worded by ``factory`` (the queue's
    ``ConnectionFactory``) for queue ``queue``: ``holder`` is a client ``factory`` built
    (its pool's connections, now and later; a Cluster client itself) or a blocking
    pool it built. Nothing for a client passed in (``factory.owns``), nor ``memory://``."""
    if factory.is_memory or not factory.owns(holder):
        return
    mark = (factory, queue)
    pool = getattr(holder, "connection_pool", holder)
    make = getattr(pool, "make_connection", None)
    if not callable(make):  # a Cluster client (no pool): its calls word them
        with contextlib.suppress(AttributeError, TypeError):
            holder.__dict__[_MARK] = mark
        return
    if getattr(make, "_kq_marks", False):
        return
    with contextlib.suppress(AttributeError, TypeError):  # a Sentinel pool words its lookups
        pool.__dict__[_MARK] = mark

    def made() -> Any:
        conn = make()
        with contextlib.suppress(AttributeError, TypeError):
            conn.__dict__[_MARK] = mark
        return conn

    made._kq_marks = True  # type: ignore[attr-defined]
    pool.make_connection = made
    for name in ("_available_connections", "_in_use_connections"):
        for conn in list(getattr(pool, name, None) or ()):
            with contextlib.suppress(AttributeError, TypeError):
                conn.__dict__[_MARK] = mark


#: A sentinel's refusal in the text of redis-py's ``MasterNotFoundError``, which lists
#: each sentinel's error after its client's repr: ``AuthenticationError: <reason>``
#: (redis-py 8.2), ``AuthenticationError('<reason>')`` before; the reason ends at the
#: next sentinel's entry (``, <redis...``) or at the end.
_SENTINEL_REFUSAL = re.compile(r"AuthenticationError\W{1,3}(.*?)(?:['\"]\))?(?=, <|\Z)", re.S)


def no_primary(
    describe: str, queue: str, text: str, options: Mapping[str, Any], state: str | None = None
) -> ConnectionUnavailableError:
    """The error of a Sentinel setting (``describe``, as the factory describes it) whose
    sentinels named no primary for queue ``queue`` (redis-py's ``MasterNotFoundError``,
    its ``text`` without credentials): their refusal of the credentials given to them
    (``options``: the setting's; ``sentinel_password`` is theirs) when one refused them;
    else what ``state`` (``SentinelPool``'s ``_primary_state``) or ``text`` tells: no
    sentinel answered ("silent"), they monitor that service and flag its primary down
    ("down": a failover may be under way), none monitors it ("unknown")."""
    found = _SENTINEL_REFUSAL.search(text)
    if found is None:
        return _unnamed(describe, queue, text, options, state)
    cause = found.group(1).strip().rstrip(".").strip()[:200] or "AuthenticationError"
    where = f"the sentinels at {describe.removeprefix('sentinel ')}"
    theirs = (
        "the sentinels' own credentials: ?sentinel_username=USERNAME&sentinel_password="
        "PASSWORD in the redis+sentinel:// URL, or those keys of a dict; the URL's "
        "user:password@ are the data nodes'"
    )
    if not (options.get("sentinel_password") or options.get("sentinel_username")):
        return ConnectionUnavailableError(
            f"{where} require a password and none was given to them (queue {queue!r}: "
            f"{cause}); give them sentinel_password (and sentinel_username for an ACL "
            f"user): {theirs}"
        )
    return ConnectionUnavailableError(
        f"{where} refused the credentials of queue {queue!r} ({cause}); check "
        f"sentinel_username and sentinel_password given in redis=: {theirs}"
    )


#: One sentinel's error in the text of ``MasterNotFoundError``: "<its client's repr> -
#: <error>" (the repr ends in ")>)>)>").
_SENTINEL_ERROR = re.compile(r"\)> - \w")
#: What each sentinel said there, without its client's repr.
_SENTINEL_SAID = re.compile(r"\)> - (.*?)(?=, <redis|\Z)", re.S)


def _unnamed(
    describe: str, queue: str, text: str, options: Mapping[str, Any], state: str | None
) -> ConnectionUnavailableError:
    """``no_primary``'s words when no sentinel refused the credentials."""
    of = f"for queue {queue!r}" if queue else "for this connection"
    if state is None:  # from the text: no error listed means every sentinel answered
        state = "silent" if _SENTINEL_ERROR.search(text) else "answered"
    if state == "silent":
        tls = no_tls_there("+sentinel") if uses_tls(options) else ""
        said = dict.fromkeys(m.strip() for m in _SENTINEL_SAID.findall(text))  # each once
        cause = "; ".join(said)[:300]
        return ConnectionUnavailableError(
            f"no Sentinel of {describe} answered {of}{f' ({cause})' if cause else ''}; "
            f"check the sentinel addresses in redis= and that the sentinels run{tls}"
        )
    if state == "unknown":
        return ConnectionUnavailableError(
            f"the sentinels of {describe} answered, but none monitors that service name "
            f"({of.removeprefix('for ')}); check the service name in redis= (SENTINEL "
            "MASTERS on a sentinel lists the ones it monitors)"
        )
    why = (
        "they flag it down"
        if state == "down"
        else "its primary is down, or none monitors that service name"
    )
    return ConnectionUnavailableError(
        f"the sentinels of {describe} answered but name no reachable primary {of} "
        f"({why}): a failover may be under way (it takes their down-after-milliseconds, "
        "then an election and a replica's promotion): retry in a few seconds (workers "
        "retry by themselves). If it lasts: SENTINEL MASTER <service> on a sentinel shows "
        "the primary's flags, SENTINEL REPLICAS whether a replica can be promoted"
    )


class NoPrimaryError(ConnectionUnavailableError, MasterNotFoundError):
    """The sentinels named no reachable primary for a new connection: none answered,
    or they flag the primary down (a failover may be under way: retrying helps), or
    none monitors the service name; the message says which (``no_primary``). Nothing
    of the call reached Redis. The library's ``ConnectionUnavailableError`` (transient
    for the worker loops) and still redis-py's ``MasterNotFoundError``, which handlers
    written for it catch."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.__dict__.update(MasterNotFoundError(message).__dict__)


class _SentinelsRefused(MasterNotFoundError, AuthenticationError):
    """No primary because the sentinels refused the credentials given to them: a
    refused ``AUTH`` where a connection opens (``pools.answering``), worded by
    ``no_primary``."""


class SentinelPool(CheckedSentinelPool):
    """The pool of a Sentinel setting's primary (``connection.ConnectionFactory``):
    each new connection asks the sentinels for the primary; when they refused the
    credentials given to them it raises ``_SentinelsRefused`` (so the connection's
    ``CredentialsRefusedError``, worded by ``no_primary``) instead of redis-py's bare
    ``MasterNotFoundError``."""

    async def get_master_address(self) -> Any:
        try:
            return await super().get_master_address()  # type: ignore[no-untyped-call,unused-ignore]
        except MasterNotFoundError as exc:
            found = _SENTINEL_REFUSAL.search(str(exc))
            if found is None:
                raise await self._no_primary(exc) from exc
            reason = found.group(1).strip()[:200]
            raise _SentinelsRefused(
                f"the sentinels refused the credentials given to them for service "
                f"{self.service_name!r}: AuthenticationError: {reason}"
            ) from exc

    async def _no_primary(self, exc: MasterNotFoundError) -> NoPrimaryError:
        """``exc`` (no primary named, no refusal) as ``NoPrimaryError``, worded by the
        queue's factory when a queue marked this pool (``word_refusals``)."""
        exc.kq_state = await self._primary_state(str(exc))  # type: ignore[attr-defined]
        mark = self.__dict__.get(_MARK)
        if mark is not None:
            with contextlib.suppress(Exception):  # only to word the message
                said = mark[0].error(exc, mark[1])
                if said is not None:
                    return NoPrimaryError(str(said))
        where = f"Sentinel service {self.service_name!r}"
        return NoPrimaryError(str(_unnamed(where, "", redact_url(exc), {}, exc.kq_state)))  # type: ignore[attr-defined]

    async def _primary_state(self, text: str) -> str:
        """Why the sentinels named no primary: "silent" (none answered), "down" (one
        that answers monitors the service: it flags its primary down), "unknown" (one
        that answers monitors no such service). Asked again only of a setting where
        some sentinel answered, each within ``_ASK_S``."""
        sentinels = list(getattr(self.sentinel_manager, "sentinels", ()))
        if len(_SENTINEL_ERROR.findall(text)) >= len(sentinels):
            return "silent"
        for sentinel in sentinels:
            try:
                masters = await asyncio.wait_for(sentinel.sentinel_masters(), _ASK_S)
            except Exception:  # the next sentinel may answer
                continue
            return "down" if self.service_name in masters else "unknown"
        return "silent"


#: How long ``SentinelPool._primary_state`` waits for each sentinel.
_ASK_S = 1.0
