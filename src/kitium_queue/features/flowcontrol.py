"""Flow control: per-key rate limits, per-key and global concurrency caps, checked in claim.

Limits are declared in code on the queue (the same declarations in every process that
uses the queue, like ``process``)::

    queue.set_rate_limit("customer-*", max=10, duration=1000)  # each customer-… key
    queue.set_concurrency_limit("customer-*", 2)
    queue.set_global_concurrency(8)
    await queue.add_job("sync", data, rate_limit_key="customer-42",
                        concurrency_key="customer-42")

They are compiled into Lua slot fragments (``kitium_queue.slots``), so they hold across
every worker: the counters live in Redis and are read and updated in the same atomic
step that hands a job out or takes it back. A job that may not run now is never
claimed and takes no worker slot; the jobs behind it still run:

* at enqueue, a fragment marks the job's keys on its hash (``rk``, ``ck``: claim reads
  them, never the options JSON), and parks a job whose concurrency key is at its cap;
* at admission (claim), a job over a limit is left out: a job whose concurrency key is
  at its cap is *parked* behind the key (status ``pending``, out of wait, keeping its
  place: ``kitium_queue.parking``), so any number of them delays no other job; a job
  over its rate limit, or held by ``RateLimited``, stays in wait and the worker sleeps
  until the window ends, or is parked until then: all of them with
  ``park_rate_limited_jobs``, else a key's backlog past a bound (``flowpark.py``);
* on release (every way a job leaves active: completed, retried, failed, deferred,
  handed back, stalled, dead-lettered, cleared), a fragment takes the job out of its
  key's running set and brings the next parked job of the key back to wait.

Patterns: an exact key, a prefix ending in ``*`` (``"customer-*"``), or ``"*"`` (every
key). The most specific declaration applies: exact, then the longest prefix, then
``"*"``. Each key has its own counter (``customer-1`` and ``customer-2`` are limited
separately). Patterns and keys follow the rules of a job's keys (README "Limits and
ranges": no control characters or lone surrogates, at most 512 characters); a bad
pattern is refused with ``ConfigurationError`` and changes nothing, and so does any
declaration whose Lua cannot be installed.

Rate limits use a fixed window per key, like the queue ``limiter``: at most ``max``
starts per ``duration`` ms window, the window opening at the first start. Concurrency
caps count the key's jobs that are active (claimed and not finished; a job whose worker
died counts until its lease is recovered). The global cap counts every active job of the
queue; a claim that finds it reached stops at once.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..enums import JobStatus
from ..errors import ConfigurationError
from ..explain import JobFacts, Reason, at
from ..jobspec import Normalizer
from ..keys import QueueKeys
from ..options import MAX_COUNT, check_text, shown, to_int, to_ms
from ..slots import ORDER_HOLD, lua_string
from . import flowheal, flowpark
from .flowheal import ConcurrencyHealReport

if TYPE_CHECKING:
    from ..queue import JobQueue

__all__ = [
    "FlowControl",
    "RateLimit",
    "check_pattern",
    "concurrency_key",
    "concurrency_owners_key",
    "rate_key",
]


# -- its keys (the Lua below builds the same names from PREFIX) -------------------------
def rate_key(keys: QueueKeys, key: str) -> str:
    """HASH: current fixed window of rate-limit key ``key`` (w = opened at ms, n = starts)."""
    return keys.extra(f"rl:{key}")


def concurrency_key(keys: QueueKeys, key: str) -> str:
    """SET: ids of the running jobs of concurrency key ``key`` (added when a job is
    claimed, removed by the release slot when it leaves active)."""
    return keys.extra(f"cc:{key}")


def concurrency_owners_key(keys: QueueKeys) -> str:
    """HASH: job id -> concurrency key, for the running jobs counted in a set."""
    return keys.extra("cc-of")


FEATURE = "flow-control"
OPTION_NAMES = ("rate_limit_key", "concurrency_key")
#: Job-hash fields the enqueue fragment writes: the job's rate-limit and concurrency key.
MARKERS = ("rk", "ck")
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
        self.park_rate_limited = False
        queue.own_options(FEATURE, OPTION_NAMES)  # taken over if declared already
        for name in OPTION_NAMES:
            # Keys by the rules of every key of a job (README "Limits and ranges"), and
            # at most _MAX_KEY characters: the one limit the message names.
            queue.declare_option(name, feature=FEATURE, normalize=_key_option(name))
        queue.use_enqueue(_check_keys)
        queue.add_explainer(self.explain)
        queue.add_service(flowheal.heal_service(queue))  # flowheal.py: keys nothing would release
        queue.add_service(flowpark.follow_service(queue))  # parked jobs follow changed limits
        self._install()

    # ------------------------------------------------------------------ declarations
    # Every declaration is checked whole before anything changes, then installed by
    # ``_apply``: a refused one leaves the declarations and the installed Lua as they were.
    def set_rate_limit(self, pattern: str, *, max: int, duration: Any = 1000) -> None:
        pattern = check_pattern(pattern)
        # Ranges: README "Limits and ranges" (the window is a Redis PEXPIRE, so it must
        # be a whole number of ms that Redis accepts).
        limit = to_int(max, "rate limit max", minimum=1, maximum=MAX_COUNT)
        dur = to_ms(duration, "rate limit duration", minimum=1)
        self._apply(rate_limits={**self.rate_limits, pattern: RateLimit(limit, dur)})

    def set_concurrency_limit(self, pattern: str, max: int) -> None:
        pattern = check_pattern(pattern)
        cap = to_int(max, "concurrency limit", minimum=1, maximum=MAX_COUNT)
        self._apply(concurrency_limits={**self.concurrency_limits, pattern: cap})

    def set_global_concurrency(self, max: int | None) -> None:
        if max is not None:
            max = to_int(max, "global concurrency", minimum=1, maximum=MAX_COUNT)
        self._apply(global_concurrency=max)

    def remove_rate_limit(self, pattern: str) -> None:
        pattern = check_pattern(pattern)
        self._apply(rate_limits={p: v for p, v in self.rate_limits.items() if p != pattern})

    def remove_concurrency_limit(self, pattern: str) -> None:
        pattern = check_pattern(pattern)
        self._apply(
            concurrency_limits={p: v for p, v in self.concurrency_limits.items() if p != pattern}
        )

    async def heal(self) -> ConcurrencyHealReport:
        """Send back to wait the jobs parked behind a concurrency key that nothing would
        release (a cap removed or raised, a process without flow control ran the key's
        jobs): ``flowheal.py``. The queue's workers do this every 30 s by themselves."""

        async def action() -> ConcurrencyHealReport:
            return await flowheal.heal_concurrency(self.queue)

        return await self.queue.admin.execute("heal_concurrency", {}, action)

    def limit_of(self, key: str, table: Mapping[str, Any]) -> Any:
        """The declaration of ``table`` that applies to ``key``: exact, then the
        longest prefix, then ``"*"`` (as the Lua does); None when none does."""
        if key in table:
            return table[key]
        best = max(
            (p for p in table if p.endswith("*") and key.startswith(p[:-1])), key=len, default=None
        )
        return None if best is None else table[best]

    async def explain(self, facts: JobFacts) -> list[Reason]:
        """Why flow control holds the job (``queue.explain``): a concurrency key at its
        cap (with the jobs running under it), a rate-limit window that is full or held
        by ``RateLimited`` (until when), the queue's global cap."""
        job = facts.job
        if job.status not in (JobStatus.WAITING, JobStatus.PENDING, JobStatus.PAUSED):
            return []
        blocker = facts.blocker or ""
        rk, ck = facts.fields.get("rk"), facts.fields.get("ck")
        out: list[Reason] = []
        q = self.queue
        client = await q.client()
        if ck and (blocker == f"cc:{ck}" or job.status is not JobStatus.PENDING):
            cc = await flowheal.cap_reason(self, client, ck, blocker == f"cc:{ck}")
            out.extend([cc] if cc else [])
        if rk and (blocker == f"rl:{rk}" or job.status is not JobStatus.PENDING):
            out.extend(await self._rate(client, rk, facts.now_ms))
        if self.global_concurrency and job.status is JobStatus.WAITING:
            active = int(await client.zcard(q.keys.active))
            if active >= self.global_concurrency:
                out.append(
                    Reason(
                        "global-cap",
                        f"the queue's global concurrency cap is reached: {active} of "
                        f"{self.global_concurrency} jobs running",
                        source=FEATURE,
                    )
                )
        return out

    async def _rate(self, client: Any, rk: str, now: int) -> list[Reason]:
        keys = self.queue.keys
        pipe = client.pipeline(transaction=False)
        pipe.pttl(keys.hold(rk))
        pipe.hmget(rate_key(keys, rk), "w", "n")
        held, (w, n) = await pipe.execute()
        refs = (("key", rk),)
        if held and held > 0:
            return [
                Reason(
                    "rate-limit",
                    f"a processor raised RateLimited for rate-limit key {rk!r}: its jobs are "
                    f"held until {at(now + held, now)}",
                    until_ms=now + held,
                    refs=refs,
                    source=FEATURE,
                )
            ]
        lim = self.limit_of(rk, self.rate_limits)
        start, used = _number(w), _number(n)
        # As claim reads it: a window opened after now (or at no time) is none.
        if lim is None or start is None or start > now:
            return []
        until = int(start) + lim.duration
        if (used or 0) < lim.max or until <= now:
            return []
        return [
            Reason(
                "rate-limit",
                f"rate-limit key {rk!r} allows {lim.max} starts per {lim.duration} ms and "
                f"its window is full; it ends {at(until, now)}",
                until_ms=until,
                refs=refs,
                source=FEATURE,
            )
        ]

    # ------------------------------------------------------------------ the Lua slots
    def park_rate_limited_jobs(self, enabled: bool = True) -> None:
        """Park every job held back by a rate limit or a ``RateLimited`` hold (status
        ``pending``, out of wait), at enqueue too, instead of leaving up to 500 of them
        in wait per claim (``flowpark.py``: claim parks those past that in any case).

        Off by default: such jobs show as ``waiting`` (past 500 of them, ``pending``).
        Parked, they come back to wait when their window ends, ``max`` at a time.
        """
        self._apply(park_rate_limited=bool(enabled))

    def _apply(self, **changes: Any) -> None:
        """Set the declarations ``changes`` (attribute -> new value) and install their
        Lua, all or nothing: if building or installing the Lua fails, the previous
        declarations and their Lua stay in force."""
        before = {name: getattr(self, name) for name in changes}
        for name, value in changes.items():
            setattr(self, name, value)
        try:
            self._install()
        except BaseException:
            for name, value in before.items():
                setattr(self, name, value)
            # The previous declarations were installed before: put their fragments back
            # (the ones installed before the failure); the first error is the one raised.
            with contextlib.suppress(Exception):
                self._install()
            raise
        if "rate_limits" in changes:  # parked jobs follow the new limits (flowpark.py)
            flowpark.follow_soon(self.queue)
        if "concurrency_limits" in changes:
            # A cap removed or raised: no release would bring its parked jobs back (or
            # only one per finished job), so the heal lets them in now (flowheal.py).
            flowheal.heal_soon(self.queue)

    def _install(self) -> None:
        # Every fragment is built before the first is installed, so a failure to build
        # one leaves the installed ones as they were.
        enqueue, admission = self.enqueue_lua(), self.lua()
        scripts = self.queue.scripts
        scripts.add_slot("enqueue", FEATURE, enqueue, order=ORDER_HOLD)
        scripts.add_slot("admission", FEATURE, admission, fields=MARKERS, order=ORDER_HOLD)
        scripts.add_slot("release", FEATURE, flowheal.RELEASE, fields=("ck",))
        scripts.add_fragment(flowpark.FOLLOW_SCRIPT, flowpark.follow_script(self._prelude()))
        scripts.add_fragment(flowheal.HEAL_SCRIPT, flowheal.heal_script(self._prelude()))

    def _prelude(self) -> str:
        rate = _tables(
            "RATE", {p: f"{{{r.max}, {r.duration}}}" for p, r in self.rate_limits.items()}
        )
        cap = _tables("CAP", {p: str(c) for p, c in self.concurrency_limits.items()})
        return _PRELUDE.format(
            rate=rate,
            cap=cap,
            any_rate="true" if self.rate_limits else "false",
            any_cap="true" if self.concurrency_limits else "false",
            park_rate="true" if self.park_rate_limited else "false",
        )

    def lua(self) -> str:
        """The admission check (a Lua expression) for the current declarations."""
        return _CHECK.format(
            prelude=self._prelude(),
            hold_back=flowpark.hold_back_lua(),
            global_cap=self.global_concurrency or 0,
        )

    def enqueue_lua(self) -> str:
        """The enqueue fragment: marks the job's keys on its hash, parks it at a full cap."""
        return _ENQUEUE.format(prelude=self._prelude())


def _number(value: Any) -> float | None:
    """A counter field read from Redis as a finite number, or None (absent or damaged)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _key_option(name: str) -> Normalizer:
    """The normalizer of job option ``name`` (a rate-limit or concurrency key)."""

    def normalize(value: Any, section: str) -> str:
        return check_text(value, f"{section}: {name}", max_len=_MAX_KEY)

    return normalize


def _check_keys(
    job_name: str, data: Any, options: Mapping[str, Any]
) -> tuple[str, Any, Mapping[str, Any]]:
    # Enqueue middleware: the keys as given to add_job (``_key_option`` checks them
    # again when the job is prepared, after every middleware).
    for name in OPTION_NAMES:
        v = options.get(name)
        if v is not None:
            check_text(v, name, max_len=_MAX_KEY)
    return job_name, data, options


def check_pattern(pattern: Any, what: str = "a limit's key pattern") -> str:
    """A limit's key pattern: the rules of a job's keys (``_key_option``, README "Limits
    and ranges"), with ``*`` only at the end; ``what`` names it in the error."""
    check_text(
        pattern,
        what,
        max_len=_MAX_KEY,
        rule=": a key, a prefix ending in '*' (such as 'customer-*') or '*' for every key",
    )
    if "*" in pattern[:-1]:
        raise ConfigurationError(
            f"{what}: invalid key pattern {shown(pattern)}: '*' is only allowed at the end "
            "(a prefix such as 'customer-*', or '*' for every key)"
        )
    return str(pattern)


def _tables(name: str, values: dict[str, str]) -> str:
    exact = {p: v for p, v in values.items() if not p.endswith("*")}
    prefixes = sorted(
        ((p[:-1], v) for p, v in values.items() if p.endswith("*")), key=lambda pv: -len(pv[0])
    )
    ex = ", ".join(f"[{lua_string(p)}] = {v}" for p, v in sorted(exact.items()))
    pre = ", ".join(f"{{{lua_string(p)}, {v}}}" for p, v in prefixes)
    return f"local {name}_EXACT = {{{ex}}}\n  local {name}_PREFIX = {{{pre}}}"


# The fragments below run inside the scripts (kitium_queue.slots). Each is evaluated once
# per script call and caches what it read (counters, holds, caps) in locals, so each key
# costs a few Redis calls per call however many of its jobs pass.
#
# Keys (all under the queue's hash tag, built from PREFIX like QueueKeys):
#   rl:<key>   HASH  the current window of rate-limit key <key>: w = opened at, n = starts
#   hold:<key> STRING while it exists, <key> is held (a processor raised RateLimited)
#   cc:<key>   SET   ids of the running jobs of concurrency key <key>: added when a job
#                    is claimed, removed by the release fragment when it leaves active
#   cc-of      HASH  job id -> its concurrency key, for the running jobs counted in a set
# Job markers (set by the enqueue fragment, read by claim as declared fields): rk = the
# job's rate_limit_key, ck = its concurrency_key. Blockers: 'cc:<key>' (a full cap:
# unparked one per finished job of the key), 'rl:<key>' (a full window or a hold: a
# timer at its end).
_PRELUDE = """{rate}
  {cap}
  local ANY_RATE, ANY_CAP = {any_rate}, {any_cap}
  local PARK_RATE = {park_rate}
  local CC_OWNER = PREFIX .. 'cc-of'
  local found, rates, holds = {{}}, {{}}, {{}}

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

  -- Running jobs of concurrency key ck. The set is exact: every way a job leaves active
  -- passes the release fragment. A member left behind by a process that lacks these
  -- declarations would hold a slot for good, so at the cap a few random members are
  -- checked (bounded, and only then) and dropped when their job is no longer active.
  local function running(ck, cap)
    local skey = PREFIX .. 'cc:' .. ck
    local n = redis.call('SCARD', skey)
    local checks = 0
    while n >= cap and checks < 3 do
      checks = checks + 1
      local m = redis.call('SRANDMEMBER', skey)
      if not m then break end
      local st = redis.pcall('HGET', job_key(m), 'st')
      -- A damaged record counts as running: recovery releases it when its lease ends.
      if st == 'active' or (st and type(st) ~= 'string') then break end
      redis.call('HDEL', CC_OWNER, m)
      redis.call('SREM', skey, m)
      n = n - 1
    end
    return n
  end

  -- Fixed window of rate-limit key rk: w = when it opened, n = starts in it. Times come
  -- from NOW, so the window follows the script clock (the Redis clock in production).
  local function window(rk, lim)
    local st = rates[rk]
    if st == nil then
      local f = redis.call('HMGET', PREFIX .. 'rl:' .. rk, 'w', 'n')
      local w, used, reset = tonumber(f[1]), tonumber(f[2]) or 0, nil
      -- A window opened after NOW (or at no finite time) was written by hand or by
      -- another clock: it would hold the key for good, so a fresh one opens.
      if w and w <= NOW and NOW < w + lim[2] then reset = w + lim[2] else used = 0 end
      st = {{ used = used, max = lim[1], dur = lim[2], reset = reset }}
      rates[rk] = st
    end
    return st
  end

  local function held_until(rk)
    local h = holds[rk]
    if h == nil then
      local ttl = redis.call('PTTL', PREFIX .. 'hold:' .. rk)
      if ttl > 0 then h = NOW + ttl else h = 0 end
      holds[rk] = h
    end
    return h
  end

  -- The timer blocker of rate-limit key rk, due at `due`: then `max` of its jobs go back
  -- to wait, and again each window while jobs remain (all at once without a limit).
  local function rate_blocker(rk, due, lim)
    local blocker = 'rl:' .. rk
    if lim then park_timer(blocker, due, lim[1], lim[2]) else park_timer(blocker, due, 0, 0) end
    return blocker
  end"""

_ENQUEUE = """(function()
  {prelude}
  local caps = {{}}

  return function(id, jk, opts, state)
    if opts == '' or not (string.find(opts, '"concurrency_key"', 1, true)
        or string.find(opts, '"rate_limit_key"', 1, true)) then
      return nil
    end
    local ok, o = pcall(cjson.decode, opts)
    if not ok or type(o) ~= 'table' then return nil end
    local rk, ck = o['rate_limit_key'], o['concurrency_key']
    if type(rk) ~= 'string' or rk == '' then rk = nil end
    if type(ck) ~= 'string' or ck == '' then ck = nil end
    local blocker = nil
    if state == 'waiting' and ck then
      -- A full cap: park behind it at once (no claim needs to look at the job).
      local cap = ANY_CAP and lookup('c', CAP_EXACT, CAP_PREFIX, ck)
      if cap then
        local n = caps[ck]
        if n == nil then n = running(ck, cap); caps[ck] = n end
        if n >= cap then blocker = 'cc:' .. ck end
      end
    end
    if state == 'waiting' and rk and PARK_RATE and not blocker then
      local lim = ANY_RATE and lookup('r', RATE_EXACT, RATE_PREFIX, rk)
      local h = held_until(rk)
      if h > 0 then
        blocker = rate_blocker(rk, h, lim)
      elseif lim then
        local st = window(rk, lim)
        if st.used >= st.max and st.reset then blocker = rate_blocker(rk, st.reset, lim) end
      end
    end
    -- The markers claim reads instead of the options JSON.
    if rk and ck then
      redis.call('HSET', jk, 'rk', rk, 'ck', ck)
    elseif rk then
      redis.call('HSET', jk, 'rk', rk)
    elseif ck then
      redis.call('HSET', jk, 'ck', ck)
    end
    return blocker
  end
end)()"""

_CHECK = """(function()
  {prelude}
  {hold_back}
  local GLOBAL_CAP = {global_cap}
  local caps = {{}}
  local active = nil
  local cur_rk, cur_rs, cur_ck, cur_cs = nil, nil, nil, nil

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
      -- The owner entry first: a member of cc:<key> whose owner entry failed (cc-of
      -- damaged) would hold a slot that no release gives back, parking the key's jobs
      -- for good; the job runs uncounted instead (the failure is in slot-errors).
      redis.call('HSET', CC_OWNER, id, cur_ck)
      cur_cs.n = cur_cs.n + 1
      redis.call('SADD', PREFIX .. 'cc:' .. cur_ck, id)
    end
  end

  return function(id, jk, opts, rk, ck)
    if GLOBAL_CAP > 0 then
      if active == nil then active = redis.call('ZCARD', K_ACTIVE) end
      if active >= GLOBAL_CAP then admit_stop(); return false end
    end
    cur_rk, cur_rs, cur_ck, cur_cs = nil, nil, nil, nil
    if not rk and not ck then return true, commit end
    if rk then
      local lim, h = ANY_RATE and lookup('r', RATE_EXACT, RATE_PREFIX, rk), held_until(rk)
      -- Held back: left in wait, or parked until then (hold_back: flowpark.py).
      if h > 0 then hold_back(id, rk, h, lim); return false end
      if lim then
        local st = window(rk, lim)
        if st.used >= st.max then
          if st.reset then hold_back(id, rk, st.reset, lim) end
          return false
        end
        cur_rk, cur_rs = rk, st
      end
      if behind_parked(id, rk, lim) then return false end  -- its key's parked ones first
    end
    if ck then
      local cap = ANY_CAP and lookup('c', CAP_EXACT, CAP_PREFIX, ck)
      if cap then
        local st = caps[ck]
        if st == nil then
          st = {{ n = running(ck, cap), cap = cap }}
          caps[ck] = st
        end
        -- A full cap: park behind the key; the release fragment brings one job back
        -- each time one of the key's running jobs leaves active.
        if st.n >= st.cap then admit_park('cc:' .. ck); return false end
        cur_ck, cur_cs = ck, st
      end
    end
    return true, commit
  end
end)()"""
