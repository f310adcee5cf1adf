"""``kitium-queue audit query|verify|trim``, and what the deployment-wide commands
(``access``, ``acl``, ``audit``) share: where Redis is and where the audit key is.

These commands take no ``APP``: they concern the deployment, not one queue. Redis is
``--redis URL``, else the ``KITIUM_QUEUE_REDIS`` environment variable. The audit key
(needed to write and verify; queries without it show ``authentic`` as ``-``) is read
from ``--audit-key-file PATH`` or the ``KITIUM_QUEUE_AUDIT_KEY`` environment variable;
it is never printed. The keys used before a key change (so that ``verify`` and ``trim``
accept the entries they signed) come the same way: ``--audit-previous-key-file PATH``
(repeatable; one key a line) or ``KITIUM_QUEUE_AUDIT_PREVIOUS_KEYS`` (comma-separated).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from ...errors import ConfigurationError

if TYPE_CHECKING:
    from .log import AuditPage
    from .verify import AuditHead, AuditReport

__all__ = [
    "AUDIT_KEY_ENV",
    "PREVIOUS_KEYS_ENV",
    "REDIS_ENV",
    "audit_key",
    "key_file_option",
    "make_command",
    "prefix_option",
    "previous_keys",
    "previous_keys_option",
    "redis_option",
    "redis_url",
    "run",
]

T = TypeVar("T")

REDIS_ENV = "KITIUM_QUEUE_REDIS"
AUDIT_KEY_ENV = "KITIUM_QUEUE_AUDIT_KEY"
PREVIOUS_KEYS_ENV = "KITIUM_QUEUE_AUDIT_PREVIOUS_KEYS"

redis_option = click.option("--redis", default=None, help=f"Redis URL (default: ${REDIS_ENV}).")
prefix_option = click.option("--prefix", default="kq", show_default=True, help="Key prefix.")
key_file_option = click.option(
    "--audit-key-file",
    "key_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"File holding the audit key (default: ${AUDIT_KEY_ENV}).",
)
previous_keys_option = click.option(
    "--audit-previous-key-file",
    "previous_files",
    type=click.Path(dir_okay=False, path_type=Path),
    multiple=True,
    help=f"File holding audit keys used before a key change, one a line; repeatable "
    f"(default: ${PREVIOUS_KEYS_ENV}, comma-separated).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def redis_url(redis: str | None) -> str:
    """``--redis``, else ``$KITIUM_QUEUE_REDIS``, else a usage error."""
    url = redis or os.environ.get(REDIS_ENV)
    if not url:
        raise ConfigurationError(f"give --redis URL or set {REDIS_ENV}")
    return url


def audit_key(key_file: Path | None, *, required: bool) -> str | None:
    """The audit key from ``key_file`` or ``$KITIUM_QUEUE_AUDIT_KEY`` (surrounding
    whitespace stripped); a usage error when ``required`` and neither is set."""
    if key_file is not None:
        try:
            key = key_file.read_text("utf-8").strip()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read the audit key file {str(key_file)!r}: {exc.strerror}"
            ) from None
    else:
        key = os.environ.get(AUDIT_KEY_ENV, "").strip()
    if not key:
        if required:
            raise ConfigurationError(
                f"this command needs the audit key: set {AUDIT_KEY_ENV} or give "
                "--audit-key-file PATH (the secret the application signs the audit log with)"
            )
        return None
    return key


def previous_keys(files: Sequence[Path]) -> list[str]:
    """The audit keys used before a key change: every non-empty line of ``files``,
    else the comma-separated ``$KITIUM_QUEUE_AUDIT_PREVIOUS_KEYS`` (surrounding
    whitespace stripped); never printed."""
    found: list[str] = []
    if files:
        for path in files:
            try:
                text = path.read_text("utf-8")
            except OSError as exc:
                raise ConfigurationError(
                    f"cannot read the previous audit key file {str(path)!r}: {exc.strerror}"
                ) from None
            found += [line.strip() for line in text.splitlines()]
    else:
        found = [k.strip() for k in os.environ.get(PREVIOUS_KEYS_ENV, "").split(",")]
    return [k for k in found if k]


def run(fn: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine function to completion (errors go to the CLI's one place that
    prints them with their exit code)."""

    async def go() -> T:
        return await fn()

    return asyncio.run(go())


def _iso(ms: int) -> str:
    try:
        return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds")
    except (OverflowError, OSError, ValueError):  # an id written by hand, beyond any clock
        return str(ms)


def parse_checkpoint(value: str | None) -> AuditHead | None:
    """``--checkpoint N:ID:MAC`` (the ``head`` a previous ``audit verify`` printed)."""
    from .verify import AuditHead

    if value is None:
        return None
    try:
        return AuditHead.parse(value)
    except ConfigurationError as exc:
        raise ConfigurationError(f"--checkpoint: {exc}") from None


def _print_report(report: AuditReport, as_json: bool, row: Callable[..., str]) -> None:
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    kinds = {p.kind for p in report.problems}
    if report.ok:
        verdict = "intact"
    elif report.wrong_key:
        verdict = "WRONG KEY"  # no entry verifies: nothing is known of the chain
    elif kinds == {"unverifiable"}:
        verdict = "UNVERIFIED"  # entries of keys not given: genuine or not, unknown
    else:
        verdict = "BROKEN"
    click.echo(row("chain", verdict, f"entries={report.entries}", f"start={report.start}"))
    if report.head is not None:
        h = report.head
        click.echo(row("head", str(h), "(keep it; --checkpoint later)"))
    for p in report.problems:
        click.echo(row(p.kind, p.entry_id or "(end)", f"n={p.n}", p.detail))
    if report.more_problems:
        click.echo(row("more", f"{report.more_problems} problems not shown"))
    if report.wrong_key:
        click.echo(
            f"no entry verifies with this key: check {AUDIT_KEY_ENV} / --audit-key-file "
            f"(the key the application signs the log with); keys used before a key "
            f"change: {PREVIOUS_KEYS_ENV}=KEY1,KEY2 or --audit-previous-key-file PATH",
            err=True,
        )


def make_command(row: Callable[..., str]) -> click.Group:
    """The ``audit`` command group; ``row(*fields)`` formats one line of text output."""

    @click.group()
    def audit() -> None:
        """The deployment's tamper-evident audit log: query, verify, trim."""

    @audit.command("query")
    @click.option("--principal", default=None, help="Who acted (exact).")
    @click.option("--action", default=None, help="Action, exact or glob (queue.*).")
    @click.option("--resource", default=None, help="Resource, exact or glob (acme-*).")
    @click.option("--outcome", type=click.Choice(["ok", "denied", "error"]), default=None)
    @click.option("--since", default=None, help="From (ms since the epoch or ISO-8601).")
    @click.option("--until", default=None, help="Until (ms since the epoch or ISO-8601).")
    @click.option("-n", "--limit", default=50, show_default=True, help="Entries shown.")
    @click.option("--oldest-first", is_flag=True, help="Oldest entries first.")
    @click.option("--cursor", default=None, help="Go on after this entry id (the last one shown).")
    @json_option
    @prefix_option
    @key_file_option
    @previous_keys_option
    @redis_option
    def query(
        principal: str | None,
        action: str | None,
        resource: str | None,
        outcome: str | None,
        since: str | None,
        until: str | None,
        limit: int,
        oldest_first: bool,
        cursor: str | None,
        as_json: bool,
        prefix: str,
        key_file: Path | None,
        previous_files: tuple[Path, ...],
        redis: str | None,
    ) -> None:
        """List audit entries, newest first: time, n, who, action, resource, outcome,
        authentic (MAC checked: yes / NO / - without the key), metadata, and for an
        entry changed outside kitium-queue what is wrong with it. A last line
        ``more --cursor ID`` says how to see the next page."""
        from .log import AuditLog
        from .read import parse_time

        url = redis_url(redis)
        key = audit_key(key_file, required=False)
        earlier = previous_keys(previous_files) if key is not None else []
        log = AuditLog(url, key=key, previous_keys=earlier, prefix=prefix)

        async def act() -> AuditPage:
            try:
                return await log.query_page(
                    principal=principal,
                    action=action,
                    resource=resource,
                    outcome=outcome,
                    since=parse_time(since, "--since"),
                    until=parse_time(until, "--until"),
                    limit=limit,
                    newest_first=not oldest_first,
                    cursor=cursor,
                )
            finally:
                await log.close()

        page = run(act)
        entries = page.entries
        if as_json:
            click.echo(json.dumps([e.to_dict() for e in entries], indent=2))
            return
        if not entries:
            click.echo("no audit entries")
        for e in entries:
            mark = "-" if e.authentic is None else "yes" if e.authentic else "NO"
            click.echo(
                row(
                    _iso(e.at_ms),
                    e.n,
                    e.principal or "-",
                    e.action,
                    e.resource,
                    e.outcome,
                    f"authentic={mark}",
                    json.dumps(e.metadata, sort_keys=True),
                    *([f"damaged={e.damage}"] if e.damage else []),
                )
            )
        if page.next_cursor is not None:
            click.echo(row("more", f"--cursor {page.next_cursor}"))

    @audit.command("verify")
    @click.option(
        "--checkpoint", default=None, help="N:ID:MAC of an earlier head: detects a cut end."
    )
    @json_option
    @prefix_option
    @key_file_option
    @previous_keys_option
    @redis_option
    def verify(
        checkpoint: str | None,
        as_json: bool,
        prefix: str,
        key_file: Path | None,
        previous_files: tuple[Path, ...],
        redis: str | None,
    ) -> None:
        """Check the whole chain; print the first entry altered, removed or inserted.
        Exit 1 when the chain is broken, when entries were signed with a key not given
        (UNVERIFIED: give the earlier keys) or when no entry verifies with the key
        (WRONG KEY)."""
        from .log import AuditLog

        head = parse_checkpoint(checkpoint)
        key = audit_key(key_file, required=True)
        earlier = previous_keys(previous_files)
        log = AuditLog(redis_url(redis), key=key, previous_keys=earlier, prefix=prefix)

        async def act() -> AuditReport:
            try:
                return await log.verify(checkpoint=head)
            finally:
                await log.close()

        report = run(act)
        _print_report(report, as_json, row)
        if not report.ok:
            raise click.exceptions.Exit(1)

    @audit.command("trim")
    @click.option("--max-age-days", type=float, default=None, help="Remove older entries.")
    @click.option("--max-entries", type=int, default=None, help="Keep at most this many.")
    @click.option("--force", is_flag=True, help="Trim even when the chain is broken.")
    @prefix_option
    @key_file_option
    @previous_keys_option
    @redis_option
    def trim(
        max_age_days: float | None,
        max_entries: int | None,
        force: bool,
        prefix: str,
        key_file: Path | None,
        previous_files: tuple[Path, ...],
        redis: str | None,
    ) -> None:
        """Apply retention: a signed retention record, then the old entries go. A
        broken chain is not trimmed (exit 1) unless --force."""
        from .log import AuditLog

        if max_age_days is None and max_entries is None:
            raise ConfigurationError("give --max-age-days or --max-entries")
        if max_age_days is not None and not 0 < max_age_days < 100_000:
            raise ConfigurationError("--max-age-days must be a number of days above 0")
        key = audit_key(key_file, required=True)
        age = None if max_age_days is None else max(1, int(max_age_days * 86_400_000))
        earlier = previous_keys(previous_files)
        log = AuditLog(redis_url(redis), key=key, previous_keys=earlier, prefix=prefix)

        async def act() -> int:
            try:
                return await log.trim(max_age=age, max_entries=max_entries, verify_first=not force)
            finally:
                await log.close()

        click.echo(f"removed {run(act)} entries")

    return audit
