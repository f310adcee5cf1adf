"""Every Redis key name of a queue is built here."""

from __future__ import annotations

import unicodedata

from .errors import ConfigurationError

__all__ = ["NAME_PUNCTUATION", "QueueKeys", "check_key_part"]

#: The punctuation a queue name or key prefix may contain besides letters, digits and
#: combining marks. Everything else is refused, in particular the glob characters
#: ``* ? [ ] \`` (a name is written into ACL key patterns such as ``~kq:{<queue>}:*``,
#: where they would widen the pattern to other queues), the hash-tag braces ``{ }``,
#: whitespace, control and format characters, lone surrogates (not encodable), quotes
#: and shell or config metacharacters (recipes are pasted into redis.conf and shells),
#: and ``@`` (messages that mention a queue are redacted like URLs, where ``@`` ends
#: the credentials).
NAME_PUNCTUATION = "-_.:#/+"
_NAME_RULE = f"letters, digits and {' '.join(NAME_PUNCTUATION)}"


#: Longest queue name, key prefix or other part of key names (a partitioned or global
#: queue's name: ``MAX_KEY_PART - 50``, room for what its members add).
MAX_KEY_PART = 250


def _allowed(ch: str) -> bool:
    # Letters (L*), digits and other numbers (N*) and combining marks (M*, needed to write
    # many scripts): none is special in a glob pattern, an ACL rule or a config line.
    return ch in NAME_PUNCTUATION or unicodedata.category(ch)[0] in "LNM"


def check_key_part(
    value: object, what: str, *, allow_empty: bool = False, max_len: int = MAX_KEY_PART
) -> str:
    """``value`` if it may be part of key names (and of the ACL patterns written for
    them): at most ``max_len`` characters; else ``ConfigurationError`` naming the first
    offending character."""
    if not isinstance(value, str):
        raise ConfigurationError(f"invalid {what}: must be a string, got {type(value).__name__}")
    if not value and not allow_empty:
        raise ConfigurationError(f"invalid {what} '': must not be empty; use {_NAME_RULE}")
    if len(value) > max_len:
        raise ConfigurationError(
            f"invalid {what} {value[:60]!r}...: {len(value)} characters, at most {max_len} "
            "(it is part of every key name)"
        )
    bad = next((c for c in value if not _allowed(c)), None)
    if bad is not None:
        raise ConfigurationError(
            f"invalid {what} {value[:100]!r}: character {bad!r} (U+{ord(bad):04X}) is not "
            f"allowed; use {_NAME_RULE} (no glob characters * ? [ ] \\, braces, spaces, "
            "quotes or control characters)"
        )
    return value


_LAYOUT = (
    "wait",
    "active",
    "delayed",
    "completed",
    "failed",
    "dlq",
    "meta",
    "events",
    "marker",
    "id",
    "limiter",
    "lease",
)


class QueueKeys:
    """Key names of one queue. All share the hash tag ``{name}`` (cluster-safe).

    ``all`` is the KEYS vector every script receives (see ``lua/lib_base.lua``).
    """

    __slots__ = ("all", "base", "name", "prefix")

    def __init__(self, name: str, prefix: str = "kq") -> None:
        # Both go into every key name and into the ACL recipe ``~<prefix>:{<name>}:*``:
        # only characters with no meaning there are accepted (see ``NAME_PUNCTUATION``).
        check_key_part(name, "queue name")
        if name in (".", ".."):
            # A path segment every URL tool rewrites (the dashboard's /q/<name>/...).
            raise ConfigurationError(
                f"invalid queue name {name!r}: a name of one or two dots only is a dot "
                "segment in URLs (the dashboard could not serve it); add a letter or digit"
            )
        check_key_part(prefix, "key prefix", allow_empty=True)
        self.name = name
        self.prefix = prefix
        self.base = f"{prefix}:{{{name}}}:"
        self.all = tuple(self.base + part for part in _LAYOUT)

    def __getattr__(self, item: str) -> str:
        try:
            return self.all[_LAYOUT.index(item)]
        except ValueError:
            raise AttributeError(item) from None

    @staticmethod
    def layout(base: str) -> tuple[str, ...]:
        """The KEYS vector of a queue whose keys start with ``base`` (``all``)."""
        return tuple(base + part for part in _LAYOUT)

    def job(self, job_id: str) -> str:
        return f"{self.base}job:{job_id}"

    def logs(self, job_id: str) -> str:
        return f"{self.base}logs:{job_id}"

    def idempotency(self, key: str) -> str:
        return f"{self.base}idem:{key}"

    def extra(self, suffix: str) -> str:
        """A feature's own key under this queue's hash tag (e.g. ``schedules``)."""
        return self.base + suffix

    # -- holds: set by finish.lua when a processor raises RateLimited -------------------
    @staticmethod
    def hold_name(rate_key: str = "") -> str:
        """Suffix of a hold: ``hold`` (the whole queue) or ``hold:<rate limit key>``."""
        return f"hold:{rate_key}" if rate_key else "hold"

    def hold(self, rate_key: str = "") -> str:
        """STRING with a TTL: while it exists, claim hands out nothing of its scope."""
        return self.base + self.hold_name(rate_key)

    # -- parked jobs (lua/lib_parking.lua, parking.py) ------------------------------------
    def parked(self, blocker: str) -> str:
        """ZSET: the jobs parked behind ``blocker``, score = their score in wait."""
        return f"{self.base}parked:{blocker}"

    @property
    def parked_index(self) -> str:
        """ZSET: blocker -> how many jobs are parked behind it."""
        return self.base + "parked"

    @property
    def park_timers(self) -> str:
        """ZSET: time-based blockers -> when claim unparks their jobs (ms)."""
        return self.base + "park:timers"

    @property
    def park_rules(self) -> str:
        """HASH: time-based blocker -> "<n> <every> <due>": how many jobs each firing
        unparks, how often (ms) while jobs remain, and the pending due time (ms)."""
        return self.base + "park:rules"

    @property
    def slot_errors(self) -> str:
        """HASH: '<slot>:<fragment>' -> '<ms> <message>' of the last error of a Lua slot
        fragment (the transition around it went on)."""
        return self.base + "slot-errors"

    # -- schedules (lua/schedule_keys.lua) ----------------------------------------------
    @property
    def schedules(self) -> str:
        """ZSET: every schedule id, score = creation time."""
        return self.base + "schedules"

    @property
    def schedules_due(self) -> str:
        """ZSET: active schedules, score = next tick (ms)."""
        return self.base + "schedules:due"

    @property
    def schedules_channel(self) -> str:
        """Pub/sub channel announcing created, changed and removed schedules."""
        return self.base + "schedules:changed"

    def schedule(self, schedule_id: str) -> str:
        """HASH: one schedule's definition and state."""
        return f"{self.base}schedule:{schedule_id}"

    # -- live workers (presence.py) ---------------------------------------------------
    @property
    def workers(self) -> str:
        """ZSET: ids of workers that announced themselves -> when they last did (ms, the
        worker's clock); an index only: a worker is alive while its ``worker`` hash is."""
        return self.base + "workers"

    def worker(self, worker_id: str) -> str:
        """HASH with a TTL: what worker ``worker_id`` said at its last heartbeat."""
        return f"{self.base}worker:{worker_id}"

    @property
    def needs(self) -> str:
        """HASH: feature -> how to enable it, for each feature whose end step every job
        of the queue needs (``handoff.require``); a worker without one hands its jobs
        to a live worker that has it."""
        return self.base + "needs"
