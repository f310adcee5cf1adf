"""The ``kitium-queue`` command line: run workers, inspect and manage queues, run the demo.

``APP`` arguments name a ``JobQueue`` (or a ``PartitionedQueue``) object as
``module:attribute`` (like uvicorn), e.g. ``kitium-queue worker myapp.tasks:queue``.
Environment variables: ``KITIUM_QUEUE_REDIS`` overrides the queue's Redis URL (read in
``base.load_queue``); ``KITIUM_QUEUE_PRINCIPAL`` names the principal every command acts
as, as the global ``--as`` does (``principal.py``); the audit commands read their keys
from ``KITIUM_QUEUE_AUDIT_KEY`` / ``KITIUM_QUEUE_AUDIT_PREVIOUS_KEYS``.

Every subcommand fails the same way (``base.Main.invoke``, the one place): one line on
stderr and an exit code from ``EXIT_CODES``; the traceback only with ``--debug`` or
``-v``. Errors from Redis are translated by ``ConnectionFactory.error`` first. Every
command that prints data takes ``--json``; text output is plain tab-separated rows, or
``rich`` tables on a terminal when the optional package is installed (``--rich`` /
``--plain`` choose). The commands live in ``queue.py`` (worker, stats, health, pause,
resume, job, events, demo), ``jobs.py`` (jobs, dlq), ``manage.py`` (schedules,
breakers, parked rebuild), ``parking.py`` (parked list, parked show, limits),
``workers.py`` (workers) and the features' own ``cli.py`` modules.

Shell completion is click's: ``eval "$(_KITIUM_QUEUE_COMPLETE=bash_source kitium-queue)"``
(``zsh_source``, ``fish_source`` for the other shells).
"""

from __future__ import annotations

import asyncio
import logging

import click

from .base import (
    EXIT_CODES,
    EXIT_ERROR,
    EXIT_NOT_READY,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Main,
    app_help,
    explain_app,
    load_app,
    load_queue,
    redis_option,
    row,
    single_queue,
    text_field,
    with_queue,
    with_single_queue,
)
from .jobs import dlq, jobs
from .manage import breakers, parked, schedules
from .output import show_table
from .parking import limits
from .queue import demo, events, health, job, pause, resume, stats, worker
from .workers import workers

__all__ = [
    "EXIT_CODES",
    "EXIT_ERROR",
    "EXIT_NOT_READY",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "load_queue",
    "main",
    "text_field",
]


def _exit_codes_help() -> str:
    return "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_CODES.items())


@click.group(
    cls=Main,
    help=f"""kitium-queue: an asyncio job queue on Redis.

\b
Exit codes:
  0  success
{_exit_codes_help()}

Most commands take APP: {app_help()} --redis (or the KITIUM_QUEUE_REDIS
environment variable) overrides the queue's Redis URL.

An error is one line on stderr; --debug or -v adds its traceback. Commands that print
data take --json; text is rich tables on a terminal (with the optional package 'rich'),
plain tab-separated rows otherwise.
""",
)
@click.version_option(package_name="kitium-job-queue")
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="More logging (-v info, -vv debug); errors show their traceback.",
)
@click.option("--debug", is_flag=True, help="Show the traceback of an error.")
@click.option(
    "--rich",
    "style",
    flag_value="rich",
    help="Tables and progress bars with rich, also off a terminal.",
)
@click.option(
    "--plain", "style", flag_value="plain", help="Plain tab-separated rows, also on a terminal."
)
def main(verbose: int, debug: bool, style: str | None) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


for _command in (worker, stats, health, pause, resume, job, events, demo, limits, workers):
    main.add_command(_command)
for _name, _group in (
    ("jobs", jobs),
    ("dlq", dlq),
    ("schedules", schedules),
    ("breakers", breakers),
    ("parked", parked),
):
    main.add_command(_group, _name)


def _needs_extra(name: str, exc: ImportError) -> click.Command:
    """A command whose optional extra is not installed: it says which to install."""

    @click.command(
        name,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        help=f"(not installed) {exc}",
        add_help_option=False,
    )
    def missing() -> None:
        raise click.UsageError(str(exc))

    return missing


def _add_feature_commands() -> None:
    from ..features.access.cli import make_acl_command
    from ..features.access.cli import make_command as access_command
    from ..features.advanced.cli import make_command as config_command
    from ..features.alerts.cli import make_command as alerts_command
    from ..features.audit.cli import make_command as audit_command
    from ..features.compliance.cli import make_command as compliance_command
    from ..features.encryption.cli import make_command as encryption_command
    from ..features.footprint import make_command as memory_command
    from ..features.groups.cli import make_command as groups_command
    from ..features.idempotency.cli import make_command as result_command
    from ..features.regions.cli import make_command as regions_command
    from ..features.replicas.cli import make_command as replicas_command
    from ..features.tenancy.cli import make_command as tenants_command
    from ..features.webhooks.cli import commands as webhook_commands
    from ..features.workflows.cli import make_command as workflows_command

    main.add_command(
        webhook_commands(
            lambda app, redis: single_queue(load_queue(app, redis), "webhooks"),
            text_field,
            show_table,
        ),
        "webhooks",
    )
    main.add_command(groups_command(with_single_queue, redis_option, row, show_table), "groups")
    main.add_command(result_command(with_single_queue, redis_option, row), "result")
    main.add_command(encryption_command(with_single_queue, redis_option, row), "encryption")
    main.add_command(
        workflows_command(with_single_queue, redis_option, row, show_table), "workflows"
    )
    main.add_command(replicas_command(with_single_queue, redis_option, row), "replicas")
    main.add_command(config_command(with_single_queue, redis_option, row), "config")
    main.add_command(memory_command(with_single_queue, redis_option, row), "memory")
    main.add_command(compliance_command(with_single_queue, redis_option, row), "compliance")
    main.add_command(alerts_command(with_single_queue, redis_option, row), "alerts")
    main.add_command(tenants_command(with_queue, redis_option, row, show_table), "tenants")
    main.add_command(
        regions_command(with_queue, redis_option, row, load_app, asyncio.run), "regions"
    )
    # Deployment-wide (no APP): grants, the audit log, Redis ACL users.
    main.add_command(access_command(row), "access")
    main.add_command(audit_command(row), "audit")
    main.add_command(make_acl_command(row), "acl")
    try:
        from ..features.prometheus.cli import make_command as metrics_command
    except ImportError as exc:  # the optional extra is not installed: say which
        main.add_command(_needs_extra("metrics", exc), "metrics")
    else:
        main.add_command(metrics_command(with_queue, redis_option, row), "metrics")
    try:
        from ..dashboard.cli import make_command as dashboard_command
    except ImportError as exc:
        main.add_command(_needs_extra("dashboard", exc), "dashboard")
    else:
        main.add_command(
            dashboard_command(with_single_queue, redis_option, row, load_queue), "dashboard"
        )


_add_feature_commands()
explain_app(main, {"regions": "a GlobalQueueManager or, for status, a JobQueue"})
