"""Waves: the results of a batch of deliveries, recorded while the batch runs
(``service.py``).

A batch (up to ``batch`` deliveries, ``concurrency`` requests at once) records its
results in waves, each one ``webhooks_done`` call: once ``concurrency`` results are
ready, or about ``WAVE_S`` after the previous record, whichever comes first. An outbox
entry is acknowledged in the wave that records the last of its deliveries (the entries
without any, in the first). A worker killed mid-batch has only what was answered since
its last wave, and what was in flight, sent again by another worker.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ...runends import wait_event

__all__ = ["WAVE_S", "Waves"]

#: The longest a result ready waits for its record (s), unless a record is under way.
WAVE_S = 1.0

Write = Callable[[list[Any], list[str], list[Any], int], Awaitable[None]]


class Waves:
    """The results of one batch not yet recorded, and what its keep may still touch.

    ``write(fields, acks, back, delivered)`` records one wave; ``owners`` gives the outbox
    entry of each delivery (``None``: a retry), ``acks`` every entry of the batch. The
    lock keeps the batch's keep (touch, lease push) and its records apart: a lease
    pushed just after its retry's record would delay that retry."""

    def __init__(
        self,
        write: Write,
        members: Sequence[str],
        owners: Sequence[str | None],
        acks: Sequence[str],
        size: int,
        every_s: float = WAVE_S,
    ) -> None:
        self._write, self.size, self.every_s = write, max(1, size), every_s
        self.lock = asyncio.Lock()
        self._owners = list(owners)
        self._left = Counter(o for o in self._owners if o is not None)
        self._unacked = dict.fromkeys(acks)
        self._unrecorded = Counter(members)
        self._todo = len(self._owners)
        # Ready, not yet recorded: fields, handed-back fields, acks, members, delivered.
        self._fields: list[Any] = []
        self._back: list[Any] = []
        self._acks = [a for a in self._unacked if not self._left[a]]
        self._members: list[str] = []
        self._ok = 0
        self._ready = 0
        self._wake = asyncio.Event()
        self.waves = 0

    def unacked(self) -> list[str]:
        """The batch's outbox entries not acknowledged yet."""
        return list(self._unacked)

    def unrecorded(self) -> list[str]:
        """The members of the deliveries whose result is not being recorded yet."""
        return [m for m, n in self._unrecorded.items() if n > 0]

    def add(self, i: int, member: str, fields: list[Any], *, back: bool, ok: bool) -> None:
        """The result of delivery ``i`` (``back``: handed back unattempted)."""
        (self._back if back else self._fields).extend(fields)
        self._members.append(member)
        self._ok += ok
        self._ready += 1
        self._todo -= 1
        owner = self._owners[i]
        if owner is not None:
            self._left[owner] -= 1
            if self._left[owner] == 0 and owner in self._unacked:
                self._acks.append(owner)
        self._wake.set()

    async def run(self) -> None:
        """Record waves until every result of the batch is recorded."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            self._wake.clear()
            now = loop.time()
            if self._todo <= 0:
                await self._flush()
                return
            if self._ready >= self.size or (self._ready and now - last >= self.every_s):
                await self._flush()
                last = loop.time()
                continue
            timeout = last + self.every_s - now if self._ready else None
            await wait_event(self._wake, timeout)  # keeps a cancel (wait_for < 3.12 not)

    async def _flush(self) -> None:
        async with self.lock:
            fields, back, acks, members, ok = (
                self._fields,
                self._back,
                self._acks,
                self._members,
                self._ok,
            )
            self._fields, self._back, self._acks, self._members = [], [], [], []
            self._ok = self._ready = 0
            self._unrecorded.subtract(members)
            if fields or back or acks:
                await self._write(fields, acks, back, ok)
                self.waves += 1
            for a in acks:
                self._unacked.pop(a, None)
