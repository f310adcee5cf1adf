"""The connection of deployment-wide features (access control, the audit log), and the
names of their keys.

They are not a queue's: their keys live under one hash tag of their own,
``<prefix>:{!access}:...``. ``!`` is a character no queue name may hold
(``keys.NAME_PUNCTUATION``), so no queue's keys, and no ACL key pattern written for a
queue (``~<prefix>:{<queue>}:*``), can reach them; sharing one tag keeps a grant change
and its audit entry in one atomic script on Redis Cluster too.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

from redis.exceptions import NoPermissionError, NoScriptError, RedisError, ResponseError

from ...connection import ConnectionFactory
from ...connerrors import NOPERM
from ...context import CONNECT_TIMEOUT_S
from ...errors import KitiumQueueError, PermissionDeniedError
from ...keys import check_key_part
from ...pools import ConnectFailedError, ping
from ...serverinfo import write_refused

__all__ = ["DEPLOYMENT_TAG", "Deployment", "LuaScript"]

#: The hash tag of the deployment-wide keys (see the module docstring).
DEPLOYMENT_TAG = "!access"


class LuaScript:
    """A Lua file of a feature package, run by SHA with an EVAL fallback."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, package: str, name: str) -> None:
        self.name = name
        self.source = resources.files(package).joinpath(f"{name}.lua").read_text("utf-8")
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()


class Deployment:
    """Where a deployment-wide feature keeps its keys: a connection and a key prefix.

    ``redis`` is what ``JobQueue`` takes (a URL, a dict of options, a client), a
    ``ConnectionFactory``, or a ``JobQueue``, whose connection and prefix are used.
    ``name`` names the user of the connection in error messages.
    """

    def __init__(self, redis: Any, prefix: str | None, *, name: str) -> None:
        ctx = getattr(redis, "ctx", None)
        if ctx is not None and isinstance(getattr(ctx, "connection", None), ConnectionFactory):
            self.connection: ConnectionFactory = ctx.connection
            prefix = ctx.keys.prefix if prefix is None else prefix
        elif isinstance(redis, ConnectionFactory):
            self.connection = redis
        else:
            self.connection = ConnectionFactory(redis)
        self.prefix = check_key_part(
            "kq" if prefix is None else prefix, "key prefix", allow_empty=True
        )
        self.name = name
        self.base = f"{self.prefix}:{{{DEPLOYMENT_TAG}}}:"
        self._client: Any = None
        self._lock: asyncio.Lock | None = None

    def key(self, suffix: str) -> str:
        """The name of key ``suffix`` of the deployment (``<prefix>:{!access}:<suffix>``)."""
        return self.base + suffix

    async def client(self) -> Any:
        """The shared client (connects on first use, with a deadline on the first PING)."""
        if self._client is not None:
            return self._client
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._client is None:
                client = self.connection.client()
                try:
                    await ping(client, CONNECT_TIMEOUT_S)
                except Exception as exc:
                    if self.connection.owns(client):
                        await client.aclose()
                    raise self.error(exc) from None
                self._client = client
        return self._client

    def error(self, exc: BaseException) -> BaseException:
        """The library's error for ``exc`` raised by redis-py (or ``exc`` itself)."""
        if isinstance(exc, KitiumQueueError) and not isinstance(exc, ConnectFailedError):
            return exc  # (a pool's connection that could not open is worded below)
        text = str(exc)
        if isinstance(exc, NoPermissionError) or (
            isinstance(exc, ResponseError) and NOPERM.search(text)
        ):
            return PermissionDeniedError(
                f"Redis refused the command for lack of permission "
                f"({self.connection.redact(text)}); the {self.name} needs the key "
                f"pattern ~{self.base}* (see docs/access-control.md)"
            )
        if isinstance(exc, ResponseError):
            refused = write_refused(text)
            if refused is not None:
                return refused
        return self.connection.error(exc, self.name) or exc

    async def run(self, script: LuaScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run ``script``; NOSCRIPT falls back to EVAL (which caches it)."""
        client = await self.client()
        try:
            try:
                return await client.evalsha(script.sha, len(keys), *keys, *args)
            except NoScriptError:
                return await client.eval(script.source, len(keys), *keys, *args)
        except (RedisError, OSError) as exc:
            raise self.error(exc) from None

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``client.<method>(*args, **kwargs)`` with Redis errors translated."""
        client = await self.client()
        try:
            return await getattr(client, method)(*args, **kwargs)
        except (RedisError, OSError) as exc:
            raise self.error(exc) from None

    async def close(self) -> None:
        """Release the client (a later use connects again)."""
        client, self._client = self._client, None
        if client is not None and self.connection.owns(client):
            await client.aclose()
