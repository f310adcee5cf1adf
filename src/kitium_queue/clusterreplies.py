"""The reply deadline (``connerrors.bound_replies``) on a Redis Cluster client.

A ``redis.asyncio.RedisCluster`` has no pool to hook: each node (``ClusterNode``) opens
its connections when a call first needs one, with the class its ``connection_class``
names, and the client makes a node when it learns of one (its first call, a topology
refresh, a ``MOVED`` to a node it did not know, a pipeline's or a transaction's own).
``bound_nodes`` gives the nodes known now a connection class whose connections keep the
deadline from the moment they are made, binds the connections they have open already,
and puts that class in the client's connection settings, from which every later node
is made. So plain commands, ``ASKING`` before a redirected one, pipelines, the
``CLUSTER SLOTS`` of a refresh and the commands that open a connection all get it; a
blocking command keeps its own wait on top (``replywaits.held_for``). For the deadline
the class only binds each connection as it is made (it keeps the name of the class it
extends, which says whether the connections use TLS): what the deadline does lives on
the connection, as on a pooled client's. The class also counts its connections' opens
under way (``opens.py``), as a pool's connections do: ``close()`` waits for a
connection being opened, not for one held aside (a transaction's ``WATCH``) that a
cancelled call left closed.

A connection cut by the deadline asks the client (redis-py 8.2 and later) for a
topology refresh, as redis-py's own timeout of a node does (``ReplyTimeoutError`` is
not one, so redis-py does not send the command again): a primary that stopped answering
may have been replaced by its replica meanwhile, and the refresh, which asks that node
last, finds the new one. Until then every call to the node ends at its deadline;
without the refresh they went to the silent node until it answered again.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from .opens import counting

__all__ = ["bound_class", "bound_nodes"]

#: What binds a connection: ``connerrors._bound_connection``.
Bind = Callable[[Any, Callable[[Any], None]], Any]


def bound_class(cls: type, bind: Callable[[Any], Any]) -> type:
    """A subclass of ``cls`` (a redis-py asyncio connection class) whose connections
    are passed to ``bind`` as they are made and count their opens under way
    (``opens.counting``); such a subclass is returned as it is."""
    if getattr(cls, "_kq_bound", False):
        return cls
    extended: Any = cls  # any redis-py connection class
    init = extended.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        bind(self)

    attrs = {"__init__": __init__, "_kq_bound": True, "__module__": __name__, **counting(cls)}
    return type(cls.__name__, (cls,), {**attrs, "__qualname__": cls.__qualname__})


def _refresher(client: Any) -> Callable[[Any], None]:
    """What a cut of a connection of ``client`` does: ask for a topology refresh that
    tries the node of that connection last, as redis-py does after a node's timeout
    (its private API). redis-py 8.1 has only a flag for it, which its transactions
    read on a loop of their own and fail on (its own errors set it too): there the
    client is not asked. Holds ``client`` weakly: the client's nodes hold it."""
    ref = weakref.ref(client)

    def cut(conn: Any) -> None:
        owner: Any = ref()
        with contextlib.suppress(Exception):  # a timer's callback: never raise there
            name = f"{conn.host}:{conn.port}"
            request = owner._request_refresh  # redis-py 8.2 (see above)
            owner.nodes_manager.move_node_to_end_of_cached_nodes(name)
            request(last_failed_node_name=name)

    return cut


def _nodes(client: Any) -> Iterator[Any]:
    manager = client.nodes_manager
    for table in (manager.startup_nodes, manager.nodes_cache):
        yield from list((table or {}).values())
    parser_node = getattr(getattr(client, "commands_parser", None), "node", None)
    if parser_node is not None:
        yield parser_node


def bound_nodes(client: Any, bind: Bind) -> Any:
    """``client`` (a ``RedisCluster``), each of whose connections, open now or made
    later on any node, is passed to ``bind`` with what to do when it is cut. A client
    already bound, or one whose settings are not redis-py's, is left alone."""
    manager = getattr(client, "nodes_manager", None)
    settings: Any = getattr(manager, "connection_kwargs", None)
    base = settings.get("connection_class") if isinstance(settings, dict) else None
    if base is None or getattr(base, "_kq_bound", False):
        return client
    cut = _refresher(client)

    def bind_made(conn: Any) -> Any:
        return bind(conn, cut)

    made = settings["connection_class"] = bound_class(base, bind_made)
    own = getattr(client, "connection_kwargs", None)  # the same dict in redis-py 8
    if isinstance(own, dict):
        own["connection_class"] = made
    for node in _nodes(client):
        cls = node.connection_class
        node.connection_class = made if cls is base else bound_class(cls, bind_made)
        for conn in list(node._connections):
            bind(conn, cut)
    return client
