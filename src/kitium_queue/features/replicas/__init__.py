"""Replica-acknowledged writes (``WAIT`` after an enqueue or an outcome): ``ReplicaAcks``
(``acks.py``), and the ``kitium-queue replicas`` command (``cli.py``). See
docs/replicas.md."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import load_lazily

if TYPE_CHECKING:
    from .acks import MAX_WAIT_TIMEOUT_MS, ReplicaAcks, replication_status

#: Public names, each imported on first use from the module that defines it.
_LAZY = {
    "MAX_WAIT_TIMEOUT_MS": "acks",
    "ReplicaAcks": "acks",
    "replication_status": "acks",
}

__all__ = ["MAX_WAIT_TIMEOUT_MS", "ReplicaAcks", "replication_status"]


if not TYPE_CHECKING:  # a type checker sees the names above, and flags any other

    def __getattr__(name: str) -> Any:
        return load_lazily(__name__, __path__, _LAZY, name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
