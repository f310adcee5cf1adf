"""FIFO groups and workflows under hostile input and records damaged by hand.

Each test pins one defect found by probing the features with bad input:

* a dependent whose dependency record holds another type no longer strands its
  siblings: the parent's completion releases every other dependent;
* ``list_workflows`` and ``get_workflow_status`` report a record of another type
  (``damaged``) instead of failing with a bare ``WRONGTYPE`` for every workflow;
* ``cancel_workflow`` and ``execute_workflow`` refuse a damaged workflow record or index
  with ``JobStateError`` before their first write (cancel marked the workflow cancelled
  and then failed, cancelling none of its steps); a damaged step record is skipped;
* a job that depends on a job whose dependency record is damaged is refused, whole;
* the group admin scripts refuse a damaged group key before their first write (a
  pause wrote ``paused`` and then failed); stats, listing and counting say the key
  is damaged with ``JobStateError`` instead of a bare ``WRONGTYPE``;
* the CLI's ``workflows list|show`` and ``groups list`` show a damaged record as a row
  (state ``damaged``) among the others instead of ending with an error;
* a ``list_groups`` cursor holding a lone surrogate or a control character is a
  ``ConfigurationError`` (was ``UnicodeEncodeError``, or a page read after it).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import redis.asyncio
from click.testing import CliRunner

from helpers import QueueFactory, all_completed, wait_until
from kitium_queue import ConfigurationError, JobQueue, JobRefusedError
from kitium_queue.cli import main
from kitium_queue.errors import JobStateError
from kitium_queue.features.groups import FIFOQueueManager
from kitium_queue.features.workflows import JobChainManager

pytestmark = pytest.mark.redis_only


async def _break(client: redis.asyncio.Redis, key: str) -> None:
    """``key`` overwritten with a string, as a hand-made mistake would leave it."""
    await client.delete(key)
    await client.set(key, "written by hand")


def _wf(make_queue: QueueFactory, name: str = "wf") -> tuple[JobQueue, JobChainManager]:
    q = make_queue(name, worker={"concurrency": 4})
    return q, JobChainManager(q)


def _fan(n: int) -> list[dict[str, Any]]:
    return [{"name": "root", "job_name": "x"}] + [
        {"name": f"k{i}", "job_name": "x", "depends_on": ["root"]} for i in range(n)
    ]


# ---------------------------------------------------------------------- workflows


async def test_a_damaged_dependent_does_not_strand_its_siblings(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    q, chains = _wf(make_queue)
    ran: list[str] = []

    @q.process("x")
    async def x(job: Any) -> Any:
        ran.append(job.id)
        return {"ok": True}

    await chains.execute_workflow("w", _fan(4))
    await _break(redis_client, q.keys.extra("dep:w:k1"))
    await q.start()
    want = {"w:root", "w:k0", "w:k2", "w:k3"}
    await wait_until(lambda: want <= set(ran), 15, message=lambda: f"ran {sorted(ran)}")
    # A processor's return is recorded a moment later (the worker's outcome batch).
    await wait_until(lambda: all_completed(q, sorted(want)), 15)
    status = await chains.get_workflow_status("w")
    assert status is not None
    assert status.steps["k1"].state == "damaged" and status.steps["k1"].damaged
    assert {status.steps[n].state for n in ("root", "k0", "k2", "k3")} == {"completed"}
    assert "w:k1" not in ran


async def test_workflow_reads_report_a_damaged_record_and_return_the_others(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    q, chains = _wf(make_queue)
    await chains.execute_workflow("w1", _fan(1))
    await chains.execute_workflow("w2", _fan(2))
    await _break(redis_client, q.keys.extra("wf:w1"))
    await _break(redis_client, q.keys.extra("dep:w2:k0"))
    listed = {s.workflow_id: s for s in await chains.list_workflows()}
    assert set(listed) == {"w1", "w2"}
    assert listed["w1"].state == "damaged" and "wf:w1" in (listed["w1"].damaged or "")
    assert listed["w2"].state == "running" and listed["w2"].damaged is None
    assert listed["w2"].as_dict()["total"] == 3

    head = await chains.get_workflow_status("w1")
    assert head is not None and head.state == "damaged" and head.damaged
    one = await chains.get_workflow_status("w2")
    assert one is not None and one.damaged is None and one.state == "running"
    assert one.steps["k0"].state == "damaged" and "dep:w2:k0" in (one.steps["k0"].damaged or "")
    assert one.steps["k1"].state == "pending" and one.steps["k1"].damaged is None
    assert one.steps["root"].state == "waiting"
    assert one.as_dict()["steps"]["k0"]["state"] == "damaged"

    await _break(redis_client, q.keys.extra("wf-s:w2"))
    steps_gone = await chains.get_workflow_status("w2")
    assert steps_gone is not None and steps_gone.steps == {}
    assert "wf-s:w2" in (steps_gone.damaged or "")
    assert await chains.get_workflow_status("nope") is None


async def test_cancel_refuses_a_damaged_workflow_before_writing(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    q, chains = _wf(make_queue)
    await chains.execute_workflow("w", _fan(2))
    await _break(redis_client, q.keys.extra("wf-s:w"))
    with pytest.raises(JobStateError, match=r"wf-s:w holds a string.*nothing was written"):
        await chains.cancel_workflow("w")
    # Nothing was written: the workflow still runs, its steps are where they were.
    assert await redis_client.hget(q.keys.extra("wf:w"), "st") == b"running"
    assert await redis_client.exists(q.keys.job("w:root")) == 1
    await _break(redis_client, q.keys.extra("wf:w"))
    with pytest.raises(JobStateError, match=r"wf:w holds a string"):
        await chains.cancel_workflow("w")


async def test_cancel_skips_a_step_whose_record_is_damaged_and_cancels_the_rest(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    q, chains = _wf(make_queue)
    await chains.execute_workflow("w", _fan(3))
    await _break(redis_client, q.keys.extra("dep:w:k1"))
    await _break(redis_client, q.keys.job("w:k2"))
    # root, k0 and k2 are cancelled (k2's damaged job key is left in place for an
    # operator: it is never read as a job); k1, whose dependency record is damaged, is
    # skipped.
    assert await chains.cancel_workflow("w") == 3
    status = await chains.get_workflow_status("w")
    assert status is not None and status.state == "cancelled"
    assert [status.steps[n].state for n in ("root", "k0", "k1", "k2")] == [
        "cancelled",
        "cancelled",
        "damaged",
        "cancelled",
    ]
    assert "job:w:k2" in (status.steps["k2"].damaged or "")
    assert await redis_client.get(q.keys.job("w:k2")) == b"written by hand"


async def test_create_refuses_a_damaged_index_before_writing(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    q, chains = _wf(make_queue)
    await _break(redis_client, q.keys.extra("wfs"))
    with pytest.raises(JobStateError, match=r"wfs holds a string.*nothing was written"):
        await chains.execute_workflow("w", _fan(1))
    assert await redis_client.exists(q.keys.extra("wf:w"), q.keys.job("w:root")) == 0
    with pytest.raises(JobStateError, match=r"index of workflows .*wfs.*delete it"):
        await chains.list_workflows()


async def test_a_job_depending_on_a_damaged_record_is_refused_whole(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    q, chains = _wf(make_queue)
    parent = await q.add_job("x", {}, job_id="parent")
    await q.add_job("x", {}, job_id="kid", depends_on=[parent])
    await _break(redis_client, q.keys.extra(f"dep:{parent}"))
    with pytest.raises(JobRefusedError, match=r"dependency record .* is damaged"):
        await q.add_job("x", {}, job_id="late", depends_on=[parent])
    assert await redis_client.exists(q.keys.job("late"), q.keys.extra("dep:late")) == 0
    solo = await q.add_job("x", {}, job_id="solo")
    with pytest.raises(JobRefusedError, match="is damaged"):
        await chains.wait_for_dependencies(solo, [parent])
    assert await redis_client.exists(q.keys.extra("dep:solo")) == 0
    await _break(redis_client, q.keys.job("other"))
    with pytest.raises(JobRefusedError, match="whose record is damaged"):
        await q.add_job("x", {}, job_id="late2", depends_on=["other"])
    assert await redis_client.exists(q.keys.job("late2")) == 0


# ---------------------------------------------------------------------- groups


def _groups(make_queue: QueueFactory) -> tuple[JobQueue, FIFOQueueManager]:
    q = make_queue("grp")
    return q, FIFOQueueManager(q)


async def test_group_admin_refuses_a_damaged_key_before_writing(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    q, groups = _groups(make_queue)
    await groups.add_to_group("x", {}, "g1")
    await _break(redis_client, q.keys.extra("groups"))
    for call in (
        groups.pause_group("g1"),
        groups.resume_group("g1"),
        groups.set_group({"group_id": "g1", "group_concurrency": 3}),
    ):
        with pytest.raises(JobStateError, match=r"groups holds a string.*nothing was written"):
            await call
    # Nothing was written: the pause did not half happen.
    assert await redis_client.hgetall(q.keys.extra("grp:g1")) == {b"n": b"1"}
    await redis_client.delete(q.keys.extra("groups"))
    await _break(redis_client, q.keys.extra("grp-run:g1"))
    with pytest.raises(JobStateError, match=r"grp-run:g1 holds a string"):
        await groups.pause_group("g1")
    assert await redis_client.hget(q.keys.extra("grp:g1"), "paused") is None


async def test_group_reads_say_a_key_is_damaged(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    q, groups = _groups(make_queue)
    await groups.add_to_group("x", {}, "g1")
    await groups.add_to_group("x", {}, "g2")
    await _break(redis_client, q.keys.extra("grp:g1"))
    with pytest.raises(JobStateError, match=r"message group g1: key .*grp:g1 holds a string"):
        await groups.get_group_stats("g1")
    stats = await groups.get_group_stats("g2")  # another group reads as before
    assert stats.size == 1 and stats.exists
    await _break(redis_client, q.keys.extra("groups"))
    for call in (groups.list_groups(), groups.count_groups()):
        with pytest.raises(JobStateError, match=r"index of message groups .* delete it"):
            await call


async def test_a_job_of_a_group_whose_key_is_damaged_is_refused_not_ungrouped(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    # Before: the accept check failed (recorded in slot-errors only), the job was added
    # without its group and ran outside the group's order.
    q, groups = _groups(make_queue)
    await groups.add_to_group("x", {}, "g1")
    await _break(redis_client, q.keys.extra("grp:g1"))
    with pytest.raises(JobRefusedError, match=r"message group g1: its key .*grp:g1 holds another"):
        await groups.add_to_group("x", {"i": 2}, "g1")
    with pytest.raises(JobRefusedError) as info:
        await q.add_jobs(
            [
                {"name": "x", "data": {"i": 3}, "opts": {"message_group_id": "g2"}},
                {"name": "x", "data": {"i": 4}, "opts": {"message_group_id": "g1"}},
            ]
        )
    ok, refused = info.value.ids
    assert ok is not None and refused is None  # the other group's job went in
    stats = await q.get_stats()  # the first g1 job and the g2 job, no ungrouped one
    assert stats.waiting + stats.pending + stats.delayed == 2


@pytest.mark.parametrize("cursor", ["0|a\ud800", "0|a\x00", "0|a\n"])
async def test_a_bad_list_groups_cursor_is_a_configuration_error(
    make_queue: QueueFactory, cursor: Any
) -> None:
    _, groups = _groups(make_queue)
    with pytest.raises(ConfigurationError, match="invalid list_groups cursor"):
        await groups.list_groups(cursor=cursor)


# ---------------------------------------------------------------------- CLI views


def test_cli_lists_a_damaged_workflow_and_group_among_the_others(
    cli_app: str, redis_url: str, prefix: str
) -> None:
    async def fill() -> None:
        q = JobQueue("cli", redis=redis_url, prefix=prefix)
        chains, groups = JobChainManager(q), FIFOQueueManager(q)
        await chains.execute_workflow("w1", _fan(1))
        await chains.execute_workflow("w2", _fan(1))
        await groups.add_to_group("x", {}, "g1")
        await groups.add_to_group("x", {}, "g2")
        client = await q.client()
        await _break(client, q.keys.extra("wf:w1"))
        await _break(client, q.keys.extra("dep:w2:k0"))
        await _break(client, q.keys.extra("grp:g1"))
        await q.close()

    asyncio.run(fill())
    runner = CliRunner()
    out = runner.invoke(main, ["workflows", "list", cli_app])
    assert out.exit_code == 0, out.output
    rows = sorted(line.split("\t")[:2] for line in out.output.strip().splitlines()[1:])
    assert rows == [["w1", "damaged"], ["w2", "running"]]
    out = runner.invoke(main, ["workflows", "show", cli_app, "w2"])
    assert out.exit_code == 0, out.output
    assert "k0\tdamaged\t" in out.output and "damaged: key " in out.output
    out = runner.invoke(main, ["groups", "list", cli_app])
    assert out.exit_code == 0, out.output
    rows = sorted(line.split("\t")[:3] for line in out.output.strip().splitlines()[1:])
    assert rows == [["g1", "damaged", "-"], ["g2", "running", "1"]]
    listed = json.loads(runner.invoke(main, ["groups", "list", cli_app, "--json"]).output)
    assert "grp:g1 holds a string" in listed["groups"][0]["damaged"]
    out = runner.invoke(main, ["groups", "show", cli_app, "g1"])
    assert out.exit_code == 1 and "grp:g1 holds a string" in out.output


async def test_parent_results_report_a_damaged_parent_record(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    q, chains = _wf(make_queue)
    await chains.execute_workflow("w", [*_fan(1), {"name": "j", "job_name": "x"}])
    await redis_client.rpush(q.keys.extra("dep-p:w:k0"), "w:j")  # a second parent
    await _break(redis_client, q.keys.extra("dep:w:root"))
    got = await chains.parent_results("w:k0")
    assert got["w:root"].status == "damaged" and "dep:w:root" in (got["w:root"].error or "")
    assert got["j"].status in ("ready", "pending")
    await _break(redis_client, q.keys.extra("dep-p:w:k0"))
    with pytest.raises(JobStateError, match=r"list of parents of job 'w:k0' .* holds another"):
        await chains.parent_results("w:k0")


@pytest.mark.parametrize("deps", ["abc", b"abc", None, 5, {"a": 1}])
async def test_wait_for_dependencies_refuses_a_value_that_is_no_list(
    make_queue: QueueFactory, deps: Any
) -> None:
    q, chains = _wf(make_queue)
    await q.add_job("x", {}, job_id="a")  # "abc" was read as the ids "a", "b", "c"
    await q.add_job("x", {}, job_id="kid")
    with pytest.raises(ConfigurationError, match="dependencies must be a list of job ids"):
        await chains.wait_for_dependencies("kid", deps)
    assert await q.get_job_status("kid") is not None
    client = await q.client()
    assert await client.exists(q.keys.extra("dep:kid")) == 0


@pytest.mark.parametrize("options", [[("priority", 1)], "x", 5])
async def test_add_to_group_refuses_options_that_are_no_mapping(
    make_queue: QueueFactory, options: Any
) -> None:
    _, groups = _groups(make_queue)
    with pytest.raises(ConfigurationError, match="options must be a mapping"):
        await groups.add_to_group("x", {}, "g1", options)


async def test_dashboard_pages_show_a_damaged_group_and_workflow_among_the_others(
    make_queue: QueueFactory, redis_client: redis.asyncio.Redis
) -> None:
    from kitium_queue.dashboard import create_dashboard
    from test_dashboard_asgi import TOKENS, VIEWER, client_for

    q = make_queue("shop")
    groups, chains = FIFOQueueManager(q), JobChainManager(q)
    await groups.add_to_group("x", {}, "g1")
    await groups.add_to_group("x", {}, "g2")
    await chains.execute_workflow("w", _fan(1))
    await _break(redis_client, q.keys.extra("grp:g1"))
    await _break(redis_client, q.keys.extra("dep:w:k0"))
    app = create_dashboard(queues=[q], tokens=TOKENS, refresh_ms=0)
    c = client_for(app)
    assert (await c.post("/login", data={"token": VIEWER, "next": "/"})).status_code == 303
    r = await c.get("/q/shop/groups")
    assert r.status_code == 200 and 'class="flash bad"' in r.text
    assert "grp:g1 holds a string" in r.text and ">g2<" in r.text
    r = await c.get("/q/shop/workflows/w")
    assert r.status_code == 200 and "dep:w:k0 holds another type" in r.text
