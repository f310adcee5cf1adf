"""``kitium-queue result APP KEY_OR_ID``: what ran under an idempotency key or job id.

Built by ``make_command`` with the CLI's helpers passed in (no import of the CLI).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

__all__ = ["make_command"]


def make_command(
    with_queue: Callable[..., Any], redis_option: Callable[[Any], Any], row: Callable[..., str]
) -> click.Command:
    """The ``result`` command, using the CLI's queue loader, ``--redis`` and rows."""

    @click.command("result")
    @click.argument("app")
    @click.argument("key_or_id")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @redis_option
    def result(app: str, key_or_id: str, as_json: bool, redis: str | None) -> None:
        """The result of a completed job, by job id or idempotency key (also after
        retention removed the job, while the key lives), or an execution record.
        Exits 1 when nothing completed is known under KEY_OR_ID."""
        from .manager import IdempotencyManager

        async def act(q: Any) -> bool:
            found = await IdempotencyManager.for_queue(q).get_execution_result(key_or_id)
            if found is None:
                # One field (escaped whole), so the id follows the words after a space.
                click.echo(
                    row(
                        f"no completed job or execution record for '{key_or_id}' "
                        f"in queue '{q.name}'"
                    ),
                    err=True,
                )
                return False
            if as_json:
                click.echo(
                    json.dumps(
                        {
                            "key": found.key,
                            "job_id": found.job_id,
                            "job_name": found.job_name,
                            "result": found.result,
                            "finished_at": found.finished_at,
                            "source": found.source,
                        },
                        indent=2,
                        default=str,
                    )
                )
            else:
                for k, v in (
                    ("job", found.job_id),
                    ("name", found.job_name or "-"),
                    ("key", found.key or "-"),
                    ("source", found.source),
                    ("finished_at", found.finished_at or "-"),
                    ("result", json.dumps(found.result, default=str)),
                ):
                    click.echo(row(k, v))
            return True

        if not with_queue(app, redis, act):
            raise SystemExit(1)

    return result
