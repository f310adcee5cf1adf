"""``kitium-queue alerts APP``: the alert rules of a queue, their state and latest
changes.

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
    """The ``alerts`` command, using the CLI's queue loader, ``--redis`` and rows."""

    @click.command("alerts")
    @click.argument("app")
    @click.option("-n", "--history", "limit", default=10, show_default=True)
    @click.option("--values", is_flag=True, help="Also read each rule's current value.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @redis_option
    def alerts(app: str, limit: int, values: bool, as_json: bool, redis: str | None) -> None:
        """Show APP's alert rules (from its monitoring configuration), the state each
        is in (ok or firing, since when) and the latest changes, newest first (a
        clearing because the rule was removed shows reason=rule-removed)."""
        from .manager import AlertManager

        async def act(q: Any) -> dict[str, Any]:
            await q.client()  # the connection is checked first
            m = AlertManager.of(q)
            if m is None:
                raise click.ClickException(
                    "APP's queue has no alert rules (advanced.monitoring.alerts)"
                )
            out: dict[str, Any] = {
                "rules": [r.to_dict() for r in m.rules],
                "states": [s.to_dict() for s in await m.states()],
                "history": [t.to_dict() for t in await m.history(limit)],
            }
            if values:
                out["values"] = await m.values()
            return out

        out = with_queue(app, redis, act)
        if as_json:
            click.echo(json.dumps(out, indent=2))
            return
        now = out.get("values", {})
        for r, s in zip(out["rules"], out["states"], strict=True):
            click.echo(
                row(
                    r["name"],
                    s["state"],
                    f"{r['metric']} >= {r['threshold']:g}",
                    f"since={s['since_ms'] if s['since_ms'] is not None else '-'}",
                    f"value={now.get(r['name'], s['value'])}",
                )
            )
        for t in out["history"]:
            why = (f"reason={t['reason']}",) if t.get("reason") else ()
            click.echo(row(t["id"], t["rule"], t["state"], f"{t['metric']}={t['value']}", *why))

    return alerts
