"""The producer: validating, encoding and sending jobs (``add_job``, ``add_jobs``).

Every job is checked and encoded on its own (``prepare``) before it joins a batch, so a
bad job fails alone. Concurrent ``add_job`` calls share round trips: while one call is
in flight, the others queue up and go together in the next script call (``coalesce.py``;
the calls the write barrier follows with a command, such as ``WAIT``, apart from the
others, so that a call without one never waits behind another's). ``add_jobs``
sends chunks of at most ``ENQUEUE_CHUNK_JOBS`` jobs, one after the other, and reports
exactly which jobs were written when one fails (``PartialEnqueueError``). Subscribers
hear of written jobs through the ``enqueued`` lifecycle hook.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from . import dupcheck
from .aclcheck import PRODUCER_SCRIPTS, check_commands
from .coalesce import Lane
from .context import CLOSE_GRACE_S
from .errors import (
    ConfigurationError,
    JobRefusedError,
    PartialEnqueueError,
    PayloadTooLargeError,
    WriteNotConfirmedError,
    WriteRefusedError,
    refusal_error,
)
from .jobspec import job_item, job_items, name_item, options_dict
from .limits import (
    ENQUEUE_CHUNK_BYTES,
    ENQUEUE_CHUNK_JOBS,
    MAX_DELAY_MS,
    MAX_JOB_NAME_LENGTH,
    MAX_OPTIONS_BYTES,
    get_logger,
)
from .middleware import enqueue_result
from .options import JobOptions, check_text
from .scripts import RawCall, ScriptCall
from .wire import ENQUEUE_JOB

if TYPE_CHECKING:
    from .context import QueueContext
    from .middleware import EnqueueMiddleware

__all__ = [
    "DATA",
    "DELAY",
    "ID",
    "IDEMPOTENCY_KEY",
    "LIFO",
    "NAME",
    "OPTS",
    "PRIORITY",
    "PreparedJob",
    "Producer",
    "ProducerAPI",
]

log = get_logger(__name__)

#: A job ready for ``enqueue.lua``: its arguments in the ``wire.ENQUEUE_JOB`` layout.
PreparedJob = list[Any]
#: Positions of the fields of a ``PreparedJob`` (``wire.ENQUEUE_JOB``).
ID, NAME, DATA, OPTS, PRIORITY, DELAY, LIFO, IDEMPOTENCY_KEY = (
    ENQUEUE_JOB.index(f)
    for f in ("id", "name", "data", "opts", "priority", "delay_ms", "lifo", "idempotency_key")
)
# ``prepare`` builds the list as a literal (no per-job index stores), in this order.
if tuple(range(len(ENQUEUE_JOB))) != (ID, NAME, DATA, OPTS, PRIORITY, DELAY, LIFO, IDEMPOTENCY_KEY):
    raise ImportError("producer.prepare does not follow wire.ENQUEUE_JOB")


class Producer:
    """Adds jobs to one queue (``queue.producer``); ``JobQueue.add_job`` and
    ``add_jobs`` delegate here.

    Args:
        ctx: the queue's context.
        middleware: the queue's enqueue middleware (the list itself: middleware added
            later applies too).
    """

    def __init__(self, ctx: QueueContext, middleware: list[EnqueueMiddleware]) -> None:
        self.ctx = ctx
        self.middleware = middleware
        # Concurrent add_job calls share round trips (coalesce.py): those the write
        # barrier follows with a command (WAIT) in their own lane, so that a call it does
        # not is never held by another's.
        self.plain = Lane(self, ctx)
        self.waiting = Lane(self, ctx)
        #: Whether the user's rights to the enqueue script's commands were checked.
        self.rights_checked = False

    # ------------------------------------------------------------------ one job
    async def through_middleware(
        self, name: str, data: Any, opts: Mapping[str, Any]
    ) -> tuple[str, Any, dict[str, Any]]:
        """Run the enqueue middleware on a job, in the order added (none: unchanged)."""
        for mw in self.middleware:
            out = mw(name, data, opts)
            if inspect.isawaitable(out):
                out = await out
            name, data, opts = enqueue_result(mw, out)
        return name, data, dict(opts)

    def prepare(self, name: str, data: Any, options: Mapping[str, Any]) -> PreparedJob:
        """Validate and encode one job into its enqueue arguments (``wire.ENQUEUE_JOB``).

        Everything that reaches Redis is checked and encoded here, per job, before the
        job joins a batch (``add_job`` coalesces concurrent calls; ``add_jobs`` sends
        chunks): a name, id, key or option that cannot be encoded, or data that is not
        JSON, fails this job alone with a library error naming what is wrong.
        """
        ctx = self.ctx
        check_text(name, "job name", max_len=MAX_JOB_NAME_LENGTH)
        if options:
            opts = ctx.jobspec.check(options, "job")
            merged = {**ctx.defaults, **opts}
        else:
            opts = {}
            merged = ctx.defaults
        ctx.jobspec.check_backoff(merged.get("backoff"))  # a custom one must be known
        raw = ctx.serializer.dumps(data)
        if len(raw) > ctx.max_payload_bytes:
            raise PayloadTooLargeError(
                f"job {name!r} payload is {len(raw)} bytes, above max_payload_bytes="
                f"{ctx.max_payload_bytes}; store large data elsewhere and pass a reference"
            )
        if not merged:  # no option and no default_job_options: what the lines below make
            return ["", name, raw, b"", 0, 0, "0", ""]
        delay = merged.get("delay", 0)
        jitter = merged.get("jitter", 0)
        if jitter:  # each is at most MAX_DELAY_MS; so is their sum
            delay = min(delay + random.randint(0, jitter), MAX_DELAY_MS)
        # The job carries its options as added, default_job_options included: its
        # attempts, backoff, timeout and retention are the producer's, whatever the
        # release of the worker that runs it (a rolling deploy), and what a reader sees.
        unstored = ctx.jobspec.unstored
        stored = {k: v for k, v in merged.items() if k not in unstored}
        try:
            raw_opts = orjson.dumps(stored) if stored else b""
        except TypeError as exc:  # orjson.JSONEncodeError: a feature option's odd value
            raise ConfigurationError(
                f"job {name!r} options cannot be encoded as JSON ({exc}); option values must "
                "be strings, numbers, booleans or lists of them, without lone surrogates"
            ) from None
        if len(raw_opts) > MAX_OPTIONS_BYTES:
            raise ConfigurationError(
                f"job {name!r} options are {len(raw_opts)} bytes encoded, above "
                f"{MAX_OPTIONS_BYTES}; options carry ids and settings, put data in the payload"
            )
        return [  # wire.ENQUEUE_JOB
            merged.get("job_id", ""),
            name,
            raw,
            raw_opts,
            merged.get("priority", 0),
            delay,
            ("1" if merged.get("lifo") else "0") + ("" if merged.get("job_id_window", 1) else "n"),
            merged.get("idempotency_key", ""),
        ]

    # ------------------------------------------------------------------ API
    async def add_job(
        self,
        job_name: str,
        data: Any,
        options: JobOptions | Mapping[str, Any] | None,
        kwargs: dict[str, Any],
    ) -> str:
        """``JobQueue.add_job`` (documented there)."""
        loop = self.ctx.in_its_loop()  # binds the queue to this loop, or refuses another
        opts = {**options_dict(options), **kwargs} if options is not None else kwargs
        if self.middleware:
            job_name, data, opts = await self.through_middleware(job_name, data, opts)
        prepared = self.prepare(job_name, data, opts)
        barrier = self.ctx.write_barrier
        if barrier is None or barrier.for_enqueue((opts,)) is None:
            return await self.plain.add(loop, prepared, opts)
        return await self.waiting.add(loop, prepared, opts)

    async def settled(self) -> None:
        """Wait for the ``add_job`` calls in the lanes to end (``close()``, before the
        connections go: ``coalesce.py``), ``CLOSE_GRACE_S`` at most."""
        await asyncio.gather(self.plain.settled(CLOSE_GRACE_S), self.waiting.settled(CLOSE_GRACE_S))

    def script_args(self, prepared: Sequence[PreparedJob]) -> list[Any]:
        """The enqueue script's arguments for ``prepared`` jobs (one call)."""
        ctx = self.ctx
        args: list[Any] = [*ctx.argv_head(), ctx.idempotency_ttl]
        for p in prepared:
            args.extend(p)
        return args

    def blocking_ready(self) -> bool:
        """Whether ``add_job_blocking`` may run now: no enqueue middleware (it may be a
        coroutine, or keep state the event loop's thread owns), no write barrier and no
        tracing span to open (both belong to the asyncio path)."""
        ctx = self.ctx
        return not self.middleware and ctx.write_barrier is None and ctx.telemetry is None

    def add_job_blocking(
        self,
        job_name: str,
        data: Any,
        options: JobOptions | Mapping[str, Any] | None,
        kwargs: dict[str, Any],
        run: Callable[[Sequence[Any]], Any],
        announce: Callable[[Callable[[], None]], None],
        read: Callable[..., Any],
    ) -> str:
        """``add_job`` for a thread outside the event loop (``SyncJobQueue``), when
        ``blocking_ready()``: the same checks, encoding, script and errors, with the
        script run by ``run(args)`` (blocking; returns its reply), and a duplicate
        check's read by ``read(*command)`` (``dupcheck.check_blocking``). The
        ``enqueued`` and ``duplicate`` hooks are handed to ``announce``, which runs them
        on the queue's event loop, where their subscribers live.
        """
        opts = {**options_dict(options), **kwargs} if options is not None else kwargs
        prepared = self.prepare(job_name, data, opts)
        ctx = self.ctx
        reply = run(self.script_args([prepared]))
        ids: list[str] = []
        refused: dict[int, str] = {}
        dups: set[int] = set()
        failure = _take_reply(reply, 1, ids, refused, dups)
        if failure is not None:
            raise failure
        hooks = ctx.hooks
        if dups and hooks.duplicate_checks:  # only a duplicate pays a read
            dupcheck.check_blocking(ctx, read, [prepared], [opts], ids, dups, refused)
        if ids[0] and (hooks.enqueued or (dups and hooks.duplicate)):
            announce(lambda: self._announce(ids, [prepared], dups))
        if refused:
            raise refusal_error(refused[0])
        return ids[0]

    async def add_jobs(self, jobs: Iterable[Any]) -> list[str]:
        """``JobQueue.add_jobs`` (documented there)."""
        prepared: list[PreparedJob] = []
        options: list[Mapping[str, Any]] = []
        for i, j in job_items(jobs):
            try:
                name, data, opts = job_item(i, j)
                if self.middleware:
                    name, data, opts = await self.through_middleware(name, data, opts)
                prepared.append(self.prepare(name, data, opts))
            except Exception as exc:
                name_item(i, exc)  # the message says which job: "add_jobs item 637: ..."
                raise
            options.append(opts)
        return await self.enqueue(prepared, options)

    # ------------------------------------------------------------------ sending
    async def enqueue(
        self,
        prepared: Sequence[PreparedJob],
        options: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[str]:
        """Write prepared jobs (chunked, in order); returns their ids.

        ``options``: the options each job was given (for the queue's write barrier,
        ``barrier.py``; None: no options).

        Raises ``PartialEnqueueError`` when a chunk fails after earlier ones were
        written, or the server could not add a job (see ``JobQueue.add_jobs``),
        ``JobRefusedError`` when a feature refused some jobs and the others were added,
        and ``WriteNotConfirmedError`` (its ``unconfirmed`` says which jobs) when the
        write barrier did not confirm a chunk: the jobs are written, later chunks were
        not sent.
        """
        ctx = self.ctx
        span = None
        if ctx.telemetry is not None:
            span = ctx.telemetry.start_span(
                "kitium.enqueue", {"queue": ctx.name, "job.count": len(prepared)}
            )
        ids: list[str] = []
        refused: dict[int, str] = {}
        dups: set[int] = set()  # positions whose job was there already (nothing written)
        barrier = ctx.write_barrier
        unconfirmed: WriteNotConfirmedError | None = None
        try:
            client = await ctx.client()
            if not self.rights_checked:  # before the first add: aclcheck.py
                self.rights_checked = await check_commands(client, ctx, PRODUCER_SCRIPTS)
            keys = ctx.keys.all
            failure: PartialEnqueueError | None = None
            # One script call per chunk, each awaited before the next is sent: every call has
            # its own reply deadline (a pipeline of all chunks shared one: a timeout left an
            # unknown subset written); when one fails, those before it are known written.
            for chunk in _enqueue_chunks(prepared):
                start = len(ids)
                args = self.script_args(chunk)
                chunk_opts: Sequence[Mapping[str, Any]] = ()
                command = None
                after: Any = None
                if barrier is not None:
                    chunk_opts = _options_of(options, start, len(chunk))
                    command = barrier.for_enqueue(chunk_opts)
                try:
                    if command is None:
                        reply = await ctx.scripts.call(client, "enqueue", keys, args)
                    else:
                        # The barrier's command follows the script on its connection.
                        reply, after = await ctx.scripts.pipeline(
                            client, [ScriptCall("enqueue", keys, args), RawCall(command)]
                        )
                        if isinstance(reply, Exception):
                            raise reply
                except Exception as exc:
                    if not ids:
                        raise  # nothing of this call is known written: the error as it is
                    known = isinstance(exc, WriteRefusedError)  # refused whole: none written
                    why = f"{type(exc).__name__}: {exc}"
                    failure = _partial_enqueue(ids, len(prepared), why, unknown=not known)
                    _set_refused(failure, refused)
                    failure.__cause__ = exc
                    break
                failure = _take_reply(reply, len(prepared), ids, refused, dups)
                if failure is not None:
                    break
                if command is not None and barrier is not None:
                    unconfirmed = _unconfirmed(
                        barrier.check_enqueue(command, after, chunk_opts), ids, start
                    )
                    if unconfirmed is not None:
                        if len(ids) < len(prepared):
                            unconfirmed.not_sent_from = len(ids)
                        break
            if dups and ctx.hooks.duplicate_checks:  # only a duplicate pays a read
                await dupcheck.check(
                    ctx, client, prepared, options, ids, dups, refused, may_raise=not failure
                )
                if failure is not None:  # its copies of the ids and refusals, again
                    failure.written_ids = list(ids)
                    _set_refused(failure, refused)
                unconfirmed = _unrefused(unconfirmed, refused)
            if failure is not None:
                # The jobs before the failure are in Redis: announce them, but never let
                # a subscriber's error hide which ones they are.
                try:
                    self._announce(ids, prepared, dups)
                except Exception:
                    log.exception("queue %s: reporting the jobs added failed", ctx.name)
                raise failure
            self._announce(ids, prepared, dups)
            if unconfirmed is not None:
                # Written, but not confirmed: the caller learns which, and what was not
                # sent. (A refusal in the same call is in ``written_ids`` as "".)
                unconfirmed.written_ids = list(ids)
                raise unconfirmed
            if refused:
                raise _refused(ids, refused)
        except Exception as exc:
            if span is not None:
                span.record_exception(exc)
            raise
        finally:
            if span is not None:
                span.end()
        return ids

    def _announce(self, ids: list[str], prepared: Sequence[PreparedJob], dups: set[int]) -> None:
        """The ``enqueued`` hook for the jobs written, ``duplicate`` for the adds that
        found their job there already."""
        hooks = self.ctx.hooks
        if not ids or not (hooks.enqueued or (dups and hooks.duplicate)):
            return
        added: list[tuple[str, str]] = []
        found: list[tuple[str, str]] = []
        for n, (i, p) in enumerate(zip(ids, prepared, strict=False)):
            if i:
                (found if n in dups else added).append((i, p[NAME]))
        if added and hooks.enqueued:
            hooks.emit_enqueued(self.ctx.name, [i for i, _ in added], [n for _, n in added])
        if found and hooks.duplicate:
            hooks.emit_duplicate(self.ctx.name, [i for i, _ in found], [n for _, n in found])


def _take_reply(
    reply: Sequence[Any], total: int, ids: list[str], refused: dict[int, str], dups: set[int]
) -> PartialEnqueueError | None:
    """Read one enqueue script reply (id, flag pairs) into ``ids``, ``refused`` and
    ``dups``; the failure when the script stopped at a job it could not add."""
    for k in range(0, len(reply), 2):
        if reply[k + 1] == b"refused":
            # A feature refused this job (nothing of it written); the call went on with
            # the next one. "" holds its place in ids.
            refused[len(ids)] = reply[k].decode(errors="replace")
            ids.append("")
            continue
        if reply[k + 1] == b"err":
            # The script refused this job before writing any of it, and stopped there:
            # the rest of the chunk was not written either.
            failure = _partial_enqueue(ids, total, reply[k].decode(), unknown=False)
            _set_refused(failure, refused)
            return failure
        if reply[k + 1] == b"dup":
            dups.add(len(ids))
        ids.append(reply[k].decode())
    return None


def _options_of(
    options: Sequence[Mapping[str, Any]] | None, start: int, n: int
) -> Sequence[Mapping[str, Any]]:
    """The options of jobs ``start .. start + n - 1`` of a call (empty ones if unknown)."""
    if options is None:
        return [{}] * n
    return options[start : start + n]


def _unconfirmed(
    errors: Sequence[BaseException | None], ids: list[str], start: int
) -> WriteNotConfirmedError | None:
    """The error of a chunk some of whose jobs the write barrier did not confirm: the
    first job's error, with every unconfirmed job of the chunk by its index in the call
    (each error naming its own job id). None when every job was confirmed."""
    first: WriteNotConfirmedError | None = None
    per: dict[int, WriteNotConfirmedError] = {}
    for k, err in enumerate(errors):
        if err is None or start + k >= len(ids) or not ids[start + k]:
            continue  # confirmed, or a job a feature refused (nothing written)
        if not isinstance(err, WriteNotConfirmedError):
            err = WriteNotConfirmedError(f"{type(err).__name__}: {err}")
        err.written_ids = [ids[start + k]]
        per[start + k] = err
        if first is None:
            first = err
    if first is None:
        return None
    # The call's error: a copy of the first one's type and message (the per-job errors
    # keep their own ``written_ids``).
    whole = copy.copy(first)
    whole.unconfirmed = per
    return whole


def _unrefused(
    err: WriteNotConfirmedError | None, refused: Mapping[int, str]
) -> WriteNotConfirmedError | None:
    """``err`` without the jobs a duplicate check refused after the barrier judged them
    (nothing of them was written: their refusal is raised instead); None when no job is
    left in it and every job of the call was sent."""
    if err is None:
        return None
    err.unconfirmed = {i: e for i, e in err.unconfirmed.items() if i not in refused}
    return err if err.unconfirmed or err.not_sent_from is not None else None


def _enqueue_chunks(prepared: Sequence[PreparedJob]) -> Iterator[Sequence[PreparedJob]]:
    """Split prepared jobs into enqueue calls of at most ENQUEUE_CHUNK_JOBS jobs and about
    ENQUEUE_CHUNK_BYTES of payload: one script call runs alone on the server, and Redis
    drops a client whose single command outgrows its query buffer."""
    chunk: list[PreparedJob] = []
    size = 0
    for p in prepared:
        n = len(p[DATA])
        if chunk and (len(chunk) >= ENQUEUE_CHUNK_JOBS or size + n > ENQUEUE_CHUNK_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(p)
        size += n
    if chunk:
        yield chunk


def _refused(ids: list[str], refused: dict[int, str]) -> JobRefusedError:
    """The error of a call some of whose jobs a feature refused (the rest were added);
    ``refused``: index -> the reason the script gave."""
    errors = {i: refusal_error(r) for i, r in refused.items()}
    first = min(refused)
    more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
    added = len(ids) - len(refused)
    out = JobRefusedError(
        f"{len(refused)} of {len(ids)} jobs were refused and not added; {added} were "
        f"added. Job {first}: {errors[first]}{more}. The ids are in .ids (None for a "
        "refused job), the reasons in .refused, each job's error in .errors",
        ids=[i or None for i in ids],
        refused={i: str(e) for i, e in errors.items()},
    )
    out.errors = errors
    return out


def _set_refused(failure: PartialEnqueueError, refused: dict[int, str]) -> None:
    """Record on ``failure`` the jobs before it that a feature refused."""
    failure.errors = {i: refusal_error(r) for i, r in refused.items()}
    failure.refused = {i: str(e) for i, e in failure.errors.items()}


def _partial_enqueue(
    written: list[str], total: int, why: str, *, unknown: bool
) -> PartialEnqueueError:
    """The error of an enqueue that stopped after ``written`` of ``total`` jobs.

    ``unknown``: whether the jobs from ``len(written)`` on may have been written anyway
    (a chunk whose reply never came) rather than certainly not (a job the script refused).
    """
    done = len(written)
    known = f"jobs 0 to {done - 1} are in the queue" if done else "no job was added"
    rest = "may or may not have been added" if unknown else "were not added"
    return PartialEnqueueError(
        f"enqueue stopped at job {done} of {total} ({why}): {known}; job {done} and later "
        f"{rest}. Retrying jobs[{done}:] is idempotent for jobs with a job_id or "
        "idempotency_key",
        written_ids=list(written),
        failed_from=done,
    )


class ProducerAPI:
    """The producer methods of ``JobQueue`` (delegating to ``queue.producer``)."""

    producer: Producer

    async def add_job(
        self,
        job_name: str,
        data: Any = None,
        options: JobOptions | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> str:
        """Add a job; returns its id.

        Options are keyword arguments (``attempts=5, delay=1000, priority=10``) or a
        ``JobOptions``/dict. With ``job_id`` or ``idempotency_key`` matching an existing
        job, the existing id is returned and nothing is written (unless a duplicate
        check refuses the add: ``hooks.DuplicateCheck``).

        Raises:
            ConfigurationError: unknown or invalid option (the message names it).
            JobRefusedError: a feature refused the job, nothing written (a full message
                group, a tenant's quota, ``IdempotencyConflictError``: a key or id
                reused with different data where conflicts are raised).
            SerializationError: ``data`` is not JSON-serializable.
            PayloadTooLargeError: encoded data above ``max_payload_bytes``.
        """
        return await self.producer.add_job(job_name, data, options, kwargs)

    async def add_jobs(self, jobs: Iterable[Any]) -> list[str]:
        """Add many jobs in few round trips; returns their ids in order.

        Each job is a dict ``{"name": ..., "data": ..., "options": {...}}`` (``opts`` is
        accepted for ``options``), or a tuple ``(name, data)`` / ``(name, data, options)``.
        All jobs are validated before any is written.

        The call is not one transaction: the jobs go in chunks of at most
        ``ENQUEUE_CHUNK_JOBS`` jobs (and about ``ENQUEUE_CHUNK_BYTES`` of payload), one
        atomic script call per chunk, sent one after the other, each with its own reply
        deadline (``scripts.REPLY_TIMEOUT_S``). So a large call never holds Redis for
        long, and a failure is pinned to one chunk.

        Raises:
            PartialEnqueueError: a chunk failed after earlier ones were written, or the
                server refused a job; ``written_ids`` lists the ids of the jobs known
                written (in order), ``failed_from`` the index of the first job that is
                not. Retrying ``jobs[failed_from:]`` is idempotent when those jobs carry
                a ``job_id`` or an ``idempotency_key`` (jobs already written come back
                as the existing ids, nothing is written twice); jobs with auto ids may
                be added twice by such a retry if the failed chunk was in fact written.
            ConfigurationError, SerializationError, PayloadTooLargeError: a job is
                invalid (the message starts ``add_jobs item <index>:``), or ``jobs`` is
                not an iterable of jobs (ConfigurationError); nothing was written.
            Other errors (connection, timeout, permission) from the first chunk: no job
                is known written; the first chunk's jobs may or may not be.
        """
        return await self.producer.add_jobs(jobs)
