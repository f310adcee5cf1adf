"""Process-pool execution of plain processors, with hard timeouts.

Opt in per processor with ``queue.process(name, fn, mode="process")``. Each child is a
Python process (``_BOOT``, then ``kitium_queue._child``) that runs one job at a time; a
run that passes its timeout (or is cancelled) has its child killed and replaced, so a
hung C extension or an endless loop cannot hold a slot. Nothing is pickled and the
parent's ``__main__`` is never re-imported: the function travels as its import path, the
job and the outcome as length-prefixed JSON frames over the child's stdin/stdout. Results
and progress are encoded in the child by the codec's own ``Serializer`` (its round-trip
rule holds as in the other modes); a result it refused comes back as a
``codec.RefusedValue``, which the runner's encoding refuses again with the same
``SerializationError``, so the job fails for good with the reason it would have
in-process.

How a child lives and ends:

* it runs in a session (process group) of its own and ignores SIGINT and SIGTERM: a
  signal to the worker's whole group (Ctrl-C in a terminal, a service manager stopping
  the unit) stops the worker gracefully and leaves the children to it, as in the other
  modes; it dies with the worker's process (``_child``: a parent-death signal on Linux,
  a watch of its parent elsewhere), so a worker killed outright leaves no job running,
  and its group guard (``_child``) ends what the processor started in its group;
* killing it (timeout, ``cancel_job``, shutdown past its grace, a child past
  ``max_jobs_per_child``) kills its whole group: what its processor started goes too;
* its exit is noticed as such (``_Protocol``), even while a process it forked keeps its
  stdout open: the frames still in the pipe are read for ``EXIT_GRACE_S``, then the run
  fails with ``ChildProcessDied``.

The child acknowledges each job (a ``start`` frame) once it has the processor (its module
imported) and calls it: a child that ends before that (one that died while idle, killed
or ended by a thread its last job left behind) never started the job, which is sent to a
fresh child instead of failing. The run's timeout is stopped from the moment a child is
taken until that frame (``_Clock``): starting Python and importing the processor's
module (seconds, and again for each fresh child after a timeout killed one) is never
charged to the processor, which could otherwise never finish a short timeout; that
start is bounded by ``START_TIMEOUT_S`` instead (``ChildStartTimeout``). The run's
duration (``Run.started``: ``Outcome.duration_ms``, the metrics) counts from that frame
too, as it counts from the processor's call in the other modes. Progress and log
frames carry the run they belong to: one a thread of an earlier job sends late is
dropped. Job data the child cannot be sent (a process middleware may have replaced it)
fails the job for good before any child is taken. Context a process middleware carries
to the child (``middleware.carry_to_child``: the run's trace context) goes with the job
and is entered there around the processor (``carried``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import os
import signal
import struct
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from .carried import captured
from .codec import RefusedValue, Serializer
from .errors import (
    ConfigurationError,
    NonRetryableError,
    RateLimited,
    RetryLater,
    SerializationError,
)
from .limits import safe_text
from .middleware import child_contexts

if TYPE_CHECKING:
    from .job import Job
    from .leases import Run
    from .options import WorkerConfig
    from .runner import Timeouts

__all__ = ["EXIT_GRACE_S", "START_TIMEOUT_S", "ProcessPool", "RemoteError", "import_path"]

_LEN = struct.Struct("!I")
#: Checks and encodes the job data sent to a child: plain JSON, by the round-trip rule of
#: job data (the child receives what the processor would in-process, or the job fails).
_JSON = Serializer(())
#: Longest a child may take from being given a job to starting its processor (starting
#: Python, importing the processor's module); past it the child is killed and the run
#: fails with ``ChildStartTimeout`` (retried like any failure). The run's own timeout
#: does not run meanwhile.
START_TIMEOUT_S = 120.0
#: After a child exited, how long the frames it wrote are still read from its stdout
#: before the pipe is given up (a process it forked may hold it open for ever).
EXIT_GRACE_S = 1.0
#: What a child runs (``python -c``, the worker's pid as its argument): the package's
#: modules are found without running its ``__init__`` (which imports the whole core and
#: redis-py), so a child loads only what ``_child`` needs; ``_child`` runs the
#: ``__init__`` when anything else asks for the package.
_BOOT = (
    "import importlib.util as u, sys; s = u.find_spec('kitium_queue'); "
    "sys.modules[s.name] = u.module_from_spec(s); from kitium_queue._child import main; main(s)"
)

Relay = Callable[["Job", str, Any], Awaitable[None]]


def import_path(fn: Any) -> str:
    """``module:qualname`` of a module-level function (or a class's method reached
    through its class); rejects lambdas, closures, partials and methods bound to an
    instance, which a child process cannot rebuild from a name."""
    if inspect.ismethod(fn) and not inspect.isclass(fn.__self__):
        raise ConfigurationError(
            f"mode='process' needs a module-level function importable by the child process "
            f"(got the method {getattr(fn, '__qualname__', '?')!r} bound to an instance: the "
            "child would import the plain function, without its instance); register a "
            "module-level function that calls it"
        )
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not module or not qualname or "<" in qualname or module == "__main__":
        raise ConfigurationError(
            f"mode='process' needs a module-level function importable by the child process "
            f"(got {fn!r}); define it at the top level of a module other than __main__"
        )
    return f"{module}:{qualname}"


class RemoteError(Exception):
    """An exception raised by a processor in a child process, or the child's end
    (``type_name`` ``ChildProcessDied``, ``ChildStartTimeout``): ``type_name``,
    ``message`` and ``remote_traceback`` kept. Its text, and the failure reason
    recorded, read ``<type_name>: <message>``, as the exception's own would in the
    other modes (``outcomes.describe``)."""

    #: ``outcomes.describe``: the reason is the text, without this type's name.
    described_as_raised = True

    def __init__(self, type_name: str, message: str, tb: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.remote_traceback = tb


class RemoteNonRetryableError(NonRetryableError):
    """A ``NonRetryableError`` (or a subclass) the processor raised in a child: not
    retried, and its reason reads ``<the raised type>: <message>`` as in the other
    modes (``Sub: msg``, not ``NonRetryableError: Sub: msg``)."""

    described_as_raised = True

    def __str__(self) -> str:
        return str(self.args[0])


class _DiedIdle(Exception):
    """The child ended before it acknowledged the job sent to it: it never started it."""


class _Protocol(asyncio.subprocess.SubprocessStreamProtocol):
    """The streams of a child, and its exit as soon as it happens: ``EXIT_GRACE_S``
    later its stdout is closed here, so a process it forked that keeps the pipe open
    cannot hide its death (the run fails with ``ChildProcessDied``, not its timeout)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=2**16, loop=loop)
        self._exit_loop = loop
        self._sub: asyncio.SubprocessTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert isinstance(transport, asyncio.SubprocessTransport)
        self._sub = transport

    def process_exited(self) -> None:
        super().process_exited()
        self._exit_loop.call_later(EXIT_GRACE_S, self._give_up_stdout)

    def _give_up_stdout(self) -> None:
        pipe = None if self._sub is None else self._sub.get_pipe_transport(1)
        if pipe is not None and not pipe.is_closing():
            pipe.close()  # the reader sees EOF after what was read (IncompleteReadError)


class _Clock:
    """The timeout of one run, stopped while a child gets ready to start the processor
    (module docstring). Without ``timeouts`` (or a timeout) it does nothing."""

    __slots__ = ("_left", "_run", "_since", "_timeouts")

    def __init__(self, run: Run, timeouts: Timeouts | None) -> None:
        self._run, self._timeouts = run, timeouts
        self._left: float | None = None
        self._since = 0.0

    def pause(self) -> None:
        run, timeouts = self._run, self._timeouts
        if timeouts is None or timeouts.loop is None or run.deadline is None:
            return  # no timeout, or it passed already (the cancellation is on its way)
        self._since = now = timeouts.loop.time()
        self._left = run.deadline - now
        run.deadline = None  # its entry in the timer's heap is skipped from now on

    def begin(self) -> None:
        """The child started the processor: its run (``Run.started``: the duration
        recorded) and its timeout count from now, without the child's start-up."""
        self._run.started = asyncio.get_running_loop().time()
        self.resume()

    def resume(self) -> None:
        left, timeouts = self._left, self._timeouts
        if left is None or timeouts is None or timeouts.loop is None:
            return
        self._left = None
        timeouts.watch(self._run, timeouts.loop.time() + left)


class _Child:
    __slots__ = ("done", "expired", "jobs", "proc")

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        #: It sent the outcome of the job it was given (and may take the next one).
        self.done = False
        #: Killed because it did not start the processor within START_TIMEOUT_S.
        self.expired = False
        #: Jobs it ran to an outcome.
        self.jobs = 0

    async def send(self, payload: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(_LEN.pack(len(payload)) + payload)
        await self.proc.stdin.drain()

    async def recv(self) -> Any:
        assert self.proc.stdout is not None
        head = await self.proc.stdout.readexactly(_LEN.size)
        return orjson.loads(await self.proc.stdout.readexactly(_LEN.unpack(head)[0]))

    async def exit_status(self) -> str:
        """How the child ended, for an error message: its exit code, or the signal that
        killed it (the code is waited for briefly: the pipe may close before it is known)."""
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.proc.wait(), 2)
        code = self.proc.returncode
        if code is None:
            return "exit code unknown"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"killed by signal {-code} ({signal.Signals(-code).name})"
            return f"killed by signal {-code}"
        return f"exit code {code}"

    def kill_group(self) -> None:
        """SIGKILL to the child's process group (it leads its own session): the child
        and every process its processors started and left in it."""
        with contextlib.suppress(ProcessLookupError, PermissionError, AttributeError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()

    def expire(self) -> None:
        """``START_TIMEOUT_S`` passed before the child started the processor."""
        self.expired = True
        self.kill_group()

    async def kill(self) -> None:
        self.kill_group()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.proc.wait(), 5)


def _given_orphans() -> bool:
    """Whether processes orphaned on this machine are given to this one to collect: it is
    PID 1 (a container without an init) or a child subreaper. Then the group guards of
    its children (``_child``) and what their processors left become its zombies."""
    if os.getpid() == 1:
        return True
    if not sys.platform.startswith("linux"):
        return False
    with contextlib.suppress(Exception):
        import ctypes

        flag = ctypes.c_int(0)
        if ctypes.CDLL(None).prctl(37, ctypes.byref(flag), 0, 0, 0) == 0:  # GET_SUBREAPER
            return flag.value != 0
    return False


def reap_strays() -> int:
    """Collect the zombies given to this process from its children's process groups (a
    group guard, what a processor left): exited processes whose parent is this one and
    whose group is neither this process's nor their own. Never the children the pool
    started (each leads its group, and asyncio waits for them), nor any other child of
    this process (they stay in its group). Returns how many were collected."""
    me, mine, done = os.getpid(), os.getpgrp(), 0
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    state, ppid, pgrp = f.read().rpartition(b")")[2].split()[:3]
            except (OSError, ValueError):
                continue
            pid = int(entry.name)
            if state == b"Z" and int(ppid) == me and int(pgrp) not in (mine, pid):
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                    done += 1
    return done


class ProcessPool:
    """Up to ``size`` child processes, started on demand; each is replaced after
    ``config.max_jobs_per_child`` jobs when that is set (else reused while it lives)."""

    def __init__(self, size: int, config: WorkerConfig | None = None) -> None:
        self.size = size
        self.max_jobs_per_child = None if config is None else config.max_jobs_per_child
        self._idle: list[_Child] = []
        self._free = asyncio.Semaphore(size)
        self._runs = itertools.count(1)
        #: Zombies of ended children's groups are this process's to collect (each new
        #: child, and the pool's close, collect them: ``reap_strays``).
        self._reaps = _given_orphans()
        #: The exits of killed children being collected (``_release``).
        self._dying: set[asyncio.Task[None]] = set()

    async def run(
        self, fn_path: str, run: Run, on_message: Relay, timeouts: Timeouts | None = None
    ) -> Any:
        """Run ``fn_path`` on ``run``'s job in a child; returns the result (a
        ``RefusedValue`` when the child's codec refused it) or raises.

        ``on_message(job, kind, value)`` is awaited for the run's progress/log messages.
        ``timeouts``: the worker's timer, whose deadline for ``run`` is stopped until the
        child starts the processor. Cancelling the call kills the child (hard timeout).
        """
        job = run.job
        # Encoded before a child is taken: data the child cannot be sent (a process
        # middleware may have replaced it) fails the job and costs no child.
        try:
            data = _JSON.dumps(job.data, "job data")
        except SerializationError as exc:
            raise NonRetryableError(
                f"job data cannot be sent to the child process: {safe_text(exc)}"
            ) from None
        fields = orjson.dumps(
            {
                "id": job.id,
                "name": job.name,
                "attempts": job.attempts,
                "max_attempts": job.max_attempts,
                "created_at": job.created_at,
                "options": job.options,
                "idempotency_key": job.idempotency_key,
                "queue_name": job.queue_name,
                # The fence of ``record_execution(..., lease_token=job.lease_token)``.
                "lease_token": job.lease_token,
            }
        )
        token = next(self._runs)
        carried = child_contexts.get()  # what the process middleware carry (``carried``)
        if carried:
            ctx = captured(carried)
            head = orjson.dumps({"fn": fn_path, "path": sys.path, "run": token, "ctx": ctx})
        else:
            head = orjson.dumps({"fn": fn_path, "path": sys.path, "run": token})
        payload = b'%b,"job":%b,"data":%b}}' % (head[:-1], fields[:-1], data)
        clock = _Clock(run, timeouts)
        async with self._free:
            clock.pause()
            limit = asyncio.get_running_loop().time() + START_TIMEOUT_S
            child: _Child | None = None
            try:
                if self._reaps:
                    reap_strays()
                child = self._take() or await self._spawn()
                for fresh in (False, True):
                    try:
                        return await self._exchange(
                            child, payload, token, job, on_message, clock, limit
                        )
                    except _DiedIdle:
                        if fresh:
                            raise RemoteError(
                                "ChildProcessDied",
                                "a new child process exited before it started the processor, "
                                "while starting Python or importing the processor's module "
                                f"{fn_path.partition(':')[0]!r} ({await child.exit_status()})",
                                "",
                            ) from None
                        # The child died while idle, after its last job (a thread that
                        # job left behind ended it, or it was killed): it never read
                        # this job, which runs in a fresh child instead of failing for
                        # another's fault.
                        await child.kill()
                        child = await self._spawn()
                raise AssertionError("unreachable")  # pragma: no cover
            except (asyncio.IncompleteReadError, ConnectionError, BrokenPipeError):
                if child is None:  # starting one failed
                    raise
                status = await child.exit_status()
                if child.proc.returncode == -signal.SIGINT:
                    # The child ignores SIGINT: ended by it, it is Python's own exit on
                    # a KeyboardInterrupt nothing caught (the processor raised it).
                    raise RemoteError(
                        "KeyboardInterrupt",
                        "raised by the processor; it ended the child process running the job",
                        "",
                    ) from None
                raise RemoteError(
                    "ChildProcessDied", f"the child process running the job exited ({status})", ""
                ) from None
            finally:
                clock.resume()
                if child is not None:
                    await self._release(child)

    async def _release(self, child: _Child) -> None:
        """After a run: a child that sent the job's outcome is ready for the next job
        (unless it ran ``max_jobs_per_child``); any other is killed, with its group."""
        if child.done:
            child.done = False
            child.jobs += 1
            if self.max_jobs_per_child is None or child.jobs < self.max_jobs_per_child:
                self._idle.append(child)
                return
        # Killed now, its exit collected aside (``close`` waits for it): a run cancelled
        # ends in this turn of the loop. Waiting here, a run a forced stop (a second
        # SIGTERM) cancelled was still waiting when the stop gave up on it: its job was
        # left leased (a stall) instead of handed back.
        child.kill_group()
        reaped = asyncio.get_running_loop().create_task(child.kill())
        self._dying.add(reaped)
        reaped.add_done_callback(self._dying.discard)

    @staticmethod
    async def _exchange(
        child: _Child,
        payload: bytes,
        token: int,
        job: Job,
        on_message: Relay,
        clock: _Clock,
        limit: float,
    ) -> Any:
        """Send the job to ``child`` and read its frames to the outcome. Raises
        ``_DiedIdle`` when the child ends before it acknowledged the job."""
        started = False
        timer = asyncio.get_running_loop().call_at(limit, child.expire)
        try:
            await child.send(payload)
            while True:
                msg = await child.recv()
                t = msg["t"]
                if t == "start":
                    started = True
                    timer.cancel()
                    clock.begin()  # the processor runs: its timeout runs again
                    continue
                if t == "result":
                    child.done = True
                    return msg["v"]
                if t == "refused":
                    child.done = True
                    return RefusedValue(msg["msg"])
                if t == "error":
                    child.done = True
                    _raise_remote(msg)
                if msg.get("r") == token:  # not one a thread of an earlier job sent late
                    await on_message(job, t, msg["v"])
        except (asyncio.IncompleteReadError, ConnectionError, BrokenPipeError):
            if child.expired:
                raise RemoteError(
                    "ChildStartTimeout",
                    f"the child process did not start the processor within "
                    f"{START_TIMEOUT_S:g} s (starting Python and importing the processor's "
                    "module); the processor never ran",
                    "",
                ) from None
            if started:
                raise
            raise _DiedIdle() from None
        finally:
            timer.cancel()

    def _take(self) -> _Child | None:
        """An idle child still alive (the dead ones are dropped), or None."""
        while self._idle:
            child = self._idle.pop()
            if child.proc.returncode is None:
                return child
        return None

    @staticmethod
    async def _spawn() -> _Child:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.subprocess_exec(
            lambda: _Protocol(loop),
            sys.executable,
            "-c",
            _BOOT,
            str(os.getpid()),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        return _Child(asyncio.subprocess.Process(transport, protocol, loop))

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        # All at once, as the killed ones' (``_dying``): each kill waits up to 5 s for
        # its child's exit (one in uninterruptible sleep), so within 5 s in all.
        await asyncio.gather(*(child.kill() for child in idle))
        if self._dying:
            await asyncio.wait(set(self._dying))  # each within 5 s (``_Child.kill``)
        if self._reaps:
            await asyncio.sleep(0.2)  # the guards end right after their children
            reap_strays()


def _raise_remote(msg: dict[str, Any]) -> None:
    """Raise what an ``error`` frame says the processor raised."""
    text = msg["msg"]
    if msg["kind"] == "nonretryable":
        err: Exception = RemoteNonRetryableError(f"{msg['type']}: {text}")
        # The child's frames, for the job's recorded traceback.
        setattr(err, "remote_traceback", msg["tb"])  # noqa: B010
        raise err
    if msg["type"] not in ("RetryLater", "RateLimited"):
        text = f"{msg['type']}: {text}"
    if msg["kind"] == "retrylater":
        scope = msg.get("scope")
        if scope in RateLimited.SCOPES:
            raise RateLimited(msg["delay"], text, scope=scope)
        raise RetryLater(msg["delay"], text)
    raise RemoteError(msg["type"], msg["msg"], msg["tb"])
