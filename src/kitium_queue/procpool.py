"""Process-pool execution of plain processors, with hard timeouts.

Opt in per processor with ``queue.process(name, fn, mode="process")``. Each child is a
``python -m kitium_queue._child`` process that runs one job at a time; a run that passes
its timeout (or is cancelled) has its child killed and replaced, so a hung C extension
or an endless loop cannot hold a slot. Nothing is pickled and the parent's ``__main__``
is never re-imported: the function travels as its import path, the job and the outcome
as length-prefixed JSON frames over the child's stdin/stdout. Results and progress are
encoded in the child by the codec's own ``Serializer`` (its round-trip rule holds as in
the other modes); a result it refused comes back as a ``codec.RefusedValue``, which the
runner's encoding refuses again with the same ``SerializationError``, so the job fails
for good with the reason it would have in-process.

The child acknowledges each job (a ``start`` frame) before it runs it: a child that ends
before that (one that died while idle, killed or ended by a thread its last job left
behind) never started the job, which is sent to a fresh child instead of failing. Job
data the child cannot be sent (a process middleware may have replaced it) fails the job
for good before any child is taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import struct
import sys
from typing import Any

import orjson

from .codec import RefusedValue, Serializer
from .errors import (
    ConfigurationError,
    NonRetryableError,
    RateLimited,
    RetryLater,
    SerializationError,
)
from .limits import safe_text

__all__ = ["ProcessPool", "RemoteError", "import_path"]

_LEN = struct.Struct("!I")
#: Checks and encodes the job data sent to a child: plain JSON, by the round-trip rule of
#: job data (the child receives what the processor would in-process, or the job fails).
_JSON = Serializer(())


def import_path(fn: Any) -> str:
    """``module:qualname`` of a module-level function; rejects lambdas and closures."""
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not module or not qualname or "<" in qualname or module == "__main__":
        raise ConfigurationError(
            f"mode='process' needs a module-level function importable by the child process "
            f"(got {fn!r}); define it at the top level of a module other than __main__"
        )
    return f"{module}:{qualname}"


class RemoteError(Exception):
    """An exception raised by a processor in a child process (type name and traceback kept)."""

    def __init__(self, type_name: str, message: str, tb: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.remote_traceback = tb

    def __str__(self) -> str:
        return str(self.args[0])


class _DiedIdle(Exception):
    """The child ended before it acknowledged the job sent to it: it never started it."""


class _Child:
    __slots__ = ("done", "proc")

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        #: It sent the outcome of the job it was given (and may take the next one).
        self.done = False

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
        killed it (the code is waited for briefly: the pipe closes before it is known)."""
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

    async def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.proc.wait(), 5)


class ProcessPool:
    """Up to ``size`` child processes, started on demand."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._idle: list[_Child] = []
        self._free = asyncio.Semaphore(size)

    async def run(self, fn_path: str, job: Any, on_message: Any) -> Any:
        """Run ``fn_path`` on ``job`` in a child; returns the result (a ``RefusedValue``
        when the child's codec refused it) or raises.

        ``on_message(kind, value)`` is awaited for progress/log messages. Cancelling the
        call kills the child (hard timeout).
        """
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
            }
        )
        head = orjson.dumps({"fn": fn_path, "path": sys.path})
        payload = b'%b,"job":%b,"data":%b}}' % (head[:-1], fields[:-1], data)
        async with self._free:
            child = self._take()
            if child is None:
                child = await self._spawn()
            try:
                for fresh in (False, True):
                    try:
                        return await self._exchange(child, payload, on_message)
                    except _DiedIdle:
                        if fresh:
                            raise RemoteError(
                                "ChildProcessDied",
                                "a new child process exited before it read the job "
                                f"({await child.exit_status()})",
                                "",
                            ) from None
                        # The child died while idle, after its last job (a thread that
                        # job left behind ended it, or it was killed): it never read
                        # this job, which runs in a fresh child instead of failing for
                        # another's fault.
                        await child.kill()
                        child = await self._spawn()
                raise AssertionError("unreachable")  # pragma: no cover
            except (asyncio.IncompleteReadError, ConnectionError, BrokenPipeError) as exc:
                raise RemoteError(
                    "ChildProcessDied",
                    f"the child process running the job exited ({await child.exit_status()}, "
                    f"{type(exc).__name__})",
                    "",
                ) from None
            finally:
                if child.done:  # it sent the job's outcome: ready for the next job
                    child.done = False
                    self._idle.append(child)
                else:
                    await asyncio.shield(child.kill())

    @staticmethod
    async def _exchange(child: _Child, payload: bytes, on_message: Any) -> Any:
        """Send the job to ``child`` and read its frames to the outcome. Raises
        ``_DiedIdle`` when the child ends before it acknowledged the job."""
        started = False
        try:
            await child.send(payload)
            while True:
                msg = await child.recv()
                t = msg["t"]
                if t == "start":
                    started = True
                    continue
                if t == "result":
                    child.done = True
                    return msg["v"]
                if t == "refused":
                    child.done = True
                    return RefusedValue(msg["msg"])
                if t == "error":
                    child.done = True
                    text = msg["msg"]
                    if msg["type"] not in ("NonRetryableError", "RetryLater", "RateLimited"):
                        text = f"{msg['type']}: {text}"
                    if msg["kind"] == "nonretryable":
                        err: Exception = NonRetryableError(text)
                        # The child's frames, for the job's recorded traceback.
                        setattr(err, "remote_traceback", msg["tb"])  # noqa: B010
                        raise err
                    if msg["kind"] == "retrylater":
                        scope = msg.get("scope")
                        if scope in RateLimited.SCOPES:
                            raise RateLimited(msg["delay"], text, scope=scope)
                        raise RetryLater(msg["delay"], text)
                    raise RemoteError(msg["type"], msg["msg"], msg["tb"])
                await on_message(t, msg["v"])
        except (asyncio.IncompleteReadError, ConnectionError, BrokenPipeError):
            if started:
                raise
            raise _DiedIdle() from None

    def _take(self) -> _Child | None:
        """An idle child still alive (the dead ones are dropped), or None."""
        while self._idle:
            child = self._idle.pop()
            if child.proc.returncode is None:
                return child
        return None

    @staticmethod
    async def _spawn() -> _Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "kitium_queue._child",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return _Child(proc)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for child in idle:
            await child.kill()
