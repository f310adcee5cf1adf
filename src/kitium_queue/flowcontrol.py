"""Flow control: per-key rate limits, per-key and global concurrency caps, checked in claim.

Limits are declared in code on the queue (the same declarations in every process that
uses the queue, like ``process``)::

    queue.set_rate_limit("customer-*", max=10, duration=1000)  # each customer-… key
    queue.set_concurrency_limit("customer-*", 2)
    queue.set_global_concurrency(8)
    await queue.add_job("sync", data, rate_limit_key="customer-42",
                        concurrency_key="customer-42")

They are compiled into an admission check of ``claim`` (``ScriptRegistry
.add_admission_check``), so they hold across every worker: the counters live in Redis
and are read and updated in the same atomic step that hands a job out. A job that may
not run now is never claimed: it stays in wait, keeps its place, takes no worker slot,
and the jobs behind it still run.

Patterns: an exact key, a prefix ending in ``*`` (``"customer-*"``), or ``"*"`` (every
key). The most specific declaration applies: exact, then the longest prefix, then
``"*"``. Each key has its own counter (``customer-1`` and ``customer-2`` are limited
separately).

Rate limits use a fixed window per key, like the queue ``limiter``: at most ``max``
starts per ``duration`` ms window, the window opening at the first start. Concurrency
caps count the key's jobs that are active (claimed and not finished; a job whose worker
died counts until its lease is recovered).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError
from .options import MAX_COUNT, to_int, to_ms

if TYPE_CHECKING:
    from .queue import JobQueue

__all__ = ["FlowControl", "RateLimit"]

FEATURE = "flow-control"
OPTION_NAMES = ("rate_limit_key", "concurrency_key")
_MAX_KEY = 512


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``max`` jobs started per ``duration`` ms, per key."""

    max: int
    duration: int


class FlowControl:
    """The flow-control declarations of one queue (``queue.flow``)."""

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue
        self.rate_limits: dict[str, RateLimit] = {}
        self.concurrency_limits: dict[str, int] = {}
        self.global_concurrency: int | None = None
        queue.own_options(FEATURE, OPTION_NAMES)
        queue.use_enqueue(_check_keys)
        self._install()

    # ------------------------------------------------------------------ declarations
    def set_rate_limit(self, pattern: str, *, max: int, duration: Any = 1000) -> None:
        pattern = _pattern(pattern)
        # Ranges: README "Limits and ranges" (the window is a Redis PEXPIRE, so it must
        # be a whole number of ms that Redis accepts).
        limit = to_int(max, "rate limit max", minimum=1, maximum=MAX_COUNT)
        dur = to_ms(duration, "rate limit duration", minimum=1)
        self.rate_limits[pattern] = RateLimit(limit, dur)
        self._install()

    def set_concurrency_limit(self, pattern: str, max: int) -> None:
        pattern = _pattern(pattern)
        self.concurrency_limits[pattern] = to_int(
            max, "concurrency limit", minimum=1, maximum=MAX_COUNT
        )
        self._install()

    def set_global_concurrency(self, max: int | None) -> None:
        if max is not None:
            max = to_int(max, "global concurrency", minimum=1, maximum=MAX_COUNT)
        self.global_concurrency = max
        self._install()

    def remove_rate_limit(self, pattern: str) -> None:
        self.rate_limits.pop(pattern, None)
        self._install()

    def remove_concurrency_limit(self, pattern: str) -> None:
        self.concurrency_limits.pop(pattern, None)
        self._install()

    # ------------------------------------------------------------------ the Lua check
    def _install(self) -> None:
        self.queue.scripts.add_admission_check("flow", self.lua())

    def lua(self) -> str:
        """The admission check (a Lua expression) for the current declarations."""
        rate = _tables(
            "RATE", {p: f"{{{r.max}, {r.duration}}}" for p, r in self.rate_limits.items()}
        )
        cap = _tables("CAP", {p: str(c) for p, c in self.concurrency_limits.items()})
        return _CHECK.format(
            rate=rate, cap=cap, global_cap=self.global_concurrency or 0,
            any_rate="true" if self.rate_limits else "false",
            any_cap="true" if self.concurrency_limits else "false",
        )


def _check_keys(
    job_name: str, data: Any, options: Mapping[str, Any]
) -> tuple[str, Any, Mapping[str, Any]]:
    for name in OPTION_NAMES:
        v = options.get(name)
        if v is not None and (not isinstance(v, str) or not v or len(v) > _MAX_KEY):
            raise ConfigurationError(
                f"{name} must be a non-empty string of at most {_MAX_KEY} characters, got {v!r}"
            )
    return job_name, data, options


def _pattern(pattern: Any) -> str:
    if not isinstance(pattern, str) or not pattern or len(pattern) > _MAX_KEY:
        raise ConfigurationError(
            f"a limit's key must be a key, a prefix ending in '*' or '*', got {pattern!r}"
        )
    if "*" in pattern[:-1]:
        raise ConfigurationError(
            f"invalid key pattern {pattern!r}: '*' is only allowed at the end "
            "(a prefix such as 'customer-*', or '*' for every key)"
        )
    return pattern


def _lua_str(text: str) -> str:
    """A Lua string literal for any text (every byte outside [A-Za-z0-9_-.:] escaped)."""
    out = []
    for b in text.encode("utf-8"):
        c = chr(b)
        out.append(c if c.isascii() and (c.isalnum() or c in "_-.:@/ ") else f"\\{b:03d}")
    return '"' + "".join(out) + '"'


def _tables(name: str, values: dict[str, str]) -> str:
    exact = {p: v for p, v in values.items() if not p.endswith("*")}
    prefixes = sorted(((p[:-1], v) for p, v in values.items() if p.endswith("*")),
                      key=lambda pv: -len(pv[0]))
    ex = ", ".join(f"[{_lua_str(p)}] = {v}" for p, v in sorted(exact.items()))
    pre = ", ".join(f"{{{_lua_str(p)}, {v}}}" for p, v in prefixes)
    return f"local {name}_EXACT = {{{ex}}}\n  local {name}_PREFIX = {{{pre}}}"


# Per claim call the check caches what it read (counters, holds, caps) in locals, so
# each key costs a few Redis calls per call however many of its jobs are examined.
_CHECK = """(function()
  {rate}
  {cap}
  local GLOBAL_CAP = {global_cap}
  local ANY_RATE, ANY_CAP = {any_rate}, {any_cap}
  local found, holds, rates, caps = {{}}, {{}}, {{}}, {{}}
  local active = nil
  local cur_rk, cur_rs, cur_ck, cur_cs = nil, nil, nil, nil

  local function lookup(kind, exact, prefixes, key)
    local ck = kind .. key
    local v = found[ck]
    if v == nil then
      v = exact[key]
      if v == nil then
        for i = 1, #prefixes do
          local p = prefixes[i][1]
          if string.sub(key, 1, #p) == p then v = prefixes[i][2]; break end
        end
      end
      if v == nil then v = false end
      found[ck] = v
    end
    return v
  end

  local function commit(id, jk)
    if GLOBAL_CAP > 0 then active = active + 1 end
    if cur_rs then
      cur_rs.used = cur_rs.used + 1
      local rkey = PREFIX .. 'rl:' .. cur_rk
      if cur_rs.used == 1 then
        -- A new window opens at this start; the TTL only cleans up idle keys.
        redis.call('HSET', rkey, 'w', NOW_S, 'n', 1)
        redis.call('PEXPIRE', rkey, cur_rs.dur)
        cur_rs.reset = NOW + cur_rs.dur
      else
        redis.call('HINCRBY', rkey, 'n', 1)
      end
    end
    if cur_cs then
      cur_cs.n = cur_cs.n + 1
      redis.call('SADD', PREFIX .. 'cc:' .. cur_ck, id)
    end
  end

  return function(id, jk, opts)
    if GLOBAL_CAP > 0 then
      if active == nil then active = redis.call('ZCARD', K_ACTIVE) end
      if active >= GLOBAL_CAP then admit_stop(); return false end
    end
    cur_rk, cur_rs, cur_ck, cur_cs = nil, nil, nil, nil
    if not opts or opts == '' or not string.find(opts, '_key', 1, true) then
      return true, commit
    end
    local ok, o = pcall(cjson.decode, opts)
    if not ok or type(o) ~= 'table' then return true, commit end
    local rk, ck = o['rate_limit_key'], o['concurrency_key']
    if type(rk) == 'string' then
      local h = holds[rk]
      if h == nil then
        local ttl = redis.call('PTTL', PREFIX .. 'hold:' .. rk)
        if ttl > 0 then h = NOW + ttl else h = 0 end
        holds[rk] = h
      end
      if h > 0 then admit_retry(h); return false end
      local lim = ANY_RATE and lookup('r', RATE_EXACT, RATE_PREFIX, rk)
      if lim then
        local st = rates[rk]
        if st == nil then
          -- Fixed window: w = when it opened, n = starts in it. Times come from NOW,
          -- so the window follows the script clock (the Redis clock in production).
          local f = redis.call('HMGET', PREFIX .. 'rl:' .. rk, 'w', 'n')
          local w, used, reset = tonumber(f[1]), tonumber(f[2]) or 0, nil
          if w and NOW < w + lim[2] then reset = w + lim[2] else used = 0 end
          st = {{ used = used, max = lim[1], dur = lim[2], reset = reset }}
          rates[rk] = st
        end
        if st.used >= st.max then
          if st.reset then admit_retry(st.reset) end
          return false
        end
        cur_rk, cur_rs = rk, st
      end
    end
    if type(ck) == 'string' then
      local cap = ANY_CAP and lookup('c', CAP_EXACT, CAP_PREFIX, ck)
      if cap then
        local st = caps[ck]
        if st == nil then
          -- Count the key's running jobs, dropping ids that are no longer active: the
          -- set never holds more than cap ids after this.
          local skey = PREFIX .. 'cc:' .. ck
          local ids = redis.call('SMEMBERS', skey)
          local n = 0
          for i = 1, #ids do
            if redis.call('HGET', job_key(ids[i]), 'st') == 'active' then
              n = n + 1
            else
              redis.call('SREM', skey, ids[i])
            end
          end
          st = {{ n = n, cap = cap }}
          caps[ck] = st
        end
        if st.n >= st.cap then return false end
        cur_ck, cur_cs = ck, st
      end
    end
    return true, commit
  end
end)()"""
