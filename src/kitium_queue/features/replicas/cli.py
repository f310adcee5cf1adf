"""``kitium-queue replicas APP``: the replicas of the queue's Redis primary and how far
behind each one is (what ``ReplicaAcks`` waits for).

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
    """The ``replicas`` command, using the CLI's queue loader, ``--redis`` and rows."""

    @click.command("replicas")
    @click.argument("app")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @redis_option
    def replicas(app: str, as_json: bool, redis: str | None) -> None:
        """The role of the queue's Redis server, its connected replicas and each one's
        lag behind the primary (bytes of replication stream, seconds since its last
        acknowledgement). Exits 1, saying why on stderr, when the server is not a
        primary with replicas."""
        from .acks import replication_status

        async def act(q: Any) -> bool:
            if q.connection.is_memory:
                click.echo(row("memory:// has no replicas"), err=True)
                return False
            st = await replication_status(q)
            if as_json:
                click.echo(json.dumps(st, indent=2, default=str))
            else:
                click.echo(row("role", st["role"]))
                click.echo(row("connected_replicas", st["connected_replicas"]))
                for r in st["replicas"]:
                    click.echo(
                        row(r["address"], r["state"], f"lag_bytes={r['lag_bytes']}",
                            f"lag_s={r['lag_s']}")
                    )  # fmt: skip
            problem = _problem(st)
            if problem:
                click.echo(row(problem), err=True)
            return not problem

        if not with_queue(app, redis, act):
            raise SystemExit(1)

    return replicas


def _problem(st: dict[str, Any]) -> str:
    """Why the server is not a primary whose writes replicas can acknowledge ("" if it
    is one): said on stderr, with what to do."""
    if st["role"] == "slave":
        of = f" of {st['primary']}" if st.get("primary") else ""
        return (
            f"this server is a replica{of}, not the primary: point --redis at the primary "
            "(or at the Sentinel service: redis+sentinel://host:port/service)"
        )
    if st["role"] != "master":
        return f"this server's role is {st['role']!r}, not a primary"
    if not st["connected_replicas"]:
        return (
            "no replica is connected to this primary: writes that wait for replicas "
            "(ReplicaAcks, wait_replicas) fail with ReplicaAckError after their timeout "
            "until one is (see the replica's log and its replicaof setting)"
        )
    return ""
