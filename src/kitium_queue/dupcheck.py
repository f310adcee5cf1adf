"""Duplicate checks on the add path (``hooks.DuplicateCheck``).

An add whose job was there already (the enqueue script's ``dup``: its ``job_id`` or
idempotency key is taken, nothing was written) returns that job's id. A feature may
want a say first (effectively-once's ``idempotency_conflict="raise"``: a key reused
with other data is an error): it registers a check on the queue's hook bus
(``ctx.hooks.add_duplicate_check``), and the producer hands the call's duplicates here
(``check``; ``check_blocking`` for ``SyncJobQueue.add_job`` in the caller's thread).

Nothing here runs for an add that wrote its job, nor for a duplicate no check
``wants``: the producer calls in only when the reply held a ``dup`` and a check is
registered, and only the duplicates some check wants are read, with one ``HMGET`` each
of the job's name, data and options (pipelined: one round trip for the call). Each is
handed to the checks as a ``FoundDuplicate``: the add's data encoded as the add would
store it and decoded again, and the stored data decoded, both through the queue's codecs
and payload views (a process holding the keys of an encrypted job sees its plaintext).
A value that a payload view hides when it redacts but leaves as it is when it opens is
one this process cannot open (a key it does not hold): nothing to compare
(``readable`` False), as for a record that is gone or does not decode.

A check that refuses puts its reason among the call's refusals and the add's id
becomes ``""``, as for a refusal of the ``accept`` slot: ``add_job`` raises the
reason's error, ``add_jobs`` reports it in ``JobRefusedError``. A check that raises
refuses that add the same way (its reason names the check and the error's type; the
error is logged by type), so the jobs an ``add_jobs`` wrote before are still reported.

Only a record's own damage makes it unreadable: a ``WRONGTYPE`` reply (the job key
holds another type) or ``DamagedKeyError``. Any other failure of the read (a lost
connection, a ``NOPERM``, ``BUSY``, ``LOADING``, ``CLUSTERDOWN``, ``MASTERDOWN`` or
``TRYAGAIN`` reply) leaves the duplicates it was for not known to match: when every job
of the call that has an id is one being checked (an ``add_job``; an ``add_jobs`` that
wrote nothing and holds no other duplicate), the error is raised as it is; otherwise
each of them is refused with a reason saying so (credentials redacted), and the call's
other jobs, written or found, stand.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson
from redis.exceptions import ResponseError

from .enums import JobStatus
from .errors import DamagedKeyError
from .hooks import DuplicateCheck, FoundDuplicate
from .job import JobInfo
from .limits import get_logger
from .wire import ENQUEUE_JOB

if TYPE_CHECKING:
    from .context import QueueContext

__all__ = ["FIELDS", "check", "check_blocking"]

log = get_logger(__name__)

#: What is read of a duplicate's job record: name, data, options.
FIELDS = ("n", "d", "o")
_ID, _NAME, _DATA, _OPTS, _KEY = (
    ENQUEUE_JOB.index(f) for f in ("id", "name", "data", "opts", "idempotency_key")
)
#: A payload that cannot be read here.
_UNREADABLE: Any = object()

#: (position in the call, the add's options over the queue's defaults, the checks that
#: want it).
_Todo = list[tuple[int, dict[str, Any], list[DuplicateCheck]]]


def _damaged(exc: BaseException) -> bool:
    """Whether a read's error is its record's own (the key holds another type): that
    record is unreadable. Any other error says nothing of the record (``_unread``)."""
    if isinstance(exc, DamagedKeyError):
        return True
    return isinstance(exc, ResponseError) and "WRONGTYPE" in str(exc)


def _wanted(
    ctx: QueueContext,
    options: Sequence[Mapping[str, Any]] | None,
    ids: list[str],
    dups: set[int],
    refused: dict[int, str],
) -> _Todo:
    """The duplicates of the call some check wants to look at, with those checks."""
    checks = ctx.hooks.duplicate_checks
    defaults = ctx.defaults
    todo: _Todo = []
    for i in sorted(dups):
        if i >= len(ids) or not ids[i]:
            continue
        given = options[i] if options is not None and i < len(options) else {}
        # An option set to None is not given (``prepare`` drops it): the default holds.
        opts = {**defaults, **{k: v for k, v in given.items() if v is not None}}
        want: list[DuplicateCheck] = []
        for c in checks:
            try:
                if c.wants(opts):
                    want.append(c)
            except Exception as exc:
                _refuse(i, _failed(ctx, c, "wants", exc, ids[i]), ids, refused)
                break
        if want and ids[i]:
            todo.append((i, opts, want))
    return todo


async def check(
    ctx: QueueContext,
    client: Any,
    prepared: Sequence[Sequence[Any]],
    options: Sequence[Mapping[str, Any]] | None,
    ids: list[str],
    dups: set[int],
    refused: dict[int, str],
    *,
    may_raise: bool = True,
) -> None:
    """Run the duplicate checks on the call's duplicates (see the module docstring):
    a refused one leaves ``ids`` for ``refused``. ``may_raise``: whether a failed read
    may be raised as it is (``_unread``; False: the call failed already, its own error
    goes on)."""
    todo = _wanted(ctx, options, ids, dups, refused)
    if not todo:
        return
    keys = [ctx.keys.job(ids[t[0]]) for t in todo]
    records: list[Any]
    try:
        if len(keys) == 1:
            try:
                records = [await client.hmget(keys[0], *FIELDS)]
            except (ResponseError, DamagedKeyError) as exc:
                records = [exc]  # an error reply: sifted below
        else:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.hmget(key, *FIELDS)
            records = await pipe.execute(raise_on_error=False)
    except Exception as exc:
        _unread(ctx, [(t[0], exc) for t in todo], todo, ids, refused, may_raise)
        return
    todo, records = _sift(ctx, todo, records, ids, refused, may_raise)
    _judge(ctx, todo, records, prepared, ids, refused)


def check_blocking(
    ctx: QueueContext,
    read: Callable[..., Any],
    prepared: Sequence[Sequence[Any]],
    options: Sequence[Mapping[str, Any]] | None,
    ids: list[str],
    dups: set[int],
    refused: dict[int, str],
) -> None:
    """``check`` for a caller's thread: ``read(*command)`` runs one command over a
    blocking connection and returns its reply (an error reply as its
    ``ResponseError``: ``BlockingScripts.command``)."""
    todo = _wanted(ctx, options, ids, dups, refused)
    if not todo:
        return
    records: list[Any] = []
    for t in todo:
        try:
            records.append(read("HMGET", ctx.keys.job(ids[t[0]]), *FIELDS))
        except Exception as exc:  # no reply (a lost connection, a close): never the record's
            _unread(ctx, [(t[0], exc)], todo, ids, refused, True)
            return
    todo, records = _sift(ctx, todo, records, ids, refused, True)
    _judge(ctx, todo, records, prepared, ids, refused)


def _sift(
    ctx: QueueContext,
    todo: _Todo,
    records: Sequence[Any],
    ids: list[str],
    refused: dict[int, str],
    may_raise: bool,
) -> tuple[_Todo, list[Any]]:
    """The reads to hand to the checks: those whose error is not their record's own
    damage (a ``NOPERM``, ``BUSY``, ``CLUSTERDOWN`` ... reply) go to ``_unread``."""
    failed = [
        (t[0], r)
        for t, r in zip(todo, records, strict=True)
        if isinstance(r, BaseException) and not _damaged(r)
    ]
    if not failed:
        return todo, list(records)
    _unread(ctx, failed, todo, ids, refused, may_raise)
    lost = {i for i, _ in failed}
    kept = [(t, r) for t, r in zip(todo, records, strict=True) if t[0] not in lost]
    return [t for t, _ in kept], [r for _, r in kept]


def _unread(
    ctx: QueueContext,
    failed: Sequence[tuple[int, BaseException]],
    todo: _Todo,
    ids: list[str],
    refused: dict[int, str],
    may_raise: bool,
) -> None:
    """Reads for the checks failed (``failed``: position, error): raise the first error
    when every job of the call that has an id is being checked (the call wrote no job,
    and no duplicate outside the checks waits for its id); else refuse the duplicates
    whose read failed (nothing of them was written)."""
    checked = {t[0] for t in todo}
    if may_raise and all(not j or n in checked for n, j in enumerate(ids)):
        raise failed[0][1]
    for i, exc in failed:
        why = ctx.connection.redact(f"{type(exc).__name__}: {exc}")
        reason = (
            f"its job_id or idempotency key is job {ids[i]}'s, whose data could not be "
            f"read to check it ({why}); the job was not added: add it again"
        )
        _refuse(i, reason, ids, refused)


def _failed(ctx: QueueContext, c: DuplicateCheck, step: str, exc: Exception, job_id: str) -> str:
    """A check's ``wants`` or ``check`` raised on job ``job_id``'s duplicate: logged by
    type (never its message: it may quote the data); the refusal reason."""
    log.warning(
        "queue %s: duplicate check %s failed in %s (%s) on an add that found job %s; "
        "that add is refused",
        ctx.name,
        type(c).__name__,
        step,
        type(exc).__name__,
        job_id,
    )
    return (
        f"its job_id or idempotency key is job {job_id}'s, and the duplicate check "
        f"{type(c).__name__} failed on it ({type(exc).__name__} in {step}); the job was "
        "not added"
    )


def _refuse(i: int, reason: str, ids: list[str], refused: dict[int, str]) -> None:
    refused[i] = reason
    ids[i] = ""


def _judge(
    ctx: QueueContext,
    todo: _Todo,
    records: Sequence[Any],
    prepared: Sequence[Sequence[Any]],
    ids: list[str],
    refused: dict[int, str],
) -> None:
    """Hand each duplicate read to the checks that want it; the first refusal decides
    (a check that raises refuses: ``_failed``)."""
    for (i, opts, checks), record in zip(todo, records, strict=True):
        job_id = ids[i]
        found = _found(ctx, job_id, prepared[i], opts, record)
        for c in checks:
            try:
                reason = c.check(found)
            except Exception as exc:
                reason = _failed(ctx, c, "check", exc, job_id)
            if reason:
                _refuse(i, reason, ids, refused)
                break


def _found(
    ctx: QueueContext, job_id: str, p: Sequence[Any], opts: dict[str, Any], record: Any
) -> FoundDuplicate:
    """What the checks see of one duplicate (``record``: the HMGET reply of FIELDS, or
    the error reading it)."""
    head = (ctx.name, job_id, p[_NAME], p[_KEY] or "", p[_ID] or "", opts)
    if isinstance(record, BaseException) or not record or record[1] is None:
        return FoundDuplicate(*head, readable=False)  # gone (or another type)
    name = _text(record[0])
    found = _payload(ctx, job_id, name, record[1], record[2])
    new = _payload(ctx, p[_ID] or job_id, p[_NAME], p[_DATA], p[_OPTS])
    if found is _UNREADABLE or new is _UNREADABLE:
        return FoundDuplicate(*head, readable=False, found_name=name)
    return FoundDuplicate(*head, readable=True, data=new, found_data=found, found_name=name)


def _payload(ctx: QueueContext, job_id: str, name: str, raw: bytes, raw_opts: Any) -> Any:
    """A job's data decoded and through the payload views, as a query in this process
    shows it (redaction aside); ``_UNREADABLE`` when it cannot be read here."""
    try:
        value = ctx.serializer.loads(raw)
        views = ctx.info_views
        if not views:
            return value
        opts = orjson.loads(raw_opts) if raw_opts else {}
        opts = opts if isinstance(opts, dict) else {}
        opened = JobInfo(job_id, name, JobStatus.WAITING, data=value, options=opts)
        for view in views:
            view(opened, False)
        if opened.data is not value:
            return opened.data  # opened (decrypted) by a view
        # Left as stored: plain, or sealed where this process cannot open it (a view
        # hides it when redacting).
        hidden = JobInfo(job_id, name, JobStatus.WAITING, data=value, options=dict(opts))
        for view in views:
            view(hidden, True)
        return value if hidden.data is value else _UNREADABLE
    except Exception as exc:
        log.warning(
            "queue %s: the data of job %s could not be read for a duplicate check (%s); "
            "it is not compared",
            ctx.name,
            job_id,
            type(exc).__name__,
        )
        return _UNREADABLE


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")
