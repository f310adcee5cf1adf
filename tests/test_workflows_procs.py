"""Workflows under real worker processes and at width (``features/workflows``).

* A random 200-node DAG over 3 worker processes (``tests/workers/wf_worker.py``), one
  SIGKILLed mid-run (lease 1 s): from the ledger the workers write outside Redis, every
  node starts only after each of its parents' last run finished, every node completes
  exactly once (one ``job-completed`` event each), the workflow completes, and every
  node read its parents' results intact.
* Fan-out: one parent, 10,000 children: all released (none parked) soon after the
  parent completes. Fan-in: 10,000 parents, one child: the child starts soon after the
  last parent completes. The figures are printed; the bounds asserted are generous
  (tests never assert speed).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from helpers import QueueFactory, wait_until
from kitium_queue import JobChainManager, JobQueue, WorkflowStep
from kitium_queue.keys import QueueKeys
from kitium_queue.parking import parked_count
from workers.procs import WorkerProcs

pytestmark = [pytest.mark.redis_only]

WF_WORKER = Path(__file__).resolve().parent / "workers" / "wf_worker.py"


def random_dag(n: int, rnd: random.Random) -> dict[str, list[str]]:
    dag: dict[str, list[str]] = {}
    for i in range(n):
        k = 0 if i == 0 else rnd.choice((1, 1, 2, 2, 3, 4))
        window = list(range(max(0, i - 12), i))
        dag[f"n{i}"] = [f"n{j}" for j in sorted(rnd.sample(window, min(k, len(window))))]
    return dag


async def test_random_dag_over_three_processes_with_one_killed(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    rnd = random.Random(14)
    dag = random_dag(200, rnd)
    name, wid = "wfp", "dag"
    ledger = tmp_path / "ledger.txt"
    ledger.touch()
    q = JobQueue(name, redis=redis_url, prefix=prefix, events_max_len=100_000)
    chains = JobChainManager(q, events=False)
    procs = WorkerProcs(redis_url, prefix, name, tmp_path, script=WF_WORKER)
    try:
        await chains.execute_workflow(
            wid,
            [
                WorkflowStep(
                    s,
                    "node",
                    {"wf": wid, "parents": ps, "ms": rnd.randint(20, 60)},
                    depends_on=ps,
                    options={"remove_on_complete": False},
                )
                for s, ps in dag.items()
            ],
        )
        await procs.start(3, "--ledger", str(ledger))

        def finishes() -> int:
            return ledger.read_text().count("finish ")

        await wait_until(lambda: finishes() >= 50, 60)

        def busy() -> int | None:
            # A worker process with a node in flight (started, not finished).
            open_runs: dict[str, int] = {}
            for line in ledger.read_text().splitlines():
                parts = line.split()
                if parts[0] == "start":
                    open_runs[parts[1]] = int(parts[3])
                else:
                    open_runs.pop(parts[1], None)
            pids = [p.pid for p in procs.procs]
            return next((pids.index(p) for p in open_runs.values() if p in pids), None)

        victim = await wait_until(lambda: busy() is not None and busy(), 30)
        procs.kill(int(victim))
        killed_at = time.time()

        async def complete() -> bool:
            st = await chains.get_workflow_status(wid)
            return st is not None and st.state == "completed"

        await wait_until(complete, 90, message=procs.stderr)
        st = await chains.get_workflow_status(wid)
        assert st is not None and st.counts == {"completed": 200} and st.unfinished == 0
        starts: dict[str, list[float]] = defaultdict(list)
        ends: dict[str, list[float]] = defaultdict(list)
        bad_data: list[str] = []
        for line in ledger.read_text().splitlines():
            parts = line.split()
            step = parts[1].split(":", 1)[1]
            (starts if parts[0] == "start" else ends)[step].append(float(parts[2]))
            if parts[0] == "finish" and parts[3] != "1":
                bad_data.append(step)
        assert not bad_data, f"parent results arrived wrong at {bad_data}"
        assert set(ends) == set(dag)
        early = [(s, p) for s, ps in dag.items() for p in ps if min(starts[s]) < max(ends[p])]
        assert not early, f"nodes started before a parent finished: {early[:5]}"
        client = await q.client()
        done: dict[str, int] = defaultdict(int)
        for _id, f in await client.xrange(QueueKeys(name, prefix).events, count=200_000):
            if f.get(b"e") == b"job-completed":
                done[f[b"id"].decode()] += 1
        assert {k.split(":", 1)[1] for k in done} == set(dag)
        assert set(done.values()) == {1}, "a node completed more than once"
        reruns = sum(1 for s in dag if len(starts[s]) > 1)
        assert reruns >= 1, "the killed process had a node in flight: it must run again"
        print(
            f"\n200-node DAG: completed {time.time() - killed_at:.2f} s after the kill; "
            f"{reruns} node(s) ran again after it"
        )
    finally:
        await procs.close()
        await q.close()


async def test_fan_out_and_fan_in_of_ten_thousand(make_queue: QueueFactory) -> None:
    q = make_queue("wide", worker={"concurrency": 100})
    chains = JobChainManager(q, events=False)
    started: dict[str, float] = {}

    @q.process("n")
    async def n(job: Any) -> None:
        started[job.id] = time.time()

    width = 10_000
    steps = [WorkflowStep("root", "n")] + [
        WorkflowStep(f"c{i}", "n", depends_on=["root"]) for i in range(width)
    ]
    t0 = time.monotonic()
    await chains.execute_workflow("out", steps)
    write_s = time.monotonic() - t0
    client = await q.client()
    await q.start()
    await wait_until(lambda: "out:root" in started, 10)
    released: float | None = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if await parked_count(q) == 0:
            released = time.time()
            break
        await asyncio.sleep(0.005)
    assert released is not None, "the fan-out was not released"
    root_done = int((await client.hget(q.keys.extra("dep:out:root"), "f")) or 0) / 1000
    fan_out_s = released - root_done
    await wait_until(lambda: len(started) == width + 1, 60)

    # Fan-in: 10,000 parents, one child.
    started.clear()
    steps = [WorkflowStep(f"p{i}", "n") for i in range(width)] + [
        WorkflowStep("sink", "n", depends_on=[f"p{i}" for i in range(width)])
    ]
    await chains.execute_workflow("in", steps)
    await wait_until(lambda: "in:sink" in started, 60)
    pipe = client.pipeline(transaction=False)
    for i in range(width):
        pipe.hget(q.keys.extra(f"dep:in:p{i}"), "f")
    last_parent = max(int(f) for f in await pipe.execute()) / 1000
    fan_in_s = started["in:sink"] - last_parent
    print(
        f"\nfan-out {width}: written in {write_s * 1000:.0f} ms, all released "
        f"{fan_out_s * 1000:.0f} ms after the parent completed; fan-in {width}: the child "
        f"started {fan_in_s * 1000:.1f} ms after the last parent completed"
    )
    assert fan_out_s < 10 and fan_in_s < 5

    async def finished() -> bool:  # the sink's outcome lands a round after its run
        st = await chains.get_workflow_status("in")
        return st is not None and st.state == "completed"

    await wait_until(finished, 30)
