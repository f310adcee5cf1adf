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
