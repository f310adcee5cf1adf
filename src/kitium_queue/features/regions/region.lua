--[[
  region.lua — the region record of one copy of a multi-region queue, and the votes and
  leases that decide which copy is the primary (kitium_queue.features.regions;
  docs/multi-region.md, "Epochs and leases").

  KEYS: the shared layout (lib_base.lua); only the record <prefix>rg is used.
  ARGV[1..3]: shared prefix, now (leases and votes are kept in this clock: the server's
              own unless a test passes one), events maxlen.
  ARGV[4]   op; ARGV[5] SELF, the region of this copy; then the op's arguments (ARGV[6..]).
            Epochs and durations are integers; every argument is checked before the first
            write (KQ_BAD_ARGUMENT). A record without a region is claimed for SELF by any
            op; a record of another region answers 'mismatch' (detail: that region) and
            nothing is written: two regions configured with the same Redis.

  The record (HASH <prefix>rg):
    self     the region this copy belongs to (set once: a second region claiming the same
             Redis is refused, status 'mismatch')
    epoch    the highest epoch this copy knows to be established, and primary: its
             primary region
    lease    while primary == self: until when (ms, this clock) this copy may take new
             work as the primary; -1 = no end (a copy that is the only home of its jobs)
    down     the epoch this copy stepped down in (a planned failover): no renewal revives
             its lease
    vepoch, vfor, vuntil   this copy's vote: in election vepoch it voted for vfor, and it
             grants vfor the lease until vuntil (ms, this clock)
    vrun     the server that wrote the vote or grant: "<run_id>:<master_replid>" (INFO).
             A vote asked of another server (a restart, which may have come back from an
             older snapshot; a failover to a replica, which may lack the last writes)
             waits until every grant the record may have lost has run out: one lease
             after that server was first seen here (qrun, qsince), answering 'held'.
             Without it a voter that lost its grant to the primary voted for another
             candidate while that primary still took work: two primaries at once.
    pos, src the replication position this copy applied (an outbox entry id of src,
             "<region>@<epoch>")
    former   the epoch in which this copy was the primary, when it learnt of a later one
             (adopt): its jobs not replicated then are still to be reported (rejoin)

  Ops (every reply: { status, detail, self, epoch, primary, lease, vepoch, vfor, vuntil,
  pos, src, down, former, now }, the record after the op):
    read
    home                      make this copy the permanent primary of itself (epoch 0,
                              lease -1) unless it has an epoch already
    follow P                  record P as the permanent primary of a copy that never
                              leads (epoch 0, lease 0) unless it has an epoch already
    vote E CAND L             vote for CAND in election E and grant it L ms: 'stale' when
                              E is not above the established epoch, 'voted' when this
                              copy voted for another candidate in E or later, 'held'
                              (detail: ms left) while its grant to another is valid
    renew E P L               P is the established primary of E: learn it if this copy
                              had an older epoch, and grant P L ms more ('stale' when this
                              copy knows a later epoch or election)
    promote E UNTIL           make this copy primary of E until UNTIL, if it voted for
                              itself in E ('novote' otherwise) and is not a former
                              primary still to rejoin ('former', detail: its old epoch:
                              its stranded work is not recorded and its copy not made
                              afresh yet, and the replicator doing that would clear it)
    extend E UNTIL            move the lease of the primary of E to UNTIL (never back)
    stepdown E                the primary of E stops taking work now (lease 0, down = E)
    resume E                  undo stepdown E (an abandoned planned failover)
    release E HOLDER          withdraw this copy's grant to HOLDER from election E or
                              before (after HOLDER stepped down, or lost its election)
    adopt E P                 learn that P is the primary of E > epoch; this copy takes no
                              work as primary from now on (a returning old primary: its
                              old epoch goes to 'former', unless it stepped down in it)
    rejoin                    forget 'former', 'pos' and 'src': the copy was emptied and
                              is copied afresh from the primary
  Statuses: 'ok', 'stale', 'voted', 'held', 'novote', 'former', 'mismatch', 'conflict'.
]]
--@include lib_base

local RG = PREFIX .. 'rg'
local FIELDS = { 'self', 'epoch', 'primary', 'lease', 'vepoch', 'vfor', 'vuntil', 'pos',
  'src', 'down', 'former' }
local op = ARGV[4]

local function arg_epoch(x, what)
  local n = tonumber(x)
  if n == nil or n ~= n or n < 0 or n > MAX_MS or n ~= math.floor(n) then
    return nil, bad_arg('region', what .. ' must be an integer from 0, got ' .. tostring(x))
  end
  return n
end

local function arg_name(x, what)
  if type(x) ~= 'string' or x == '' or #x > 256 then
    return nil, bad_arg('region', what .. ' must be a region name')
  end
  return x
end

local f = redis.call('HMGET', RG, unpack(FIELDS))
local rec = {}
for i = 1, #FIELDS do rec[FIELDS[i]] = f[i] end
local epoch = tonumber(rec.epoch)
local vepoch = tonumber(rec.vepoch) or -1
local vuntil = num(rec.vuntil)

-- The server and dataset this script runs on (see vrun above).
-- '?' for what a server does not tell (an ACL without +info, the memory:// backend):
-- the same every time, so no vote waits there.
local function identity()
  local sv = redis.pcall('INFO', 'server')
  local rp = redis.pcall('INFO', 'replication')
  if type(sv) ~= 'string' then sv = '' end
  if type(rp) ~= 'string' then rp = '' end
  return (string.match(sv, 'run_id:(%x+)') or '?') .. ':' ..
    (string.match(rp, 'master_replid:(%x+)') or '?')
end

local function reply(status, detail)
  local g = redis.call('HMGET', RG, unpack(FIELDS))
  local out = { status, detail or '' }
  for i = 1, #FIELDS do out[#out + 1] = g[i] or '' end
  out[#out + 1] = NOW_S
  return out
end

local me, bad = arg_name(ARGV[5], 'SELF')
if not me then return bad end
if rec.self and rec.self ~= me then return reply('mismatch', rec.self) end
local OPS = { read = true, home = true, follow = true, vote = true, renew = true,
  promote = true, extend = true, stepdown = true, resume = true, release = true,
  adopt = true, rejoin = true }
if not OPS[op] then return bad_arg('region', 'unknown op ' .. tostring(op)) end
if not rec.self then
  redis.call('HSET', RG, 'self', me, 'vrun', identity())
  rec.self = me
end

if op == 'read' then
  return reply('ok')
end

if op == 'rejoin' then
  redis.call('HDEL', RG, 'former', 'pos', 'src')
  return reply('ok')
end

if op == 'home' then
  if epoch == nil then redis.call('HSET', RG, 'epoch', 0, 'primary', rec.self, 'lease', -1) end
  return reply('ok')
end

if op == 'follow' then
  local p, err = arg_name(ARGV[6], 'P')
  if not p then return err end
  if epoch == nil then redis.call('HSET', RG, 'epoch', 0, 'primary', p, 'lease', 0) end
  return reply('ok')
end

if op == 'vote' then
  local e, err = arg_epoch(ARGV[6], 'E')
  if not e then return err end
  local cand, err2 = arg_name(ARGV[7], 'CAND')
  if not cand then return err2 end
  local l = arg_int(ARGV[8], 0, 0, MAX_DELAY_MS)
  if epoch ~= nil and e <= epoch then return reply('stale') end
  if vepoch > e or (vepoch == e and rec.vfor ~= cand) then return reply('voted') end
  if vuntil > NOW and rec.vfor ~= cand and vepoch < e then
    return reply('held', int(vuntil - NOW))
  end
  local id = identity()
  local vrun = redis.call('HGET', RG, 'vrun')
  if vrun and vrun ~= id then
    local q = redis.call('HMGET', RG, 'qrun', 'qsince')
    local since = q[1] == id and tonumber(q[2]) or nil
    if not since then
      since = NOW
      redis.call('HSET', RG, 'qrun', id, 'qsince', NOW_S)
    end
    if NOW < since + l then return reply('held', int(since + l - NOW)) end
  end
  redis.call('HSET', RG, 'vepoch', int(e), 'vfor', cand, 'vuntil', int(NOW + l), 'vrun', id)
  redis.call('HDEL', RG, 'qrun', 'qsince')
  return reply('ok')
end

if op == 'renew' then
  local e, err = arg_epoch(ARGV[6], 'E')
  if not e then return err end
  local p, err2 = arg_name(ARGV[7], 'P')
  if not p then return err2 end
  local l = arg_int(ARGV[8], 0, 0, MAX_DELAY_MS)
  if (epoch ~= nil and e < epoch) or vepoch > e then return reply('stale') end
  if epoch ~= nil and e == epoch and rec.primary ~= p then return reply('conflict', rec.primary) end
  if epoch == nil or e > epoch then
    redis.call('HSET', RG, 'epoch', int(e), 'primary', p)
    if rec.self ~= p then redis.call('HSET', RG, 'lease', 0) end
  end
  local until_ = NOW + l
  if rec.vfor == p and vepoch == e and vuntil > until_ then until_ = vuntil end
  -- A grant to the established primary is safe on any server: a vote for another
  -- candidate is then held while it runs.
  redis.call('HSET', RG, 'vepoch', int(e), 'vfor', p, 'vuntil', int(until_), 'vrun', identity())
  return reply('ok')
end

if op == 'promote' or op == 'extend' then
  local e, err = arg_epoch(ARGV[6], 'E')
  if not e then return err end
  local t = tonumber(ARGV[7])
  if t == nil or t ~= t then return bad_arg('region', 'UNTIL must be a time in ms') end
  t = arg_int(t, 0, 0, MAX_MS)
  if op == 'promote' then
    if epoch ~= nil and e < epoch then return reply('stale') end
    if epoch ~= nil and e == epoch and rec.primary ~= rec.self then
      return reply('conflict', rec.primary)
    end
    if not (epoch ~= nil and e == epoch) and not (vepoch == e and rec.vfor == rec.self) then
      return reply('novote')
    end
    if rec.former and not (epoch ~= nil and e == epoch) then return reply('former', rec.former) end
    redis.call('HSET', RG, 'epoch', int(e), 'primary', rec.self)
    redis.call('HDEL', RG, 'down')
  elseif epoch ~= e or rec.primary ~= rec.self or rec.down == int(e) then
    return reply('stale')
  end
  local lease = num(rec.lease)
  if op == 'promote' or lease >= 0 then
    if op == 'promote' or t > lease then redis.call('HSET', RG, 'lease', int(t)) end
  end
  return reply('ok')
end

if op == 'stepdown' or op == 'resume' then
  local e, err = arg_epoch(ARGV[6], 'E')
  if not e then return err end
  if epoch ~= e or rec.primary ~= rec.self then return reply('stale') end
  if op == 'stepdown' then
    redis.call('HSET', RG, 'lease', 0, 'down', int(e))
    if rec.vfor == rec.self then redis.call('HSET', RG, 'vuntil', 0) end
  elseif rec.down == int(e) then
    redis.call('HDEL', RG, 'down')
  end
  return reply('ok')
end

if op == 'release' then
  local e, err = arg_epoch(ARGV[6], 'E')
  if not e then return err end
  local holder, err2 = arg_name(ARGV[7], 'HOLDER')
  if not holder then return err2 end
  if rec.vfor == holder and vepoch <= e then redis.call('HSET', RG, 'vuntil', 0) end
  return reply('ok')
end

if op == 'adopt' then
  local e, err = arg_epoch(ARGV[6], 'E')
  if not e then return err end
  local p, err2 = arg_name(ARGV[7], 'P')
  if not p then return err2 end
  if epoch ~= nil and e < epoch then return reply('stale') end
  if epoch ~= nil and e == epoch then
    if rec.primary ~= p then return reply('conflict', rec.primary) end
    return reply('ok')
  end
  -- A primary that stepped down (a planned handover) replicated everything first.
  if rec.primary == rec.self and epoch ~= nil and not rec.former and rec.down ~= int(epoch) then
    redis.call('HSET', RG, 'former', int(epoch))
  end
  redis.call('HSET', RG, 'epoch', int(e), 'primary', p)
  if rec.self ~= p then
    redis.call('HSET', RG, 'lease', 0)
    redis.call('HDEL', RG, 'down')
  end
  return reply('ok')
end

return bad_arg('region', 'unknown op ' .. tostring(op))
