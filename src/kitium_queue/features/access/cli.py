"""``kitium-queue access list|grant|revoke|check`` and ``kitium-queue acl redis-rules``.

Deployment-wide commands (no ``APP``): Redis and the audit key are found as for
``kitium-queue audit`` (``features/audit/cli.py``). Grant changes are signed into the
audit log, so ``grant`` and ``revoke`` need the audit key; listing and checking do not.
The author of a grant change is ``--as`` (the command's, else the global one): the shell
operator, who holds the audit key, naming themselves. It is the manager's ``principal``
(recorded as who granted it, not checked), not an ``acting_as`` principal, whose grant
changes need ``can_manage_queue`` on every queue (``tenants.py``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from redis.exceptions import RedisError

from ...errors import ConfigurationError, KitiumQueueError
from ...identity import acting_context, check_principal, not_acting
from ...keys import check_key_part
from ..audit.cli import (
    audit_key,
    key_file_option,
    prefix_option,
    redis_option,
    redis_url,
    run,
)
from ..audit.conn import Deployment
from .model import AccessEntry, Permission, parse_permission
from .redisacl import FEATURE_COMMANDS, RedisAclRules, redis_acl_rules

if TYPE_CHECKING:
    from .manager import AccessControlManager

__all__ = ["make_acl_command", "make_command"]

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
as_option = click.option(
    "--as", "actor", default=None, help="Who makes the change (recorded in the audit log)."
)


def _operator_manager(
    actor: str | None, key_file: Path | None, prefix: str, redis: str | None
) -> AccessControlManager:
    """The manager of a grant change made from the shell: its ``principal`` is the
    operator (``--as``, else the global ``--as``), trusted as code-level identity."""
    from .manager import AccessControlManager

    return AccessControlManager(
        redis_url(redis),
        audit_key=audit_key(key_file, required=True),
        prefix=prefix,
        principal=actor if actor is not None else acting_context(),
    )


def _entry_row(e: AccessEntry, row: Callable[..., str]) -> str:
    # A principal whose letters mix scripts (granted before that was refused) is
    # flagged: it reads as another name.
    flag = () if e.lookalike is None else (f"LOOKALIKE: {e.lookalike}",)
    return row(
        e.principal_id,
        e.queue_pattern,
        f"role={e.role.value if e.role else '-'}",
        "permissions=" + (",".join(sorted(p.value for p in e.permissions.permissions())) or "-"),
        "effective=" + ",".join(sorted(p.value for p in e.effective())),
        f"by={e.granted_by or '-'}",
        *flag,
    )


def make_command(row: Callable[..., str]) -> click.Group:
    """The ``access`` command group; ``row(*fields)`` formats one line of text output."""

    @click.group()
    def access() -> None:
        """Grants of permissions and roles on queue patterns (deployment-wide)."""

    @access.command("list")
    @click.option("--principal", default=None, help="Only this principal's grants.")
    @json_option
    @prefix_option
    @redis_option
    def list_(principal: str | None, as_json: bool, prefix: str, redis: str | None) -> None:
        """List grants: principal, pattern, role, permissions, what they allow."""
        from .store import GrantStore

        store = GrantStore(Deployment(redis_url(redis), prefix, name="access control"), None,
                           cache_ttl_ms=0)  # fmt: skip

        async def act() -> list[AccessEntry]:
            try:
                if principal is not None:
                    return await store.read(principal)
                out: list[AccessEntry] = []
                for p in await store.principals():
                    out += await store.read(p)
                return out
            finally:
                await store.deployment.close()

        entries = run(act)
        if as_json:
            click.echo(json.dumps([e.to_dict() for e in entries], indent=2))
            return
        if not entries:
            click.echo("no grants")
        for e in entries:
            click.echo(_entry_row(e, row))

    @access.command("grant")
    @click.argument("principal")
    @click.argument("queue_pattern")
    @click.option("--role", type=click.Choice(["admin", "manager", "operator", "viewer"]))
    @click.option(
        "--permission",
        "permissions",
        multiple=True,
        help=f"A permission ({', '.join(p.value for p in Permission)}); repeatable.",
    )
    @as_option
    @json_option
    @prefix_option
    @key_file_option
    @redis_option
    def grant(
        principal: str,
        queue_pattern: str,
        role: str | None,
        permissions: tuple[str, ...],
        actor: str | None,
        as_json: bool,
        prefix: str,
        key_file: Path | None,
        redis: str | None,
    ) -> None:
        """Grant PRINCIPAL a role and/or permissions on queues matching QUEUE_PATTERN
        (replaces its grant on that pattern)."""
        entry = AccessEntry.parse(
            {
                "principal_id": principal,
                "queue_pattern": queue_pattern,
                "role": role,
                "permissions": [parse_permission(p) for p in permissions],
            }
        )
        acm = _operator_manager(actor, key_file, prefix, redis)

        async def act() -> AccessEntry:
            try:
                with not_acting():  # the operator is the manager's principal
                    return await acm.grant_access(entry)
            finally:
                await acm.close()

        stored = run(act)
        click.echo(json.dumps(stored.to_dict(), indent=2) if as_json else _entry_row(stored, row))

    @access.command("revoke")
    @click.argument("principal")
    @click.argument("queue_pattern")
    @as_option
    @prefix_option
    @key_file_option
    @redis_option
    def revoke(
        principal: str,
        queue_pattern: str,
        actor: str | None,
        prefix: str,
        key_file: Path | None,
        redis: str | None,
    ) -> None:
        """Revoke PRINCIPAL's grant on QUEUE_PATTERN (as granted). Exit 1 if none."""
        acm = _operator_manager(actor, key_file, prefix, redis)

        async def act() -> bool:
            try:
                with not_acting():  # the operator is the manager's principal
                    return await acm.revoke_access(principal, queue_pattern)
            finally:
                await acm.close()

        if not run(act):
            raise click.ClickException(
                f"{row(principal)} holds no grant on {row(queue_pattern)} (patterns are "
                "matched as granted: see 'access list')"
            )
        click.echo(f"revoked {row(principal)} on {row(queue_pattern)}")

    @access.command("check")
    @click.argument("principal")
    @click.argument("queue")
    @click.option(
        "--permission",
        default=None,
        help="Exit 1 unless PRINCIPAL holds this permission (without it: unless any).",
    )
    @json_option
    @prefix_option
    @redis_option
    def check(
        principal: str,
        queue: str,
        permission: str | None,
        as_json: bool,
        prefix: str,
        redis: str | None,
    ) -> None:
        """What PRINCIPAL may do on QUEUE, and which of its grants allow it. Exit 1
        when it may do nothing there (with --permission: when it lacks that one)."""
        from .store import GrantStore

        want = None if permission is None else parse_permission(permission)
        store = GrantStore(Deployment(redis_url(redis), prefix, name="access control"), None,
                           cache_ttl_ms=0)  # fmt: skip

        async def act() -> tuple[frozenset[Permission], tuple[str, ...]]:
            try:
                return (await store.load(principal)).on(queue)
            finally:
                await store.deployment.close()

        check_principal(principal, existing=True)
        check_key_part(queue, "queue name")
        perms, via = run(act)
        names = sorted(p.value for p in perms)
        allowed = bool(perms) if want is None else want in perms
        if as_json:
            out: dict[str, Any] = {"principal": principal, "queue": queue, "permissions": names,
                                   "grants": list(via)}  # fmt: skip
            out["allowed"] = allowed
            click.echo(json.dumps(out, indent=2))
        else:
            click.echo(row(principal, queue, ",".join(names) or "nothing",
                           "via=" + (",".join(via) or "-")))  # fmt: skip
            if want is not None:
                click.echo(row(want.value, "allowed" if allowed else "DENIED"))
            elif not allowed:
                click.echo(
                    f"{row(principal)} holds no grant matching {row(queue)} (see 'access list')",
                    err=True,
                )
        if not allowed:
            raise click.exceptions.Exit(1)

    return access


def make_acl_command(row: Callable[..., str]) -> click.Group:
    """The ``acl`` command group (Redis ACL rules)."""

    @click.group()
    def acl() -> None:
        """Redis ACL users per tenant or service: isolation Redis itself enforces."""

    @acl.command("redis-rules")
    @click.option("--user", default=None, help="The Redis user name.")
    @click.option(
        "--queue",
        "queues",
        multiple=True,
        help="A queue name, or a prefix with a trailing * (acme-*); repeatable.",
    )
    @click.option(
        "--feature",
        "features",
        multiple=True,
        type=click.Choice(sorted(FEATURE_COMMANDS)),
        help="An optional feature the queues use; repeatable.",
    )
    @click.option(
        "--access",
        "access_mode",
        type=click.Choice(["enforce", "admin"]),
        default=None,
        help="Also what access control needs (enforce: read grants, append audit).",
    )
    @click.option("--no-info", is_flag=True, help="Leave INFO out (server checks skipped).")
    @click.option(
        "--format",
        "fmt",
        type=click.Choice(["command", "acl-file", "json"]),
        default="command",
        show_default=True,
    )
    @click.option("--apply", is_flag=True, help="Create (or reset) the user on --redis.")
    @click.option(
        "--password-env",
        default=None,
        help="With --apply: the environment variable holding the user's password.",
    )
    @prefix_option
    @redis_option
    def redis_rules(
        user: str | None,
        queues: tuple[str, ...],
        features: tuple[str, ...],
        access_mode: str | None,
        no_info: bool,
        fmt: str,
        apply: bool,
        password_env: str | None,
        prefix: str,
        redis: str | None,
    ) -> None:
        """Print the ACL rules of a Redis user that may run only the queues named.

        With --redis (or $KITIUM_QUEUE_REDIS) the rules are checked against that
        server: every command must exist there, and CLIENT SETINFO is added when the
        server knows it. --apply then creates the user there.
        """
        if not user:
            raise ConfigurationError("give --user NAME (the Redis user the rules are for)")
        if not queues and access_mode is None:
            raise ConfigurationError("give --queue NAME (repeatable) or --access")
        password = None
        if apply:
            if not password_env or not os.environ.get(password_env):
                raise ConfigurationError(
                    "--apply needs --password-env VAR naming a set environment variable "
                    "with the user's password (it is never printed)"
                )
            password = os.environ[password_env]
        rules = redis_acl_rules(
            user, list(queues), prefix=prefix, features=features, access=access_mode,
            info=not no_info,
        )  # fmt: skip
        url = redis or os.environ.get("KITIUM_QUEUE_REDIS")
        notes: list[str] = []
        if url is not None:
            rules, notes = run(lambda: _checked(url, rules, password))
        elif apply:
            raise ConfigurationError("--apply needs --redis URL")
        if fmt == "json":
            click.echo(json.dumps({**rules.to_dict(), "notes": notes}, indent=2))
        elif fmt == "acl-file":
            click.echo(rules.acl_file_line())
        else:
            click.echo(rules.command())
        for n in notes:
            click.echo(f"note: {n}", err=True)

    return acl


async def _checked(
    url: str, rules: RedisAclRules, password: str | None
) -> tuple[RedisAclRules, list[str]]:
    """``rules`` fitted to the server at ``url`` (commands it lacks dropped, with a
    note; ``client|setinfo`` added when it has it), and applied with ``password``."""
    dep = Deployment(url, None, name="acl redis-rules")
    notes: list[str] = []
    try:
        if dep.connection.is_memory:
            raise ConfigurationError("Redis ACL rules are for a Redis server, not memory://")
        listed = await dep.call("command_list")
        known = {n.decode() if isinstance(n, bytes) else str(n) for n in listed}
        try:  # Redis 7.2+ knows it; earlier servers answer nil, which redis-py cannot parse
            if await dep.call("execute_command", "COMMAND", "INFO", "client|setinfo"):
                known.add("client|setinfo")
        except TypeError:
            pass
        kept = tuple(c for c in rules.commands if c.split("|")[0] in known)
        missing = [c for c in rules.commands if c not in kept]
        if missing:
            notes.append(f"the server does not know {', '.join(missing)}: left out")
        if "client|setinfo" in known and "client|setinfo" not in kept:
            kept += ("client|setinfo",)
        fitted = RedisAclRules(rules.user, rules.keys, rules.channels, kept)
        if password is not None:
            try:
                await dep.call("execute_command", "ACL", "SETUSER", *fitted.setuser_args(password))
            except (RedisError, KitiumQueueError) as exc:
                # Never the reply itself: "unknown command ... with args beginning with"
                # quotes the arguments, the password among them (and so would the
                # traceback of --debug: raised from None).
                said = str(exc).split(", with args", 1)[0].split("(", 1)[0].strip()[:120]
                raise KitiumQueueError(
                    f"the server refused ACL SETUSER ({type(exc).__name__}: {said}): it "
                    "does not let this connection create users (a managed service, or a "
                    "user without +acl|setuser). Create the user with the provider's "
                    "tools or an admin connection, from the rules printed without --apply"
                ) from None
            notes.append(f"user {rules.user} created on the server")
        return fitted, notes
    finally:
        await dep.close()
