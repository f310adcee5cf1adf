"""Erasure across regions, edge cases (docs/compliance.md, "Multi-region"): two private
``redis-server`` processes as the regions (``us``, the primary, and ``eu``).

* A chosen job id is free again at the primary once its job was erased (its window in
  ``jids`` ends with it): a later job under that id is a new job, and the secondary
  copies it. Before, the erased job's tombstone there (a day) skipped that job's copy:
  the secondary never had it, and a failover lost it.
* An erasure applied at the secondary before the job's own copy arrived (a late batch)
  leaves it erased there: the late copy does not bring it back.
"""

from __future__ import annotations

from typing import Any

from helpers import wait_until
from kitium_queue.features.regions import GlobalQueueManager
from kitium_queue.features.regions.copying import apply, as_entry, export
from regionpair import EU, US, region_pair

#: Ports of the private servers, two per test.
PORTS = {"reuse": 26380, "late": 26382}


def two_regions(port: int) -> Any:
    return region_pair(
        port,
        "review54",
        5000,
        queue_options={"advanced": {"compliance": {"enabled": True}}},
    )


async def state_at(m: GlobalQueueManager, region: str, jid: str) -> str | None:
    info = await m.region(region).lane.get_job_status(jid)
    return None if info is None else info.status.value


async def test_a_chosen_id_reused_after_its_erasure_is_copied_to_the_secondary() -> None:
    async with two_regions(PORTS["reuse"]) as (m, _):
        primary = m.region(US).lane
        await primary.pause()
        jid = await m.add_job("serve", {"m": "old"}, subject_id="alice", job_id="order-7")
        assert jid == "order-7"
        await wait_until(lambda: _is(m, EU, jid, "waiting"), 10, message="first copy")
        report = await primary.advanced.compliance.erase_subject("alice")
        assert report.jobs == 1
        await wait_until(lambda: _is(m, EU, jid, None), 10, message="erased at eu")
        # The id is free at the primary: a new job (another subject) takes it.
        again = await m.add_job("serve", {"m": "new"}, subject_id="bob", job_id="order-7")
        assert again == "order-7"
        assert await state_at(m, US, jid) == "paused"
        await wait_until(lambda: _is(m, EU, jid, "waiting"), 10, message="new job at eu")
        copy = await m.region(EU).lane.get_job_status(jid)
        assert copy is not None and copy.data == {"m": "new"}


async def _is(m: GlobalQueueManager, region: str, jid: str, want: str | None) -> bool:
    return await state_at(m, region, jid) == want


def _entry(row: dict[str, Any], **over: Any) -> list[Any]:
    return as_entry({**row, **over})


async def test_an_erasure_applied_before_the_copy_keeps_it_erased() -> None:
    """Entries applied out of order at the secondary (a late batch): the erasure first,
    then the job's own copy written before it; then a new job under the id, written
    after the erasure. Odd ids and keys (control and glob characters, a long key)
    change nothing."""
    async with two_regions(PORTS["late"]) as (m, _):
        primary, eu = m.region(US).lane, m.region(EU).lane
        await primary.pause()
        src = await m.add_job("serve", {"m": "x"}, subject_id="carol", idempotency_key="k")
        [row] = await export(primary, [src])
        client = await eu.client()
        for n, jid in enumerate(["late-1", "late*[?]\x01\n", "l" * 3000]):
            ik = f"ik-{n}-" + "*?[\x00" * 2000
            t = 1_000_000 + n * 100
            erase = _entry(row, op="erase", id=jid, state="removed", ikey=ik, at=t + 10)
            put = _entry(row, op="put", id=jid, state="waiting", ikey=ik, ittl=60_000, at=t)
            again = _entry(row, op="put", id=jid, state="waiting", ikey="", at=t + 20)
            assert await apply(eu, [erase], src="test@1") == ["erased"]
            # The copy written before the erasure, applied late: it stays erased.
            assert await apply(eu, [put], src="test@1") == ["gone"]
            assert await state_at(m, EU, jid) is None
            assert await client.exists(eu.keys.base + "idem:" + ik) == 0
            # A job that took the id after the erasure is a new job: copied.
            assert await apply(eu, [again], src="test@1") == ["added"]
            assert await state_at(m, EU, jid) == "waiting"
