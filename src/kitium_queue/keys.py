"""Every Redis key name of a queue is built here."""

from __future__ import annotations

__all__ = ["QueueKeys"]

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

    ``all`` is the KEYS vector every script receives (see ``lua/common.lua``).
    """

    __slots__ = ("all", "base", "name", "prefix")

    def __init__(self, name: str, prefix: str = "kq") -> None:
        if not name or any(c in name for c in "{}\r\n"):
            from .errors import ConfigurationError

            raise ConfigurationError(
                f"invalid queue name {name!r}: use a non-empty name without '{{', '}}' "
                "or line breaks"
            )
        self.name = name
        self.prefix = prefix
        self.base = f"{prefix}:{{{name}}}:"
        self.all = tuple(self.base + part for part in _LAYOUT)

    def __getattr__(self, item: str) -> str:
        try:
            return self.all[_LAYOUT.index(item)]
        except ValueError:
            raise AttributeError(item) from None

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

    # -- flow control (flowcontrol.py; its Lua builds the same names from the prefix) ---
    def rate(self, key: str) -> str:
        """HASH: current fixed window of rate-limit key ``key`` (w = opened at ms, n = starts)."""
        return f"{self.base}rl:{key}"

    def concurrency(self, key: str) -> str:
        """SET: ids of the running jobs of concurrency key ``key`` (pruned lazily)."""
        return f"{self.base}cc:{key}"

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
