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
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

from redis.asyncio.cluster import RedisCluster

__all__ = ["ClusterClient", "close_nodes", "known_nodes"]


class ClusterClient(RedisCluster):
    """redis-py's Cluster client whose ``aclose()`` leaves no node connected."""

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            await close_nodes(self)


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
