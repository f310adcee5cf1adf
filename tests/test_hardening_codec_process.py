"""The codec's round-trip rule on self-referential data, and in process mode.

* A list or dict that contains itself is refused at once with a ``SerializationError``
  saying so (it used to be walked for ever, blocking the event loop or the calling
  thread): by ``add_job``, ``SyncJobQueue.add_job``, a processor's result (the job fails
  for good, the worker carries on) and ``update_progress``. Every step that could spin
  runs under ``_spin_guard``, so a regression fails instead of hanging the run.
* ``mode="process"`` follows the same rules as the in-process modes: a result the codec
  refuses fails the job for good with the same reason (it used to arrive changed: NaN as
  null, a tuple as a list, a datetime as a string), ``update_progress_sync`` raises in
  the child, and an error whose text has a lone surrogate or whose ``__str__`` raises is
  recorded as in-process (it used to kill the child: ``ChildProcessDied``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

import procjobs_codec
from helpers import QueueFactory, wait_for_status
from kitium_queue import JobQueue, JobStatus, SerializationError, SyncJobQueue
from kitium_queue.codec import MAX_DEPTH, Serializer

FINAL = (JobStatus.COMPLETED, JobStatus.DLQ, JobStatus.FAILED)


class _Spun(BaseException):
    """Raised by ``_spin_guard``'s alarm (a BaseException: no ``except Exception`` of the
    library swallows it)."""


@contextlib.contextmanager
def _spin_guard(seconds: float) -> Iterator[None]:
    """Fail the test if the block is still running after ``seconds``: a walk that never
    ends blocks the main thread (and its event loop) in pure Python code, where a
    SIGALRM handler still runs. pytest-timeout's own alarm (same signal) is put back."""
    previous = signal.signal(signal.SIGALRM, _alarm)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    started = time.monotonic()
    spun = False
    try:
        yield
    except _Spun:
        spun = True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer:
            left = outer - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 0.001))
    if spun:  # outside the handler: the spinning frames are not part of the report
        pytest.fail(f"still running after {seconds} s (a walk that does not end)", pytrace=False)


def _alarm(signum: int, frame: object) -> None:
    raise _Spun


def _nested_cycle(levels: int) -> list[Any]:
    """``levels`` nested lists whose innermost holds the outermost."""
    root: list[Any] = []
    cur = root
    for _ in range(levels - 1):
        nxt: list[Any] = []
        cur.append(nxt)
        cur = nxt
    cur.append(root)
    return root


def _deep(depth: int, as_dicts: bool) -> Any:
    """A value ``depth`` levels of lists (or dicts) deep."""
    value: Any = {} if as_dicts else []
    for _ in range(depth - 1):
        value = {"k": value, "n": 1} if as_dicts else [value]
    return value


def _cycles() -> dict[str, tuple[Any, str]]:
    """Self-referential values, and a fragment of the message each is refused with."""
    inner: dict[str, Any] = {"x": [1, {"y": []}]}
    inner["x"][1]["y"].append(inner["x"])  # back to a container around it, not the root
    branching: dict[str, Any] = {}
    branching["a"] = branching
    branching["b"] = [branching, branching]
    ordered: collections.OrderedDict[str, Any] = collections.OrderedDict(a=1)
    ordered["me"] = ordered
    itself = "contains itself"
    return {
        "list": (procjobs_codec.self_list(), itself),
        "dict": (procjobs_codec.self_dict(), itself),
        "inner-back-reference": (inner, itself),
        "branching": (branching, itself),
        "ordered-dict": ({"plain": ordered}, itself),
        "100-levels": (_nested_cycle(100), itself),
        "nan-first": ([math.nan, procjobs_codec.self_list()], "NaN or infinite"),
        "beyond-the-depth-limit": (_nested_cycle(MAX_DEPTH + 50), f"deeper than {MAX_DEPTH}"),
    }


CYCLES = _cycles()


# ---------------------------------------------------------------- the codec alone


@pytest.mark.parametrize(("value", "fragment"), CYCLES.values(), ids=CYCLES.keys())
def test_a_value_that_contains_itself_is_refused_at_once(value: Any, fragment: str) -> None:
    with _spin_guard(10), pytest.raises(SerializationError) as err:
        Serializer().dumps(value, "result")
    text = str(err.value)
    assert text.startswith("result cannot be serialized to JSON: ")
    assert fragment in text
    if fragment == "contains itself":
        assert "remove the back-reference" in text  # what to do


def test_the_cycle_message_says_where() -> None:
    value = CYCLES["inner-back-reference"][0]
    with (
        _spin_guard(10),
        pytest.raises(SerializationError, match=r"data\['x'\]\[1\]\['y'\]\[0\] is data\['x'\]"),
    ):
        Serializer().dumps(value, "data")
    with _spin_guard(10), pytest.raises(SerializationError, match=r"data\[1\] is data itself"):
        Serializer().dumps(procjobs_codec.self_list(), "data")


def test_shared_references_are_not_cycles() -> None:
    shared = [1, {"k": "v"}]
    value = {"a": shared, "b": shared, "c": [shared, [shared]]}
    raw = Serializer().dumps(value)
    assert Serializer().loads(raw) == value


@pytest.mark.parametrize("as_dicts", [False, True], ids=["lists", "dicts"])
def test_the_depth_limit_is_exact(as_dicts: bool) -> None:
    deepest = _deep(MAX_DEPTH, as_dicts)
    assert Serializer().loads(Serializer().dumps(deepest)) == deepest
    for value in (_deep(MAX_DEPTH + 1, as_dicts), {"a": 1, "b": _deep(MAX_DEPTH, as_dicts)}):
        with pytest.raises(SerializationError, match=f"nested deeper than {MAX_DEPTH} levels"):
            Serializer().dumps(value)


# ---------------------------------------------------------------- producers


@pytest.mark.parametrize("kind", ["list", "dict", "branching"])
async def test_add_job_refuses_a_value_that_contains_itself(
    make_queue: QueueFactory, kind: str
) -> None:
    q = make_queue()
    with (
        _spin_guard(10),
        pytest.raises(SerializationError, match=r"job data cannot be serialized.*contains itself"),
    ):
        await q.add_job("a", CYCLES[kind][0])
    stats = await q.get_stats()
    assert (stats.waiting, stats.delayed) == (0, 0)
    ok = await q.add_job("a", {"fine": True})  # the queue is unaffected
    info = await q.get_job_status(ok)
    assert info is not None and info.data == {"fine": True}


def test_sync_add_job_refuses_a_value_that_contains_itself(redis_url: str, prefix: str) -> None:
    with SyncJobQueue("sync", redis=redis_url, prefix=prefix) as q:
        with _spin_guard(10), pytest.raises(SerializationError, match="contains itself"):
            q.add_job("a", procjobs_codec.self_dict())
        assert q.get_stats().waiting == 0


# ---------------------------------------------------------------- in-process workers


async def _bad_result(job: Any) -> Any:
    return procjobs_codec.self_list()


async def _bad_progress(job: Any) -> str:
    try:
        await job.update_progress(procjobs_codec.self_dict())
    except SerializationError as exc:
        return str(exc)
    return "accepted"


async def _good(job: Any) -> str:
    return "ok"


IN_PROCESS = {
    "async-result": (_bad_result, JobStatus.DLQ, "result cannot be serialized to JSON: result[1]"),
    "thread-result": (
        procjobs_codec.ret_self_dict,
        JobStatus.DLQ,
        "result cannot be serialized to JSON: result['wrapped'][0]['self']",
    ),
    "progress": (_bad_progress, JobStatus.COMPLETED, "progress cannot be serialized to JSON"),
}


@pytest.mark.parametrize(("fn", "status", "start"), IN_PROCESS.values(), ids=IN_PROCESS.keys())
async def test_a_worker_refuses_a_value_that_contains_itself_and_goes_on(
    make_queue: QueueFactory, fn: Any, status: JobStatus, start: str
) -> None:
    # One value that could be walked for ever per test: a regression blocks the event
    # loop until the guard's alarm ends that run, then the waits below fail at once.
    q = make_queue(worker={"concurrency": 1})
    q.process("bad", fn)
    q.process("good", _good)
    bad = await q.add_job("bad", {}, attempts=3)
    good = await q.add_job("good", {})
    await q.start()
    with _spin_guard(10):
        info = await wait_for_status(q, bad, status, timeout=5)
        after = await wait_for_status(q, good, JobStatus.COMPLETED, timeout=5)
    assert info.attempts == 1  # a refused result fails for good: no retry
    text = info.failed_reason if status is JobStatus.DLQ else info.result
    assert text.startswith(start), text
    assert "contains itself" in text
    assert after.result == "ok"


# ---------------------------------------------------------------- process mode


async def _settle(queue: JobQueue, ids: list[str], timeout: float = 30.0) -> list[Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        infos = [await queue.get_job_status(i) for i in ids]
        if all(i is not None and i.status in FINAL for i in infos):
            return infos
        if loop.time() > deadline:
            raise AssertionError(f"jobs did not finish: {infos}")
        await asyncio.sleep(0.05)


REFUSED_RESULTS = {
    "ret_nan": "result['x'] is NaN or infinite",
    "ret_inf": "result[1] is NaN or infinite",
    "ret_tuple": "result is a tuple",
    "ret_datetime": "result['at'] is a datetime",
    "ret_int_key": "the dict key 1 (int) in result is not a str",
    "ret_self_list": "result[1] is result itself",
    "ret_self_dict": "result['wrapped'][0]['self'] is result['wrapped'][0] itself",
}


@pytest.mark.redis_only
async def test_process_mode_refuses_results_as_in_process(redis_url: str, prefix: str) -> None:
    q = JobQueue("proc", redis=redis_url, prefix=prefix, worker={"concurrency": 4})
    names = [*REFUSED_RESULTS, "ret_ok"]
    # What the codec says of each result in this process: the reason in-process modes
    # record (test_a_worker_refuses... shows it for a value that contains itself,
    # which is not run in a thread here: a regression would spin this event loop).
    expected = {}
    for name in REFUSED_RESULTS:
        with _spin_guard(10), pytest.raises(SerializationError) as err:
            Serializer().dumps(getattr(procjobs_codec, name)(None), "result")
        expected[name] = str(err.value)
    modes = {name: ["proc"] if "self" in name else ["thread", "proc"] for name in names}
    for name in names:
        fn = getattr(procjobs_codec, name)
        q.process(f"thread-{name}", fn)
        q.process(f"proc-{name}", fn, mode="process")
    ids = {}
    for name in names:
        for mode in modes[name]:
            # attempts=3 and a timeout: a refusal is final; a hung child cannot hang the test
            ids[mode, name] = await q.add_job(f"{mode}-{name}", {}, attempts=3, timeout=20_000)
    await q.start()
    try:
        keys = list(ids)
        infos = dict(zip(keys, await _settle(q, [ids[k] for k in keys]), strict=True))
        for name, where in REFUSED_RESULTS.items():
            proc = infos["proc", name]
            assert proc.status is JobStatus.DLQ, (name, proc)
            assert proc.attempts == 1, name
            assert proc.result is None
            assert proc.failed_reason == expected[name], name
            if "thread" in modes[name]:
                assert infos["thread", name].failed_reason == expected[name], name
            assert proc.failed_reason.startswith(f"result cannot be serialized to JSON: {where}"), (
                proc.failed_reason
            )
        ok = infos["proc", "ret_ok"]
        assert ok.status is JobStatus.COMPLETED
        assert ok.result == {"ok": True, "n": [1, 2.5, None], "ordered": {"a": 1}}
        assert ok.result == infos["thread", "ret_ok"].result
    finally:
        await q.close()


@pytest.mark.redis_only
async def test_process_mode_progress_raises_in_the_child(redis_url: str, prefix: str) -> None:
    q = JobQueue("proc", redis=redis_url, prefix=prefix, worker={"concurrency": 2})
    q.process("thread", procjobs_codec.progress_probe)
    q.process("proc", procjobs_codec.progress_probe, mode="process")
    thread = await q.add_job("thread", {}, timeout=20_000)
    proc = await q.add_job("proc", {"cyclic": True}, timeout=20_000)
    await q.start()
    try:
        t_info, p_info = await _settle(q, [thread, proc])
        assert p_info.status is JobStatus.COMPLETED, p_info
        nan, tup, big, cycle = p_info.result
        assert nan.startswith("SerializationError: progress cannot be serialized")
        assert "NaN or infinite" in nan
        assert "is a tuple" in tup
        assert big.startswith("PayloadTooLargeError: progress of job")
        assert cycle.startswith("SerializationError: progress cannot be serialized")
        assert "contains itself" in cycle
        assert p_info.result[:3] == [
            text.replace(f"job {thread} ", f"job {proc} ") for text in t_info.result
        ]
        assert p_info.progress == t_info.progress == {"pct": 50}
    finally:
        await q.close()


@pytest.mark.redis_only
async def test_process_mode_error_text_is_made_safe_and_the_child_survives(
    redis_url: str, prefix: str
) -> None:
    names = ["raise_surrogate", "raise_str_raises", "raise_base_exception", "log_surrogate"]
    q = JobQueue("proc", redis=redis_url, prefix=prefix, worker={"concurrency": 1})
    q.process("proc-pid", procjobs_codec.pid, mode="process")
    for name in names:
        fn = getattr(procjobs_codec, name)
        q.process(f"thread-{name}", fn)
        q.process(f"proc-{name}", fn, mode="process")
    # One child (concurrency 1), jobs in order: the pid before and after the failures
    # shows the same child ran them all.
    first = await q.add_job("proc-pid", {})
    ids = {}
    for name in names:
        for mode in ("thread", "proc"):
            ids[mode, name] = await q.add_job(f"{mode}-{name}", {}, attempts=1, timeout=20_000)
    last = await q.add_job("proc-pid", {})
    await q.start()
    try:
        keys = list(ids)
        infos = dict(zip(keys, await _settle(q, [ids[k] for k in keys]), strict=True))
        before, after = await _settle(q, [first, last])
        assert before.status is after.status is JobStatus.COMPLETED
        assert before.result == after.result  # the child was never replaced

        for name, expected in (
            ("raise_surrogate", "ValueError: bad file r-\\udcff.csv"),
            ("raise_str_raises", "StrRaises: <unprintable StrRaises>"),
            ("raise_base_exception", "Abort: stop at r-\\udcff.csv"),
        ):
            thread, proc = infos["thread", name], infos["proc", name]
            assert thread.failed_reason == expected
            assert proc.status is JobStatus.DLQ
            assert proc.failed_reason == expected, proc.failed_reason  # as in thread mode
            assert "ChildProcessDied" not in proc.failed_reason

        logged = infos["proc", "log_surrogate"]
        assert logged.status is JobStatus.COMPLETED and logged.result == "logged"
        proc_logs = await q.get_job_logs(ids["proc", "log_surrogate"])
        assert proc_logs == await q.get_job_logs(ids["thread", "log_surrogate"])
        assert proc_logs == ["reading r-\\udcff.csv"]
    finally:
        await q.close()
