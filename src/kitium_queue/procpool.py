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
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import sys
from typing import Any

import orjson

from .codec import RefusedValue
from .errors import ConfigurationError, NonRetryableError, RetryLater

__all__ = ["ProcessPool", "RemoteError", "import_path"]

_LEN = struct.Struct("!I")


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


class _Child:
    __slots__ = ("proc",)

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def send(self, payload: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(_LEN.pack(len(payload)) + payload)
        await self.proc.stdin.drain()

    async def recv(self) -> Any:
        assert self.proc.stdout is not None
        head = await self.proc.stdout.readexactly(_LEN.size)
        return orjson.loads(await self.proc.stdout.readexactly(_LEN.unpack(head)[0]))

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
        async with self._free:
            child = self._idle.pop() if self._idle else await self._spawn()
            payload = orjson.dumps(
                {
                    "fn": fn_path,
                    "path": sys.path,
                    "job": {
                        "id": job.id,
                        "name": job.name,
                        "data": job.data,
                        "attempts": job.attempts,
                        "max_attempts": job.max_attempts,
                        "created_at": job.created_at,
                        "options": job.options,
                        "idempotency_key": job.idempotency_key,
                        "queue_name": job.queue_name,
                    },
                }
            )
            healthy = False
            try:
                await child.send(payload)
                while True:
                    msg = await child.recv()
                    t = msg["t"]
                    if t == "result":
                        healthy = True
                        return msg["v"]
                    if t == "refused":
                        healthy = True
                        return RefusedValue(msg["msg"])
                    if t == "error":
                        healthy = True
                        text = msg["msg"]
                        if msg["type"] not in ("NonRetryableError", "RetryLater", "RateLimited"):
                            text = f"{msg['type']}: {text}"
                        if msg["kind"] == "nonretryable":
                            err: Exception = NonRetryableError(text)
                            # The child's frames, for the job's recorded traceback.
                            setattr(err, "remote_traceback", msg["tb"])  # noqa: B010
                            raise err
                        if msg["kind"] == "retrylater":
                            raise RetryLater(msg["delay"], text)
                        raise RemoteError(msg["type"], msg["msg"], msg["tb"])
                    await on_message(t, msg["v"])
            except (asyncio.IncompleteReadError, ConnectionError, BrokenPipeError) as exc:
                raise RemoteError(
                    "ChildProcessDied",
                    f"the child process running the job exited (code {child.proc.returncode}, "
                    f"{type(exc).__name__})",
                    "",
                ) from None
            finally:
                if healthy:
                    self._idle.append(child)
                else:
                    await asyncio.shield(child.kill())

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
