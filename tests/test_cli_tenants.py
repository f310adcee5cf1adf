"""``kitium-queue tenants list|show APP``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from helpers import app_module
from kitium_queue import JobQueue
from kitium_queue.cli import main
from kitium_queue.features.tenancy import TenantRegistry
from kitium_queue.features.tenancy import keys as tk


@pytest.fixture
def app(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[str]:
    source = (
        "from kitium_queue import JobQueue\n"
        "from kitium_queue.features.tenancy import TenantRegistry\n"
        f"queue = JobQueue('ct', redis={redis_url!r}, prefix={prefix!r})\n"
        "TenantRegistry.enable(queue)\n"
    )
    with app_module(tmp_path, source, "kq_cli_tenants") as module:
        yield f"{module}:queue"


def _fill(redis_url: str, prefix: str) -> None:
    async def go() -> None:
        q = JobQueue("ct", redis=redis_url, prefix=prefix)
        reg = TenantRegistry(q)
        await reg.create_tenant(
            {
                "tenant_id": "acme",
                "name": "ACME Corp<b>",
                "weight": 2,
                "quota": {
                    "max_queue_size": 10,
                    "max_concurrency": 1,
                    "rate_limit": {"max": 5, "duration": 1000},
                },
            }
        )
        await reg.create_tenant({"tenant_id": "beta"})
        # A new name may not hold a format character (U+202E): one stored before is
        # shown escaped.
        client, key = await q.client(), tk.registry(prefix)
        body = orjson.loads(await client.hget(key, "acme"))
        await client.hset(key, "acme", orjson.dumps({**body, "name": "ACME \u202eCorp<b>"}))
        await q.add_jobs([("n", {}, {"tenant_id": "acme"}) for _ in range(3)])
        await q.close()

    asyncio.run(go())


def test_tenants_commands(app: str, redis_url: str, prefix: str) -> None:
    runner = CliRunner()
    _fill(redis_url, prefix)
    out = runner.invoke(main, ["tenants", "list", app])
    assert out.exit_code == 0, out.output
    lines = out.output.strip().splitlines()
    assert lines[0].startswith("tenant\tweight\tmax_queue_size\tmax_concurrency")
    assert lines[1].startswith("acme\t2\t10\t1\t5/1000ms\t3\t0\t2\t0\t0\t0\t")
    assert lines[2].startswith("beta\t1\t-\t-\t-\t0\t0\t0\t")
    # Text from Redis is escaped: no raw bidi override reaches the terminal.
    assert "\u202e" not in out.output and "ACME" in out.output

    shown = runner.invoke(main, ["tenants", "show", app, "acme", "--json"])
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.output)
    assert data["tenant"]["quota"]["max_concurrency"] == 1
    assert data["usage"]["queues"]["ct"]["queued"] == 3
    text = runner.invoke(main, ["tenants", "show", app, "acme"]).output
    assert "ct\t3\t0\t2\t0\t0\t0" in text and "total\t3\t0\t2\t0\t0\t0" in text

    missing = runner.invoke(main, ["tenants", "show", app, "nope"])
    assert missing.exit_code == 1 and "no tenant 'nope'" in missing.output
    bad = runner.invoke(main, ["tenants", "show", app, "a*b"])
    assert bad.exit_code == 2 and "tenant_id" in bad.output


def test_tenants_list_reads_usage_in_pages_per_queue(
    app: str, redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Usage is read in pipelines (pages of tenants per queue): the figures are those
    ``get_tenant_usage`` gives each tenant, summed over every registered queue."""
    import kitium_queue.features.tenancy.cli as tcli

    monkeypatch.setattr(tcli, "_PAGE", 2)
    tids = [f"t{i}" for i in range(5)]

    async def fill() -> dict[str, dict[str, object]]:
        qs = [JobQueue(n, redis=redis_url, prefix=prefix) for n in ("ct", "ct2")]
        for q in qs:
            TenantRegistry.enable(q)
        reg = TenantRegistry(qs[0])
        for i, t in enumerate(tids):
            await reg.create_tenant({"tenant_id": t})
            for k, q in enumerate(qs):
                await q.add_jobs([("n", {}, {"tenant_id": t}) for _ in range(i + 2 * k)])
        want = {t: (await reg.get_tenant_usage(t)).as_dict() for t in tids}
        for q in qs:
            await q.close()
        return want

    want = asyncio.run(fill())
    out = CliRunner().invoke(main, ["tenants", "list", app, "--json"])
    assert out.exit_code == 0, out.output
    got = {t["tenant_id"]: t["usage"] for t in json.loads(out.output)["tenants"]}
    assert got == want
    assert [got[t]["queued"] for t in tids] == [2, 4, 6, 8, 10]
    assert set(got["t3"]["queues"]) == {"ct", "ct2"}


def test_a_damaged_count_is_shown_and_tenants_sync_recounts_it(
    app: str, redis_url: str, prefix: str
) -> None:
    """A count of unfinished jobs that is not a count reads 0 in ``queued``: usage says
    so (``count_damaged``), the CLI marks it, and ``tenants sync`` recounts it."""
    from kitium_queue.features.tenancy import keys as tk

    _fill(redis_url, prefix)

    async def damage() -> tuple[object, object]:
        q = JobQueue("ct", redis=redis_url, prefix=prefix)
        client = await q.client()
        await client.hset(tk.tenant(q.keys, "acme"), "n", "garbage")
        u = await TenantRegistry(q).get_tenant_usage("acme")
        await q.close()
        return u.queues["ct"].count_damaged, u.count_damaged

    assert asyncio.run(damage()) == (True, ("ct",))
    runner = CliRunner()
    listed = runner.invoke(main, ["tenants", "list", app])
    assert listed.exit_code == 0, listed.output
    assert "acme\t2\t10\t1\t5/1000ms\t0 (count damaged: tenants sync)\t" in listed.output
    shown = runner.invoke(main, ["tenants", "show", app, "acme", "--json"])
    assert json.loads(shown.output)["usage"]["count_damaged"] == ["ct"]
    text = runner.invoke(main, ["tenants", "show", app, "acme"]).output
    assert "ct\t0 (count damaged: tenants sync)\t" in text

    synced = runner.invoke(main, ["tenants", "sync", app])
    assert synced.exit_code == 0, synced.output
    assert "damaged counts left: 0" in synced.output
    listed = runner.invoke(main, ["tenants", "list", app])
    assert "acme\t2\t10\t1\t5/1000ms\t3\t0\t2\t" in listed.output
    assert "damaged" not in listed.output
