--[[
  lib_jobs.lua — fragment: a job's place in wait or delayed, and its deletion.

  wait_score(pri, q)       the score of a job in wait (priority band + sequence)
  push_wait(jk, id)        put a job into wait at its own position (st = waiting)
  push_delayed(jk, id, due) put a job into delayed until `due` (st = delayed)
  delete_job(id)           delete the job's records (hash, log list); the caller removes
                           it from its set
  delete_jobs(ids)         delete_job for every id, one UNLINK per 250 jobs (retention
                           deletes about one job per job finished: one command per call)

  UNLINK, not DEL: a log list holds up to max_log_lines (1,000,000) lines and a job hash
  its data and result; DEL frees them inside the call (a remove, drain or clear of 1000
  jobs blocked Redis that long), UNLINK frees a large one in the background.
]]
--@include lib_base
--@include lib_events

-- Priority 0..65535, higher runs first. Band of 2^36 per priority; FIFO jobs sit in the
-- upper half of the band ordered by sequence, LIFO jobs in the lower half in reverse.
-- Stored sequence q is negative for LIFO jobs. Max score ~2^52: exact in a double.
local BAND = 68719476736   -- 2^36
local HALF = 34359738368   -- 2^35
local function wait_score(pri, q)
  return (65535 - pri) * BAND + HALF + q
end

local function push_wait(jk, id)
  local f = redis.call('HMGET', jk, 'p', 'q')
  -- A damaged priority or sequence ("nan", "inf", garbage) must not become a score Redis
  -- refuses half way through a promote or recover: read it as the default instead.
  local pri = arg_int(f[1], 0, 0, 65535)
  redis.call('ZADD', K_WAIT, int(wait_score(pri, num(f[2]))), id)
  redis.call('HSET', jk, 'st', 'waiting')
end

local function push_delayed(jk, id, due)
  redis.call('ZADD', K_DELAYED, int(due), id)
  redis.call('HSET', jk, 'st', 'delayed', 'due', int(due))
  local first = redis.call('ZRANGE', K_DELAYED, 0, 0)
  if first[1] == id then wake() end
end

-- Remove all records of a job (hash, log list). The caller removes it from its set.
local function delete_job(id)
  -- An idempotency key outlives its job on purpose: it suppresses duplicates for its
  -- whole window even after the job was removed.
  redis.call('UNLINK', job_key(id), PREFIX .. 'logs:' .. id)
end

-- delete_job for a list of ids: one UNLINK per 250 jobs (500 keys), not one per job.
local function delete_jobs(ids)
  for i = 1, #ids, 250 do
    local ks = {}
    for j = i, math.min(i + 249, #ids) do
      ks[#ks + 1] = job_key(ids[j])
      ks[#ks + 1] = PREFIX .. 'logs:' .. ids[j]
    end
    redis.call('UNLINK', unpack(ks))
  end
end
