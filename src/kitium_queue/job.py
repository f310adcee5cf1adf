"""The job a processor receives (``Job``) and the stored record of a job (``JobInfo``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol

from typing_extensions import TypeVar

from .enums import JobStatus
from .limits import safe_text

__all__ = ["Job", "JobInfo", "JobProcessor", "JobUpdater"]

#: The type of a job's data (``Job[EmailData]``); a bare ``Job`` is ``Job[Any]``.
DataT = TypeVar("DataT", default=Any)


class JobUpdater(Protocol):
    """Where a running job's progress and log lines go (the worker's runner)."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the updates run on (threaded processors submit to it)."""

    async def update(self, job: Job, kind: str, value: Any) -> None:
        """Record ``value`` as ``job``'s progress (``kind="progress"``) or as a log line
        (``kind="log"``) under its lease."""


class Job(Generic[DataT]):
    """A job being processed, as handed to a processor.

    Generic over its data's type, for type checkers: a processor declared as taking a
    ``Job[EmailData]`` (or typed as ``JobProcessor[EmailData]``) sees ``job.data`` as an
    ``EmailData``. Nothing is checked at run time: the data is what was added.

    Attributes:
        id: job id.
        name: job name (selects the processor).
        data: the decoded payload.
        attempts: runs made so far, this one included (1 on the first run).
        max_attempts: runs allowed in total.
        progress: last progress reported by this run.
        created_at: enqueue time, ms since the epoch (Redis clock).
        options: the options the job was added with (the producer's ``default_job_options``
            included).
        idempotency_key: stable key for side effects outside Redis: the job's
            ``idempotency_key`` option if given, else ``"<queue>:<id>:<created_at>"``
            (the enqueue time too: an auto id can be taken again by another job after
            Redis lost its latest writes, the enqueue time of that job differs).
        queue_name: the queue it belongs to.
        follows: run links: the run contexts of the runs this run follows (a
            workflow step's parents' runs, recorded when each finished), at most
            ``limits.MAX_FOLLOWS``, as features' Lua stored them (untrusted text);
            ``None`` when nothing of the kind was recorded for it (it follows no
            recorded run, and no job follows it), ``()`` when another job follows
            this one but it follows no recorded run itself.
        run_context: this run's context, for the runs that follow it: process
            middleware sets it (tracing: the process span's traceparent) when
            ``follows`` is not ``None``; the worker sends it with a completed or
            failed-for-good outcome, and the ``release`` slot hands it to the
            features' Lua. Printable ASCII of at most
            ``limits.MAX_RUN_CONTEXT_CHARS`` characters, else it is not sent.
    """

    __slots__ = (
        "_token",
        "_updater",
        "attempts",
        "created_at",
        "data",
        "follows",
        "id",
        "idempotency_key",
        "max_attempts",
        "name",
        "options",
        "progress",
        "queue_name",
        "run_context",
        "stalls",
    )

    def __init__(
        self,
        *,
        id: str,
        name: str,
        data: DataT,
        attempts: int,
        max_attempts: int,
        created_at: int,
        options: dict[str, Any],
        queue_name: str,
        stalls: int = 0,
        progress: Any = None,
        token: str = "",
        updater: JobUpdater | None = None,
        follows: tuple[str, ...] | None = None,
    ) -> None:
        self.id = id
        self.name = name
        self.data = data
        self.attempts = attempts
        self.max_attempts = max_attempts
        self.created_at = created_at
        self.options = options
        self.queue_name = queue_name
        self.stalls = stalls
        self.progress = progress
        self.idempotency_key: str = (
            options.get("idempotency_key") or f"{queue_name}:{id}:{created_at}"
        )
        self._token = token
        self._updater = updater
        self.follows = follows
        self.run_context: str | None = None

    def __repr__(self) -> str:
        return f"<Job {self.queue_name}/{self.id} {self.name!r} attempt {self.attempts}>"

    @property
    def lease_token(self) -> str:
        """The fencing token of this run's lease."""
        return self._token

    async def update_progress(self, value: Any) -> None:
        """Record progress (a number 0-100 or any JSON value); emits ``job-progress``.

        Raises ``LeaseLostError`` if this worker no longer holds the job.
        """
        self.progress = value
        if self._updater is not None:
            await self._updater.update(self, "progress", value)

    async def log(self, message: str) -> None:
        """Append a log line to the job (kept with the job; see ``queue.get_job_logs``)."""
        if self._updater is not None:
            await self._updater.update(self, "log", safe_text(message))

    def update_progress_sync(self, value: Any) -> None:
        """``update_progress`` for plain (threaded) processors.

        Raises ``RuntimeError`` when called on the worker's event loop (from an
        ``async def`` processor): use ``await job.update_progress(...)`` there.
        """
        self._call_sync(self.update_progress(value), "update_progress")

    def log_sync(self, message: str) -> None:
        """``log`` for plain (threaded) processors.

        Raises ``RuntimeError`` when called on the worker's event loop (from an
        ``async def`` processor): use ``await job.log(...)`` there.
        """
        self._call_sync(self.log(message), "log")

    def _call_sync(self, coro: Any, name: str) -> None:
        updater = self._updater
        loop = updater.loop if updater is not None else None
        if loop is None:
            coro.close()
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            # Waiting here for a coroutine submitted to the loop this very thread runs
            # would block that loop for good: every job of the worker would hang.
            coro.close()
            raise RuntimeError(
                f"job.{name}_sync() was called on the worker's event loop (from an async "
                f"processor), where it would wait for ever; use `await job.{name}(...)` in "
                f"an async processor (job.{name}_sync() is for plain `def` processors, "
                "which run in threads)"
            )
        asyncio.run_coroutine_threadsafe(coro, loop).result()


#: A processor of jobs whose data is a ``DataT``: a plain or ``async`` function taking the
#: ``Job``. ``JobProcessor[EmailData]`` makes mypy check
#: ``job.data`` as ``EmailData`` inside it; ``queue.process`` accepts any of them.
JobProcessor = Callable[[Job[DataT]], Any]


@dataclass(slots=True)
class JobInfo:
    """A stored job as returned by ``get_job_status`` and friends."""

    id: str
    name: str
    status: JobStatus
    data: Any = None
    progress: Any = None
    attempts: int = 0
    max_attempts: int = 0
    priority: int = 0
    created_at: int | None = None
    started_at: int | None = None
    finished_at: int | None = None
    delayed_until: int | None = None
    result: Any = None
    failed_reason: str | None = None
    stacktrace: str | None = None
    last_error: str | None = None
    stalls: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    #: None for a sound record. For a damaged one (edited by hand, written by a buggy
    #: client) what is wrong, one reason per problem, ``"; "``-separated: queries never
    #: raise because of one damaged record; the fields that could be read are filled in,
    #: the others keep their defaults, and ``status`` is the state stored on the record
    #: or, when that is unknown, the state set the job was found in.
    damaged: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (status as its string value)."""
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status.value,
            "data": self.data,
            "progress": self.progress,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "priority": self.priority,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "delayed_until": self.delayed_until,
            "result": self.result,
            "failed_reason": self.failed_reason,
            "stacktrace": self.stacktrace,
            "last_error": self.last_error,
            "stalls": self.stalls,
            "options": self.options,
            "damaged": self.damaged,
        }
