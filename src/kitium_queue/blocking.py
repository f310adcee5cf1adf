"""Script calls from threads outside the event loop, over blocking connections.

``SyncJobQueue.add_job`` runs the enqueue script from the caller's thread through a
``BlockingScripts``: the call is packed as on the asyncio hot path (``scripts.py``), sent
over a blocking redis-py connection and its reply read there, so a blocking caller pays
one round trip and no hand-over to the client's event-loop thread (``command`` runs the
one plain read of a duplicate check, ``dupcheck.py``, the same way). The connections come
from a blocking ``redis.ConnectionPool`` to the same server
(``ConnectionFactory.sync_pool``); up to ``MAX_IDLE_CONNS`` stay checked out between calls.
At most ``max_connections`` calls are under way at once: a thread beyond that waits
for one to end (up to ``pools.POOL_WAIT_S``) instead of failing with redis-py's
``MaxConnectionsError``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import pools
from .scripts import MAX_IDLE_CONNS, ScriptCall, ScriptRegistry, pack_args, translate_error

__all__ = ["BlockingScripts"]


class BlockingScripts:
    """Runs the scripts of ``registry`` over ``pool`` (a blocking
    ``redis.ConnectionPool``), waiting for each reply. Thread-safe."""

    def __init__(self, registry: ScriptRegistry, pool: Any) -> None:
        self._registry = registry
        self._pool = pool
        # Connections kept between calls: list.pop and append are atomic, so any thread
        # may take one; the pool's limit and disconnect() still cover them.
        self._idle: list[Any] = []
        # One slot per connection the pool may open: a call holds one from taking a
        # connection to handing it back, so the pool never runs out (the connections
        # kept aside are taken first, before the pool is asked for one).
        most = getattr(pool, "max_connections", None)
        self._slots = (
            threading.BoundedSemaphore(most) if isinstance(most, int) and most < 2**30 else None
        )

    def call(
        self,
        name: str,
        keys: Sequence[str],
        args: Sequence[Any],
        registry: ScriptRegistry | None = None,
    ) -> Any:
        """Run script ``name`` and return its reply; on NOSCRIPT run it once with EVAL
        (which caches it there). ``registry``: whose script (default: the one given at
        construction), for queues that share one server and one pool (the partitions of
        a ``PartitionedQueue``).

        Errors as ``ScriptRegistry.call`` raises them: the script's own (``KQ_*``) and
        Redis's refusals translated; connection errors and timeouts (the pool's
        ``socket_timeout``) as redis-py's, after which the connection is dropped (a
        timeout worded as ``scripts.py`` words it: "no reply from Redis within ...").
        """
        reg = self._registry if registry is None else registry
        n = 3 + len(keys) + len(args)
        head = reg.packed_head(ScriptCall(name, keys, args))
        reply = self._exchange(b"*%d\r\n$7\r\nEVALSHA\r\n%b%b" % (n, head, pack_args(args)))
        if isinstance(reply, NoScriptError):
            source = reg.get(name).source
            reply = self._exchange(
                b"*%d\r\n" % n + pack_args(("EVAL", source, len(keys), *keys, *args))
            )
        if isinstance(reply, ResponseError):
            raise translate_error(reply)
        return reply

    def command(self, *args: Any) -> Any:
        """Run one plain command (``"HMGET", key, field, ...``) over the same connections
        and return its reply: an error reply comes back as the ``ResponseError`` it is;
        connection errors and timeouts are raised as ``call`` raises them (a duplicate
        check's read: ``dupcheck.py``)."""
        return self._exchange(b"*%d\r\n" % len(args) + pack_args(args))

    def close(self) -> None:
        """Close the connections no call is using: those kept aside between calls and
        those back in the pool (a later call connects again). Never one another thread's
        call holds: closing it under that call (as a connection opens, sends or reads)
        raised AttributeError from redis-py's internals, or left the thread waiting out
        its reply deadline in a read."""
        kept, pool = self._idle, self._pool
        while kept:
            try:
                conn = kept.pop()  # atomic: a connection taken by a call is that call's
            except IndexError:
                break
            conn.disconnect()
            pool.release(conn)
        pool.disconnect(inuse_connections=False)  # under the pool's lock: the free ones only

    def _exchange(self, payload: bytes) -> Any:
        slots = self._slots
        if slots is None:
            return self._exchange_on(payload)
        if not slots.acquire(timeout=pools.POOL_WAIT_S):
            raise pools.exhausted(self._pool.max_connections)
        try:
            return self._exchange_on(payload)
        finally:
            slots.release()

    def _exchange_on(self, payload: bytes) -> Any:
        pool, idle = self._pool, self._idle
        conn = None
        while conn is None:
            try:
                kept = idle.pop()
            except IndexError:
                conn = pool.get_connection()
                break
            try:
                # Unread bytes or EOF on an idle connection: the server closed it (a
                # restart, a client timeout), and a request sent on it would be lost.
                stale = kept.can_read(timeout=0)
            except (RedisConnectionError, OSError):
                stale = True
            if stale:
                kept.disconnect()
                pool.release(kept)
            else:
                conn = kept
        try:
            conn.send_packed_command([payload], check_health=False)
            try:
                reply = conn.read_response()
            except ResponseError as exc:  # an error reply: the stream is still in step
                reply = exc
        except BaseException as exc:
            # Timed out, cut, interrupted: the stream is out of step, never reuse it.
            conn.disconnect()
            pool.release(conn)
            if isinstance(exc, RedisTimeoutError):  # worded as the asyncio path words it
                raise RedisTimeoutError(
                    f"no reply from Redis within {conn.socket_timeout:g} s; connection "
                    "dropped (the call may or may not have run: add the job again with the "
                    "same idempotency_key)"
                ) from None
            raise
        if len(idle) < MAX_IDLE_CONNS:
            idle.append(conn)
        else:
            pool.release(conn)
        return reply
