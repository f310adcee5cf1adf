"""Features built on the engine's extension points, each in a module of its own.

* ``flowcontrol``: per-key rate limits and concurrency caps, a global cap (Lua slots,
  parked jobs).
* ``schedules`` / ``scheduler``: cron and interval schedules and the leaderless
  scheduler service.
* ``batches``: processors that take a batch of jobs.
* ``partitioned``: one logical queue over several physical queues (a façade from
  ``api.py``).
* ``regions``: one queue over several regions (``GlobalQueueManager``): routing,
  replication through the outbox, failover fenced by epochs (a façade, Lua slots).

Features depend on the core and plug into it through its extension points; users reach
them through the queue's public methods (``set_rate_limit``, ``schedule_job``,
``process_batch``) and the package namespace (``PartitionedQueue``, ``Schedule``).

A feature registers nothing when imported: its manager's constructor installs its
options, hooks, Lua slots and services on a queue. So ``import kitium_queue`` loads no
feature, and a feature package loads its modules on first use of a name
(``load_lazily``).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

__all__ = ["load_lazily"]


def load_lazily(
    package: str,
    path: Sequence[str],
    names: Mapping[str, str],
    name: str,
    left_out: frozenset[str] = frozenset(),
) -> Any:
    """``package.name`` where the package's ``__init__`` did not import it (its module
    ``__getattr__``): a name of ``names``, from the module of the package it maps to,
    imported now; else a module of the package (found in ``path``) other than those
    ``left_out``."""
    module = names.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f".{module}", package), name)
        setattr(sys.modules[package], name, value)
        return value
    if (
        name.isidentifier()
        and not name.startswith("__")
        and name not in left_out
        and importlib.machinery.PathFinder.find_spec(f"{package}.{name}", list(path))
    ):
        return importlib.import_module(f".{name}", package)
    raise AttributeError(f"module {package!r} has no attribute {name!r}")


if not TYPE_CHECKING:  # a type checker sees the names above, and flags any other

    def __getattr__(name: str) -> Any:
        # Not the modules that need an optional extra: they raise ImportError.
        return load_lazily(__name__, __path__, {}, name, frozenset({"prometheus", "tracing"}))
