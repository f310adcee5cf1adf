"""The audit log: an append-only, tamper-evident Redis stream per deployment.

* ``chain.py``: the fields of an entry, their bounds, the MAC keys and the MAC;
* ``append.lua``: the race-free append (compare the chain's end, then write);
* ``log.py``: ``AuditLog``: appends (awaited, or queued and written in the background);
* ``read.py``: entries by range, queries, verification of the whole chain;
* ``read.lua``: one bounded page of the stream (values cut to size, damage noted);
* ``retention.py``: ``trim``'s start point and the trim itself;
* ``subscriber.py``: every administrative command of a watched queue, as an entry;
* ``verify.py``: ``verify_chain``: the first entry altered, removed or inserted;
* ``conn.py``: the deployment's connection and key names (shared with access control);
* ``cli.py``: ``kitium-queue audit query|verify|trim``.

docs/access-control.md describes the format, the guarantees and their limits.
"""

from .chain import AuditKeys
from .log import AuditEntry, AuditLog, AuditPage
from .verify import AuditHead, AuditProblem, AuditReport

__all__ = [
    "AuditEntry",
    "AuditHead",
    "AuditKeys",
    "AuditLog",
    "AuditPage",
    "AuditProblem",
    "AuditReport",
]
