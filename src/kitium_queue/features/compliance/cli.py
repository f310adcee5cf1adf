"""``kitium-queue compliance ...``: erase a subject's jobs, list a subject's jobs, run
the retention pass.

Built by ``make_command`` with the CLI's helpers passed in (no import of the CLI).
Subject ids are read from the command line and never echoed back: the output names the
subject by its SHA-256 digest, as the audit record does. The commands act for the
CLI's principal (``kitium-queue --as P``); ``erase --principal P`` names it for the
erasure alone, and on a queue protected by access control the erasure asks for
confirmation only once that principal's grants allow it (a question that writes
nothing; a refused principal is refused at once, as the call itself refuses it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

__all__ = ["make_command"]


def make_command(
    with_queue: Callable[..., Any], redis_option: Callable[[Any], Any], row: Callable[..., str]
) -> click.Group:
    """The ``compliance`` command group, using the CLI's queue loader, ``--redis`` and
    rows."""

    @click.group("compliance")
    def compliance() -> None:
        """Erasure by subject and retention periods (docs/compliance.md)."""

    @compliance.command("erase")
    @click.argument("app")
    @click.argument("subject_id")
    @click.option(
        "--principal",
        default=None,
        help="Who asks (recorded by audit); for this command, instead of the global --as.",
    )
    @click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @redis_option
    def erase(
        app: str,
        subject_id: str,
        principal: str | None,
        yes: bool,
        as_json: bool,
        redis: str | None,
    ) -> None:
        """Erase every job of SUBJECT_ID in APP (any state, running ones too), with its
        results, logs, DLQ entry, stored idempotency results and events. Asks first
        unless --yes (on a queue protected by access control, once the principal may)."""
        from ...identity import acting_as, check_principal
        from .manager import ComplianceManager, check_subject, subject_digest

        # Checked before anything is loaded or asked; the error never shows the id.
        check_subject(subject_id)
        if principal is not None:
            check_principal(principal)

        async def act(q: Any) -> Any:
            m = ComplianceManager.for_queue(q)
            await q.client()  # reachable before asking
            # A refused principal is refused by the call itself, without a question.
            if not yes and await _may_erase(q):
                click.confirm(
                    f"erase every job of subject {subject_digest(subject_id)[:16]}... in "
                    f"queue '{q.name}'?",
                    abort=True,
                    err=True,
                )
            return await m.erase_subject(subject_id)

        async def as_principal(q: Any) -> Any:
            if principal is None:
                return await act(q)
            with acting_as(principal):
                return await act(q)

        report = with_queue(app, redis, as_principal)
        if as_json:
            click.echo(json.dumps(report.to_dict(), indent=2))
            return
        for k, v in report.to_dict().items():
            click.echo(row(k, v))

    @compliance.command("jobs")
    @click.argument("app")
    @click.argument("subject_id")
    @click.option("-n", "--limit", default=100, show_default=True)
    @redis_option
    def jobs(app: str, subject_id: str, limit: int, redis: str | None) -> None:
        """List the ids of SUBJECT_ID's jobs in APP (from the subject index)."""
        from .manager import ComplianceManager, check_subject

        check_subject(subject_id)

        async def act(q: Any) -> list[str]:
            return await ComplianceManager.for_queue(q).subject_jobs(subject_id, limit)

        for jid in with_queue(app, redis, act):
            click.echo(row(jid))

    @compliance.command("retention")
    @click.argument("app")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @redis_option
    def retention(app: str, as_json: bool, redis: str | None) -> None:
        """Apply APP's retention rules now (what the leader does every interval) and
        print what was deleted and erased per state."""
        from .manager import ComplianceManager

        async def act(q: Any) -> dict[str, Any]:
            m = ComplianceManager.for_queue(q)
            rep = await m.retention.run_once()
            return {
                "rules": m.retention.to_dict(),
                "deleted": rep.deleted,
                "erased": rep.erased,
                "events_trimmed": rep.events_trimmed,
            }

        out = with_queue(app, redis, act)
        if as_json:
            click.echo(json.dumps(out, indent=2))
            return
        for state, n in out["erased"].items():
            click.echo(row("erased", state, n))
        for state, n in out["deleted"].items():
            click.echo(row("deleted", state, n))
        click.echo(row("events_trimmed", out["events_trimmed"]))

    return compliance


async def _may_erase(q: Any) -> bool:
    """Whether the acting principal may erase on ``q`` as far as access control says
    (True for a queue it does not protect): a question of its grants, nothing audited
    nor written. A refused erasure is then not asked about first."""
    from ...identity import current_principal
    from ..access.manager import AccessControlManager
    from ..access.model import command_permission

    prot = AccessControlManager.protection_of(q)
    if prot is None:
        return True
    who = current_principal(q.ctx.principal)
    if who is None:
        return False
    return await prot.manager.check_access(who, q.name, command_permission("erase_subject"))
