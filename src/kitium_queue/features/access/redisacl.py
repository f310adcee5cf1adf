"""Redis ACL rules for a tenant's (or a service's) Redis user: isolation that holds
against any client, not only code that goes through the library.

``redis_acl_rules(user, queues, ...)`` gives the rules of one user:

* **keys**: ``~<prefix>:{<queue>}:*`` for each queue named; for a pattern (a literal
  prefix and one trailing ``*``, e.g. ``acme-*``) ``~<prefix>:{acme-*``. A ``*`` anywhere
  else is refused: Redis' glob would let it run on past the queue name's closing brace
  into the rest of the key (a job id may hold ``}``), and reach another queue's keys.
  Queue names cannot hold glob characters or braces (``keys.check_key_part``), so a
  literal pattern matches exactly one queue's keys;
* **channels**: ``resetchannels`` and the same patterns with ``&`` (a queue's only
  channel, schedule changes, is ``<prefix>:{<queue>}:schedules:changed``);
* **commands**: ``-@all`` and exactly what the engine sends, from Python and from its
  Lua scripts (a script's commands are checked against the caller's ACL too):
  ``ENGINE_COMMANDS``, plus ``FEATURE_COMMANDS[f]`` for each feature the queues use.
  The lists were found by running each path against a fresh server and reading
  ``INFO commandstats``; ``tests/test_access_redis_acl.py`` checks that every command
  the Lua sources call is listed, and runs a queue end to end as a user made from these
  rules with an empty ``ACL LOG``;
* ``access="enforce"`` adds what a process needs to enforce grants and append to the
  audit log (read grants, write the audit stream); ``access="admin"`` also lets it
  change grants and trim the log. Give these to the application's own trusted
  processes only: a user that can write the grant keys can grant itself anything.

In-process roles (viewer, operator...) have no Redis counterpart: every transition of
the engine is a script call (``EVALSHA``) on the queue's keys, so Redis cannot tell a
producer's call from an administrator's. The Redis user bounds *which queues* a
process can touch; grants bound *what a principal may do* on them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ...errors import ConfigurationError
from ...keys import check_key_part
from ...limits import clip
from ..audit.conn import DEPLOYMENT_TAG
from .glob import QueuePattern

__all__ = [
    "ACCESS_COMMANDS",
    "ENGINE_COMMANDS",
    "FEATURE_COMMANDS",
    "RedisAclRules",
    "redis_acl_rules",
]

#: What the engine sends for one queue: producer, worker (claim, leases, outcomes,
#: retries, the DLQ, the scheduler), queries and administrative commands.
ENGINE_COMMANDS = (
    # connection and scripts
    "ping", "script|load", "script|exists", "evalsha", "eval",
    # sent from Python: queries, the worker's wake-up, events, the scheduler
    "hgetall", "hget", "hmget", "lrange", "llen", "zrange", "zrevrange", "zrangebyscore",
    "zrevrangebyscore", "zscore", "zcard", "bzpopmin", "xread", "xrevrange", "subscribe",
    "time",
    # events(): where the stream is read from, and whether a reader trimmed past lost
    # anything (entries-added); refused, a reader tells of every possible gap
    "xinfo|stream",
    # explain(): a waiting job's place in line
    "zrank",
    # the workers' heartbeat records (presence.py), one MULTI/EXEC each
    "multi", "exec", "zremrangebyscore",
    # called inside the scripts
    "get", "set", "incr", "incrby", "pexpire", "pttl", "del", "unlink", "exists", "type",
    "hset", "hdel", "hincrby", "hexists", "rpush", "ltrim", "zadd", "zrem", "zpopmin", "xadd",
    "publish",
    # the server checks at connect and in health_check (maxmemory policy, persistence)
    "info",
)  # fmt: skip

_LEADER = ("get", "set", "del", "incr", "pexpire", "pttl")
_OUTBOX = (
    "xadd", "xlen", "xack", "xautoclaim", "xpending", "xrange", "xtrim", "xinfo", "xdel",
    "xreadgroup", "xgroup|create", "xgroup|delconsumer", "hget", "incr", "exists",
)  # fmt: skip

#: What each optional feature adds to ``ENGINE_COMMANDS``.
FEATURE_COMMANDS: dict[str, tuple[str, ...]] = {
    "flow-control": ("sadd", "srem", "scard", "srandmember", "smembers", "zscan", *_LEADER),
    # _LEADER: the walk giving back turns held by finished jobs (groups/heal.py).
    "groups": (
        "sadd", "srem", "scard", "srandmember", "sismember", "smembers", "persist",
        "zrangebylex", "scan", *_LEADER,
    ),
    "idempotency": ("multi", "exec", "persist"),
    # zscan: the walk releasing dependents of jobs finished without it (workflows/heal.py).
    "workflows": ("sadd", "srem", "scard", "smembers", "hvals", "hsetnx", "persist", "scan",
                  "unlink", "xrevrange", "zscan", *_LEADER),
    # zrank, zcount: the events leader's sweep resumes its walk of cb:ids where it stopped;
    # hsetnx: it binds again the job names cb:names lacks.
    "breakers": (
        "hlen", "hsetnx", "sadd", "srem", "scard", "sismember", "xrevrange", "zrank", "zcount",
        *_LEADER,
    ),
    "encryption": ("hsetnx", "hkeys", "scan", "zscan", *_LEADER),
    # zscan: the DLQ of an earlier release listed per endpoint once (webhooks_dlq_index).
    "webhooks": (
        "hvals", "hlen", "persist", "expire", "zremrangebyrank", "zscan", *_OUTBOX, *_LEADER,
    ),
    "replicas": ("wait",),
    # scan: the recount of a tenant's damaged count (tn_recount.lua), only for that repair;
    # evalsha_ro, eval_ro (Redis 7.0+): the read-only scripts (tn_usage.lua, tn_present.lua:
    # a tenant's usage, which registered queues are gone), which a user that may only read
    # the keys (%R~) may run; without them they run with evalsha.
    "tenancy": (
        "sadd", "srem", "scard", "srandmember", "sismember", "smembers", "scan", "evalsha_ro",
        "eval_ro",
    ),
    # An operator's repairs, not a worker's: rebuild_parked walks the job records (SCAN)
    # and the parked index (ZSCAN) and recounts each blocker's set (ZCOUNT); find_orphans
    # walks the job records (SCAN).
    "repairs": ("scan", "zscan", "zcount"),
    # An operator's memory report (measure_footprint, `kitium-queue memory`): MEMORY
    # USAGE of the queue's keys and of jobs sampled at random from each state's set.
    "memory": ("memory|usage", "zrandmember"),
}  # fmt: skip

#: What access control and the audit log send (``access="enforce"``; ``"admin"`` adds
#: the writes of grant changes, tenant changes and retention, ``ACCESS_ADMIN_COMMANDS``).
ACCESS_COMMANDS = (
    "ping", "script|load", "script|exists", "evalsha", "eval", "hgetall", "smembers",
    "exists", "time",
    "xrevrange", "xrange", "xinfo", "xlen", "xadd",
    # the bound on refusals (audit/refusals.py): a counter hash per (principal, action,
    # queue) with a TTL, checked for its type, and the sorted set of counters holding
    # counted refusals (read and cleared by a flush)
    "type", "hmget", "hset", "hincrby", "pexpire", "del", "zadd", "zrem", "zrangebyscore",
)  # fmt: skip
ACCESS_ADMIN_COMMANDS = (
    "hdel", "hexists", "sadd", "srem", "xtrim",
    # tenant changes (AccessControlManager.create_tenant...): the registry's entry read
    # and compared, its version counter (read and set after the clock: tn_version.lua),
    # the queues it is copied into
    "hget", "incrby", "get", "set",
)  # fmt: skip


def _queue_key_pattern(prefix: str, spec: str) -> str:
    """The key pattern of one queue name or ``<literal>*`` prefix pattern."""
    pattern = QueuePattern(spec)
    if pattern.is_literal:
        return f"{prefix}:{{{spec}}}:*"
    lit = pattern.literal_prefix
    if spec != lit + "*":
        raise ConfigurationError(
            f"queue pattern {clip(repr(spec), 80)} cannot become a Redis ACL key pattern: "
            "give queue names, or a literal prefix followed by one trailing * (acme-*); "
            "in Redis' glob any other operator could match past the queue name into "
            "another queue's keys"
        )
    if not lit:
        raise ConfigurationError(
            "queue pattern '*' would give the user every queue's keys: name the queues, "
            "or a prefix followed by * (acme-*)"
        )
    return f"{prefix}:{{{lit}*"


@dataclass(frozen=True, slots=True)
class RedisAclRules:
    """The rules of one Redis user (``redis_acl_rules``).

    Attributes:
        user: the Redis user name.
        keys: the key patterns (``~...`` / ``%R~...`` rules).
        channels: the channel patterns (``&...`` rules).
        commands: the commands allowed (``+...`` rules after ``-@all``).
    """

    user: str
    keys: tuple[str, ...]
    channels: tuple[str, ...]
    commands: tuple[str, ...] = field(default_factory=tuple)

    def rules(self) -> list[str]:
        """The rules after the user name (without ``on``/password), in order."""
        return [
            *self.keys,
            "resetchannels",
            *(f"&{c}" for c in self.channels),
            "-@all",
            *(f"+{c}" for c in self.commands),
        ]

    def setuser_args(self, password: str) -> list[str]:
        """``ACL SETUSER`` arguments for ``client.execute_command("ACL", "SETUSER",
        *args)``: the user, ``reset``, ``on``, the password, the rules."""
        return [self.user, "reset", "on", f">{password}", *self.rules()]

    def command(self, password_placeholder: str = "<PASSWORD>") -> str:
        """The ``ACL SETUSER`` command as text (for redis-cli)."""
        return " ".join(["ACL SETUSER", self.user, "reset", "on", f">{password_placeholder}",
                         *self.rules()])  # fmt: skip

    def acl_file_line(self, password: str | None = None) -> str:
        """A line of an ACL file (``aclfile``): the password as its SHA-256
        (``#<hex>``) when given, else a placeholder to replace."""
        secret = (
            "#" + hashlib.sha256(password.encode()).hexdigest()
            if password is not None
            else ">CHANGE-ME"
        )
        return " ".join(["user", self.user, "reset", "on", secret, *self.rules()])

    def to_dict(self) -> dict[str, object]:
        return {
            "user": self.user,
            "keys": list(self.keys),
            "channels": list(self.channels),
            "commands": list(self.commands),
            "rules": self.rules(),
        }


def redis_acl_rules(
    user: str,
    queues: Sequence[str],
    *,
    prefix: str = "kq",
    features: Iterable[str] = (),
    access: str | None = None,
    info: bool = True,
    setinfo: bool = False,
) -> RedisAclRules:
    """The Redis ACL rules of a user that runs ``queues`` (see the module docstring).

    Args:
        user: the Redis user name (letters, digits and ``-_.:#/+``).
        queues: queue names, or literal prefixes with one trailing ``*`` (``acme-*``).
        prefix: the queues' key prefix.
        features: optional features the queues use (``FEATURE_COMMANDS`` keys:
            flow-control, groups, idempotency, workflows, breakers, encryption,
            webhooks, replicas, tenancy).
        access: None; ``"enforce"`` (the process protects queues and appends to the
            audit log); ``"admin"`` (it also changes grants and trims the log).
        info: allow ``INFO`` (the eviction check at connect and ``health_check``
            memory figures; without it they are skipped and logged).
        setinfo: allow ``CLIENT SETINFO`` (redis-py announces itself with it on Redis
            7.2+; refused, it only leaves an ``ACL LOG`` entry).
    """
    check_key_part(user, "Redis user name")
    check_key_part(prefix, "key prefix", allow_empty=True)
    if isinstance(queues, str):
        raise ConfigurationError("queues must be a list of queue names, not one str")
    specs = list(queues)
    if not specs and access is None:
        raise ConfigurationError("name at least one queue (or access='enforce' / 'admin')")
    patterns = tuple(dict.fromkeys(_queue_key_pattern(prefix, s) for s in specs))
    commands = list(ENGINE_COMMANDS) if specs else []
    for f in features:
        if f not in FEATURE_COMMANDS:
            raise ConfigurationError(
                f"unknown feature {clip(repr(f), 40)}; use one of {', '.join(FEATURE_COMMANDS)}"
            )
        commands += FEATURE_COMMANDS[f]
    keys = list(patterns)
    channels = list(patterns)
    if access is not None:
        if access not in ("enforce", "admin"):
            raise ConfigurationError(f"access must be 'enforce' or 'admin', got {access!r:.40}")
        base = f"{prefix}:{{{DEPLOYMENT_TAG}}}:"
        commands += ACCESS_COMMANDS
        if access == "admin":
            commands += ACCESS_ADMIN_COMMANDS
            keys.append(f"{base}*")
        else:
            keys += [
                f"%R~{base}grants:*",
                f"%R~{base}principals",
                f"{base}audit",
                f"{base}refusals",
                f"{base}refusals:*",
            ]
    if not info:
        commands = [c for c in commands if c != "info"]
    if setinfo:
        commands.append("client|setinfo")
    return RedisAclRules(
        user,
        tuple(k if k.startswith("%") else f"~{k}" for k in keys),
        tuple(channels),
        tuple(dict.fromkeys(commands)),
    )
