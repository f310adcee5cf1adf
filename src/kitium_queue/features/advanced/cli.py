"""``kitium-queue config show APP``: the effective configuration of a queue.

Built by ``make_command`` with the CLI's helpers passed in (no import of the CLI). It
prints what ``queue.advanced.effective()`` returns: the core settings as resolved, every
``AdvancedQueueConfig`` section with what its feature resolved, the job options the
queue accepts by owning feature, codecs, services and Lua slot fragments. No secrets
(key material, webhook secrets, passwords in URLs) are printed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click
from redis.exceptions import ResponseError

from ...serverinfo import write_refused_cause

__all__ = ["flatten", "make_command"]


def flatten(value: Any, path: str = "") -> list[tuple[str, Any]]:
    """``value`` as ``(dotted.path, leaf)`` pairs, in order (lists of scalars stay
    whole; lists of objects get ``[i]`` paths)."""
    if isinstance(value, dict):
        if not value and path:
            return [(path, {})]
        out: list[tuple[str, Any]] = []
        for k, v in value.items():
            out += flatten(v, f"{path}.{k}" if path else str(k))
        return out
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        out = []
        for i, v in enumerate(value):
            out += flatten(v, f"{path}[{i}]")
        return out
    return [(path, value)]


def make_command(
    with_queue: Callable[..., Any], redis_option: Callable[[Any], Any], row: Callable[..., str]
) -> click.Group:
    """The ``config`` command group, using the CLI's queue loader, ``--redis`` and rows."""

    @click.group("config")
    def config() -> None:
        """The configuration of a queue (AdvancedQueueConfig and the core settings)."""

    @config.command("show")
    @click.argument("app")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.option(
        "--section", default=None, help="Only this AdvancedQueueConfig section (e.g. fifo)."
    )
    @redis_option
    def show(app: str, as_json: bool, section: str | None, redis: str | None) -> None:
        """Print the effective configuration of APP: core settings, every section of
        AdvancedQueueConfig (enabled or not, with what each feature resolved), the job
        options by owning feature, codecs, services and Lua slots, and the server it
        connects to (its version: the connection is checked)."""

        async def act(q: Any) -> dict[str, Any]:
            eff: dict[str, Any] = q.advanced.effective()
            client = await q.client()
            try:
                server = await client.info("server")
            except ResponseError as exc:  # INFO refused (an ACL, a managed service)
                if write_refused_cause(exc) is not None:
                    raise
                eff["server"] = {"redis_version": None, "info": f"not answered: {exc}"[:200]}
            else:
                eff["server"] = {"redis_version": server.get("redis_version")}
            return eff

        eff = with_queue(app, redis, act)
        if section is not None:
            sections = eff["sections"]
            if section not in sections:
                raise click.BadParameter(
                    f"no section {section!r}; sections are {', '.join(sections)}",
                    param_hint="--section",
                )
            eff = {"queue": eff["queue"], "sections": {section: sections[section]}}
        if as_json:
            click.echo(json.dumps(eff, indent=2, default=str))
            return
        for path, value in flatten(eff):
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            click.echo(row(path, text))

    return config
