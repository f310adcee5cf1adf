"""Keys of the webhook, compliance and retention features damaged outside kitium-queue,
hostile values read back from them, and compressed frames with data after their end.

Each test pins a defect reproduced against the real Redis before it was fixed:

* a ``wh:subs`` of another type failed the webhook fragments of every transition, so
  each job's events were lost; now every event is written (none lost), the key is named
  in ``slot-errors``, and the next registration change rebuilds it;
* ``webhooks_put`` failed after its first write on a damaged ``wh:subs`` / ``wh:ver``
  (and with a bare ``WRONGTYPE`` on ``wh:hooks``): now ``DamagedKeyError`` naming the
  key and the repair, nothing written;
* one delivery record of another type failed ``webhooks_claim`` after its first write,
  every call: no due retry was ever attempted again. Now it moves to the webhook DLQ,
  where ``list_dlq`` names it, the others are delivered, and a replay passes over it;
* a damaged index ``wh:idx:<w>`` failed ``webhooks_done`` half way (the delivery was
  never recorded or acknowledged); a damaged ``wh:dlq`` now refuses the call whole;
* the record key of a *new* delivery holding another type sent the event (whole in its
  outbox entry) to the DLQ as ``damaged``: the key is now replaced by its record;
* a ``wh:retry`` member that is not UTF-8 was claimed, sent to its endpoint under a
  mangled id and leased again, every lease, for ever: now dropped and reported once;
* stored counts that are not ASCII digits (``"²"``) and an outbox entry whose
  timestamp is past the year 9999 raised in the delivery service, failing the batch
  with every other event in it; ``stats`` and the CLI listing named no damaged key;
* a job with a ``subject_id`` whose subject index was damaged was added marked with
  its subject but never indexed (``erase_subject`` would not find it): now refused;
  an erasure that met a damaged ``subjects`` key failed after erasing jobs;
* one damaged finished-state set stopped the whole retention pass (other states, the
  stream trim, the compliance GC) with a bare ``WRONGTYPE``;
* a compressed frame followed by other bytes was decoded, the rest silently dropped.
"""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from click.testing import CliRunner

from helpers import QueueFactory, damage_key, key_snapshot, wait_for_status, wait_until
from kitium_queue import JobQueue, JobStatus, SerializationError
from kitium_queue.cli import main
from kitium_queue.errors import DamagedKeyError, JobRefusedError, KitiumQueueError
from kitium_queue.features.compression import MAGIC, CompressionCodec
from kitium_queue.features.retention import Retention
from kitium_queue.features.webhooks import (
    WebhookConfig,
    WebhookEvent,
    WebhookManager,
    generate_secret,
)
from kitium_queue.outbox import Outbox

pytestmark = pytest.mark.redis_only

SECRET = generate_secret()
FAST = dict(allow_networks=["127.0.0.0/8"], backoff_ms=20, max_backoff_ms=200, poll_ms=10)


@pytest.fixture
def sync_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
async def queue(redis_url: str, prefix: str) -> AsyncIterator[JobQueue]:
    q = JobQueue("whd", redis=redis_url, prefix=prefix, worker={"concurrency": 4})

    @q.process("noop")
    async def noop(job: Any) -> int:
        return 1

    yield q
    await q.close()


def _record(etype: str = "app-ping", **extra: str) -> dict[str, Any]:
    body = json.dumps({"type": etype, "timestamp": "2026-01-01T00:00:00.000+00:00", "data": {}})
    return {
        "b": body,
        "ty": etype,
        "a": "1",
        "st": "pending",
        "sg": "guaranteed",
        "h": "[]",
        "c": str(int(time.time() * 1000)),
        **extra,
    }


# ---------------------------------------------------------------------- webhooks
async def test_a_damaged_subscription_index_loses_no_event(
    queue: JobQueue, receiver: Any, sync_client: redis.Redis
) -> None:
    m = WebhookManager(queue, **FAST)
    hook = await m.register_webhook(
        WebhookConfig(url=receiver.url, secret=SECRET, events=["job-completed"])
    )
    subs = queue.keys.extra("wh:subs")
    damage_key(sync_client, subs, "list")
    await queue.start()
    jid = await queue.add_job("noop", {})
    await wait_for_status(queue, jid, JobStatus.COMPLETED)
    await wait_until(lambda: any(r.json()["data"]["job_id"] == jid for r in receiver.ok()), 10)
    report = sync_client.hget(queue.keys.extra("slot-errors"), f"damaged:{subs}")
    assert report is not None and subs.encode() in report and b"rebuilds it" in report
    # A registration change rebuilds it from the registrations.
    await m.update_webhook(hook.id, description="x")
    assert sync_client.type(subs) == b"hash" and sync_client.hget(subs, "job-completed") == b"1"
    assert sync_client.hget(queue.keys.extra("slot-errors"), f"damaged:{subs}") is None


@pytest.mark.parametrize(("part", "how", "found"), [("hooks", "set", "set"), ("ver", "abc", "")])
async def test_a_registration_change_checks_its_keys_before_writing(
    queue: JobQueue, prefix: str, sync_client: redis.Redis, part: str, how: str, found: str
) -> None:
    m = WebhookManager(queue, run_service=False, **FAST)
    await m.register_webhook(WebhookConfig(url="https://example.com/a", events=["app-ping"]))
    key = queue.keys.extra(f"wh:{part}")
    damage_key(sync_client, key, how)
    before = key_snapshot(sync_client, prefix)
    with pytest.raises(DamagedKeyError) as got:
        await m.register_webhook(WebhookConfig(url="https://example.com/b", events=["x-y"]))
    assert got.value.key == key and key in str(got.value) and "delete it" in str(got.value)
    assert key_snapshot(sync_client, prefix) == before
    with pytest.raises(DamagedKeyError):
        await m.remove_webhook("nope")
    assert key_snapshot(sync_client, prefix) == before
    if part == "hooks":
        with pytest.raises(DamagedKeyError, match="wh:hooks"):
            await m.list_webhooks()
        with pytest.raises(DamagedKeyError, match="wh:hooks"):
            await m.get_webhook("a")
    stats = await m.stats()
    assert [key in d for d in stats["damaged"]] == ([True] if part == "hooks" else [])


async def test_a_damaged_delivery_record_stops_no_other_retry(
    queue: JobQueue, receiver: Any, sync_client: redis.Redis
) -> None:
    m = WebhookManager(queue, run_service=False, **FAST)
    hook = await m.register_webhook(
        WebhookConfig(url=receiver.url, secret=SECRET, events=["app-ping"])
    )
    rec = queue.keys.extra(f"wh:d:{hook.id}/")
    retry, dlq = queue.keys.extra("wh:retry"), queue.keys.extra("wh:dlq")
    sync_client.hset(rec + "evt_a", mapping=_record(a="²"))  # a count that is not ASCII
    damage_key(sync_client, rec + "evt_b", "string")
    sync_client.zadd(retry, {f"{hook.id}/evt_a": 0, f"{hook.id}/evt_b": 0})

    assert await m.service.retry_once() == 2
    assert [r.id for r in receiver.ok()] == ["evt_a"]
    assert sync_client.zrange(retry, 0, -1) == []
    assert sync_client.zrange(dlq, 0, -1) == [f"{hook.id}/evt_b".encode()]
    (done,) = await m.get_delivery_history(hook.id, "evt_a")
    assert (done.state, done.attempts) == ("delivered", 1)
    (listed,) = await m.list_dlq()
    assert listed.state == "damaged" and rec + "evt_b" in (listed.last_error or "")
    with pytest.raises(DamagedKeyError, match="evt_b"):
        await m.retry_delivery(hook.id, "evt_b")
    # A replay passes over it and reaches the dead delivery behind it.
    sync_client.hset(rec + "evt_c", mapping=_record(st="dead"))
    sync_client.zadd(dlq, {f"{hook.id}/evt_c": int(time.time() * 1000) + 10})
    assert await m.replay_dlq(webhook_id=hook.id) == 1
    assert sync_client.zrange(dlq, 0, -1) == [f"{hook.id}/evt_b".encode()]
    assert await m.service.retry_once() == 1
    assert sorted(r.id for r in receiver.ok()) == ["evt_a", "evt_c"]


async def test_a_new_delivery_replaces_a_record_key_of_another_type(
    queue: JobQueue, receiver: Any, sync_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    m = WebhookManager(queue, **FAST)
    hook = await m.register_webhook(
        WebhookConfig(url=receiver.url, secret=SECRET, events=["app-ping"])
    )
    rec = queue.keys.extra(f"wh:d:{hook.id}/evt_dmg")
    dlq = queue.keys.extra("wh:dlq")
    damage_key(sync_client, rec, "list")
    await queue.start()
    eid = await m.send_event(WebhookEvent("app-ping", {"n": 1}, id="evt_dmg"))

    async def delivered() -> bool:
        got = await m.get_delivery_history(hook.id, eid)
        return bool(got) and got[0].state == "delivered"

    await wait_until(delivered, 10)
    assert [r.id for r in receiver.ok()] == ["evt_dmg"]
    assert sync_client.type(rec) == b"hash" and sync_client.zrange(dlq, 0, -1) == []
    assert [r.event_id for r in await m.get_delivery_history(hook.id)] == ["evt_dmg"]
    assert any(rec in r.getMessage() and "replaced" in r.getMessage() for r in caplog.records)
    # A retry result of a new delivery replaces it too; an existing delivery (no body:
    # its record was the only copy of the event) still goes to the DLQ.
    retry = queue.keys.extra("wh:retry")
    new, old = f"{hook.id}/evt_new", f"{hook.id}/evt_old"
    for member in (new, old):
        damage_key(sync_client, queue.keys.extra(f"wh:d:{member}"), "set")
    due = int(time.time() * 1000) + 60_000
    head, tail = ["retry", 1, due, "[]", 500, "boom", 60], ["app-ping", "guaranteed", "", 3]
    await m.service.write([new, *head, b'{"type":"app-ping"}', *tail, old, *head, b"", *tail])
    got = sync_client.hgetall(queue.keys.extra(f"wh:d:{new}"))
    assert (got[b"st"], got[b"b"], got[b"a"]) == (b"pending", b'{"type":"app-ping"}', b"1")
    assert sync_client.zscore(retry, new) == due and sync_client.zscore(retry, old) is None
    assert sync_client.zrange(dlq, 0, -1) == [old.encode()]
    assert sync_client.type(queue.keys.extra(f"wh:d:{old}")) == b"set"


async def test_a_retry_member_that_is_not_utf8_is_dropped_and_reported_once(
    queue: JobQueue, receiver: Any, sync_client: redis.Redis
) -> None:
    m = WebhookManager(queue, run_service=False, **FAST)
    hook = await m.register_webhook(
        WebhookConfig(url=receiver.url, secret=SECRET, events=["app-ping"])
    )
    rec, retry = queue.keys.extra("wh:d:").encode(), queue.keys.extra("wh:retry")
    bad = hook.id.encode() + b"/evt_\xff\xfe"
    overlong = hook.id.encode() + b"/evt_\xc0\xaf"  # '/' written in two bytes: not UTF-8
    no_slash = b"evt_without_its_webhook"  # UTF-8, but no '<webhook>/<event>' name
    for member in (bad, overlong, no_slash, f"{hook.id}/evt_ok".encode()):
        sync_client.hset(rec + member, mapping=_record())
        sync_client.zadd(retry, {member: 0})

    assert await m.service.retry_once() == 1
    assert [r.id for r in receiver.ok()] == ["evt_ok"]
    assert sync_client.zrange(retry, 0, -1) == []  # not leased again: dropped
    errors = queue.keys.extra("slot-errors")
    report = sync_client.hget(errors, "webhooks:retry-member")
    assert report is not None and retry.encode() in report and b"not UTF-8" in report
    assert bad.hex().encode() in report or overlong.hex().encode() in report
    assert sync_client.exists(rec + bad)  # its record is left as it was
    assert any("not UTF-8" in d for d in (await m.stats())["damaged"])
    # Reported once: nothing left to drop, nothing written again.
    sync_client.hdel(errors, "webhooks:retry-member")
    assert await m.service.retry_once() == 0
    assert sync_client.hget(errors, "webhooks:retry-member") is None


async def test_results_are_recorded_past_a_damaged_index_and_never_half_written(
    queue: JobQueue, receiver: Any, prefix: str, sync_client: redis.Redis
) -> None:
    m = WebhookManager(queue, **FAST)
    hook = await m.register_webhook(
        WebhookConfig(url=receiver.url, secret=SECRET, events=["app-ping"])
    )
    idx = queue.keys.extra(f"wh:idx:{hook.id}")
    damage_key(sync_client, idx, "string")
    await queue.start()
    eid = await m.send_event(WebhookEvent("app-ping", {"n": 1}))

    async def delivered() -> bool:
        got = await m.get_delivery_history(hook.id, eid)
        return bool(got) and got[0].state == "delivered"

    await wait_until(delivered, 10)
    assert sync_client.get(idx) == b"x"  # left as it was
    with pytest.raises(DamagedKeyError, match=f"wh:idx:{hook.id}"):
        await m.get_delivery_history(hook.id)
    # A damaged DLQ: the results are refused whole.
    damage_key(sync_client, queue.keys.extra("wh:dlq"), "hash")
    before = key_snapshot(sync_client, prefix)
    fields = [f"{hook.id}/evt_z", "dead", 1, 0, "[]", "", "boom", 60, b"{}", "app-ping"]
    with pytest.raises(DamagedKeyError, match="wh:dlq"):
        await m.service.write([*fields, "guaranteed", "", 3])
    assert key_snapshot(sync_client, prefix) == before
    assert [("wh:dlq" in d) for d in (await m.stats())["damaged"]] == [True]


async def test_hostile_values_in_outbox_entries_and_records_fail_no_batch(
    queue: JobQueue, receiver: Any, sync_client: redis.Redis
) -> None:
    m = WebhookManager(queue, **FAST)
    hook = await m.register_webhook(
        WebhookConfig(url=receiver.url, secret=SECRET, events=["job-completed"])
    )
    await m._ensure_group()
    ob = Outbox(queue)
    # A timestamp past the year 9999 (damaged), then a sound entry in the same batch.
    await ob.add("webhook", {"e": "job-completed", "j": "j1", "n": "n", "a": "1", "ts": "9" * 17})
    await ob.add("webhook", {"e": "job-completed", "j": "j2", "n": "n", "a": "1", "ts": "1"})
    await queue.start()
    await wait_until(lambda: len(receiver.ok()) == 2, 10)
    assert sorted(r.json()["data"]["job_id"] for r in receiver.ok()) == ["j1", "j2"]
    # Read back: counts that are not ASCII digits, non-UTF-8 members, a member without
    # a slash, a history of absurd numbers.
    rec = queue.keys.extra("wh:d:")
    sync_client.hset(rec + f"{hook.id}/evt_q", mapping=_record(a="²", c="³" * 3, sc="¹"))
    sync_client.hset(rec + f"{hook.id}/evt_q", "h", json.dumps([[10**30, 1, 200, None, 1]]))
    sync_client.hset(rec.encode() + b"\xff/\xfe", mapping=_record(st="dead"))
    sync_client.hset(rec + "noslash", mapping=_record(st="dead"))
    sync_client.zadd(queue.keys.extra("wh:dlq"), {b"\xff/\xfe": 1, "noslash": 2})
    (q_rec,) = await m.get_delivery_history(hook.id, "evt_q")
    assert (q_rec.attempts, q_rec.created_at, q_rec.last_status, q_rec.history) == (0, 0, None, ())
    listed = await m.list_dlq()
    assert [(r.webhook_id, r.event_id, r.state) for r in listed] == [
        ("\ufffd", "\ufffd", "dead"),
        ("noslash", "", "dead"),
    ]


async def test_the_cli_names_a_damaged_registration(
    cli_app: str, redis_url: str, prefix: str, sync_client: redis.Redis
) -> None:
    q = JobQueue("cli", redis=redis_url, prefix=prefix)
    m = WebhookManager(q, run_service=False, **FAST)
    await m.register_webhook(WebhookConfig(url="https://example.com/a", events=["app-ping"]))
    sync_client.hset(q.keys.extra("wh:hooks"), "broken", b"\xff not json")
    await q.close()
    out = await asyncio.to_thread(CliRunner().invoke, main, ["webhooks", "list", cli_app])
    assert out.exit_code == 0, out.output
    assert (
        "broken" in out.output and "damaged" in out.output and "https://example.com/a" in out.output
    )


# ---------------------------------------------------------------------- compliance
def _compliance(make_queue: QueueFactory, name: str) -> JobQueue:
    return make_queue(name, advanced={"compliance": {"enabled": True}})


async def test_a_job_whose_subject_index_is_damaged_is_refused(
    make_queue: QueueFactory, prefix: str, sync_client: redis.Redis
) -> None:
    q = _compliance(make_queue, "subj")
    await q.add_job("n", {}, subject_id="bob")  # loads the scripts
    seq = q.keys.all[9]  # the order counter a refused job spends, like any refusal

    def snapshot() -> dict[bytes, bytes | None]:
        return {k: v for k, v in key_snapshot(sync_client, prefix).items() if k != seq.encode()}

    for key, how in ((q.keys.extra("subj:alice"), "string"), (q.keys.extra("subjects"), "set")):
        damage_key(sync_client, key, how)
        with pytest.raises(KitiumQueueError) as named:  # the reads name it too
            if how == "set":
                await q.advanced.compliance.subject_count()
            else:
                await q.advanced.compliance.subject_jobs("alice")
        assert "alice" not in str(named.value) and ("subj:" in str(named.value)) == (how != "set")
        before = snapshot()
        with pytest.raises(JobRefusedError) as got:
            await q.add_job("n", {}, subject_id="alice", job_id="a1")
        assert "alice" not in str(got.value) and "not added" in str(got.value)
        assert snapshot() == before
        sync_client.delete(key)
    assert await q.add_job("n", {}, subject_id="alice", job_id="a1") == "a1"
    assert await q.advanced.compliance.subject_jobs("alice") == ["a1"]


async def test_a_bulk_of_few_subjects_indexes_every_job_and_refuses_a_damaged_one(
    make_queue: QueueFactory, sync_client: redis.Redis
) -> None:
    """One call with many jobs of a few subjects (the enqueue lists each subject once per
    call, the accept check reads each index type once): every job is indexed, every
    subject listed at the call's time, and the jobs of a subject whose index is damaged
    are all refused while the others are added."""
    q = _compliance(make_queue, "bulk")
    await q.add_job("n", {}, subject_id="warm")  # loads the scripts
    damage_key(sync_client, q.keys.extra("subj:carol"), "string")
    specs = [("n", {"i": i}, {"subject_id": ("alice", "bob", "carol")[i % 3]}) for i in range(30)]
    with pytest.raises(JobRefusedError) as got:
        await q.add_jobs(specs)
    ids = got.value.ids
    assert sorted(got.value.refused) == list(range(2, 30, 3))  # every job of carol
    compliance = q.advanced.compliance
    for k, who in enumerate(("alice", "bob")):
        assert sorted(await compliance.subject_jobs(who)) == sorted(
            str(ids[i]) for i in range(k, 30, 3)
        )
    listed = dict(sync_client.zrange(q.keys.extra("subjects"), 0, -1, withscores=True))
    assert set(listed) == {b"warm", b"alice", b"bob"}
    assert listed[b"alice"] == listed[b"bob"] >= listed[b"warm"]


async def test_an_erasure_checks_its_keys_before_erasing_anything(
    make_queue: QueueFactory, prefix: str, sync_client: redis.Redis
) -> None:
    q = _compliance(make_queue, "erase")
    m = q.advanced.compliance
    ids = [await q.add_job("n", {"i": i}, subject_id="alice") for i in range(3)]
    for key in (q.keys.extra("subjects"), q.keys.all[3]):  # `subjects`, the completed set
        damage_key(sync_client, key, "hash")
        before = key_snapshot(sync_client, prefix)
        with pytest.raises(DamagedKeyError) as got:
            await m.erase_subject("alice")
        assert got.value.key == key and "alice" not in str(got.value)
        assert key_snapshot(sync_client, prefix) == before
        sync_client.delete(key)
    report = await m.erase_subject("alice")
    assert report.jobs == 3
    assert [await q.get_job_status(j) for j in ids] == [None] * 3


# ---------------------------------------------------------------------- retention
async def test_one_damaged_state_set_stops_no_other_part_of_the_pass(
    make_queue: QueueFactory, sync_client: redis.Redis, redis_client: aioredis.Redis
) -> None:
    q = make_queue("ret")
    r = Retention(q, run_service=False)
    r.set_limit("completed", count=0)
    r.set_limit("failed", count=0)
    jid = await q.add_job("n", {})
    await redis_client.zadd(q.keys.all[4], {jid: 1})  # listed as failed
    await redis_client.hset(q.keys.job(jid), "st", "failed")
    completed = q.keys.all[3]
    damage_key(sync_client, completed, "string")
    ran: list[int] = []

    async def step() -> None:
        ran.append(1)

    r.add_step(step)
    report = await r.run_once()
    assert report.deleted == {"failed": 1} and ran == [1]
    assert len(report.damaged) == 1 and completed in report.damaged[0]
    assert sync_client.get(completed) == b"x"


# ---------------------------------------------------------------------- compression
@pytest.mark.parametrize("algorithm", ["zstd", "zlib"])
def test_a_frame_with_data_after_its_end_is_damaged(algorithm: str) -> None:
    codec = CompressionCodec(algorithm=algorithm, threshold=1)
    frame = codec.encode(b'{"a":"' + b"x" * 5000 + b'"}')
    assert codec.decode(frame).startswith(b'{"a"')
    for tail in (b"junk", frame[5:], b"\x00"):
        with pytest.raises(SerializationError, match="follow the end"):
            codec.decode(frame + tail)


async def test_a_job_with_a_trailing_frame_fails_undecodable_and_is_kept(
    make_queue: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q = make_queue(
        "cz",
        advanced={"cost_optimization": {"enabled": True, "compression": {"threshold_bytes": 64}}},
    )
    ran: list[Any] = []
    q.process("n", ran.append)
    jid = await q.add_job("n", {"ok": True})
    await redis_client.hset(
        q.keys.job(jid), "d", MAGIC + b"z" + zlib.compress(b'{"ok":true}') + b'{"ok":false}'
    )
    await q.start()
    info = await wait_for_status(q, jid, JobStatus.FAILED, JobStatus.DLQ)
    assert ran == []
    assert (info.failed_reason or "").startswith("undecodable payload: ")
    assert "follow the end" in (info.failed_reason or "")
    assert info.damaged  # kept, and a read names its data as damaged
