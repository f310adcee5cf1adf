"""mode="process": a worker killed outright leaves nothing its children started running.

* the child's whole process group dies with the worker: a ``sleep`` its processor
  started is gone within seconds, whether the processor sleeps in Python or is stuck in
  C code that holds the GIL (no Python code of the child can run then);
* what the processor forks or runs and what ends there does not end the child: the
  next job runs in the same child;
* the process that guards the group is no child of the child: a processor that reaps
  "any child" finds none it did not start.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import procjobs_orphans
from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import JobStatus

pytestmark = pytest.mark.redis_only

#: Starting a worker and a child (Python interpreters) takes seconds on a loaded machine;
#: the waits end as soon as the state is reached.
WAIT_S = 30.0
#: How long what was in the child's group may outlive the worker (it ends at once).
DEATH_S = 10.0
TESTS = Path(__file__).resolve().parent

WORKER = """
import asyncio, sys
sys.path.insert(0, {tests!r})
import procjobs_orphans
from kitium_queue import JobQueue

async def main():
    q = JobQueue("orph", redis={url!r}, prefix={prefix!r}, worker={{"concurrency": 1}})
    q.process("run", procjobs_orphans.{processor}, mode="process")
    await q.run_worker()

asyncio.run(main())
"""


@pytest.fixture
async def make(redis_url: str, prefix: str) -> AsyncIterator[QueueFactory]:
    factory = QueueFactory(redis_url, prefix)
    yield factory
    await factory.aclose()


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return not Path("/proc").is_dir()
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


async def _pid_in(path: Path) -> int:
    await wait_until(path.exists, WAIT_S, interval=0.05, message=f"{path.name} not written")
    return int(path.read_text())


def _start_worker(
    tmp_path: Path, redis_url: str, prefix: str, processor: str
) -> subprocess.Popen[bytes]:
    script = tmp_path / "worker.py"
    source = WORKER.format(tests=str(TESTS), url=redis_url, prefix=prefix, processor=processor)
    script.write_text(source)
    return subprocess.Popen([sys.executable, str(script)], start_new_session=True)


@pytest.mark.parametrize("processor", ["spawn_and_sleep", "spawn_holding_the_gil"])
async def test_a_worker_killed_outright_takes_what_its_child_started_along(
    make: QueueFactory, tmp_path: Path, redis_url: str, prefix: str, processor: str
) -> None:
    q = make("orph")
    await q.add_job("run", {"dir": str(tmp_path)}, attempts=1, timeout=120_000)
    worker = _start_worker(tmp_path, redis_url, prefix, processor)
    child = grandchild = 0
    try:
        child = await _pid_in(tmp_path / "child")
        grandchild = await _pid_in(tmp_path / "grandchild")
        assert _alive(grandchild)
        worker.kill()  # SIGKILL: the worker has no say
        worker.wait()
        await wait_until(lambda: not _alive(child), DEATH_S, message="the child outlived it")
        await wait_until(
            lambda: not _alive(grandchild), DEATH_S, message="the processor's `sleep` outlived it"
        )
    finally:
        worker.kill()
        worker.wait()
        for pid in (grandchild, child):
            if pid:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        if child:
            with contextlib.suppress(OSError):
                os.killpg(child, signal.SIGKILL)  # whatever else is left in its group


async def test_what_the_processor_forks_or_runs_ending_leaves_the_child_serving(
    make: QueueFactory,
) -> None:
    q = make(worker={"concurrency": 1})
    q.process("fork", procjobs_orphans.fork_helpers, mode="process")
    ids = [await q.add_job("fork", None, attempts=1) for _ in range(2)]
    await q.start()
    pids = []
    for job_id in ids:
        info = await wait_for_status(q, job_id, JobStatus.COMPLETED, JobStatus.DLQ, timeout=WAIT_S)
        assert info.status is JobStatus.COMPLETED, info.failed_reason
        pids.append(info.result)
    assert pids[0] == pids[1] != os.getpid()  # the same child took the second job


async def test_a_processor_that_reaps_any_child_finds_none_it_did_not_start(
    make: QueueFactory,
) -> None:
    q = make(worker={"concurrency": 1})
    q.process("reap", procjobs_orphans.reap_any, mode="process")
    job_id = await q.add_job("reap", None, attempts=1)
    await q.start()
    info = await wait_for_status(q, job_id, JobStatus.COMPLETED, JobStatus.DLQ, timeout=WAIT_S)
    assert info.status is JobStatus.COMPLETED, info.failed_reason
    assert info.result == "none"


SUBREAPER = """
import asyncio, ctypes, json, os, sys
sys.path.insert(0, {tests!r})
import procjobs_orphans
from kitium_queue import JobQueue

def zombies():
    # The group of each zombie given to this process: a guard's group is its child's pid.
    found = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                rest = open(f"/proc/{{p}}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if rest[0] == "Z" and int(rest[1]) == os.getpid():
                found.append(int(rest[2]))
    return found

async def main():
    assert ctypes.CDLL(None).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    q = JobQueue("reap", redis={url!r}, prefix={prefix!r},
                 worker={{"concurrency": 1, "max_jobs_per_child": 1}})
    q.process("quick", procjobs_orphans.quick, mode="process")
    ids = [await q.add_job("quick", None, attempts=1) for _ in range(6)]
    await q.start()
    while (await q.get_stats()).completed < 6:
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    running = zombies()
    infos = [await q.get_job_status(j) for j in ids]
    children = [i.result for i in sorted(infos, key=lambda i: i.started_at)]
    await q.close()
    await asyncio.sleep(0.3)
    print(json.dumps({{"children": children, "running": running, "closed": zombies()}}))

asyncio.run(main())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a Linux subreaper")
def test_a_worker_that_collects_orphans_collects_its_childrens_guards(
    tmp_path: Path, redis_url: str, prefix: str
) -> None:
    """A worker that is PID 1 in a container (or a child subreaper) is given the group
    guard of each child that ended: 6 jobs with one child each left 6 zombies (one a
    job for good with ``max_jobs_per_child=1``). Each new child, and the pool's close,
    collect them now: what is left between two jobs are the guards that ended after
    the last child started. That is the last child's guard, and, on a loaded machine,
    the one before it too: a guard is killed with its child, and the next child may
    start (and collect) before the killed guard was scheduled to exit (2 were left in 2
    of 18 runs beside other load)."""
    script = tmp_path / "reaper.py"
    script.write_text(SUBREAPER.format(tests=str(TESTS), url=redis_url, prefix=prefix))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.splitlines()[-1])
    children = got["children"]
    assert len(children) == len(set(children)) == 6, got  # a child per job
    # Only guards of the last two children may wait; the earlier ones were collected.
    assert set(got["running"]) <= set(children[-2:]), got
    assert got["closed"] == [], got
