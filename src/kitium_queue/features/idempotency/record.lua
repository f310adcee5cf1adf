--[[
  record.lua — write an execution record (IdempotencyManager.record_execution), fenced
  by the run that makes it (kitium_queue.features.idempotency).

  KEYS: the shared layout (lib_base.lua).
  ARGV[1..3]: shared prefix, now, events maxlen.
  ARGV[4]  the idempotency key (the record is <prefix>idem-x:<key>)
  ARGV[5]  the job id the record names
  ARGV[6]  the lease token of the run making it; '' = not made by a run (no fence)
  ARGV[7]  the encoded result
  ARGV[8]  the job name
  ARGV[9]  how long the record lives, ms (clamped to 1..MAX_MS)
  ARGV[10] the job's id in this queue, fenced (ARGV[5] without its partition); '' or
           missing = ARGV[5]

  With a token, the record is written only if the job's record still exists, is
  active and holds that token: a run whose job was erased (compliance), removed
  (clear), finished, or re-leased to another run after its lease ran out writes
  nothing. Without one the job id is only a label, written as given.
  The record replaces any earlier one under the key (of whatever type); the index
  <prefix>idem-x (a sorted set: key -> end of its record) gets the key, loses the
  entries whose record has expired, and lives as long as its longest record. An index
  holding another type (damaged by hand) is left alone: the record stands, unindexed.
  Checks first, writes last.
  Returns { 1, indexed (1|0) }, or { 0, 'gone' } (no job record, or a damaged one) /
  { 0, 'lost' } (the job is no longer held under that token): nothing written.
]]
--@include lib_base

local key, id, token = ARGV[4], ARGV[5], ARGV[6]
local ttl = arg_int(ARGV[9], 86400000, 1, MAX_MS)
if token ~= '' then
  local own = ARGV[10]
  if own == nil or own == '' then own = id end
  local jk = job_key(own)
  if key_type(jk) ~= 'hash' then return { 0, 'gone' } end
  local f = redis.call('HMGET', jk, 'lt', 'st')
  if f[1] ~= token or f[2] ~= 'active' then return { 0, 'lost' } end
end
local xk = PREFIX .. 'idem-x:' .. key
local idx = PREFIX .. 'idem-x'
local idx_type = key_type(idx)
local indexed = idx_type == 'none' or idx_type == 'zset'
redis.call('DEL', xk)
redis.call('HSET', xk, 'id', id, 'r', ARGV[7], 'f', NOW_S, 'n', ARGV[8])
redis.call('PEXPIRE', xk, ttl)
if not indexed then return { 1, 0 } end
redis.call('ZADD', idx, int(NOW + ttl), key)
-- Entries whose record has expired go as new ones come: the index holds the live
-- records, not one entry per key ever recorded (steady traffic renews its TTL).
redis.call('ZREMRANGEBYSCORE', idx, '-inf', NOW_S)
redis.call('PEXPIRE', idx, ttl, 'GT')
redis.call('PEXPIRE', idx, ttl, 'NX')
return { 1, 1 }
