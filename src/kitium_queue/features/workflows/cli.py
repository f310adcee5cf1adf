"""``kitium-queue workflows ...``: list workflows, show one, cancel one, heal dependents.

The command group is built by ``make_command`` with the CLI's own helpers passed in (so
this module does not import the CLI). Every value printed comes from Redis or the user
and goes through the CLI's field escaping.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import click

__all__ = ["make_command"]

WithQueue = Callable[[str, "str | None", Callable[[Any], Awaitable[Any]]], Any]
#: Prints rows under column names: ``table(columns, rows, header=True)``.
Table = Callable[..., None]


def _ms(v: int | None) -> str:
    return "-" if v is None else str(v)


def make_command(
    with_queue: WithQueue,
    redis_option: Callable[[Any], Any],
    row: Callable[..., str],
    table: Table,
) -> click.Group:
    """The ``workflows`` command group, using the CLI's queue loader, ``--redis`` option,
    row formatter and table printer (``table(columns, rows)``: rich or plain rows)."""
    show = table

    @click.group()
    def workflows() -> None:
        """Workflows (DAGs of jobs): list, show, cancel, heal."""

    @workflows.command("list")
    @click.argument("app")
    @click.option("-n", "--limit", default=50, show_default=True, help="Workflows to show.")
    @click.option("--offset", default=0, show_default=True, help="Skip this many first.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @redis_option
    def wf_list(app: str, limit: int, offset: int, as_json: bool, redis: str | None) -> None:
        """Workflows, newest first, with their state and unfinished steps."""
        from .manager import JobChainManager

        async def act(q: Any) -> None:
            rows = await JobChainManager.for_queue(q).list_workflows(limit, offset)
            if as_json:
                click.echo(json.dumps([r.as_dict() for r in rows], indent=2))
                return
            show(
                ["workflow", "state", "steps", "unfinished", "created", "finished"],
                [
                    [
                        r.workflow_id,
                        r.state,
                        r.total,
                        r.unfinished,
                        _ms(r.created_at),
                        _ms(r.finished_at),
                    ]
                    for r in rows
                ],
            )

        with_queue(app, redis, act)

    @workflows.command("show")
    @click.argument("app")
    @click.argument("workflow_id")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @redis_option
    def wf_show(app: str, workflow_id: str, as_json: bool, redis: str | None) -> None:
        """One workflow: its state and every step's state, attempts, parents, job id
        (for the job commands) and error; steps added with add_job(workflow_id=...)
        included."""
        from .manager import JobChainManager

        async def act(q: Any) -> None:
            st = await JobChainManager.for_queue(q).get_workflow_status(workflow_id)
            if st is None:
                raise click.ClickException(f"workflow {workflow_id!r} not found")
            if as_json:
                click.echo(json.dumps(st.as_dict(), indent=2))
                return
            for k, v in (
                ("workflow", st.workflow_id),
                ("state", st.state),
                ("steps", st.total),
                ("unfinished", st.unfinished),
                ("failed step", st.failed_step or "-"),
                ("created", _ms(st.created_at)),
                ("finished", _ms(st.finished_at)),
                *((("damaged", st.damaged),) if st.damaged else ()),
            ):
                click.echo(row(k, v))
            show(
                ["step", "state", "attempts", "depends on", "job id", "error"],
                [
                    [
                        s.name,
                        s.state,
                        s.attempts,
                        ",".join(s.depends_on) or "-",
                        s.job_id,
                        (s.error or (f"damaged: {s.damaged}" if s.damaged else "-"))[:200],
                    ]
                    for s in st.steps.values()
                ],
            )

        with_queue(app, redis, act)

    @workflows.command("cancel")
    @click.argument("app")
    @click.argument("workflow_id")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @redis_option
    def wf_cancel(app: str, workflow_id: str, as_json: bool, redis: str | None) -> None:
        """Cancel WORKFLOW_ID: steps not started are removed, running ones asked to stop."""
        from .manager import JobChainManager

        async def act(q: Any) -> None:
            n = await JobChainManager.for_queue(q).cancel_workflow(workflow_id)
            if as_json:
                click.echo(
                    json.dumps(
                        {"action": "cancelled", "workflow_id": workflow_id, "removed_steps": n}
                    )
                )
            else:
                click.echo(row("cancelled", workflow_id, f"{n} step(s) removed"))

        with_queue(app, redis, act)

    @workflows.command("heal")
    @click.argument("app")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @redis_option
    def wf_heal(app: str, as_json: bool, redis: str | None) -> None:
        """Release the dependents of jobs that finished without releasing them (run by a
        process without JobChainManager). Workers with JobChainManager do it every 30 s."""
        from .manager import JobChainManager

        async def act(q: Any) -> None:
            r = await JobChainManager.for_queue(q).heal()
            got = {"parents": r.parents, "dependents": r.dependents}
            if as_json:
                click.echo(json.dumps(got))
            else:
                for k, v in got.items():
                    click.echo(row(k, v))

        with_queue(app, redis, act)

    return workflows
