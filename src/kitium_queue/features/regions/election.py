"""Epochs, votes and leases across the regions (the protocol; ``region.lua`` keeps each
region's side of it). docs/multi-region.md, "Epochs and leases", says why it is safe.

* **The view.** The established epoch is the highest one any reachable record holds
  (``epoch`` is only ever set for a primary a majority voted for); its primary is the
  region those records name.
* **Renewal.** The primary may take work only while its lease runs. A manager that
  reaches it renews the lease: every reachable region grants the primary ``lease_ms``
  more (``renew``); with a majority of grants, the primary's lease is moved to
  ``t0 + lease_ms - margin``, ``t0`` being the primary's clock read *before* the grants
  were asked. Every grant therefore outlives the lease it supports.
* **Election.** A candidate needs the votes of a majority in a new epoch. A region does
  not vote while its grant to the current primary runs (``held``), and votes once per
  epoch. So a promotion waits until the majority's grants lapsed, by which time the old
  primary's own lease has ended; and two candidates cannot both win an epoch. A
  partitioned minority gets neither renewals nor votes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .record import Record, RegionCopy

__all__ = ["Election", "Elections", "View", "derive_view"]


@dataclass(frozen=True, slots=True)
class View:
    """What the reachable records say: the established ``epoch`` and its ``primary``;
    ``election``: the highest epoch a vote was cast in (an election may be under way)."""

    epoch: int | None
    primary: str | None
    election: int
    serving: bool


def derive_view(records: dict[str, Record | None]) -> View:
    """The view from the regions' records (None: the region did not answer)."""
    known = [r for r in records.values() if r is not None and r.epoch is not None]
    election = max((r.vepoch or 0 for r in records.values() if r is not None), default=0)
    if not known:
        return View(None, None, election, False)
    epoch = max(r.epoch or 0 for r in known)
    at = [r for r in known if r.epoch == epoch]
    # The primary's own record confirms it; otherwise the name the others know.
    own = [r for r in at if r.is_primary]
    primary = own[0].region if own else at[0].primary
    mine = records.get(primary or "")
    serving = mine is not None and mine.epoch == epoch and mine.serving
    return View(epoch, primary, max(election, epoch), serving)


@dataclass(slots=True)
class Election:
    """The result of an election: ``won``; the votes; why the others refused."""

    epoch: int
    candidate: str
    won: bool
    votes: list[str] = field(default_factory=list)
    refusals: dict[str, str] = field(default_factory=dict)
    held_ms: int = 0

    def describe(self) -> str:
        why = "; ".join(f"{k}: {v}" for k, v in sorted(self.refusals.items()))
        return (
            f"election {self.epoch} for {self.candidate}: {len(self.votes)} vote(s) "
            f"({', '.join(self.votes) or 'none'}){'; ' + why if why else ''}"
        )


class Elections:
    """The protocol over ``copies`` (see the module docstring)."""

    def __init__(self, copies: Sequence[RegionCopy], *, majority: int, lease_ms: int) -> None:
        self.copies = list(copies)
        self.majority = majority
        self.lease_ms = lease_ms
        # Taken off the primary's lease: the grants must outlive it even with some
        # difference in the rate of the servers' clocks.
        self.margin_ms = max(10, lease_ms // 10)

    async def _each(
        self, copies: Iterable[RegionCopy], op: str, *args: object
    ) -> dict[str, Record | BaseException]:
        copies = list(copies)
        replies = await asyncio.gather(*(c.op(op, *args) for c in copies), return_exceptions=True)
        return {c.name: r for c, r in zip(copies, replies, strict=True)}

    def reachable(self) -> list[RegionCopy]:
        return [c for c in self.copies if c.reachable]

    async def renew(self, primary: RegionCopy, epoch: int, t0: int) -> bool:
        """Renew the lease of ``primary`` (epoch ``epoch``), ``t0`` its clock read before
        this call; True if a majority granted it and the lease was moved."""
        replies = await self._each(self.reachable(), "renew", epoch, primary.name, self.lease_ms)
        granted = [n for n, r in replies.items() if isinstance(r, Record) and r.ok]
        if len(granted) < self.majority:
            return False
        rec = await primary.op("extend", epoch, t0 + self.lease_ms - self.margin_ms)
        return rec.ok

    async def elect(self, candidate: RegionCopy, epoch: int) -> Election:
        """Ask every reachable region to vote for ``candidate`` in ``epoch``; with a
        majority, make it the primary. Votes of a lost election are withdrawn."""
        result = Election(epoch, candidate.name, False)
        t0 = (await candidate.op("read")).now
        replies = await self._each(self.reachable(), "vote", epoch, candidate.name, self.lease_ms)
        for name, r in replies.items():
            if isinstance(r, Record) and r.ok:
                result.votes.append(name)
            elif isinstance(r, Record):
                result.refusals[name] = r.status + (f" {r.detail}" if r.detail else "")
                if r.status == "held":
                    result.held_ms = max(result.held_ms, int(r.detail or 0))
            else:
                result.refusals[name] = f"unreachable ({type(r).__name__})"
        if len(result.votes) >= self.majority and candidate.name in result.votes:
            rec = await candidate.op("promote", epoch, t0 + self.lease_ms - self.margin_ms)
            result.won = rec.ok
            if not rec.ok:
                result.refusals[candidate.name] = f"promote: {rec.status} {rec.detail}".strip()
        if not result.won:
            voters = [c for c in self.copies if c.name in result.votes]
            await self._each(voters, "release", epoch, candidate.name)
        return result

    async def adopt(self, epoch: int, primary: str, copies: Iterable[RegionCopy]) -> None:
        """Tell ``copies`` that ``primary`` leads ``epoch`` (best effort)."""
        await self._each([c for c in copies if c.name != primary], "adopt", epoch, primary)

    async def release(self, epoch: int, holder: str) -> None:
        """Withdraw every reachable region's grant to ``holder`` (it stepped down)."""
        await self._each(self.reachable(), "release", epoch, holder)
