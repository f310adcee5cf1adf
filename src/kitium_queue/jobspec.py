"""The job-option registry: every job option is declared once, by the feature that owns it.

A queue accepts exactly the options declared in its ``JobSpec`` (``queue.jobspec``). The
core declares its own (``attempts``, ``delay``, ``priority``, ``backoff``, ``timeout``,
``remove_on_complete``, ``remove_on_fail``, ``job_id``, ``lifo``, ``jitter``,
``idempotency_key``, ``delivery_guarantee``) through the same ``declare`` call a feature
uses for its options (flow control's ``rate_limit_key``, a tenancy feature's
``tenant_id``): ``queue.declare_option(...)``, or ``queue.own_options(feature, names)``
for options that carry ids or keys and need no validation of their own.

Each declaration (``OptionSpec``) says:

* ``name``, and the ``feature`` that owns it (``"core"`` for the core's options);
* ``normalize(value, section)``: checks a value and returns its canonical stored form,
  raising ``ConfigurationError`` naming the option (``section`` is where the value came
  from: ``"job"``, ``"default_job_options"`` or ``"schedule"``, the start of the message);
* ``default``: what applies when neither the job nor the queue's ``default_job_options``
  set it (``None``: nothing). The registry never writes it into a job; whoever reads
  the option applies it (the worker, the enqueue script, the feature's Lua);
* ``stored``: whether the value is kept in the job's stored options (the record's ``o``
  field, which the worker and the features' Lua read, and ``JobInfo.options`` /
  ``job.options`` show) or only travels as an argument of the enqueue script
  (``job_id``, which is the job's id). ``delay``, ``priority`` and ``lifo`` travel as
  arguments and are stored too, so a job shows every option it was added with.
* ``placement``: what the option says about where a job goes when a queue is made of
  several queues (a ``PartitionedQueue``; ``PLACEMENTS``): ``""`` nothing, ``"key"``
  its value is a key that pins the job to a member, as a ``partition_key`` does (jobs
  with the same value share a member), ``"job_ids"`` its value lists jobs of the same
  queue by their full ids: the job goes to their member, and the ids are passed on as
  that member knows them. The façade reads this; the core never names the options.

An option nobody declared is refused with "unknown job option ... (did you mean ...)". The
brief's feature options (``FEATURE_OPTION_NAMES``: ``message_group_id``, ``tenant_id``,
...) are known by name only, for a clearer message while their feature is not enabled,
naming the feature and how to enable it (``FEATURE_HOWTO``): "option 'message_group_id'
needs FIFO groups (not enabled on queue 'q'): create FIFOQueueManager(queue) ...".
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields, replace
from datetime import timedelta
from typing import Any

from .enums import DeliveryGuarantee
from .errors import ConfigurationError, KitiumQueueError
from .featureopts import FEATURE_HOWTO, FEATURE_OPTION_NAMES, KNOWN_FEATURE_OPTIONS, feature_needed
from .limits import MAX_ID_LENGTH, clip
from .options import (
    MAX_COUNT,
    MAX_PRIORITY,
    BackoffOptions,
    JobOptions,
    Policy,
    RetentionPolicy,
    check_text,
    coerce,
    has_bad_char,
    shown,
    to_int,
    to_ms,
    unknown_options_error,
)

__all__ = [
    "CORE",
    "FEATURE_HOWTO",
    "FEATURE_OPTION_NAMES",
    "PLACEMENTS",
    "JobSpec",
    "Normalizer",
    "OptionSpec",
    "check_job_id",
    "check_option_text",
    "feature_needed",
    "feature_text",
    "job_items",
    "name_item",
    "options_dict",
    "resolve_policy",
]

#: The owner of the core's options.
CORE = "core"

#: The kinds of ``OptionSpec.placement`` (see the module docstring).
PLACEMENTS = ("", "key", "job_ids")

#: ``normalize(value, section) -> stored value``; raises ``ConfigurationError``.
Normalizer = Callable[[Any, str], Any]


@dataclass(frozen=True, slots=True)
class OptionSpec:
    """The declaration of one job option (see the module docstring)."""

    name: str
    feature: str
    normalize: Normalizer
    default: Any = None
    stored: bool = True
    doc: str = ""
    placement: str = ""


# ---------------------------------------------------------------------------- checks
def check_job_id(value: Any, what: str) -> str:
    """A caller-chosen job id: ``check_text`` rules, and not made of ASCII digits only.

    Auto-generated ids are the queue's sequence numbers ("1", "2", ...): a chosen id
    from that namespace would meet one of them (and replace it, or be mistaken for it),
    so the two namespaces are kept apart here.
    """
    job_id = check_text(value, what, max_len=MAX_ID_LENGTH)
    if job_id.isascii() and job_id.isdigit():
        raise ConfigurationError(
            f"{what} {shown(job_id)} is made of digits only: numeric ids are reserved for "
            f"the ids the queue generates itself, and a chosen one would collide with "
            f"them; add a prefix, such as 'order-{clip(job_id, 40)}'"
        )
    return job_id


def check_option_text(value: Any, what: str) -> None:
    """Refuse control characters and lone surrogates in a feature option's text (a str,
    or the str items of a list such as ``depends_on``); other values pass through and
    are checked when the options are encoded. (Their length is the owning feature's
    business: the message names no limit.)"""
    if isinstance(value, str):
        if has_bad_char(value):
            check_text(value, what, max_len=None)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            if isinstance(item, str) and has_bad_char(item):
                check_text(item, f"{what}[{i}]", max_len=None)


def feature_text(name: str) -> Normalizer:
    """The normalizer of a feature option that carries ids or keys (a group, a tenant, a
    rate-limit key): stored as given, but text that cannot be encoded or holds control
    characters is refused here, so the job fails alone instead of the batch it would
    join (such values often end up in key names and logs)."""

    def normalize(value: Any, section: str) -> Any:
        check_option_text(value, f"{section}: {name}")
        return value

    return normalize


# ---------------------------------------------------------------------------- core options
def _attempts(value: Any, section: str) -> int:
    return to_int(value, f"{section}: attempts", minimum=1, maximum=MAX_COUNT)


def _backoff(value: Any, section: str) -> dict[str, Any]:
    if isinstance(value, BackoffOptions):
        return value.to_dict()
    if isinstance(value, Mapping):
        return coerce(BackoffOptions, value, f"{section}.backoff").to_dict()
    if isinstance(value, (int, float, timedelta)) and not isinstance(value, bool):
        return BackoffOptions("fixed", value).to_dict()
    raise ConfigurationError(
        f"{section}: backoff must be a dict, BackoffOptions or ms, got {shown(value)}"
    )


def _duration(name: str) -> Normalizer:
    # timeout: 0 = no limit; a positive value below 1 ms becomes 1 ms (to_ms), so
    # timeout=0.4 cannot turn into "no limit".
    def normalize(value: Any, section: str) -> int:
        return to_ms(value, f"{section}.{name}")

    return normalize


def _priority(value: Any, section: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_PRIORITY:
        raise ConfigurationError(
            f"{section}: priority must be an int from 0 to {MAX_PRIORITY} (higher runs "
            f"first), got {shown(value)}"
        )
    return int(value)


def _retention(name: str) -> Normalizer:
    def normalize(value: Any, section: str) -> dict[str, int]:
        rp = RetentionPolicy.parse(value, f"{section}.{name}")
        return {"count": rp.count, "age": rp.age}

    return normalize


def _job_id(value: Any, section: str) -> str:
    return check_job_id(value, f"{section}: job_id")


def _idempotency_key(value: Any, section: str) -> str:
    return check_text(value, f"{section}: idempotency_key", max_len=MAX_ID_LENGTH)


def _job_id_window(value: Any, section: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{section}: job_id_window must be a bool, got {shown(value)}")
    return value


def _lifo(value: Any, section: str) -> bool:
    if not isinstance(value, bool) and value not in (0, 1):
        raise ConfigurationError(f"{section}: lifo must be a bool, got {shown(value)}")
    return bool(value)


def _core_options(delivery_guarantee: Normalizer) -> tuple[OptionSpec, ...]:
    c = CORE
    return (
        OptionSpec("attempts", c, _attempts, None, True, "runs in all (retry.max_attempts)"),
        OptionSpec("delay", c, _duration("delay"), 0, True, "ms before the job may start"),
        OptionSpec("priority", c, _priority, 0, True, "0..65535, higher runs first"),
        OptionSpec("backoff", c, _backoff, None, True, "delay before each retry (retry config)"),
        OptionSpec("timeout", c, _duration("timeout"), 300_000, True, "ms a run may take"),
        OptionSpec(
            "remove_on_complete",
            c,
            _retention("remove_on_complete"),
            None,
            True,
            "retention of completed jobs (newest 1000)",
        ),
        OptionSpec(
            "remove_on_fail",
            c,
            _retention("remove_on_fail"),
            None,
            True,
            "retention of failed jobs (all)",
        ),
        OptionSpec("job_id", c, _job_id, None, False, "your own id (else a sequence number)"),
        OptionSpec("lifo", c, _lifo, False, True, "before the others of its priority"),
        OptionSpec(
            "job_id_window",
            c,
            _job_id_window,
            True,
            False,
            "False: a removed job's chosen id may be added again at once",
        ),
        OptionSpec("jitter", c, _duration("jitter"), 0, True, "random extra delay, ms"),
        OptionSpec(
            "idempotency_key",
            c,
            _idempotency_key,
            None,
            True,
            "duplicates within the idempotency window return the first job's id",
        ),
        OptionSpec(
            "delivery_guarantee",
            c,
            delivery_guarantee,
            "at-least-once",
            True,
            "'exactly-once' needs IdempotencyManager(queue)",
        ),
    )


# ---------------------------------------------------------------------------- registry
class JobSpec:
    """The job options one queue accepts (``queue.jobspec``): see the module docstring.

    Args:
        queue_name: the queue's name, for error messages.
    """

    def __init__(self, queue_name: str) -> None:
        self.queue_name = queue_name
        self._specs: dict[str, OptionSpec] = {}
        #: Bumped by every declaration or take-over (readers cache what they derive).
        self.version = 0
        #: Names of declared options that are not kept in the job's stored options.
        self.unstored: frozenset[str] = frozenset()
        #: Custom backoff strategies by name (``queue.register_backoff``), the same dict
        #: as ``JobQueue.backoff_strategies``.
        self.backoff_strategies: dict[str, Callable[..., Any]] = {}
        for spec in _core_options(self._delivery_guarantee):
            self.declare(spec)

    def declare(self, spec: OptionSpec) -> None:
        """Add ``spec`` to the registry; declaring the same name again from the same
        feature replaces it, from another feature is an error."""
        name = spec.name
        if not isinstance(name, str) or not name.isidentifier():
            raise ConfigurationError(
                f"{spec.feature}: option name must be a Python identifier, got {shown(name)}"
            )
        if not callable(spec.normalize):
            raise ConfigurationError(f"{spec.feature}: normalize of {name!r} is not callable")
        if spec.placement not in PLACEMENTS:
            raise ConfigurationError(
                f"{spec.feature}: placement of {name!r} must be one of "
                f"{', '.join(repr(p) for p in PLACEMENTS)}, got {shown(spec.placement)}"
            )
        cur = self._specs.get(name)
        if cur is not None and cur.feature != spec.feature:
            raise ConfigurationError(
                f"{spec.feature}: option {name!r} is already declared by {cur.feature!r} "
                f"on queue {self.queue_name!r}"
            )
        self._specs[name] = spec
        self.version += 1
        self.unstored = frozenset(n for n, s in self._specs.items() if not s.stored)

    def own(self, feature: str, names: Iterable[str]) -> None:
        """``feature`` handles the options ``names``: an option not declared yet is
        declared as a feature option carrying ids or keys (``feature_text``); one declared
        already (a core option) is taken over, keeping its normalizer."""
        for name in names:
            cur = self._specs.get(name)
            if cur is None:
                self.declare(OptionSpec(name, feature, feature_text(name)))
            elif cur.feature != feature:
                self._specs[name] = replace(cur, feature=feature)
                self.version += 1

    def get(self, name: str) -> OptionSpec | None:
        """The declaration of ``name``, or None."""
        return self._specs.get(name)

    def placements(self) -> tuple[tuple[str, str], ...]:
        """``(name, placement)`` of every option that says where a job goes
        (``OptionSpec.placement``), in the order declared."""
        return tuple((s.name, s.placement) for s in self._specs.values() if s.placement)

    def specs(self) -> tuple[OptionSpec, ...]:
        """Every declaration, in the order declared (the core's first)."""
        return tuple(self._specs.values())

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def check(self, opts: Mapping[Any, Any], section: str) -> dict[str, Any]:
        """``opts`` validated and in canonical stored form (options set to None dropped).

        Raises ``ConfigurationError``: unknown options (all named, with suggestions),
        a feature option whose feature is not enabled, or an invalid value.
        """
        self.check_names(opts, section)
        for name in ("job_id", "idempotency_key") if section == "default_job_options" else ():
            if opts.get(name) is not None:  # one job's identity: every job would share it
                raise ConfigurationError(
                    f"default_job_options: {name} names one job and cannot be a default: "
                    f"every job would get the same {name}, and each one after the first "
                    f"would be taken as its duplicate and not added; pass {name} to "
                    "add_job for each job instead"
                )
        specs = self._specs
        return {k: specs[k].normalize(v, section) for k, v in opts.items() if v is not None}

    def check_names(self, opts: Mapping[Any, Any], section: str, also: Iterable[str] = ()) -> None:
        """Refuse option names this queue does not accept: unknown ones as "unknown
        <section> option" with the closest of the job options and ``also`` (the other
        names valid where they came from, such as the schedule options) as a
        suggestion; a feature option whose feature is not enabled by what it needs."""
        specs = self._specs
        extra = set(also)
        bad = [k for k in opts if k not in specs and k not in KNOWN_FEATURE_OPTIONS
               and k not in extra]  # fmt: skip
        if bad:
            valid = sorted(set(specs) | KNOWN_FEATURE_OPTIONS | extra)
            raise unknown_options_error(section, bad, valid)
        for k, v in opts.items():
            if v is not None and k not in specs and k not in extra:
                raise feature_needed(k, self.queue_name)

    def check_backoff(self, backoff: Any, section: str = "job") -> None:
        """Refuse a custom backoff whose strategy is not registered on this queue (in
        this process): a job with it would fail for good at its first failure."""
        if not isinstance(backoff, Mapping) or backoff.get("type") != "custom":
            return
        name = backoff.get("strategy")
        if name in self.backoff_strategies:
            return
        known = sorted(self.backoff_strategies)
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigurationError(
            f"{section}: custom backoff strategy {shown(name)}{hint} is not registered on "
            f"queue {self.queue_name!r} (registered: {known or 'none'}); call "
            f"queue.register_backoff({shown(name)}, fn) first, in every process that adds "
            "or runs such jobs"
        )

    def _delivery_guarantee(self, value: Any, section: str) -> str:
        # The one core option whose accepted values depend on a feature: 'exactly-once'
        # is accepted once a feature has taken the option over (``own``/``declare``).
        try:
            dg = DeliveryGuarantee(value)
        except ValueError:
            raise ConfigurationError(
                f"delivery_guarantee must be 'at-least-once' or 'exactly-once', got {shown(value)}"
            ) from None
        if (
            dg is DeliveryGuarantee.EXACTLY_ONCE
            and self._specs["delivery_guarantee"].feature == CORE
        ):
            raise ConfigurationError(
                "delivery_guarantee='exactly-once' needs effectively-once processing, "
                f"which is not enabled on queue {self.queue_name!r}: create "
                "IdempotencyManager(queue) first; for duplicate suppression alone pass "
                "idempotency_key=..."
            )
        return dg.value


def options_dict(value: Any) -> dict[str, Any]:
    """Job options given as a ``JobOptions`` (its fields that are set), a mapping, or None."""
    if value is None:
        return {}
    if isinstance(value, JobOptions):
        return {
            f.name: getattr(value, f.name)
            for f in fields(value)
            if getattr(value, f.name) is not None
        }
    if isinstance(value, Mapping):
        return dict(value)
    raise ConfigurationError(f"options must be a dict or JobOptions, got {type(value).__name__}")


# ---------------------------------------------------------------------------- policy
#: The stored options a job's policy is made of (``resolve_policy`` reads no other): a
#: job that sets none of them runs under its queue's policy.
POLICY_OPTIONS = frozenset(
    {"attempts", "backoff", "timeout", "jitter", "remove_on_complete", "remove_on_fail"}
)


def resolve_policy(opts: Any, base: Policy) -> tuple[Policy, list[str]]:
    """The policy of a job from its stored options, and what was wrong with them.

    Options come from Redis and may have been damaged (by hand, by another client): each
    option that is not valid is skipped, so the base policy applies to it, and described
    in the returned list. Only ``POLICY_OPTIONS`` are read.
    """
    p = Policy(
        base.attempts,
        base.backoff,
        base.timeout_ms,
        base.jitter_ms,
        base.keep_completed,
        base.keep_failed,
    )
    if not isinstance(opts, Mapping):
        return p, [f"options are not a JSON object ({type(opts).__name__})"]
    problems: list[str] = []

    def retention(v: Any, what: str) -> RetentionPolicy:
        if not isinstance(v, Mapping):
            raise ConfigurationError(f"{what} is not an object")
        count, age = v.get("count", -1), v.get("age", -1)
        if not (type(count) is int and count == -1):
            count = to_int(count, f"{what}.count", minimum=0, maximum=MAX_COUNT)
        if not (type(age) is int and age == -1):
            age = to_ms(age, f"{what}.age")
        return RetentionPolicy(count, age)

    for key, value in opts.items():
        if key not in POLICY_OPTIONS:
            continue
        try:
            if key == "attempts":
                p.attempts = to_int(value, "attempts", minimum=1, maximum=MAX_COUNT)
            elif key == "backoff":
                if not isinstance(value, Mapping):
                    raise ConfigurationError("backoff is not an object")
                p.backoff = coerce(BackoffOptions, value, "backoff")
            elif key == "timeout":
                p.timeout_ms = to_ms(value, "timeout") or None
            elif key == "jitter":
                p.jitter_ms = to_ms(value, "jitter")
            elif key == "remove_on_complete":
                p.keep_completed = retention(value, key)
            elif key == "remove_on_fail":
                p.keep_failed = retention(value, key)
        except (ConfigurationError, TypeError, ValueError) as exc:
            problems.append(f"option {shown(key)} ignored ({clip(str(exc), 200)})")
    return p, problems


def job_items(jobs: Any) -> Iterator[tuple[int, Any]]:
    """``(index, item)`` of the jobs given to ``add_jobs``: any iterable but a str, bytes
    or a mapping (one job's dict, or a mistake); else ``ConfigurationError``."""
    it = None
    if not isinstance(jobs, (str, bytes, bytearray, Mapping)):
        with contextlib.suppress(TypeError):
            it = iter(jobs)
    if it is None:
        one = " (for one job, use add_job)" if isinstance(jobs, Mapping) else ""
        raise ConfigurationError(
            "add_jobs takes an iterable of jobs (such as a list), each a dict with name, "
            f"data and options or a (name, data[, options]) tuple; got "
            f"{type(jobs).__name__}{one}"
        )
    return enumerate(it)


def name_item(i: int, exc: BaseException) -> None:
    """Make ``exc``, raised for item ``i`` of an ``add_jobs`` call, say which item it is.

    A library error whose message is its one argument gets it as a prefix (``add_jobs
    item 637: ...``), in place, so its type, attributes and traceback stay; any other
    exception (from a middleware) gets a note (on Python 3.10, which has no notes, the
    prefix when its message is its one argument).
    """
    head = f"add_jobs item {i}"
    args = exc.args
    add_note = getattr(exc, "add_note", None)
    # Python 3.10 has no notes: any exception's one-text message takes the prefix too.
    prefix = isinstance(exc, KitiumQueueError) or add_note is None
    if prefix and len(args) == 1 and isinstance(args[0], str) and str(exc) == args[0]:
        if not args[0].startswith(head):
            exc.args = (f"{head}: {args[0]}",)
        return
    if add_note is not None and not isinstance(exc, KitiumQueueError):
        add_note(f"(raised for {head})")


def job_item(i: int, item: Any) -> tuple[Any, Any, dict[str, Any]]:
    """``(name, data, options)`` of item ``i`` of an ``add_jobs`` call: a dict
    ``{"name", "data", "options" (or "opts")}`` or a ``(name, data[, options])`` tuple.

    The name is returned as given (the producer refuses one that is not a non-empty
    string, as ``add_job`` does).
    """
    if isinstance(item, Mapping):
        extra = [k for k in item if k not in ("name", "data", "options", "opts")]
        if extra:
            raise ConfigurationError(
                f"add_jobs item {i}: unknown key(s) {extra}; use name, data, options"
            )
        if "options" in item and "opts" in item:  # one of them would be dropped unseen
            raise ConfigurationError(f"add_jobs item {i}: give options or opts, not both")
        opts = options_dict(item.get("options", item.get("opts")))
        return item.get("name"), item.get("data"), opts
    if isinstance(item, (tuple, list)) and len(item) in (2, 3):
        return item[0], item[1], options_dict(item[2]) if len(item) == 3 else {}
    raise ConfigurationError(f"add_jobs item {i} must be a dict or a (name, data[, options]) tuple")
