"""What tenants use in one queue, read for ``TenantRegistry.get_tenant_usage`` and
``get_usages``: ``tn_usage.lua`` per tenant (read-only: ``EVALSHA_RO`` where the server
has it), in one pipeline, each tenant's counts read atomically; and the tenant a
mistyped id may have meant (``suggestion``)."""

from __future__ import annotations

from typing import Any

from redis.exceptions import RedisError

from ...keys import QueueKeys
from ...limits import get_logger, printable
from ...options import did_you_mean
from ..audit.conn import LuaScript
from . import keys as tk
from .lua import run_scripts
from .model import QueueUsage
from .roster import QueueRefused, is_refusal

__all__ = ["read_usages", "suggestion"]

log = get_logger(__name__)

_USAGE = LuaScript(__package__, "tn_usage")


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


async def read_usages(client: Any, prefix: str, queue: str, tids: list[str]) -> list[QueueUsage]:
    """Each tenant's usage in ``queue`` (``tn_usage.lua``, read-only), in one pipeline;
    a refusal for lack of permission names the queue (``QueueRefused``)."""
    qk = QueueKeys(queue, prefix)
    calls = [(tk.usage(qk, t), [qk.base]) for t in tids]
    try:
        replies = await run_scripts(client, _USAGE, calls, readonly=True) if calls else []
    except RedisError as exc:
        if is_refusal(exc):
            raise QueueRefused(queue, exc) from exc
        raise
    return [_usage(queue, t, r) for t, r in zip(tids, replies, strict=True)]


async def suggestion(client: Any, registry: str, tenant_id: str) -> str:
    """`` (did you mean 'acme'?)``: the closest id of the registry's hash ``registry``
    (``HGETALL``, which a read-only user may run), or ""."""
    ids = [_text(k) for k in await client.hgetall(registry)]
    return did_you_mean(tenant_id, ids[:10_000])


def _usage(name: str, tenant_id: str, r: list[Any]) -> QueueUsage:
    """One queue's usage from ``tn_usage.lua``'s reply (damaged keys logged)."""
    if len(r) > 12:
        log.warning(
            "queue %s: tenant %s's usage reads %s as empty: another Redis type is stored "
            "there (damaged or written by hand); delete it and run TenantRegistry.sync()",
            name,
            tenant_id,
            ", ".join(printable(_text(k))[:300] for k in r[12:]),
        )
    return QueueUsage.from_reply(name, r)
