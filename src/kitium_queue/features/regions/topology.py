"""The regions as this process knows them: their copies, the current view (epoch and
primary), and the lock that serialises promotions in this process."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from ...errors import ConfigurationError
from .config import Checked
from .election import Elections, View, derive_view
from .record import RegionCopy

__all__ = ["Topology"]


class Topology:
    """See the module docstring. ``view`` is refreshed by ``refresh`` (the monitor's
    health checks, or a caller that needs it fresh)."""

    def __init__(self, cfg: Checked, copies: Sequence[RegionCopy]) -> None:
        self.cfg = cfg
        self.copies = list(copies)
        self.by_name = {c.name: c for c in self.copies}
        self.elections = Elections(self.copies, majority=cfg.majority, lease_ms=cfg.lease_ms)
        self.view = View(None, None, 0, False)
        #: Held while this process promotes a region (manual or automatic).
        self.lock = asyncio.Lock()

    def copy(self, name: str) -> RegionCopy:
        found = self.by_name.get(name) if isinstance(name, str) else None
        if found is None:
            shown = repr(name[:100]) if isinstance(name, str) else type(name).__name__
            raise ConfigurationError(
                f"unknown region {shown}; the regions are {', '.join(self.by_name)}"
            )
        return found

    @property
    def primary(self) -> str | None:
        return self.view.primary

    @property
    def epoch(self) -> int | None:
        return self.view.epoch

    @property
    def source(self) -> str:
        """The replication source label of the current primary: ``"<region>@<epoch>"``."""
        return f"{self.view.primary}@{self.view.epoch}"

    def primary_copy(self) -> RegionCopy | None:
        return self.by_name.get(self.view.primary or "")

    def secondaries(self) -> list[RegionCopy]:
        return [c for c in self.copies if c.name != self.view.primary]

    def reachable(self) -> list[RegionCopy]:
        return [c for c in self.copies if c.reachable]

    async def refresh(self) -> View:
        """Check every region now and derive the view."""
        recs = await asyncio.gather(*(c.check() for c in self.copies))
        self.view = derive_view({c.name: r for c, r in zip(self.copies, recs, strict=True)})
        return self.view
