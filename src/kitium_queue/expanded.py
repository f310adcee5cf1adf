"""Composed Lua scripts shared per process, so a queue made with the fragments and slots of
a queue still alive skips their expansion (``ScriptRegistry.get``: about 13 ms a queue, a
hot cost for applications and tests that make many queues).

Entries are keyed by the script's name and a digest of everything its expansion reads
beyond the package's own files (the fragments a registry was given and its slots'
fragments). They are weak, like the shared copies of the texts (``scripts._SHARED``): a
script no registry holds any more is freed, so scripts composed for settings since
changed (a rate limit set again and again) or for queues gone are not kept.
Thread-safe: blocking clients compose scripts in their callers' threads.
"""

from __future__ import annotations

import threading
import weakref
from typing import Generic, TypeVar

__all__ = ["ExpandedScripts"]

S = TypeVar("S")


class ExpandedScripts(Generic[S]):
    """A weak map of (script name, composition digest) to a composed script."""

    def __init__(self) -> None:
        self._items: weakref.WeakValueDictionary[tuple[str, str], S] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> S | None:
        """The script kept under ``key`` while something still holds it, or None."""
        with self._lock:
            return self._items.get(key)

    def put(self, key: tuple[str, str], script: S) -> None:
        """Share ``script`` under ``key`` for as long as something else holds it."""
        with self._lock:
            self._items[key] = script

    def __len__(self) -> int:
        return len(self._items)
