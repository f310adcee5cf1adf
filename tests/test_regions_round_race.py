"""A health round that runs while this process promotes a region.

The promotion tells the other regions of the new epoch itself (``elections.adopt``). A
round whose read of the regions' records fell between the election and that adopt saw
the others at the old epoch and warned that each "knew epoch 1" — on every manual
failover that met a round, a warning about nothing. A region that is really stale (one
the promotion could not tell) is still told by the next round, with its warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from helpers import wait_until
from kitium_queue.features.regions import GlobalQueueManager
from kitium_queue.features.regions.monitor import Monitor
from test_regions import NAMES, config, urls  # noqa: F401  (urls: the fixture)

STALE = "knew epoch"


def _stale_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if STALE in r.getMessage()]


@contextlib.asynccontextmanager
async def _manager(
    stores: list[str], prefix: str, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[tuple[GlobalQueueManager, Monitor]]:
    """Three regions, no background loop: the test runs the rounds itself."""
    caplog.set_level(logging.INFO, logger="kitium_queue")
    regions = GlobalQueueManager()
    await regions.initialize(config(stores, prefix, background=False))
    try:
        assert regions.monitor is not None
        yield regions, regions.monitor
    finally:
        await regions.close()


async def test_a_round_during_a_promotion_warns_of_no_stale_region(
    urls: list[str],  # noqa: F811  (the fixture of test_regions)
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with _manager(urls, prefix, caplog) as (regions, monitor):
        elections = monitor.topo.elections
        real_adopt = elections.adopt
        held = asyncio.Event()
        go_on = asyncio.Event()

        async def slow_adopt(epoch: int, primary: str, copies: Any) -> None:
            if not held.is_set():  # the promotion's own adopt waits for the round
                held.set()
                await go_on.wait()
            await real_adopt(epoch, primary, copies)

        elections.adopt = slow_adopt  # type: ignore[method-assign]
        handover = asyncio.create_task(regions.failover_to(NAMES[1]))
        await wait_until(held.is_set, 10, message="the promotion did not reach its adopt")
        # The new primary is elected; the other two have not been told yet.
        view = await monitor.tick()
        assert view.primary == NAMES[1] and view.epoch == 2
        go_on.set()
        info = await handover
        assert info.primary == NAMES[1]
        elections.adopt = real_adopt  # type: ignore[method-assign]
        await monitor.tick()
        assert _stale_warnings(caplog) == []
        for copy in monitor.topo.reachable():
            assert copy.record is not None and copy.record.epoch == 2, copy.name


async def test_a_region_the_promotion_could_not_tell_is_told_by_the_next_round(
    urls: list[str],  # noqa: F811  (the fixture of test_regions)
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with _manager(urls, prefix, caplog) as (regions, monitor):
        elections = monitor.topo.elections
        real_adopt = elections.adopt

        async def adopt_missing_one(epoch: int, primary: str, copies: Any) -> None:
            await real_adopt(epoch, primary, [c for c in copies if c.name != NAMES[2]])

        elections.adopt = adopt_missing_one  # type: ignore[method-assign]
        await regions.failover_to(NAMES[1])
        elections.adopt = real_adopt  # type: ignore[method-assign]
        await monitor.tick()
        warned = _stale_warnings(caplog)
        assert len(warned) == 1 and NAMES[2] in warned[0], warned
        await monitor.tick()
        assert len(_stale_warnings(caplog)) == 1
        for copy in monitor.topo.reachable():
            assert copy.record is not None and copy.record.epoch == 2, copy.name
