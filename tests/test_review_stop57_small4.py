"""Small leftovers of schedules and webhooks:

* ``update_schedule`` is atomic: two concurrent updates of different fields both take
  effect (each read the record and wrote it back whole, so one undid the other);
* ``update_schedule(id, schedule_id=...)`` raises ``ConfigurationError`` saying how to
  rename a schedule, not Python's bare ``TypeError``;
* ``kitium-queue webhooks list|show`` mask header values and URL credentials (user
  info, query values) unless given ``--show-secrets``;
* the webhook scripts UNLINK keys that can be large (a damaged ``wh:subs`` of another
  type), so Redis frees them in the background.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner

from helpers import QueueFactory, app_module, wait_until
from kitium_queue import ConfigurationError, JobQueue, ScheduleNotFoundError, SyncJobQueue
from kitium_queue.cli import main
from kitium_queue.features.webhooks import WebhookConfig, WebhookManager
from kitium_queue.features.webhooks.cli import shown_headers, shown_url

pytestmark = pytest.mark.timeout(180)

# Far ahead of the real clock: the schedules never fire during a test.
T0 = 4_102_444_800_000  # 2100-01-01T00:00:00Z


@pytest.fixture
async def queues(redis_url: str, prefix: str) -> AsyncIterator[QueueFactory]:
    factory = QueueFactory(redis_url, prefix)
    yield factory
    await factory.aclose()


# ------------------------------------------------------------------ update_schedule
async def test_concurrent_updates_of_different_fields_both_take_effect(
    queues: QueueFactory,
) -> None:
    """Before: each update read the schedule and wrote back a whole definition computed
    from it, so the later write undid the other's change (lost in most rounds)."""
    a, b = queues("upd"), queues("upd")  # two clients, two connections
    await a.schedule_every("tick", {"n": 0}, 60_000, schedule_id="s", start_date=T0)
    for i in range(1, 31):
        await asyncio.gather(
            a.update_schedule("s", jitter=i),
            b.update_schedule("s", limit=1000 + i),
            a.update_schedule("s", data={"n": i}),
        )
        got = await a.get_schedule("s")
        assert got is not None
        assert (got.jitter_ms, got.limit, got.data) == (i, 1000 + i, {"n": i}), f"round {i}"


async def test_an_update_of_a_schedule_removed_meanwhile_does_not_bring_it_back(
    queues: QueueFactory,
) -> None:
    """Before: an update that read the schedule before a removal wrote it back after."""
    q = queues("gone")
    for i in range(10):
        await q.schedule_every("tick", {}, 60_000, schedule_id="s", start_date=T0)
        done, removed = await asyncio.gather(
            q.update_schedule("s", jitter=5), q.remove_schedule("s"), return_exceptions=True
        )
        assert removed is True
        assert not isinstance(done, BaseException) or isinstance(done, ScheduleNotFoundError)
        assert await q.get_schedule("s") is None, f"round {i}"


async def test_update_schedule_refuses_a_new_id_with_a_clear_error(queues: QueueFactory) -> None:
    """Before: ``TypeError: update_schedule() got multiple values for argument
    'schedule_id'``."""
    q = queues("rename")
    await q.schedule_every("tick", {}, 60_000, schedule_id="s", start_date=T0)
    with pytest.raises(ConfigurationError, match=r"cannot change a schedule's id.*remove_sch"):
        await q.update_schedule("s", schedule_id="t")
    with pytest.raises(ConfigurationError, match="cannot change a schedule's id"):
        await q.schedules.update("s", schedule_id="t")
    got = await q.update_schedule(schedule_id="s", jitter=5)  # the id by keyword: as before
    assert got.id == "s" and got.jitter_ms == 5
    assert [s.id for s in await q.get_schedules()] == ["s"]


def test_the_blocking_client_refuses_a_new_id_too(redis_url: str, prefix: str) -> None:
    client = SyncJobQueue("rename", redis=redis_url, prefix=prefix)
    try:
        client.schedule_every("tick", {}, 60_000, schedule_id="s", start_date=T0)
        with pytest.raises(ConfigurationError, match="cannot change a schedule's id"):
            client.update_schedule("s", schedule_id="t")
    finally:
        client.close()


# ------------------------------------------------------------------ webhooks CLI
TOKEN = "tok-9f8e7d6c5b4a"


@pytest.fixture
def app(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[str]:
    source = (
        "from kitium_queue import JobQueue\n"
        f"queue = JobQueue('clisecrets', redis={redis_url!r}, prefix={prefix!r})\n"
    )
    with app_module(tmp_path, source, "kq_cli_wh_secrets") as module:
        yield f"{module}:queue"


def _register(redis_url: str, prefix: str) -> None:
    async def go() -> None:
        q = JobQueue("clisecrets", redis=redis_url, prefix=prefix)
        m = WebhookManager(q, allow_networks=["127.0.0.0/8"], run_service=False)
        await m.register_webhook(
            WebhookConfig(
                url=f"http://127.0.0.1:9/hook?token={TOKEN}&v=2",
                id="billing",
                events=["invoice-paid"],
                headers={
                    "Authorization": f"Bearer {TOKEN}",
                    "X-Api-Key": TOKEN,
                    "Cookie": f"session={TOKEN}",
                    "X-Custom": TOKEN,
                    "Accept": "application/json",
                },
            )
        )
        await q.close()

    asyncio.run(go())


@pytest.mark.redis_only
@pytest.mark.parametrize("as_json", [False, True])
@pytest.mark.parametrize("command", ["list", "show"])
def test_webhooks_list_and_show_print_no_secret(
    app: str, redis_url: str, prefix: str, command: str, as_json: bool
) -> None:
    """Before: ``show`` printed every header value (``Bearer <token>``) and both printed
    the URL whole, its password and ``?token=`` included."""
    _register(redis_url, prefix)
    runner = CliRunner()
    args = ["webhooks", command, app, *(["billing"] if command == "show" else [])]
    args += ["--json"] if as_json else []
    out = runner.invoke(main, args)
    assert out.exit_code == 0, out.output
    assert TOKEN not in out.output, out.output
    assert "http://127.0.0.1:9/hook?token=***&v=***" in out.output
    if command == "show":
        assert "application/json" in out.output  # not a secret: shown
        assert "Authorization" in out.output  # the names stay
    if as_json:
        shown = json.loads(out.output)
        hook = shown[0] if command == "list" else shown
        assert hook["headers"]["X-Api-Key"] == "***"

    whole = runner.invoke(main, [*args, "--show-secrets"])
    assert whole.exit_code == 0, whole.output
    assert f"token={TOKEN}" in whole.output
    if command == "show":
        assert f"Bearer {TOKEN}" in whole.output


def test_a_printed_url_has_no_credentials() -> None:
    """Registration refuses user info, but a record written by an earlier release or by
    hand may hold some; a query item without ``=`` may be a token itself."""
    url = "https://user:pw-secret@hooks.example.com:8443/in?key=k-secret&flag#f-secret"
    assert shown_url(url) == "https://***@hooks.example.com:8443/in?key=***&***#***"
    assert shown_url("https://h/hook") == "https://h/hook"
    assert shown_url("http://[::1/broken") == "<redacted>"
    headers = {"accept": "text/plain", "X-Signature-Key": "s", "Cookie": "c"}
    assert shown_headers(headers) == {
        "accept": "text/plain",
        "X-Signature-Key": "***",
        "Cookie": "***",
    }


# ------------------------------------------------------------------ UNLINK in webhook Lua
async def _lazyfree(client: aioredis.Redis) -> tuple[int, int]:
    info = await client.info("memory")
    return int(info["lazyfree_pending_objects"]), int(info["lazyfreed_objects"])


@pytest.mark.redis_only
async def test_a_big_damaged_subscription_key_is_freed_in_the_background(
    queues: QueueFactory, redis_client: aioredis.Redis
) -> None:
    """Before: ``webhooks_put`` DELeted a damaged ``wh:subs`` (a list of 200,000 items
    here) inside the script call. Now ``UNLINK``: Redis counts it in
    ``lazyfreed_objects``."""
    info = await redis_client.info("memory")
    if "lazyfreed_objects" not in info:
        pytest.skip("this Redis does not report lazyfreed_objects (before 7.0)")
    config = await redis_client.config_get("lazyfree-lazy-user-del")
    if config.get("lazyfree-lazy-user-del") == "yes":
        pytest.skip("lazyfree-lazy-user-del: DEL frees in the background too")
    q = queues("bigsubs")
    subs = q.keys.base + "wh:subs"
    for start in range(0, 200_000, 10_000):
        await redis_client.rpush(subs, *[f"item-{i}" for i in range(start, start + 10_000)])
    m = WebhookManager(q, allow_networks=["127.0.0.0/8"], run_service=False)

    async def pending_none() -> bool:
        return (await _lazyfree(redis_client))[0] == 0

    await wait_until(pending_none, 30)
    before = (await _lazyfree(redis_client))[1]
    await m.register_webhook(
        WebhookConfig(url="http://127.0.0.1:9/hook", id="h", events=["invoice-paid"])
    )
    assert await redis_client.type(subs) == b"hash"  # rebuilt

    async def freed() -> bool:
        pending, done = await _lazyfree(redis_client)
        return pending == 0 and done > before

    await wait_until(freed, 30, interval=0.02, message="the damaged key was not freed lazily")
