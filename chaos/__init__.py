"""kitium-queue fault suite: real worker and redis-server processes on loopback.

    .venv/bin/python -m chaos [--long] [--only NAME] [--report chaos/results.json]

Every scenario ends with the shared ledger/checker (``chaos.ledger``): each acknowledged
enqueue completed or dead-lettered with a reason, duplicates counted, state sets
consistent with the job records. ``tests/test_chaos_short.py`` runs the short form of
each scenario inside the normal test suite.

This package imports nothing heavy at import time: ``chaos/worker.py`` runs as a plain
script in worker processes and must be able to patch the clock before kitium_queue loads.
"""

NAMES = (
    "sigkill",
    "crash-steps",
    "sigterm",
    "freeze",
    "redis-restart",
    "network",
    "clock-skew",
    "poison",
    "groups",
    "breaker",
    "encryption-rotation",
    "webhooks",
    "metrics",
    "workflows",
    "slow-redis",
    "replica-acks",
    "audit",
    "erasure",
    "tenancy",
    "regions",
    "redis-full",
)
