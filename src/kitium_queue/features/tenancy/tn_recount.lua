--[[
  tn_recount.lua — one bounded step of the recount of a tenant's count of unfinished
  jobs in one queue (field n of tn:<t>) when it holds something that is not an integer
  (damaged outside kitium-queue). TenantRegistry drives the steps (install.py recount)
  until the pass is over; between steps Redis serves everyone else.

  KEYS[1]  <prefix>:{<queue>}:tn:<tenant>  HASH  the tenant in the queue (prelude.lua)
  ARGV[1]  tenant id
  ARGV[2]  keys per SCAN (its COUNT hint), clamped to 1..10000
  ARGV[3]  SCANs in this step, clamped to 1..100
  ARGV[4]  the caller's token (random), 1..64 bytes: a new pass's id is it and the
           server's time, so no two passes share an id (a job marked by an earlier pass
           is counted again by the next)

  A pass walks the database's keys (SCAN MATCH <queue>job:*) with its cursor kept in
  the tenant's hash: rc the pass's id, rcn the jobs it counted so far, rcc its cursor,
  rcs the server it walks (INFO run_id). A cursor only means something to the server
  process that gave it (each process hashes keys with its own random seed): a pass
  found on another process (a restart, a failover) starts again from the first key.
  A job of the tenant marked as counted (tn = the tenant, tq) and not yet marked with
  the pass (job field tr) is marked and counted. While a pass is open the tenancy
  fragments keep it exact (prelude.lua pass_count): a job counted meanwhile is marked
  and added at once (the walk then skips it), one that stops being counted is taken off
  if the pass had counted it, otherwise the walk no longer finds it counted. Keys that
  exist for the whole walk are all returned by SCAN, and duplicates are skipped by
  their mark, so the count is exact when the cursor comes back to 0: then n is written
  and the pass's fields deleted.

  Returns { 'ok', n } when n holds a count (written by this step, or already; a pass
  left open when n was written over by hand is dropped), { 'more', counted so far }
  when the pass goes on, { 'damaged', type } when KEYS[1] holds another Redis type
  (nothing written). A pass whose fields are not what it wrote (rcn not a count, a
  cursor that is no SCAN cursor, an id that is no id, another server's) starts again
  from the first key.
]]
local key, tenant = KEYS[1], ARGV[1]

local function count_of(raw)
  if raw and #raw <= 15 and string.match(raw, '^%d+$') then return tonumber(raw) end
  return nil
end

local function clamp(x, lo, hi, default)
  local n = tonumber(x)
  if n == nil or n ~= n then return default end
  n = math.floor(n)
  if n < lo then return lo end
  if n > hi then return hi end
  return n
end

local per = clamp(ARGV[2], 1, 10000, 1000)
local scans = clamp(ARGV[3], 1, 100, 5)
local new_id = ARGV[4] or ''
if new_id == '' or #new_id > 64 then
  return redis.error_reply('KQ_BAD_ARGUMENT tn_recount: a pass id of 1 to 64 bytes is '
    .. 'needed; nothing was written')
end

local t = redis.call('TYPE', key)
if type(t) == 'table' then t = t['ok'] end
if t ~= 'hash' and t ~= 'none' then return { 'damaged', t } end

local raw = redis.call('HGET', key, 'n')
local n = count_of(raw)
if raw == false or n then
  if redis.call('HEXISTS', key, 'rc') == 1 then
    redis.call('HDEL', key, 'rc', 'rcn', 'rcc', 'rcs')
  end
  return { 'ok', n or 0 }
end

-- The server process: its run_id ('' when INFO gives none).
local info = redis.pcall('INFO', 'server')
local server = type(info) == 'string' and string.match(info, 'run_id:(%x+)') or ''

local f = redis.call('HMGET', key, 'rc', 'rcn', 'rcc', 'rcs')
local id, c, cur = f[1], count_of(f[2]), f[3]
if not id or #id > 100 or not c or not cur or #cur > 19 or not string.match(cur, '^%d+$')
    or f[4] ~= server then
  local now = redis.call('TIME')
  id, c, cur = new_id .. '@' .. now[1] .. '.' .. now[2], 0, '0'
  redis.call('HSET', key, 'rc', id, 'rcn', 0, 'rcc', cur, 'rcs', server)
end

local base = string.sub(key, 1, #key - #('tn:' .. tenant))
local pattern = string.gsub(base, '[%*%?%[%]\\]', '\\%0') .. 'job:*'
for _ = 1, scans do
  local r = redis.call('SCAN', cur, 'MATCH', pattern, 'COUNT', per)
  cur = r[1]
  for i = 1, #r[2] do
    local k = r[2][i]
    local g = redis.pcall('HMGET', k, 'tn', 'tq', 'tr')
    if type(g) == 'table' and not g.err and g[1] == tenant and g[2] and g[3] ~= id then
      redis.call('HSET', k, 'tr', id)
      c = c + 1
    end
  end
  if cur == '0' then break end
end
if cur == '0' then
  redis.call('HSET', key, 'n', c)
  redis.call('HDEL', key, 'rc', 'rcn', 'rcc', 'rcs')
  return { 'ok', c }
end
redis.call('HSET', key, 'rcn', c, 'rcc', cur)
return { 'more', c }
