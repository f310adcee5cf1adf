"""The access model: permissions, roles as bundles of them, grants, and which
permission each administrative command and read needs.

Permissions (``Permission``; a grant's ``permissions`` flags carry the same names):

=====================  ==================================================================
``can_view_job``       every read: jobs, logs, counts, events, schedules, explanations,
                       and the features' reads (group stats, breaker state, webhook
                       deliveries, workflow status, stored results, encryption status,
                       a data subject's jobs, alerts, the memory footprint)
``can_add_job``        ``add_job`` / ``add_jobs`` (and a schedule's job template)
``can_modify_job``     act on single jobs: retry, bulk retry, remove, cancel, promote
``can_control_queue``  steer the queue: pause / resume, replay the DLQ, recover stalled
                       jobs, schedules, group pause / resume / settings, breaker reset /
                       open, webhook DLQ replay, cancel a workflow
``can_manage_queue``   everything administrative: also ``clear``, ``drain`` and feature
                       configuration (breakers, webhook endpoints, encryption key
                       rotation), erasing a data subject's jobs (compliance), rebuilding
                       damaged parked sets (``rebuild_parked``), putting back job
                       records no state set lists (``find_orphans``), and any command not
                       listed in ``COMMAND_PERMISSIONS``
=====================  ==================================================================

``can_manage_queue`` implies ``can_control_queue``, which implies ``can_modify_job``.
Reads and adds are separate: a grant that may pause a queue cannot read its jobs unless
it also holds ``can_view_job``.

Roles (``QueueRole``) are bundles: ``viewer`` reads; ``operator`` reads and retries or
removes jobs; ``manager`` adds too, and pauses, replays and changes schedules; ``admin``
may do everything (``ROLE_PERMISSIONS``).

Each read passed to a queue's read guards (``ReadCall.query``) is mapped the same way
(``READ_PERMISSIONS``); a read not listed needs ``can_manage_queue`` until it is mapped
(``register_read``), so a read added later is never open by mistake.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ...enums import QueueRole
from ...errors import ConfigurationError
from ...identity import check_principal, script_mix
from ...limits import clip
from .glob import QueuePattern

__all__ = [
    "COMMAND_PERMISSIONS",
    "READ_PERMISSION",
    "READ_PERMISSIONS",
    "ROLE_PERMISSIONS",
    "AccessEntry",
    "Permission",
    "QueuePermissions",
    "command_permission",
    "implied",
    "parse_permission",
    "parse_role",
    "read_permission",
    "register_command",
    "register_read",
    "renamed_keys",
]


class Permission(str, Enum):
    """What a grant may allow on the queues its pattern matches."""

    def __str__(self) -> str:
        return str(self.value)

    VIEW_JOB = "can_view_job"
    ADD_JOB = "can_add_job"
    MODIFY_JOB = "can_modify_job"
    CONTROL_QUEUE = "can_control_queue"
    MANAGE_QUEUE = "can_manage_queue"


_IMPLIES: dict[Permission, frozenset[Permission]] = {
    Permission.MANAGE_QUEUE: frozenset(
        {Permission.MANAGE_QUEUE, Permission.CONTROL_QUEUE, Permission.MODIFY_JOB}
    ),
    Permission.CONTROL_QUEUE: frozenset({Permission.CONTROL_QUEUE, Permission.MODIFY_JOB}),
}


def implied(perms: Iterable[Permission]) -> frozenset[Permission]:
    """``perms`` with what each implies (manage > control > modify)."""
    out: set[Permission] = set()
    for p in perms:
        out |= _IMPLIES.get(p, frozenset({p}))
    return frozenset(out)


#: Each role's permissions (consistent with the dashboard's roles).
ROLE_PERMISSIONS: dict[QueueRole, frozenset[Permission]] = {
    QueueRole.VIEWER: frozenset({Permission.VIEW_JOB}),
    QueueRole.OPERATOR: frozenset({Permission.VIEW_JOB, Permission.MODIFY_JOB}),
    QueueRole.MANAGER: implied({Permission.VIEW_JOB, Permission.ADD_JOB, Permission.CONTROL_QUEUE}),
    QueueRole.ADMIN: frozenset(Permission),
}

#: The permission each administrative command needs (``AdminCall.command``). A command
#: not listed needs ``can_manage_queue``: one added later is admin-only until mapped
#: (``register_command``).
COMMAND_PERMISSIONS: dict[str, Permission] = {
    **dict.fromkeys(
        (
            "retry_job",
            "bulk_retry",
            "remove_job",
            "cancel_job",
            "promote_delayed",
            "promote_job",
            "retry_delivery",
        ),
        Permission.MODIFY_JOB,
    ),
    **dict.fromkeys(
        (
            "pause",
            "resume",
            "replay_dlq",
            "recover_stalled",
            "put_schedule",
            "update_schedule",
            "remove_schedule",
            "pause_schedule",
            "resume_schedule",
            "pause_group",
            "resume_group",
            "set_group",
            "reset_breaker",
            "open_breaker",
            "replay_webhook_dlq",
            "cancel_workflow",
        ),
        Permission.CONTROL_QUEUE,
    ),
    **dict.fromkeys(
        (
            "clear",
            "drain",
            "create_breaker",
            "remove_breaker",
            "register_webhook",
            "update_webhook",
            "remove_webhook",
            "rotate_key",
            "run_rotation",
            "erase_subject",
            "rebuild_parked",
            "find_orphans",
            "heal_groups",
            "heal_concurrency",
            "heal_workflows",
        ),
        Permission.MANAGE_QUEUE,
    ),
}

#: The permission every read of job data, counts and feature state needs.
READ_PERMISSION = Permission.VIEW_JOB

#: The permission each guarded read needs (``ReadCall.query``: the core's reads and
#: the features' reads, which pass ``queue.queries.check`` with these names). A read
#: not listed needs ``can_manage_queue`` (``register_read`` maps one of your own).
READ_PERMISSIONS: dict[str, Permission] = dict.fromkeys(
    (
        # the core (queries.py)
        "get_job_status",
        "get_job_detail",
        "get_job_logs",
        "get_jobs_by_status",
        "list_jobs",
        "get_stats",
        "events",
        "get_schedules",
        "get_schedule",
        "explain",
        # FIFO message groups
        "get_group_stats",
        "list_groups",
        "count_groups",
        # circuit breakers
        "get_breaker",
        "get_breaker_state",
        "get_breaker_stats",
        "list_breakers",
        "breaker_history",
        # webhooks
        "list_webhooks",
        "get_webhook",
        "get_delivery_history",
        "list_webhook_dlq",
        "webhook_stats",
        # workflows
        "get_workflow_status",
        "list_workflows",
        "parent_results",
        # effectively-once
        "get_result",
        "get_execution_result",
        # encryption
        "rotation_status",
        # compliance
        "subject_jobs",
        "subject_count",
        # alerts
        "alert_values",
        "alert_states",
        "alert_history",
        # memory footprint
        "measure_footprint",
        # the dashboard's tenants, regions and server pages
        "list_tenants",
        "region_status",
        "server_status",
    ),
    READ_PERMISSION,
)


def register_command(command: str, permission: Permission | str) -> None:
    """Map an administrative command (of a feature of your own) to the permission it
    needs; unmapped commands need ``can_manage_queue``."""
    if not isinstance(command, str) or not command:
        raise ConfigurationError(f"command must be a non-empty str, got {command!r:.60}")
    COMMAND_PERMISSIONS[command] = parse_permission(permission)


def command_permission(command: str) -> Permission:
    """The permission administrative command ``command`` needs."""
    return COMMAND_PERMISSIONS.get(command, Permission.MANAGE_QUEUE)


def register_read(query: str, permission: Permission | str = READ_PERMISSION) -> None:
    """Map a guarded read (``ReadCall.query`` of a feature of your own, passed with
    ``queue.queries.check(query, args)``) to the permission it needs (default
    ``can_view_job``); unmapped reads need ``can_manage_queue``."""
    if not isinstance(query, str) or not query:
        raise ConfigurationError(f"query must be a non-empty str, got {query!r:.60}")
    READ_PERMISSIONS[query] = parse_permission(permission)


def read_permission(query: str) -> Permission:
    """The permission guarded read ``query`` needs."""
    return READ_PERMISSIONS.get(query, Permission.MANAGE_QUEUE)


def parse_permission(value: object) -> Permission:
    """``value`` (a ``Permission`` or its name, with or without ``can_``, e.g.
    ``"can_add_job"``, ``"add_job"``) as a ``Permission``; else ``ConfigurationError``
    listing the valid names. The camelCase form (``canAddJob``) is accepted too."""
    if isinstance(value, Permission):
        return value
    if isinstance(value, str):
        text = value
        if text[:3] == "can" and text[3:4].isupper():  # canAddJob -> can_add_job
            text = "".join("_" + c.lower() if c.isupper() else c for c in text)
        if not text.startswith("can_"):
            text = "can_" + text
        try:
            return Permission(text)
        except ValueError:
            pass
    raise ConfigurationError(
        f"unknown permission {clip(repr(value), 60)}; use one of "
        f"{', '.join(p.value for p in Permission)}"
    )


def parse_role(value: object) -> QueueRole:
    """``value`` as a ``QueueRole``, else ``ConfigurationError`` listing the roles."""
    if isinstance(value, QueueRole):
        return value
    try:
        return QueueRole(value)
    except ValueError:
        raise ConfigurationError(
            f"unknown role {clip(repr(value), 60)}; use one of "
            f"{', '.join(r.value for r in QueueRole)}"
        ) from None


@dataclass(frozen=True, slots=True)
class QueuePermissions:
    """The permission flags of a grant (three broad ones and two finer ones)."""

    can_add_job: bool = False
    can_view_job: bool = False
    can_manage_queue: bool = False
    can_modify_job: bool = False
    can_control_queue: bool = False

    @classmethod
    def of(cls, perms: Iterable[Permission]) -> QueuePermissions:
        """The flags set for ``perms``, as given (nothing implied is added)."""
        given = set(perms)
        return cls(**{p.value: p in given for p in Permission})

    def permissions(self) -> frozenset[Permission]:
        """The permissions whose flag is set."""
        return frozenset(p for p in Permission if getattr(self, p.value))


def renamed_keys(
    value: Mapping[Any, Any], aliases: Mapping[str, str], where: str
) -> dict[Any, Any]:
    """``value`` with each key that ``aliases`` names renamed (``queuePattern`` ->
    ``queue_pattern``); ``ConfigurationError`` naming both spellings when two keys are
    the same field, whichever comes first (neither is taken silently)."""
    out: dict[Any, Any] = {}
    spelt: dict[Any, Any] = {}
    for k, v in value.items():
        key = aliases.get(k, k) if isinstance(k, str) else k
        if key in out:
            raise ConfigurationError(
                f"{where}: {clip(repr(spelt[key]), 40)} and {clip(repr(k), 40)} name the "
                f"same field ({clip(str(key), 40)}); give one of them"
            )
        out[key] = v
        spelt[key] = k
    return out


def _flags(value: Any) -> frozenset[Permission]:
    """A grant's ``permissions``: ``QueuePermissions``, a dict of flags, or names."""
    if value is None:
        return frozenset()
    if isinstance(value, QueuePermissions):
        return value.permissions()
    if isinstance(value, Mapping):
        # Two spellings of one flag ({"canAddJob": True, "can_add_job": False}) are
        # refused, not settled by their order.
        named = {k: parse_permission(k).value for k in value}
        out: set[Permission] = set()
        for k, v in renamed_keys(value, named, "permissions").items():
            perm = Permission(k)
            if not isinstance(v, bool):
                raise ConfigurationError(
                    f"permission {perm.value} must be True or False, got {clip(repr(v), 40)}"
                )
            if v:
                out.add(perm)
        return frozenset(out)
    if isinstance(value, (str, Permission)):
        return frozenset({parse_permission(value)})
    if isinstance(value, Iterable):
        return frozenset(parse_permission(v) for v in value)
    raise ConfigurationError(
        "permissions must be a QueuePermissions, a dict of flags such as "
        f"{{'can_add_job': True}} or a list of names, got {type(value).__name__}"
    )


#: The camelCase keys an access entry accepts for its snake_case fields.
_ENTRY_ALIASES = {"principalId": "principal_id", "queuePattern": "queue_pattern"}


@dataclass(frozen=True, slots=True)
class AccessEntry:
    """One grant: ``principal_id`` may do ``permissions`` (and what ``role`` bundles)
    on every queue whose name matches ``queue_pattern``.

    Attributes:
        principal_id: who (a user or service name, see ``identity.check_principal``;
            ``grant_access`` refuses one whose letters mix scripts, a grant stored
            before that rule is kept and flagged: ``lookalike``).
        queue_pattern: a queue name or glob (``acme-*``; syntax in ``access.glob``).
        permissions: ``QueuePermissions`` flags (a dict such as ``{"can_add_job":
            True}`` or a list of names is accepted and converted).
        role: a ``QueueRole`` (or its name) whose bundle is added, or None.
        granted_by: who granted it (read back from Redis; set by ``grant_access``).
        granted_at: when (ms since the epoch; set by ``grant_access``).

    A principal's permissions on a queue are the union of every grant of theirs whose
    pattern matches it; there are no deny rules, and nothing is allowed without a grant.
    """

    principal_id: str
    queue_pattern: str
    permissions: QueuePermissions = field(default_factory=QueuePermissions)
    role: QueueRole | None = None
    granted_by: str | None = None
    granted_at: int | None = None

    def __post_init__(self) -> None:
        # The script rule is applied by grant_access, not here: a grant read back from
        # Redis may predate it (it stays readable and revocable, flagged: lookalike).
        check_principal(self.principal_id, existing=True)
        QueuePattern(self.queue_pattern)
        given: Any = self.permissions  # a dict or names are accepted too (documented)
        if not isinstance(given, QueuePermissions):
            object.__setattr__(self, "permissions", QueuePermissions.of(_flags(given)))
        if self.role is not None:
            object.__setattr__(self, "role", parse_role(self.role))
        if not self.permissions.permissions() and self.role is None:
            raise ConfigurationError(
                f"the grant of {clip(repr(self.principal_id), 80)} on "
                f"{clip(repr(self.queue_pattern), 80)} allows nothing: give a role "
                f"({', '.join(r.value for r in QueueRole)}) or permissions such as "
                "{'can_view_job': True}"
            )

    @classmethod
    def parse(cls, value: AccessEntry | Mapping[str, Any]) -> AccessEntry:
        """``value`` as an ``AccessEntry`` (a dict with the same keys is accepted; the
        camelCase keys ``principalId`` and ``queuePattern`` too, but not both spellings
        of one field: ``ConfigurationError``)."""
        if isinstance(value, AccessEntry):
            return value
        if not isinstance(value, Mapping):
            raise ConfigurationError(
                f"an access entry must be an AccessEntry or a dict, got {type(value).__name__}"
            )
        # Both spellings of one field ({"queue_pattern": "acme-*", "queuePattern": "*"})
        # are refused, not settled by their order.
        data = renamed_keys(value, _ENTRY_ALIASES, "access entry")
        known = {"principal_id", "queue_pattern", "permissions", "role"}
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise ConfigurationError(
                f"unknown access entry field(s) {', '.join(unknown)}; valid: "
                f"{', '.join(sorted(known))}"
            )
        missing = sorted(k for k in ("principal_id", "queue_pattern") if k not in data)
        if missing:
            raise ConfigurationError(f"an access entry needs {' and '.join(missing)}")
        return cls(**data)

    def effective(self) -> frozenset[Permission]:
        """Everything this grant allows: its flags, its role's bundle, and what those
        imply."""
        perms = set(self.permissions.permissions())
        if self.role is not None:
            perms |= ROLE_PERMISSIONS[self.role]
        return implied(perms)

    @property
    def lookalike(self) -> str | None:
        """None, or what the principal's letters mix (``identity.script_mix``): a grant
        stored before the script rule, which listings flag (revoke it and grant the
        single-script name)."""
        return script_mix(self.principal_id)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the CLI's ``--json``); ``lookalike`` is None unless the
        principal's letters mix scripts."""
        return {
            "principal_id": self.principal_id,
            "queue_pattern": self.queue_pattern,
            "role": self.role.value if self.role else None,
            "permissions": sorted(p.value for p in self.permissions.permissions()),
            "effective": sorted(p.value for p in self.effective()),
            "granted_by": self.granted_by,
            "granted_at": self.granted_at,
            "lookalike": self.lookalike,
        }
