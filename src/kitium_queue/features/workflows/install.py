"""Enabling workflows on one ``JobQueue``: options, Lua, the transformer middleware.

``install(queue, retention_ms)`` runs once per queue object (every partition of a
``PartitionedQueue`` is one): it declares the job options (``workflow_id`` and
``depends_on`` with a placement, so a partitioned queue sends a workflow's jobs to one
partition), registers the scripts and slot fragments, the clear step, the workers' heal
of dependents (``heal.py``) and the process middleware that applies ``data_transformer``.
``parent_results`` reads a job's parents' results, as the middleware and
``JobChainManager.parent_results`` give them.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from ...copies import CopiedField, CopyKind, declare_copies
from ...errors import ConfigurationError, JobStateError, SerializationError
from ...jobtexts import view_copy
from ...limits import clip
from ...middleware import SEALED_TEXT_MARK
from ...options import check_text
from ...slots import ORDER_READY
from . import lua
from .explain import make_explainer
from .heal import heal_service
from .lua import FEATURE, MAX_PARENTS
from .model import MAX_NAME, POLICIES, ParentResult, resolve_transformer

if TYPE_CHECKING:
    from ...queue import JobQueue

__all__ = [
    "PublicId",
    "check_ids",
    "check_name",
    "check_policy",
    "install",
    "installed_retention",
    "parent_results",
    "set_public_id",
    "shown_error",
    "transformers_of",
]

_SEALED = SEALED_TEXT_MARK.encode()

#: ``public(inner id) -> id as the caller knows it`` (a partition's full ids).
PublicId = Callable[[str], str]

# Per queue object: the retention its scripts were built with, the transformers every
# manager of it registered, and how its job ids are shown (a partition's full ids).
_INSTALLED: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
_TRANSFORMERS: weakref.WeakKeyDictionary[Any, dict[str, Callable[..., Any]]] = (
    weakref.WeakKeyDictionary()
)
_PUBLIC: weakref.WeakKeyDictionary[Any, PublicId] = weakref.WeakKeyDictionary()


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v or "")


def check_ids(value: Any, section: str) -> list[str]:
    """A ``depends_on`` value: a list of at most ``MAX_PARENTS`` job ids."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ConfigurationError(f"{section}: depends_on must be a list of job ids")
    if len(value) > MAX_PARENTS:
        raise ConfigurationError(
            f"{section}: depends_on lists {len(value)} jobs, at most {MAX_PARENTS}"
        )
    # A parent named twice is one parent (counted twice, it would never be released).
    return list(
        dict.fromkeys(check_text(v, f"{section}: depends_on item", max_len=512) for v in value)
    )


def check_name(option: str) -> Callable[[Any, str], str]:
    """The normalizer of ``workflow_id`` / ``workflow_step``: text of at most
    ``MAX_NAME`` characters (they end up in job ids, keys and messages)."""

    def normalize(value: Any, section: str) -> str:
        return check_text(value, f"{section}: {option}", max_len=MAX_NAME)

    return normalize


def check_policy(value: Any, section: str) -> str:
    """An ``on_failure`` value."""
    if value not in POLICIES:
        raise ConfigurationError(
            f"{section}: on_failure must be one of {', '.join(POLICIES)}, got {value!r}"
        )
    return str(value)


def installed_retention(q: JobQueue) -> int | None:
    """The retention workflows were enabled with on ``q`` in this process, or None."""
    return _INSTALLED.get(q)


def transformers_of(q: JobQueue) -> dict[str, Callable[..., Any]]:
    """The transformers registered for ``q`` (the dict its middleware reads)."""
    return _TRANSFORMERS[q]


def set_public_id(q: JobQueue, public: PublicId) -> None:
    """Show ``q``'s job ids through ``public`` (a partition: its full ids)."""
    _PUBLIC[q] = public


def shown_error(q: JobQueue, jid: str, name: Any, raw: Any) -> str | None:
    """What the views show of job ``jid``'s failure reason ``raw`` (a copy in its
    dependency record, or its own; None for none): through the queue's copy views
    (``jobtexts.view_copy``), which open a sealed one where its key is held, as the job
    views do. ``name``: the job's name, what a sealed reason is bound to (None when
    unknown)."""
    if not raw:
        return None
    return view_copy(q.job_texts, jid, _text(name) if name else None, "error", _text(raw))


async def parent_results(q: JobQueue, jid: str) -> dict[str, ParentResult]:
    """The results of job ``jid``'s parents (``JobChainManager.parent_results``)."""
    client = await q.client()
    list_key = q.keys.extra(f"dep-p:{jid}")
    try:
        parents = await client.lrange(list_key, 0, MAX_PARENTS - 1)
    except ResponseError as exc:
        if "WRONGTYPE" not in str(exc):
            raise
        raise JobStateError(
            f"the list of parents of job {jid!r} ({list_key}) holds another type than a list "
            "(damaged by hand?): its parents' results cannot be read; repair or delete that key"
        ) from None
    if not parents:
        return {}
    pipe = client.pipeline(transaction=False)
    for p in parents:
        pipe.hmget(q.keys.extra(f"dep:{_text(p)}"), "s", "st", "r", "e", "en")
    rows = await pipe.execute(raise_on_error=False)
    names = await _error_names(q, client, parents, rows)
    public = _PUBLIC.get(q)
    out: dict[str, ParentResult] = {}
    for p, row in zip(parents, rows, strict=True):
        pid = public(_text(p)) if public else _text(p)
        if isinstance(row, ResponseError) and "WRONGTYPE" in str(row):
            # One parent's record of another type: that parent reads as damaged.
            why = f"its dependency record {q.keys.extra(f'dep:{_text(p)}')} holds another type"
            out[pid] = ParentResult(pid, None, "damaged", None, why + " (damaged by hand?)")
            continue
        if isinstance(row, BaseException):
            raise row
        step, st, raw, err, _ = row
        status, error = _text(st) or "missing", shown_error(q, _text(p), names.get(p), err)
        result = None
        if raw:
            try:
                result = q.ctx.serializer.loads(raw, "result")
            except SerializationError as exc:
                # One parent's stored result that does not decode (written by hand, by a
                # codec key no longer configured, truncated): that parent reads as
                # damaged, saying why; its bytes stay in Redis, the others read as usual.
                why = f"recorded {status}, but its {clip(str(exc), 300)}"
                error = f"{why}; its error: {error}" if error else why
                status = "damaged"
        key = _text(step) if step else pid
        out[key] = ParentResult(pid, _text(step) if step else None, status, result, error)
    return out


async def _error_names(
    q: JobQueue, client: Any, parents: list[Any], rows: list[Any]
) -> dict[Any, Any]:
    """The job names the failure reasons of ``parents`` (their dependency records,
    ``rows``) are bound to: the record's own (``en``, kept with a sealed reason), else,
    for a sealed reason recorded without it, its job's (``n``) while that record is
    there. A clear reason needs none."""
    names: dict[Any, Any] = {}
    missing: list[Any] = []
    for p, row in zip(parents, rows, strict=True):
        if isinstance(row, list) and row[4]:
            names[p] = row[4]
        elif isinstance(row, list) and row[3] and row[3].startswith(_SEALED):
            missing.append(p)
    if missing:
        pipe = client.pipeline(transaction=False)
        for p in missing:
            pipe.hget(q.keys.job(_text(p)), "n")
        for p, n in zip(missing, await pipe.execute(raise_on_error=False), strict=True):
            if isinstance(n, bytes):
                names[p] = n
    return names


def install(q: JobQueue, retain_ms: int) -> None:
    """Enable workflows on ``q`` (once; again with another retention is an error)."""
    have = _INSTALLED.get(q)
    if have is not None:
        if have != retain_ms:
            raise ConfigurationError(
                f"workflows are already enabled on queue {q.name!r} with retention_ms={have}; "
                "create one JobChainManager per queue, with the same arguments in every process"
            )
        return
    q.declare_option(
        "workflow_id",
        feature=FEATURE,
        normalize=check_name("workflow_id"),
        placement="key",
        doc="the workflow the job is a step of (features.workflows)",
    )
    q.declare_option(
        "workflow_step",
        feature=FEATURE,
        normalize=check_name("workflow_step"),
        doc="the job's step name in its workflow (features.workflows)",
    )
    q.declare_option(
        "depends_on",
        feature=FEATURE,
        normalize=check_ids,
        placement="job_ids",
        doc="ids of jobs that must complete before this one runs",
    )
    q.declare_option(
        "on_failure",
        feature=FEATURE,
        normalize=check_policy,
        doc="what the job's final failure does to its dependents",
    )
    q.declare_option(
        "data_transformer",
        feature=FEATURE,
        # A name, never a structure: a dict here could also carry other options' text.
        normalize=lambda v, section: check_text(v, f"{section}: data_transformer", max_len=300),
        doc="transformer applied to the data before the job runs (a registered name or "
        "'package.module:function')",
    )
    scripts = q.scripts
    for name in lua.SCRIPTS:
        scripts.add_fragment(name, lua.script(name, retain_ms))
    frags = lua.fragments(retain_ms)
    scripts.add_slot("accept", FEATURE, frags["accept"])
    # A job with unfinished parents is not ready: parked before any other feature hands
    # it a group turn, a tenant's ticket or a place (slots.ORDER_READY).
    scripts.add_slot("enqueue", FEATURE, frags["enqueue"], order=ORDER_READY)
    scripts.add_slot(
        "admission", FEATURE, frags["admission"], fields=lua.ADMISSION_FIELDS, order=ORDER_READY
    )
    # After the other features' fragments: every feature records the job's own end (the
    # regions feature's outbox entry among them) before this one draws its consequences
    # (dependents released, steps cancelled or revived, each with entries of its own),
    # so that a copy of the queue elsewhere, applying them in that order, draws the same.
    scripts.add_slot("release", FEATURE, frags["release"], order=lua.RELEASE_ORDER)
    # A copy of a job whose parents were added at its source after it was copied
    # (wait_for_dependencies on a multi-region queue) records them (requeue.lua).
    scripts.add_slot("requeue", FEATURE, frags["requeue"])
    erase = resources.files(__package__).joinpath("erase.lua").read_text("utf-8")
    scripts.add_slot("erase", FEATURE, erase)
    # Copies of job values in dep:<id> (prelude.lua): a cancelled step's data, kept for
    # its revival, a finished step's result, read by its dependents, and a failed step's
    # reason, which a feature may have sealed, bound to its job's name (en).
    declare_copies(
        q,
        CopyKind(
            FEATURE,
            "dep:",
            (
                CopiedField("sd", "data", name_field="sn"),
                CopiedField("r", "result"),
                CopiedField("e", "error", name_field="en"),
            ),
        ),
    )

    async def forget_workflows() -> None:
        # clear() deleted the jobs: the feature's own keys go too.
        client = await q.client()
        for pattern in ("dep*", "wf*"):
            found = [k async for k in client.scan_iter(match=q.keys.extra(pattern), count=1000)]
            for i in range(0, len(found), 500):
                await client.unlink(*found[i : i + 500])

    q.admin.add_clear_step(forget_workflows)
    # Dependents of jobs a process without the feature finished: released by the workers.
    q.add_service(heal_service(q))
    q.add_explainer(make_explainer(q))
    transformers: dict[str, Callable[..., Any]] = {}

    async def transform(job: Any, call_next: Callable[[], Any]) -> Any:
        # The step's data_transformer, on the worker, before it runs.
        name = job.options.get("data_transformer") if isinstance(job.options, dict) else None
        if name:
            fn = resolve_transformer(str(name), transformers)
            out = fn(job.data, await parent_results(q, str(job.id)))
            if inspect.isawaitable(out):
                out = await out
            job.data = out
        return await call_next()

    q.use_process(transform)
    _TRANSFORMERS[q] = transformers
    _INSTALLED[q] = retain_ms
