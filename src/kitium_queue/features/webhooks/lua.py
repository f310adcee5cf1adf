"""The webhook feature's Lua: two slot fragments and its own scripts.

Keys (all under the queue's hash tag, built from the queue prefix like ``keys.extra``):

=================  ======  ============================================================
``wh:hooks``       HASH    webhook id -> registration JSON (no secret)
``wh:subs``        HASH    event name -> '1' when an active guaranteed webhook wants it;
                           ``job-url`` -> '1' once a job carried a ``webhook_url``
``wh:ver``         STRING  bumped on every registration change (caches reload)
``wh:retry``       ZSET    ``<webhook>/<event>`` -> when its next attempt is due (ms);
                           a claimed delivery's score is pushed a lease ahead
``wh:d:<w>/<e>``   HASH    a delivery: b body, ty type, st state, a attempts, c created,
                           e last error, sc last status, h history (JSON), sg strategy,
                           u URL and m max retries (a job's own webhook_url), l when
                           a worker claimed it (set by webhooks_claim, cleared with
                           its result: while its wh:retry score, the lease, is ahead,
                           the attempt is in flight)
``wh:dlq``         ZSET    ``<webhook>/<event>`` -> when it was dead-lettered; with
                           ``wh:dlq:<w>``, its bound and its counter: ``dlq.py``
``wh:idx:<w>``     ZSET    event id -> created (ms): the newest ``history_max``
                           deliveries of webhook ``<w>`` (a delivered or failed one
                           that falls off it is deleted with it: ``webhooks_done``)
=================  ======  ============================================================

The enqueue and release fragments write ``webhook`` entries to the outbox in the same
atomic step as the job's transition (fields: ``e`` event, ``j`` job id, ``n`` name,
``a`` attempts, ``ts`` ms, and ``u`` the job's own URL when it has one); the event
fragment does the same for the events other features raise (``feature_event``: ``e``
event, ``s`` subject, ``x`` its fields as a JSON list, ``ts``). The delivery service
fans each entry out to the endpoints that want it.
"""

from __future__ import annotations

from collections.abc import Iterable

from ...slots import lua_string
from .dlq import DEAD_TRIM, DLQ_FUNCS, INDEX_SCRIPT

__all__ = [
    "RELEASE_EVENTS",
    "SCRIPTS",
    "enqueue_fragment",
    "event_fragment",
    "feature_scripts",
    "release_fragment",
]

#: The events each ``release`` outcome produces (``failed`` adds ``job-dlq`` when the
#: queue's DLQ is enabled). ``deferred`` and ``released`` produce none.
RELEASE_EVENTS = {
    "completed": ("job-completed",),
    "retrying": ("job-retrying",),
    "failed": ("job-failed",),
    "stalled": ("job-stalled",),
    "removed": ("job-removed",),
}

_READ_SUBS = """
  local SUBS = PREFIX .. 'wh:subs'
  local subs = nil
  local function load_subs()
    if subs == nil then
      local flat = redis.pcall('HGETALL', SUBS)
      if type(flat) == 'table' and flat.err then
        -- Damaged by hand (another type): which events are wanted is unknown, so each
        -- one is written (the delivery service sends it only where it is wanted; none
        -- is lost), and the key is reported in slot-errors. webhooks_put rebuilds it.
        redis.pcall('HSET', PREFIX .. 'slot-errors', 'damaged:' .. SUBS, NOW_S .. ' ' ..
          damaged_reply(SUBS, redis.call('TYPE', SUBS)['ok'], 'hash').err ..
          ': every event is written to the outbox meanwhile; registering, updating or ' ..
          'removing any webhook rebuilds it')
        subs = setmetatable({}, { __index = function() return true end })
      else
        subs = {}
        for i = 1, #flat, 2 do subs[flat[i]] = true end
      end
    end
    return subs
  end"""


def _set(values: Iterable[str]) -> str:
    return "{" + ", ".join(f"[{lua_string(v)}] = true" for v in values) + "}"


def enqueue_fragment(url_events: Iterable[str]) -> str:
    """Marks a job's ``webhook_url`` on its hash (``wu``) and writes ``job-added``."""
    return f"""(function()
{_READ_SUBS}
  local URL_EVENTS = {_set(url_events)}
  return function(id, jk, opts, state)
    local url = nil
    if opts ~= '' and string.find(opts, '"webhook_url"', 1, true) then
      local ok, o = pcall(cjson.decode, opts)
      if ok and type(o) == 'table' and type(o['webhook_url']) == 'string'
          and o['webhook_url'] ~= '' then
        url = o['webhook_url']
      end
    end
    local s = load_subs()
    local added = s['job-added'] or (url and URL_EVENTS['job-added'])
    local name = ''
    if added then name = redis.call('HGET', jk, 'n') or '' end
    -- Writes last (a fragment never fails after its first write).
    if url then
      redis.call('HSET', jk, 'wu', url)
      if not s['job-url'] then redis.call('HSET', SUBS, 'job-url', '1'); s['job-url'] = true end
    end
    if added then
      if url and URL_EVENTS['job-added'] then
        outbox_add('webhook', 'e', 'job-added', 'j', id, 'n', name, 'a', '0', 'ts', NOW_S,
          'u', url)
      else
        outbox_add('webhook', 'e', 'job-added', 'j', id, 'n', name, 'a', '0', 'ts', NOW_S)
      end
    end
    return nil
  end
end)()"""


def release_fragment(url_events: Iterable[str], dlq_enabled: bool) -> str:
    """Writes the job's event(s) for each outcome, for the endpoints that want them."""
    failed = "{'job-failed', 'job-dlq'}" if dlq_enabled else "{'job-failed'}"
    return f"""(function()
{_READ_SUBS}
  local URL_EVENTS = {_set(url_events)}
  local EVENTS = {{ completed = {{'job-completed'}}, retrying = {{'job-retrying'}},
    failed = {failed}, stalled = {{'job-stalled'}}, removed = {{'job-removed'}} }}
  return function(id, jk, outcome)
    local evs = EVENTS[outcome]
    if not evs then return end
    local s = load_subs()
    local any = false
    for i = 1, #evs do
      if s[evs[i]] or (s['job-url'] and URL_EVENTS[evs[i]]) then any = true end
    end
    if not any then return end
    -- A missing or damaged record still gets its event (ids only).
    local f = redis.pcall('HMGET', jk, 'n', 'a', 'wu')
    if type(f) ~= 'table' or f.err then f = {{}} end
    local name, attempts, url = f[1] or '', f[2] or '0', f[3]
    for i = 1, #evs do
      local ev = evs[i]
      if url and URL_EVENTS[ev] then
        outbox_add('webhook', 'e', ev, 'j', id, 'n', name, 'a', attempts, 'ts', NOW_S,
          'u', url)
      elseif s[ev] then
        outbox_add('webhook', 'e', ev, 'j', id, 'n', name, 'a', attempts, 'ts', NOW_S)
      end
    end
  end
end)()"""


def event_fragment() -> str:
    """Writes an event another feature raised (a workflow's end, a breaker's change) to
    the outbox when an active guaranteed endpoint wants it: the ``event`` slot."""
    return f"""(function()
{_READ_SUBS}
  return function(name, subject, fields)
    if not load_subs()[name] then return end
    outbox_add('webhook', 'e', name, 's', tostring(subject or ''), 'x', cjson.encode(fields),
      'ts', NOW_S)
  end
end)()"""


# KEYS: the queue's shared layout (lib_base.lua); ARGV[1..3]: the shared head.
_PUT = """--@include lib_base
-- webhooks_put: ARGV[4] webhook id, ARGV[5] registration JSON ('' = remove it),
-- ARGV[6] most webhooks a queue may have, ARGV[7] history_ttl_s. Rebuilds wh:subs from
-- every registration. A removed endpoint's index (wh:idx:<w>) expires with the records
-- it lists; registered again under its id, it is kept again.
-- wh:hooks or wh:ver damaged by hand: KQ_DAMAGED_KEY, nothing written. A damaged wh:subs
-- is rebuilt (it is derived from wh:hooks; the job-url mark is kept set).
local HOOKS, SUBS, VER = PREFIX .. 'wh:hooks', PREFIX .. 'wh:subs', PREFIX .. 'wh:ver'
local id, body, max = ARGV[4], ARGV[5], arg_int(ARGV[6], 1000, 1, 100000)
local ttl = arg_int(ARGV[7], 604800, 1, 315360000)
local bad = check_key(HOOKS, 'hash')
if bad then return bad end
local ver = redis.pcall('GET', VER)
if type(ver) == 'table' then return damaged_reply(VER, redis.call('TYPE', VER)['ok'], 'integer') end
if ver and not (#ver <= 15 and (ver == '0' or string.match(ver, '^%-?[1-9]%d*$'))) then
  return damaged_reply(VER, 'string', 'integer')
end
if body ~= '' and redis.call('HEXISTS', HOOKS, id) == 0
    and redis.call('HLEN', HOOKS) >= max then
  return bad_arg('webhooks_put', 'the queue already has ' .. max .. ' webhooks')
end
local existed = redis.call('HEXISTS', HOOKS, id)
if body == '' then redis.call('HDEL', HOOKS, id) else redis.call('HSET', HOOKS, id, body) end
local IDX = PREFIX .. 'wh:idx:' .. id
if body == '' then
  redis.call('EXPIRE', IDX, ttl)
else
  redis.call('PERSIST', IDX)
end
local want = {}
local vals = redis.call('HVALS', HOOKS)
for i = 1, #vals do
  local ok, h = pcall(cjson.decode, vals[i])
  if ok and type(h) == 'table' and h['active'] == true and h['strategy'] == 'guaranteed'
      and type(h['events']) == 'table' then
    for _, e in ipairs(h['events']) do
      if type(e) == 'string' then want[e] = true end
    end
  end
end
local url = redis.pcall('HGET', SUBS, 'job-url')
if type(url) == 'table' then
  url = '1'
  redis.pcall('HDEL', PREFIX .. 'slot-errors', 'damaged:' .. SUBS)
end
redis.call('UNLINK', SUBS)
if url then redis.call('HSET', SUBS, 'job-url', url) end
for e in pairs(want) do redis.call('HSET', SUBS, e, '1') end
redis.call('INCR', VER)
return existed
"""

_CLAIM = """--@include lib_base
-- webhooks_claim: ARGV[4] most deliveries, ARGV[5] lease ms. Due retries are handed out
-- with their score pushed a lease ahead (a worker that dies leaves them due again) and
-- their record marked claimed (field l; webhooks_requeue refuses a leased one). A
-- delivery record damaged by hand (another type) cannot be attempted: it moves to the
-- DLQ, where listings name it, and is returned as a row of one field (its member).
-- A member that is not UTF-8 names no delivery (the library writes UTF-8 ids): it is
-- dropped (its record, if any, left as it was) and reported in slot-errors
-- ('webhooks:retry-member'). wh:retry or wh:dlq damaged: KQ_DAMAGED_KEY, nothing written.
{dlq_funcs}
local RETRY, DLQ = PREFIX .. 'wh:retry', PREFIX .. 'wh:dlq'
local bad = check_key(RETRY, 'zset') or check_key(DLQ, 'zset')
if bad then return bad end
local n = arg_int(ARGV[4], 100, 1, BATCH_MAX)
local lease = arg_int(ARGV[5], 60000, 1, MAX_DELAY_MS)
-- Strict UTF-8 (as Python decodes it): no overlong forms, no surrogates, <= U+10FFFF.
local function utf8_ok(s)
  if not string.find(s, '[\\128-\\255]') then return true end
  local i, len = 1, #s
  while i <= len do
    local c = string.byte(s, i)
    local k, lo, hi = 0, 0x80, 0xBF
    if c < 0x80 then k = 0
    elseif c >= 0xC2 and c <= 0xDF then k = 1
    elseif c >= 0xE0 and c <= 0xEF then
      k = 2
      if c == 0xE0 then lo = 0xA0 elseif c == 0xED then hi = 0x9F end
    elseif c >= 0xF0 and c <= 0xF4 then
      k = 3
      if c == 0xF0 then lo = 0x90 elseif c == 0xF4 then hi = 0x8F end
    else return false end
    if i + k > len then return false end
    for j = 1, k do
      local d = string.byte(s, i + j)
      if d < lo or d > hi then return false end
      lo, hi = 0x80, 0xBF
    end
    i = i + k + 1
  end
  return true
end
local due = redis.call('ZRANGEBYSCORE', RETRY, '-inf', NOW_S, 'LIMIT', 0, n)
local out, dropped, last = {}, 0, nil
for i = 1, #due do
  local m = due[i]
  local f = nil
  -- A delivery is named '<webhook id>/<event id>' in UTF-8; anything else names none.
  if utf8_ok(m) and string.find(m, '/', 1, true) then
    f = redis.pcall('HMGET', PREFIX .. 'wh:d:' .. m, 'b', 'ty', 'a', 'u', 'sg', 'm', 'h', 'st')
  end
  if f == nil then
    redis.call('ZREM', RETRY, m)
    dropped, last = dropped + 1, m
  elseif f.err then
    redis.call('ZREM', RETRY, m)
    dlq_put(m, NOW_S)
    out[#out + 1] = {m}
  elseif not f[1] then
    redis.call('ZREM', RETRY, m)  -- its record expired or was deleted
  else
    redis.call('ZADD', RETRY, int(NOW + lease), m)
    redis.call('HSET', PREFIX .. 'wh:d:' .. m, 'l', NOW_S)
    out[#out + 1] = {m, f[1], f[2] or '', f[3] or '0', f[4] or '', f[5] or '', f[6] or '',
      f[7] or '[]'}
  end
end
if dropped > 0 then
  local hex = string.gsub(string.sub(last, 1, 64), '.', function(ch)
    return string.format('%02x', string.byte(ch))
  end)
  -- pcall: a damaged slot-errors hash must not fail the call (health_check names it).
  redis.pcall('HSET', PREFIX .. 'slot-errors', 'webhooks:retry-member', NOW_S .. ' ' ..
    dropped .. ' member(s) of ' .. RETRY .. ' not UTF-8 or without the / of a ' ..
    "delivery's name (written outside kitium-queue; " ..
    'the last, in hex: ' .. hex .. ') named no delivery and were dropped from the ' ..
    'retries; a record under such a name was left as it was (delete it if unwanted)')
end
return out
"""

_DONE = """--@include lib_base
--@include lib_events
-- webhooks_done: record delivery results and acknowledge outbox entries, atomically.
-- ARGV[4] outbox group, ARGV[5] number of entry ids to XACK, then the ids, then 13
-- fields per delivery: member, kind (ok | retry | dead | failed), attempts, due ms,
-- history JSON, status ('' = none), error, ttl s, body ('' = the record exists),
-- type, strategy, url, max retries.
-- wh:retry or wh:dlq damaged by hand: KQ_DAMAGED_KEY, nothing written. The record key of
-- a new delivery (body given) holding another type is replaced: a record is always a
-- hash, and its name is this delivery's own (ids hold no '/'), so nothing there is any
-- delivery's record, and the event it would have lost is at hand. An existing delivery
-- whose record is damaged (its record was the event's only copy) is not recorded: it goes
-- to the DLQ, where listings name it; a damaged index wh:idx:<w> is left out.
-- History bound: wh:idx:<w> keeps the newest HISTORY_MAX deliveries of endpoint <w>; a
-- record that falls off it is deleted in the same step when its state is final
-- (delivered, failed) and it is in neither wh:retry nor wh:dlq. A pending or dead record
-- falls off the index but stays (wh:retry, wh:dlq reach it); once it ends delivered or
-- failed it goes back in under its creation time, and is deleted at once if older than
-- the newest HISTORY_MAX. A call takes off at most the entries it added plus TRIM_SPARE
-- in all, so a lowered HISTORY_MAX drains over several calls, never in one long script.
-- Dead-letter bound (DEAD_MAX, DEAD_TTL_MS): dlq.py.
-- Returns { 1, { damaged keys left as they were }, { replaced key, its type, ... },
-- { webhook id, dead deliveries dropped by the bound, ... } }.
{dlq_funcs}
local HISTORY_MAX, TRIM_SPARE = {history_max}, 1000
local DEAD_MAX, DEAD_TTL_MS = {dead_max}, {dead_ttl_ms}
local RETRY, DLQ = PREFIX .. 'wh:retry', PREFIX .. 'wh:dlq'
local bad = check_key(RETRY, 'zset') or check_key(DLQ, 'zset')
if bad then return bad end
local group = ARGV[4]
local nack = arg_int(ARGV[5], 0, 0, BATCH_MAX)
local first = 6 + nack
if (#ARGV - first + 1) % 13 ~= 0 then
  return bad_arg('webhooks_done', 'delivery fields are not a multiple of 13')
end
for b = first, #ARGV, 13 do
  if not arg_int(ARGV[b + 2], nil, 0, MAX_MS) or not arg_int(ARGV[b + 3], nil, 0, MAX_MS)
      or not arg_int(ARGV[b + 7], nil, 1, MAX_MS) then
    return bad_arg('webhooks_done', 'attempts, due or ttl is not a number')
  end
end
-- Checks first, writes last.
local damaged, replaced, broken, noidx, dead_added = {}, {}, {}, {}, {}
for b = first, #ARGV, 13 do
  local key = PREFIX .. 'wh:d:' .. ARGV[b]
  local t = key_type(key)
  if t ~= 'none' and t ~= 'hash' and ARGV[b + 8] == '' then
    broken[b] = true
    damaged[#damaged + 1] = key
  else
    if t ~= 'none' and t ~= 'hash' then
      replaced[#replaced + 1] = key
      replaced[#replaced + 1] = t
    end
    local slash = string.find(ARGV[b], '/', 1, true) or 0
    local ik = PREFIX .. 'wh:idx:' .. string.sub(ARGV[b], 1, slash - 1)
    if noidx[ik] == nil then
      local it = key_type(ik)
      noidx[ik] = it ~= 'none' and it ~= 'zset'
      if noidx[ik] then damaged[#damaged + 1] = ik end
    end
  end
end
local touched = {}
for b = first, #ARGV, 13 do
  local m, kind, attempts = ARGV[b], ARGV[b + 1], ARGV[b + 2]
  local due, ttl = arg_int(ARGV[b + 3], 0, 0, MAX_MS), arg_int(ARGV[b + 7], 1, 1, MAX_MS)
  local key = PREFIX .. 'wh:d:' .. m
  local slash = string.find(m, '/', 1, true) or 0
  local wid, eid = string.sub(m, 1, slash - 1), string.sub(m, slash + 1)
  local state = ({ ok = 'delivered', retry = 'pending', dead = 'dead', failed = 'failed' })[kind]
    or 'failed'
  local ik = PREFIX .. 'wh:idx:' .. wid
  if broken[b] then
    state = nil
    redis.call('ZREM', RETRY, m)
    dlq_put(m, NOW_S)
    dead_added[wid] = (dead_added[wid] or 0) + 1
  elseif ARGV[b + 8] ~= '' then
    local t = key_type(key)
    if t ~= 'none' and t ~= 'hash' then redis.call('UNLINK', key) end
    redis.call('HSET', key, 'b', ARGV[b + 8], 'ty', ARGV[b + 9], 'sg', ARGV[b + 10],
      'c', NOW_S)
    if ARGV[b + 11] ~= '' then redis.call('HSET', key, 'u', ARGV[b + 11], 'm', ARGV[b + 12]) end
    if not noidx[ik] then
      redis.call('ZADD', ik, NOW_S, eid)
      touched[wid] = (touched[wid] or 0) + 1
    end
  elseif redis.call('EXISTS', key) == 0 then
    state = nil  -- deleted meanwhile: nothing to record
  end
  if state then
    redis.call('HSET', key, 'st', state, 'a', attempts, 'h', ARGV[b + 4], 'sc', ARGV[b + 5],
      'e', ARGV[b + 6])
    redis.call('HDEL', key, 'l')  -- its claim, if any, is over
    if kind == 'retry' then
      redis.call('ZADD', RETRY, due, m)
      redis.call('PERSIST', key)
    else
      redis.call('ZREM', RETRY, m)
      if kind == 'dead' then
        dlq_put(m, NOW_S)
        dead_added[wid] = (dead_added[wid] or 0) + 1
        redis.call('PERSIST', key)
        emit('webhook-dlq', eid, 'webhook', wid, 'reason', stream_reason(ARGV[b + 6]))
      else
        dlq_del(m)
        redis.call('EXPIRE', key, ttl)
        if ARGV[b + 8] == '' and not noidx[ik] then
          -- Back in the index (it may have fallen off while pending or dead).
          local c = tonumber(redis.call('HGET', key, 'c'))
          if c == nil or c ~= c or c < 0 or c > MAX_MS then c = NOW end
          if redis.call('ZADD', ik, 'NX', int(c), eid) == 1 then
            touched[wid] = (touched[wid] or 0) + 1
          end
        end
        if kind == 'failed' then
          emit('webhook-failed', eid, 'webhook', wid, 'reason', stream_reason(ARGV[b + 6]))
        end
      end
    end
  end
end
for wid, added in pairs(touched) do
  local ik = PREFIX .. 'wh:idx:' .. wid
  local n = math.min(redis.call('ZCARD', ik) - HISTORY_MAX, added + TRIM_SPARE)
  if n > 0 then
    TRIM_SPARE = TRIM_SPARE - math.max(n - added, 0)
    local old = redis.call('ZRANGE', ik, 0, n - 1)
    redis.call('ZREMRANGEBYRANK', ik, 0, n - 1)
    for i = 1, #old do
      local m = wid .. '/' .. old[i]
      local key = PREFIX .. 'wh:d:' .. m
      local st = redis.pcall('HGET', key, 'st')
      if (st == 'delivered' or st == 'failed') and not redis.call('ZSCORE', RETRY, m)
          and not redis.call('ZSCORE', DLQ, m) then
        redis.call('UNLINK', key)
      end
    end
  end
end
{dead_trim}
if nack > 0 then
  redis.call('XACK', PREFIX .. 'outbox', group, unpack(ARGV, 6, 5 + nack))
end
return { 1, damaged, replaced, dropped }
"""

_REQUEUE = """--@include lib_base
-- webhooks_requeue: ARGV[4] mode ('one' | 'dlq'), ARGV[5] member (one) or webhook id
-- filter ('' = every webhook; dlq), ARGV[6] most deliveries (dlq), ARGV[7] DLQ entries
-- to pass over first (dlq: those an earlier call of the same replay left there).
-- Schedules deliveries for an attempt now; a dead one starts again with its full retry
-- budget. Returns { scheduled, passed over (another webhook's, or a record damaged by
-- hand: left in the DLQ), DLQ entries examined }. wh:retry or wh:dlq damaged, or the
-- one record asked for: KQ_DAMAGED_KEY, nothing written. 'one' of a pending delivery
-- that a worker claimed and whose lease (its wh:retry score) is still ahead: its
-- attempt is in flight, and scheduling it again would send it twice; nothing written,
-- { 0, 0, 1, 'leased', ms left of the lease }.
{dlq_funcs}
local RETRY, DLQ = PREFIX .. 'wh:retry', PREFIX .. 'wh:dlq'
local bad = check_key(RETRY, 'zset') or check_key(DLQ, 'zset')
if bad then return bad end
local mode, arg = ARGV[4], ARGV[5]
local members, passed, examined = {}, 0, 1
if mode == 'one' then
  members = { arg }
  local key = PREFIX .. 'wh:d:' .. arg
  bad = check_key(key, 'hash')
  if bad then return bad end
  if redis.call('HGET', key, 'st') == 'pending' and redis.call('HEXISTS', key, 'l') == 1 then
    local due = tonumber(redis.call('ZSCORE', RETRY, arg))
    if due and due > NOW then return { 0, 0, 1, 'leased', int(due - NOW) } end
  end
else
  local n = arg_int(ARGV[6], 1000, 1, BATCH_MAX)
  local skip = arg_int(ARGV[7], 0, 0, MAX_MS)
  local all = redis.call('ZRANGE', DLQ, skip, skip + n - 1)
  examined = #all
  for i = 1, #all do
    if arg == '' or string.sub(all[i], 1, #arg + 1) == arg .. '/' then
      members[#members + 1] = all[i]
    else
      passed = passed + 1
    end
  end
end
local done = 0
for i = 1, #members do
  local m = members[i]
  local key = PREFIX .. 'wh:d:' .. m
  local st = redis.pcall('HGET', key, 'st')
  if type(st) == 'table' then
    passed = passed + 1
  elseif st then
    if st == 'dead' or st == 'failed' or st == 'delivered' then
      redis.call('HSET', key, 'a', 0)
    end
    redis.call('HSET', key, 'st', 'pending')
    redis.call('HDEL', key, 'l')
    redis.call('PERSIST', key)
    dlq_del(m)
    redis.call('ZADD', RETRY, NOW_S, m)
    done = done + 1
  else
    dlq_del(m)  -- its record was deleted: nothing to replay
  end
end
return { done, passed, examined }
"""


def feature_scripts(
    history_max: int, dead_max: int | None = 10_000, dead_ttl_s: int | None = None
) -> dict[str, str]:
    """The feature's scripts, registered with ``queue.scripts.add_fragment``; the
    records kept per endpoint (``history_max``) and the bound of its dead deliveries
    (``dead_max``, ``dead_ttl_s``: None for none), checked by the caller, are compiled
    into ``webhooks_done``."""
    done = _DONE.replace("{history_max}", str(int(history_max)), 1)
    done = done.replace("{dead_max}", str(int(dead_max or 0)), 1)
    done = done.replace("{dead_ttl_ms}", str(int(dead_ttl_s or 0) * 1000), 1)
    return {
        "webhooks_put": _PUT,
        "webhooks_claim": _CLAIM.replace("{dlq_funcs}", DLQ_FUNCS, 1),
        "webhooks_done": done.replace("{dead_trim}", DEAD_TRIM, 1).replace(
            "{dlq_funcs}", DLQ_FUNCS, 1
        ),
        "webhooks_requeue": _REQUEUE.replace("{dlq_funcs}", DLQ_FUNCS, 1),
        "webhooks_dlq_index": INDEX_SCRIPT,
    }


#: The feature's scripts with the default bounds (10,000 per endpoint each).
SCRIPTS = feature_scripts(10_000)
