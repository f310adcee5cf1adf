"""The Redis Cluster client the queue builds (``connection.ConnectionFactory``): redis-py's
``RedisCluster`` whose ``aclose()`` closes every node it knows, whatever state the
client is in.

redis-py's ``aclose()`` closes the nodes only of a client that has a topology (a
default node), and its first topology refresh closes the nodes it opened only if that
cleanup is not itself interrupted. A worker's stop cancels its blocking wait, and may
cancel it again while redis-py runs that cleanup (``lifecycle.end_tasks`` repeats the
cancel until the task ends): the seed node that had answered ``CLUSTER SLOTS`` kept its
connection, the client's ``aclose()`` then did nothing (no topology yet), and the
connection stayed open until garbage collection, when asyncio reported
``Unclosed ClusterNode object``. Here ``aclose()`` also disconnects every node the
client holds: the seeds it was given (those a refresh dropped too), the nodes of its
topology and its commands parser's node, found through attributes redis-py documents
(``get_nodes()``, ``startup_nodes``, ``nodes_manager``) and read defensively, so a
later redis-py that renames one closes what it still finds rather than raising. A
cancellation that reaches this close does not cut it short: the disconnects run to
their end.

A client that has reached the cluster once and then reaches no node (every node
restarted or stopped, its connections all cut while the nodes were down) raised
redis-py's ``RedisClusterUnreachableError``, which is no ``ConnectionError``: a worker
took it for a failed round (an ERROR per retry, ``queue_error`` hooks), and
``add_job`` raised it where a single server's queue raises
``ConnectionUnavailableError``. Its calls and pipelines raise ``ClusterUnreachableError``
instead, both of those, saying where and that the next call connects again (as it
does, once a node answers). A node that refuses the credentials of a new connection
(a password changed on the nodes) is said as the queue's first connection says it
(``authrefused.CredentialsRefusedError``), not with redis-py's bare
``AuthenticationError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    AuthenticationError,
    ClusterDownError,
    NoPermissionError,
    RedisClusterException,
)

from .errors import ConnectionUnavailableError

__all__ = ["UNREACHABLE", "ClusterClient", "ClusterRefusedError", "ClusterUnreachableError"]
__all__ += ["close_nodes", "cluster_refused", "known_nodes"]

_ANY_NODE = "Please provide at least one reachable node: "


class ClusterUnreachableError(ConnectionUnavailableError, RedisClusterException):
    """No node of a Redis Cluster the client had reached answers now (stopped,
    restarting, unreachable). The library's ``ConnectionUnavailableError`` (the worker
    loops hold their outcomes and retry) and still redis-py's
    ``RedisClusterException``; the next call connects again."""


class ClusterRefusedError(ConnectionUnavailableError, ClusterDownError):
    """The Redis Cluster refuses service (``CLUSTERDOWN``): a hash slot is served by no
    node (a master down with no replica promoted yet, a slot never assigned), and with
    ``cluster-require-full-coverage yes`` every node refuses every command, reads too.
    Redis ran nothing of the refused command. The library's
    ``ConnectionUnavailableError`` (transient: the worker loops hold their outcomes
    and retry) and still redis-py's ``ClusterDownError``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        # The attributes redis-py's errors carry (its own code and __repr__ read them).
        self.__dict__.update(ClusterDownError(message).__dict__)


def cluster_refused(client: Any, exc: ClusterDownError) -> ClusterRefusedError:
    """``exc`` (``CLUSTERDOWN`` met by ``client``, a Cluster client) as
    ``ClusterRefusedError``, naming the queue when one marked the client
    (``authrefused.word_refusals``)."""
    if isinstance(exc, ClusterRefusedError):
        return exc
    where = getattr(client, "kq_where", ClusterClient.kq_where)
    mark = getattr(client, "__dict__", {}).get("_kq_refusals_for")
    of = f" for queue {mark[1]!r}" if isinstance(mark, tuple) and len(mark) == 2 else ""
    said = str(exc).strip().rstrip(".")[:200] or "The cluster is down"
    return ClusterRefusedError(
        f"the {where} refuses service{of} (CLUSTERDOWN: {said}): a hash slot is served by "
        "no node (a master is down and no replica has taken over yet, which takes about "
        "its cluster-node-timeout; or a slot was never assigned), and with "
        "cluster-require-full-coverage yes (the default) every node refuses every "
        "command, reads too, even on slots whose node is up. Redis ran nothing of the "
        "refused command: retry once the cluster is back (workers retry by themselves). "
        "If it lasts: CLUSTER INFO on a "
        "node (cluster_state, cluster_slots_fail) and CLUSTER NODES (the node flagged "
        "fail); a replica per master lets the cluster fail over by itself"
    )


#: redis-py's own error for it (8.2 and later; 8.1 raises a bare
#: ``RedisClusterException``), which a Cluster client passed in raises.
_REDIS_UNREACHABLE: Any = getattr(
    sys.modules[RedisCluster.__module__], "RedisClusterUnreachableError", None
)
#: The errors saying that no node of a Cluster answers: transient, as Redis down is
#: (``connection.TRANSIENT_ERRORS``).
UNREACHABLE: tuple[type[BaseException], ...] = (ClusterUnreachableError,) + (
    (_REDIS_UNREACHABLE,) if isinstance(_REDIS_UNREACHABLE, type) else ()
)


class ClusterClient(RedisCluster):
    """redis-py's Cluster client whose ``aclose()`` leaves no node connected and whose
    calls, once it reached the cluster, raise ``ClusterUnreachableError`` when no node
    answers (module text)."""

    #: Where the client connects, credentials left out (``ConnectionFactory.describe``).
    kq_where = "Redis Cluster"
    _kq_reached = False

    @classmethod
    def at(cls, seeds: Iterable[tuple[str, Any]], where: str, **kwargs: Any) -> ClusterClient:
        """A client of the cluster whose seed nodes are ``seeds`` (host, port), said in
        messages as ``where`` (no credential in it); ``kwargs``: redis-py's settings."""
        client = cls(startup_nodes=[ClusterNode(h, p) for h, p in seeds], **kwargs)
        client.kq_where = where
        return client

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            reply = await super().execute_command(*args, **kwargs)
        except RedisClusterException as exc:
            worded = unreachable(self, exc)
            if worded is exc:
                raise  # its own cause kept (the queue's first connection words it)
            raise worded from exc
        except ClusterDownError as exc:
            raise cluster_refused(self, exc) from exc
        except AuthenticationError as exc:  # a node refused a new connection's credentials
            raise _refused(self, exc) from exc
        self._kq_reached = True
        return reply

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        return _worded(super().pipeline(transaction, shard_hint))

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            await close_nodes(self)


#: redis-py's pipeline class -> its subclass made by ``_worded``.
_PIPES: dict[type, type] = {}


def _worded(pipe: Any) -> Any:
    """``pipe`` (redis-py's Cluster pipeline, a class with ``__slots__``) given a
    subclass of its class, of the same layout, whose ``execute()`` words an unreachable
    cluster as ``ClusterClient``'s calls do."""
    cls = type(pipe)
    made = _PIPES.get(cls)
    if made is None:
        plain: Any = cls

        async def execute(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return await plain.execute(self, *args, **kwargs)
            except RedisClusterException as exc:
                worded = unreachable(self.cluster_client, exc)
                if worded is exc:
                    raise
                raise worded from exc
            except ClusterDownError as exc:
                raise cluster_refused(self.cluster_client, exc) from exc
            except AuthenticationError as exc:
                raise _refused(self.cluster_client, exc) from exc

        attrs = {"__slots__": (), "execute": execute, "__module__": __name__}
        made = _PIPES[cls] = type(cls.__name__, (cls,), attrs)
    pipe.__class__ = made
    return pipe


def _refused(client: Any, exc: AuthenticationError) -> BaseException:
    """``exc`` as the queue's first connection words it (``authrefused``)."""
    from .authrefused import credentials_refused  # it builds on pools, which imports this

    return credentials_refused(exc, client)


def unreachable(client: Any, exc: RedisClusterException) -> BaseException:
    """``exc`` as ``ClusterUnreachableError`` when it says that no node answers (by its
    words: redis-py 8.1 has no class for it) and ``client`` reached the cluster before
    (the queue's first connection words it, with the queue's name); as it is when it is
    another refusal or one already, and when a refusal lies behind it: for lack of
    permission, or of the credentials (every node asking for a password, or another
    one, when a client that had reached the cluster maps it anew: after ``aclose()``),
    which the queue words as on one server (``connerrors.translate_error``)."""
    text = str(exc)
    if (
        isinstance(exc, ClusterUnreachableError)
        or _ANY_NODE not in text
        or not getattr(client, "_kq_reached", False)
    ):
        return exc
    seen: BaseException | None = exc
    for _ in range(8):  # a chain of causes is short; a cycle is not followed
        if seen is None:
            break
        if isinstance(seen, (NoPermissionError, AuthenticationError)):
            return exc
        seen = seen.__cause__ or seen.__context__
    cause = text.split(_ANY_NODE, 1)[-1].rstrip(". ") or type(exc).__name__
    where = getattr(client, "kq_where", ClusterClient.kq_where)
    return ClusterUnreachableError(
        f"cannot reach any node of the {where} ({cause}): the nodes are stopped, "
        "restarting or unreachable; check that the cluster runs (the next call connects "
        "again once a node answers)"
    )


def known_nodes(client: Any) -> list[Any]:
    """The node objects (redis-py's ``ClusterNode``) that Cluster client ``client``
    holds, each once: its seeds, its topology's nodes, its commands parser's node.
    Anything redis-py no longer offers under these names is left out, never raised."""
    found: dict[int, Any] = {}

    def add(nodes: Iterable[Any]) -> None:
        for node in nodes:
            if callable(getattr(node, "disconnect", None)):
                found.setdefault(id(node), node)

    get_nodes = getattr(client, "get_nodes", None)
    if callable(get_nodes):
        with contextlib.suppress(Exception):  # a renamed table behind it: others count
            add(get_nodes() or ())
    seeds = getattr(client, "startup_nodes", None)
    if isinstance(seeds, (list, tuple)):
        add(seeds)
    manager = getattr(client, "nodes_manager", None)
    for table in ("startup_nodes", "nodes_cache"):
        nodes = getattr(manager, table, None)
        if isinstance(nodes, Mapping):
            add(list(nodes.values()))
    parser_node = getattr(getattr(client, "commands_parser", None), "node", None)
    if parser_node is not None:
        add([parser_node])
    return list(found.values())


async def close_nodes(client: Any) -> None:
    """Disconnect every node of ``client`` (``known_nodes``); a node that fails to close
    does not keep the others open. Shielded: a caller cancelled meanwhile leaves the
    disconnects running to their end."""
    nodes = known_nodes(client)
    if not nodes:
        return
    closing = asyncio.gather(*(node.disconnect() for node in nodes), return_exceptions=True)
    await asyncio.shield(closing)
