"""The webhook DLQ: its bound, its per-endpoint lists, its readers (docs/webhooks.md).

Keys (under the queue's hash tag, like the rest of the feature, ``lua.py``):

=====================  ======  ========================================================
``wh:dlq``             ZSET    ``<webhook>/<event>`` -> when it was dead-lettered (ms):
                               every dead delivery, oldest first
``wh:dlq:<w>``         ZSET    event id -> the same time: the dead deliveries of endpoint
                               ``<w>``; written and removed with ``wh:dlq`` in each script
``wh:dlq-dropped``     HASH    webhook id -> dead deliveries dropped by the bound
``wh:dlq-v``           STRING  set once ``wh:dlq`` of an earlier release is listed per
                               endpoint too (``webhooks_dlq_index``)
=====================  ======  ========================================================

The bound (``dead_max`` per endpoint, ``dead_ttl_s``) is kept by ``webhooks_done``, the
script that dead-letters: a dead delivery past it leaves both lists and the history index,
and its record is deleted, in the same atomic step that dead-lettered a newer one (or, by
age, in any step that records results); each one is counted in ``wh:dlq-dropped``, and the
process that dropped some says so once per endpoint in a WARNING (ids and counts only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...errors import DamagedKeyError
from ...limits import clip, get_logger
from ...options import to_int
from ...outbox import Outbox
from .models import DeliveryRecord, check_id
from .registry import checked, counts, read_records, script_reports

if TYPE_CHECKING:
    from .manager import WebhookManager

__all__ = [
    "DEAD_TRIM",
    "DLQ_FUNCS",
    "INDEX_SCRIPT",
    "dropped_counts",
    "index_earlier",
    "list_dead",
    "note_dropped",
    "webhook_stats",
]

log = get_logger(__name__)

#: Most dead deliveries one ``list_dlq`` call returns.
MAX_LIST = 10_000

# After `--@include lib_base`: the two lists of the DLQ, kept together.
DLQ_FUNCS = """
-- wh:dlq lists every dead delivery '<w>/<e>', wh:dlq:<w> those of endpoint <w> by event
-- id, both with the time it was dead-lettered (dlq.py). A list of an endpoint damaged
-- by hand (another type) is left out (pcall); its readers name it.
local DLQ_ALL = PREFIX .. 'wh:dlq'
local function dlq_of(m)
  local slash = string.find(m, '/', 1, true)
  if not slash then return nil, nil, nil end
  local wid = string.sub(m, 1, slash - 1)
  return PREFIX .. 'wh:dlq:' .. wid, string.sub(m, slash + 1), wid
end
local function dlq_put(m, at)
  redis.call('ZADD', DLQ_ALL, at, m)
  local k, e = dlq_of(m)
  if k then redis.pcall('ZADD', k, at, e) end
end
local function dlq_del(m)
  redis.call('ZREM', DLQ_ALL, m)
  local k, e = dlq_of(m)
  if k then redis.pcall('ZREM', k, e) end
end
"""

# In webhooks_done, after the results are written: DEAD_MAX, DEAD_TTL_MS (0: none),
# dead_added (webhook id -> dead deliveries this call dead-lettered), RETRY, DLQ.
DEAD_TRIM = """
-- Dead-letter bound: wh:dlq:<w> keeps the newest DEAD_MAX dead deliveries of endpoint
-- <w>, and none dead-lettered more than DEAD_TTL_MS ago (0: no such bound). One past it
-- leaves both lists and the history index, and its record (a hash in state dead, not
-- scheduled) is deleted, in this step; counted in wh:dlq-dropped. A call drops at most
-- what it dead-lettered plus DROP_SPARE, so a lowered bound drains over several calls.
local DROP_SPARE = 1000
local drop_left, dropn = DROP_SPARE, {}
for _, n in pairs(dead_added) do drop_left = drop_left + n end
local function drop(m, k, e, wid)
  redis.call('ZREM', DLQ, m)
  if k then redis.pcall('ZREM', k, e) end
  redis.pcall('ZREM', PREFIX .. 'wh:idx:' .. wid, e)
  local key = PREFIX .. 'wh:d:' .. m
  if redis.pcall('HGET', key, 'st') == 'dead' and not redis.call('ZSCORE', RETRY, m) then
    redis.call('UNLINK', key)
  end
  dropn[wid] = (dropn[wid] or 0) + 1
end
if DEAD_TTL_MS > 0 and drop_left > 0 then
  local old = redis.call('ZRANGEBYSCORE', DLQ, '-inf', NOW - DEAD_TTL_MS, 'LIMIT', 0, drop_left)
  drop_left = drop_left - #old
  for i = 1, #old do
    local k, e, wid = dlq_of(old[i])
    if k then drop(old[i], k, e, wid) else redis.call('ZREM', DLQ, old[i]) end
  end
end
if DEAD_MAX > 0 then
  for wid in pairs(dead_added) do
    local k = PREFIX .. 'wh:dlq:' .. wid
    if drop_left > 0 and key_type(k) == 'zset' then
      local n = math.min(redis.call('ZCARD', k) - DEAD_MAX, drop_left)
      if n > 0 then
        drop_left = drop_left - n
        local old = redis.call('ZRANGE', k, 0, n - 1)
        redis.call('ZREMRANGEBYRANK', k, 0, n - 1)
        for i = 1, #old do drop(wid .. '/' .. old[i], nil, old[i], wid) end
      end
    end
  end
end
local dropped = {}
for wid, n in pairs(dropn) do
  redis.pcall('HINCRBY', PREFIX .. 'wh:dlq-dropped', wid, n)
  dropped[#dropped + 1] = wid
  dropped[#dropped + 1] = n
end
"""

INDEX_SCRIPT = (
    """--@include lib_base
-- webhooks_dlq_index: ARGV[4] ZSCAN cursor, ARGV[5] entries per call. Lists the dead
-- deliveries of wh:dlq in their endpoint's wh:dlq:<w> as well (those an earlier release,
-- without these lists, dead-lettered), a page a call; once the walk is over, wh:dlq-v
-- says so and every later call returns at once. Returns the next cursor ('0': done).
"""
    + DLQ_FUNCS
    + """
local VER = PREFIX .. 'wh:dlq-v'
if redis.call('EXISTS', VER) == 1 then return '0' end
local bad = check_key(DLQ_ALL, 'zset')
if bad then return bad end
if not string.match(ARGV[4], '^%d+$') or #ARGV[4] > 20 then
  return bad_arg('webhooks_dlq_index', 'the cursor is not a number')
end
local got = redis.call('ZSCAN', DLQ_ALL, ARGV[4], 'COUNT', arg_int(ARGV[5], 500, 1, BATCH_MAX))
local flat = got[2]
for i = 1, #flat, 2 do
  local k, e = dlq_of(flat[i])
  if k then redis.pcall('ZADD', k, 'NX', flat[i + 1], e) end
end
if got[1] == '0' then redis.call('SET', VER, '1') end
return got[1]
"""
)


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


async def list_dead(
    mgr: WebhookManager, limit: int, webhook_id: str | None, offset: int
) -> list[DeliveryRecord]:
    """``list_dlq``: a page of the DLQ (oldest first), of one endpoint (its own list) or
    of all; one ``ZRANGE`` of ``limit`` entries, whatever the DLQ holds."""
    await mgr.queue.queries.check(
        "list_webhook_dlq", {"limit": limit, "webhook_id": webhook_id, "offset": offset}
    )
    limit = to_int(limit, "limit", minimum=1, maximum=MAX_LIST)
    offset = to_int(offset, "offset", minimum=0, maximum=2**53)
    client = await mgr.queue.client()
    extra = mgr.queue.keys.extra
    last = offset + limit - 1
    if webhook_id is None:
        key = extra("wh:dlq")
        members = await checked(client, key, "zset", client.zrange(key, offset, last))
    else:
        if webhook_id != "job":  # manager.JOB_WEBHOOK_ID: jobs' own URLs
            check_id(webhook_id, "webhook id")
        key = extra(f"wh:dlq:{webhook_id}")
        ids = await checked(client, key, "zset", client.zrange(key, offset, last))
        members = [webhook_id.encode() + b"/" + i for i in ids]
    return await read_records(client, extra("wh:d:").encode(), members)


async def dropped_counts(mgr: WebhookManager) -> dict[str, int]:
    """Webhook id -> its dead deliveries dropped by the bound (``wh:dlq-dropped``)."""
    client = await mgr.queue.client()
    key = mgr.queue.keys.extra("wh:dlq-dropped")
    got = await checked(client, key, "hash", client.hgetall(key))
    return {_text(k): int(v) if bytes(v).isdigit() else 0 for k, v in got.items()}


async def webhook_stats(mgr: WebhookManager) -> dict[str, Any]:
    """``stats()``: endpoints, retries scheduled, DLQ size and the dead deliveries its
    bound dropped (None for a key damaged by hand, named in ``damaged`` with the scripts'
    reports), the outbox group's backlog, this process's in-memory deliveries."""
    from .service import GROUP

    await mgr.queue.queries.check("webhook_stats", {})
    client = await mgr.queue.client()
    extra = mgr.queue.keys.extra
    reads = [
        ("hlen", extra("wh:hooks"), "hash"),
        ("zcard", extra("wh:retry"), "zset"),
        ("zcard", extra("wh:dlq"), "zset"),
    ]
    (hooks, retry, dlq), damaged = await counts(client, reads)
    try:
        dropped: int | None = sum((await dropped_counts(mgr)).values())
    except DamagedKeyError as exc:  # damaged by hand: named like the others
        dropped = None
        damaged.append(str(exc))
    damaged += await script_reports(client, extra)
    group = next((g for g in (await Outbox(mgr.queue).stats()).groups if g.name == GROUP), None)
    return {
        "webhooks": hooks,
        "retry_scheduled": retry,
        "dlq": dlq,
        "dead_dropped": dropped,
        "damaged": damaged,
        "outbox_pending": group.pending if group else 0,
        "outbox_lag": group.lag if group else None,
        "local_in_flight": mgr.local.in_flight,
        "local_dropped": mgr.local.dropped,
        "delivered_here": mgr.service.delivered,
    }


# (queue, webhook id) whose drops this process has reported.
_SAID: set[tuple[str, str]] = set()


def note_dropped(mgr: WebhookManager, flat: Any) -> None:
    """A WARNING, once per endpoint in this process, for the dead deliveries a
    ``webhooks_done`` call dropped (``flat``: webhook id, count, ...). Ids and counts
    only: never a payload."""
    if not isinstance(flat, list):
        return
    for wid_raw, n in zip(flat[::2], flat[1::2], strict=False):
        wid = _text(wid_raw)
        said = (mgr.queue.name, wid)
        if said in _SAID:
            continue
        if len(_SAID) > 10_000:
            _SAID.clear()
        _SAID.add(said)
        log.warning(
            "webhook DLQ of queue %s: endpoint %s is past its bound (dead_max=%s, "
            "dead_ttl_s=%s): its oldest dead deliveries are dropped with their records "
            "(%d in this step). "
            "Drops are counted in stats()['dead_dropped'] and shown by `kitium-queue "
            "webhooks dlq`; this process says so once per endpoint. Replay the DLQ once "
            "the endpoint is back, or raise the bound.",
            clip(mgr.queue.name, 100),
            clip(wid, 100),
            mgr.dead_max,
            mgr.dead_ttl_s,
            int(n),
        )


async def index_earlier(mgr: WebhookManager, per_call: int = 500) -> None:
    """List the dead deliveries an earlier release dead-lettered in their endpoint's
    ``wh:dlq:<w>`` too (once per queue: ``wh:dlq-v``), a page per script call; run by
    the delivery service as it starts."""
    cursor = "0"
    while True:
        got = await mgr.queue.ctx.run("webhooks_dlq_index", (cursor, per_call))
        cursor = _text(got)
        if cursor == "0":
            return
