"""What a workflow is made of, checked before anything is written, and how it reads back.

``WorkflowStep`` declares one step; ``plan`` checks a whole list of them (names, parents,
cycles, policies, transformers) and orders them parents first. ``WorkflowStatus``,
``StepStatus``, ``WorkflowSummary`` and ``ParentResult`` are what the manager returns.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...errors import ConfigurationError
from ...options import check_text, to_int
from .lua import MAX_EDGES, MAX_KIDS, MAX_PARENTS, MAX_STEPS

__all__ = [
    "MAX_STEPS",
    "POLICIES",
    "ParentResult",
    "StepStatus",
    "WorkflowStatus",
    "WorkflowStep",
    "WorkflowSummary",
    "plan",
    "resolve_transformer",
]

#: What happens to a step's dependents when it fails for good.
POLICIES = ("fail_workflow", "continue", "skip")
#: Longest step name and workflow id, in characters (they end up in job ids and keys).
MAX_NAME = 200
#: Options a step may not set: the workflow chooses them.
_RESERVED = (
    "job_id",
    "workflow_id",
    "workflow_step",
    "depends_on",
    "on_failure",
    "data_transformer",
    "idempotency_key",
)


@dataclass(frozen=True, slots=True)
class WorkflowStep:
    """One step of a workflow.

    Attributes:
        name: the step's name, unique in its workflow (results are keyed by it).
        job_name: the processor that runs it.
        data: its payload (before its ``data_transformer``, if any).
        depends_on: names of the steps that must finish first.
        data_transformer: a name registered with ``JobChainManager.register_transformer``
            or an importable ``"package.module:function"`` path, called on the worker as
            ``fn(data, parent_results)`` before the step runs; its return value is the
            data the processor sees. (A closure or lambda cannot travel to another
            process: register it by name in every worker process.)
        retry_attempts: retries after a failed run (0: one run only).
        on_failure: what a final failure of this step does to its dependents:
            ``"fail_workflow"`` (default: the workflow fails, every step that has not
            started is cancelled), ``"continue"`` (dependents run; the error is in their
            ``parent_results``), ``"skip"`` (its dependents, transitively, are skipped;
            the rest of the workflow goes on).
        options: other job options (``priority``, ``timeout``, ``backoff``, ...).
    """

    name: str
    job_name: str
    data: Any = None
    depends_on: Sequence[str] = ()
    data_transformer: str | None = None
    retry_attempts: int = 0
    on_failure: str = "fail_workflow"
    options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, step: WorkflowStep | Mapping[str, Any]) -> WorkflowStep:
        """A step from itself or a mapping with the same keys."""
        if isinstance(step, WorkflowStep):
            return step
        if not isinstance(step, Mapping):
            raise ConfigurationError(
                f"a workflow step is a WorkflowStep or a mapping, got {type(step).__name__}"
            )
        known = set(cls.__dataclass_fields__)
        unknown = sorted(str(k) for k in step if k not in known)
        if unknown:
            raise ConfigurationError(
                f"step {step.get('name')!r}: unknown key(s) {', '.join(unknown)}; valid keys: "
                f"{', '.join(sorted(known))}"
            )
        for key in ("name", "job_name"):
            if key not in step:
                raise ConfigurationError(f"a workflow step needs {key!r}: {dict(step)!r:.200}")
        return cls(**{str(k): v for k, v in step.items()})


def resolve_transformer(
    name: str, registry: Mapping[str, Callable[..., Any]]
) -> Callable[..., Any]:
    """The function a ``data_transformer`` names: registered, or ``module:function``."""
    if name in registry:
        return registry[name]
    mod, sep, attr = name.partition(":")
    if not sep:
        mod, _, attr = name.rpartition(".")
    if not mod or not attr:
        raise ConfigurationError(
            f"data_transformer {name!r} is not registered (register_transformer) and is not "
            "an importable 'package.module:function' path"
        )
    try:
        fn = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(
            f"data_transformer {name!r} cannot be imported ({type(exc).__name__}: {exc}); "
            "register it with register_transformer or give a 'package.module:function' path"
        ) from None
    if not callable(fn):
        raise ConfigurationError(f"data_transformer {name!r} is not callable")
    return fn  # type: ignore[no-any-return]


def _check_step(
    step: WorkflowStep,
    processors: Mapping[str, Any] | None,
    registry: Mapping[str, Callable[..., Any]],
) -> None:
    check_text(step.name, "workflow step name", max_len=MAX_NAME)
    where = f"step {step.name!r}"
    check_text(step.job_name, f"{where}: job_name", max_len=200)
    # A "*" processor runs any job name without one of its own.
    if processors and step.job_name not in processors and "*" not in processors:
        raise ConfigurationError(
            f"{where}: no processor for job name {step.job_name!r} on this queue (known: "
            f"{', '.join(sorted(processors))[:300]})"
        )
    if step.on_failure not in POLICIES:
        raise ConfigurationError(
            f"{where}: on_failure must be one of {', '.join(POLICIES)}, got {step.on_failure!r}"
        )
    to_int(step.retry_attempts, f"{where}: retry_attempts", minimum=0, maximum=1000)
    if not isinstance(step.depends_on, (list, tuple)):
        raise ConfigurationError(
            f"{where}: depends_on is a list or tuple of step names, got "
            f"{type(step.depends_on).__name__}"
        )
    for p in step.depends_on:
        check_text(p, f"{where}: depends_on item", max_len=MAX_NAME)
    if len(set(step.depends_on)) > MAX_PARENTS:
        raise ConfigurationError(
            f"{where}: depends on {len(set(step.depends_on))} steps, at most {MAX_PARENTS}"
        )
    if not isinstance(step.options, Mapping):
        raise ConfigurationError(f"{where}: options must be a mapping")
    bad = sorted(k for k in step.options if k in _RESERVED)
    if bad:
        raise ConfigurationError(
            f"{where}: options {', '.join(bad)} are set by the workflow; use the step's "
            "fields (depends_on, on_failure, data_transformer) instead"
        )
    if step.data_transformer is not None:
        check_text(step.data_transformer, f"{where}: data_transformer", max_len=300)
        if (
            step.data_transformer not in registry
            and ":" not in step.data_transformer
            and "." not in step.data_transformer
        ):
            raise ConfigurationError(
                f"{where}: data_transformer {step.data_transformer!r} is not registered "
                "(register_transformer) and is not a 'package.module:function' path"
            )


def plan(
    steps: Sequence[WorkflowStep | Mapping[str, Any]],
    processors: Mapping[str, Any] | None = None,
    registry: Mapping[str, Callable[..., Any]] | None = None,
) -> list[WorkflowStep]:
    """Check a workflow's steps and order them parents first.

    Raises ``ConfigurationError`` naming the step at fault: a bad field, a duplicate
    name, a parent that is not a step, a step that depends on itself or a cycle.
    """
    if isinstance(steps, (str, bytes, Mapping)) or not isinstance(steps, Sequence):
        raise ConfigurationError("steps must be a list of WorkflowStep or mappings")
    if not steps:
        raise ConfigurationError("a workflow needs at least one step")
    if len(steps) > MAX_STEPS:
        raise ConfigurationError(
            f"a workflow has at most {MAX_STEPS} steps, got {len(steps)}; split it"
        )
    items = [WorkflowStep.of(s) for s in steps]
    by_name: dict[str, WorkflowStep] = {}
    for s in items:
        _check_step(s, processors, registry or {})
        if s.name in by_name:
            raise ConfigurationError(f"step {s.name!r} is declared twice; step names are unique")
        by_name[s.name] = s
    kids: dict[str, list[str]] = {n: [] for n in by_name}
    missing: dict[str, int] = {}
    edges = 0
    for s in items:
        parents = list(dict.fromkeys(s.depends_on))
        edges += len(parents)
        if edges > MAX_EDGES:
            # Each pair is written by the one script call that writes the workflow.
            raise ConfigurationError(
                f"step {s.name!r}: the workflow has more than {MAX_EDGES} dependencies in "
                "all (parent-step pairs); add a step between (a fan-in step) or split it"
            )
        for p in parents:
            if p == s.name:
                raise ConfigurationError(f"step {s.name!r} depends on itself")
            if p not in by_name:
                raise ConfigurationError(
                    f"step {s.name!r} depends on {p!r}, which is not a step of this workflow"
                )
            kids[p].append(s.name)
        missing[s.name] = len(parents)
    wide = next((p for p, k in kids.items() if len(k) > MAX_KIDS), None)
    if wide is not None:
        raise ConfigurationError(
            f"step {wide!r} has {len(kids[wide])} dependents, at most {MAX_KIDS}; add a step "
            "between to fan out further"
        )
    order = [n for n in by_name if missing[n] == 0]
    i = 0
    while i < len(order):
        for k in kids[order[i]]:
            missing[k] -= 1
            if missing[k] == 0:
                order.append(k)
        i += 1
    if len(order) < len(items):
        stuck = next(s.name for s in items if missing[s.name] > 0)
        raise ConfigurationError(
            f"step {stuck!r} is part of a dependency cycle (or depends on one); a workflow is a DAG"
        )
    return [by_name[n] for n in order]


@dataclass(frozen=True, slots=True)
class ParentResult:
    """What one parent left for its dependent (``JobChainManager.parent_results``).

    ``status``: ``completed`` or ``failed`` (a parent with ``on_failure="continue"``), or
    ``damaged`` when its dependency record holds another type (written by hand; ``error``
    says which key) or its stored result cannot be decoded (``error`` says the state it
    was recorded in and why; the stored bytes are left as they are); ``result``: its
    decoded result (as stored: an encrypted result stays sealed), None when damaged;
    ``error``: its failure reason when it failed.
    """

    job_id: str
    step: str | None
    status: str
    result: Any = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class StepStatus:
    """One step: ``state`` is ``pending`` (parents unfinished), ``waiting``, ``delayed``,
    ``active``, ``completed``, ``failed``, ``dlq`` (failed, replayable), ``skipped`` or
    ``cancelled`` (``damaged``: a record of it holds another type, written by hand, and
    nothing else tells its state). Times are ms since the epoch (Redis clock).
    ``damaged``: what is wrong with the step's records, or None."""

    name: str
    job_id: str
    state: str
    depends_on: list[str]
    attempts: int
    created_at: int | None
    started_at: int | None
    finished_at: int | None
    error: str | None
    damaged: str | None = None


@dataclass(frozen=True, slots=True)
class WorkflowStatus:
    """A workflow at a glance: ``state`` is ``running``, ``completed``, ``failed`` or
    ``cancelled``; ``counts`` the steps per state; ``failed_step`` the step that failed
    it; ``steps`` every step by name (in the order they were declared, parents first).
    ``damaged``: what is wrong with the workflow's own records (keys of another type,
    written by hand), or None; its ``state`` is then ``damaged`` when unreadable."""

    workflow_id: str
    state: str
    failed_step: str | None
    total: int
    unfinished: int
    counts: dict[str, int]
    created_at: int | None
    finished_at: int | None
    steps: dict[str, StepStatus]
    damaged: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the CLI's ``--json``)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class WorkflowSummary:
    """One row of ``list_workflows`` (``damaged``: what is wrong with its record, a key
    of another type written by hand; its ``state`` is then ``damaged``)."""

    workflow_id: str
    state: str
    created_at: int | None
    finished_at: int | None
    total: int
    unfinished: int
    damaged: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the CLI's ``--json``)."""
        return dataclasses.asdict(self)
