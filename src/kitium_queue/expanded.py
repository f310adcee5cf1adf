"""Composed Lua scripts kept per process, so a queue made with the fragments and slots of
one made before skips their expansion (``ScriptRegistry.get``: about 13 ms a queue, a
hot cost for applications and tests that make many queues).

Entries are keyed by the script's name and a digest of everything its expansion reads
beyond the package's own files (the fragments a registry was given and its slots'
fragments), newest last, and bounded by the characters of source they keep
(``MAX_CHARS``): the oldest go first. Thread-safe: blocking clients compose scripts in
their callers' threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, Protocol, TypeVar

__all__ = ["MAX_CHARS", "ExpandedScripts"]

#: Characters of script source the cache keeps at most (a plain queue's 20 scripts come
#: to about 0.9 MB; scripts equal across compositions are one object).
MAX_CHARS = 8 << 20


class _HasSource(Protocol):
    @property
    def source(self) -> str: ...


S = TypeVar("S", bound=_HasSource)


class ExpandedScripts(Generic[S]):
    """A bounded map of (script name, composition digest) to a composed script."""

    def __init__(self, max_chars: int = MAX_CHARS) -> None:
        self._max = max_chars
        self._chars = 0
        self._items: OrderedDict[tuple[str, str], S] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> S | None:
        """The script kept under ``key`` (then the newest), or None."""
        with self._lock:
            script = self._items.get(key)
            if script is not None:
                self._items.move_to_end(key)
            return script

    def put(self, key: tuple[str, str], script: S) -> None:
        """Keep ``script`` under ``key``, dropping the oldest beyond the bound (the newest
        entry stays even when it alone is larger)."""
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._chars -= len(old.source)
            self._items[key] = script
            self._chars += len(script.source)
            while self._chars > self._max and len(self._items) > 1:
                self._chars -= len(self._items.popitem(last=False)[1].source)

    def __len__(self) -> int:
        return len(self._items)

    def chars(self) -> int:
        """Characters of source kept now."""
        return self._chars
