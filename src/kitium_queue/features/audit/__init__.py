"""The audit log: an append-only, tamper-evident Redis stream per deployment.

* ``chain.py``: the fields of an entry, their bounds, the MAC keys and the MAC;
* ``append.lua``: the race-free append (compare the chain's end, then write);
* ``log.py``: ``AuditLog``: appends (awaited, or queued and written in the background);
* ``read.py``: entries by range, queries, verification of the whole chain;
* ``read.lua``: one bounded page of the stream (values cut to size, damage noted);
* ``retention.py``: ``trim``'s start point and the trim itself;
* ``refusals.py``: the bound on ``access.denied`` entries (the first of a window
  written, the rest counted and summed up in one entry);
* ``subscriber.py``: every administrative command of a watched queue, as an entry;
* ``verify.py``: ``verify_chain``: the first entry altered, removed or inserted;
* ``conn.py``: the deployment's connection and key names (shared with access control);
* ``cli.py``: ``kitium-queue audit query|verify|trim``.

docs/access-control.md describes the format, the guarantees and their limits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import load_lazily

if TYPE_CHECKING:
    from .chain import AuditKeys
    from .log import AuditEntry, AuditLog, AuditPage
    from .verify import AuditHead, AuditProblem, AuditReport

#: Public names, each imported on first use from the module that defines it.
_LAZY = {
    "AuditKeys": "chain",
    "AuditEntry": "log",
    "AuditLog": "log",
    "AuditPage": "log",
    "AuditHead": "verify",
    "AuditProblem": "verify",
    "AuditReport": "verify",
}

__all__ = [
    "AuditEntry",
    "AuditHead",
    "AuditKeys",
    "AuditLog",
    "AuditPage",
    "AuditProblem",
    "AuditReport",
]


if not TYPE_CHECKING:  # a type checker sees the names above, and flags any other

    def __getattr__(name: str) -> Any:
        return load_lazily(__name__, __path__, _LAZY, name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
