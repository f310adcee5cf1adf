"""``kitium-queue tenants ...``: the tenants of a deployment, their quotas and usage.

The command group is built by ``make_command`` with the CLI's own helpers passed in (so
this module does not import the CLI). ``APP`` names a queue: the registry is the one of
its connection and key prefix; usage is summed over every queue tenancy is enabled on
(``tenants list`` reads it in one pipeline per queue and 500 tenants).
Every value printed comes from Redis or the user and goes through the CLI's escaping.
A tenant whose id mixes scripts (created before that was refused: it reads as another
id) is flagged: the ``lookalike`` column / field says what it mixes.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from .model import QueueUsage, TenantConfig, TenantUsage
    from .registry import TenantRegistry

__all__ = ["make_command"]

WithQueue = Callable[[str, "str | None", Callable[[Any], Awaitable[Any]]], Any]
Table = Callable[[Sequence[str], Sequence[Sequence[object]]], None]


def _limit(v: int | None) -> str:
    return "-" if v is None else str(v)


def _quota(c: TenantConfig) -> list[str]:
    q = c.quota
    rate = "-" if q.rate_limit is None else f"{q.rate_limit.max}/{q.rate_limit.duration}ms"
    return [_limit(q.max_queue_size), _limit(q.max_concurrency), rate]


def _flag(c: TenantConfig) -> str:
    """``-``, or what the id mixes (a look-alike created before the rule)."""
    mix = c.lookalike
    return "-" if mix is None else f"LOOKALIKE: {mix}"


def _usage(u: TenantUsage) -> list[int]:
    return [u.queued, u.active, u.held, u.rate_used, u.completed, u.failed]


def _queued(u: TenantUsage | QueueUsage) -> str:
    """``queued``, marked when a count it sums is damaged (it then reads 0 there)."""
    return f"{u.queued} (count damaged: tenants sync)" if u.count_damaged else str(u.queued)


# Tenants per pipeline when every tenant's usage is read (one round trip each).
_PAGE = 500


async def _all_usages(reg: TenantRegistry, tenant_ids: Sequence[str]) -> list[TenantUsage]:
    """Each tenant's usage summed over every registered queue, read as
    ``get_tenant_usage`` reads it (each tenant's atomically per queue), in pipelines of
    ``_PAGE`` tenants per queue instead of one call per tenant and queue."""
    from .model import TenantUsage

    names = await reg.queues()
    per: list[list[Any]] = [[] for _ in tenant_ids]
    for name in names:
        for start in range(0, len(tenant_ids), _PAGE):
            got = await reg.get_usages(tenant_ids[start : start + _PAGE], name)
            for i, u in enumerate(got.values(), start):
                per[i].append(u)
    return [TenantUsage.total(t, us) for t, us in zip(tenant_ids, per, strict=True)]


def make_command(
    with_queue: WithQueue,
    redis_option: Callable[[Any], Any],
    row: Callable[..., str],
    table: Table,
) -> click.Group:
    """The ``tenants`` command group, using the CLI's queue loader, ``--redis`` option,
    row formatter and table printer."""

    @click.group()
    def tenants() -> None:
        """Tenants: quotas, weights and usage (multi-tenancy)."""

    @tenants.command("list")
    @click.argument("app")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @redis_option
    def tenants_list(app: str, as_json: bool, redis: str | None) -> None:
        """Every tenant with its quota, weight and usage summed over its queues."""
        from .registry import TenantRegistry

        async def act(q: Any) -> None:
            reg = TenantRegistry.for_queue(q)
            configs = await reg.list_tenants()
            usages = await _all_usages(reg, [c.tenant_id for c in configs])
            if as_json:
                out = [
                    {**c.to_dict(), "lookalike": c.lookalike, "usage": u.as_dict()}
                    for c, u in zip(configs, usages, strict=True)
                ]
                click.echo(json.dumps({"tenants": out, "queues": await reg.queues()}, indent=2))
                return
            table(
                [
                    "tenant",
                    "weight",
                    "max_queue_size",
                    "max_concurrency",
                    "rate_limit",
                    "queued",
                    "active",
                    "held",
                    "rate used",
                    "completed",
                    "failed",
                    "name",
                    "lookalike",
                ],
                [
                    [
                        c.tenant_id,
                        f"{c.weight:g}",
                        *_quota(c),
                        _queued(u),
                        *_usage(u)[1:],
                        c.name,
                        _flag(c),
                    ]
                    for c, u in zip(configs, usages, strict=True)
                ],
            )

        with_queue(app, redis, act)

    @tenants.command("show")
    @click.argument("app")
    @click.argument("tenant_id")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @redis_option
    def tenants_show(app: str, tenant_id: str, as_json: bool, redis: str | None) -> None:
        """One tenant: its config, and its usage in each queue."""
        from .registry import TenantRegistry

        async def act(q: Any) -> None:
            reg = TenantRegistry.for_queue(q)
            c = await reg.get_tenant(tenant_id)
            u = await reg.get_tenant_usage(tenant_id)
            if as_json:
                click.echo(
                    json.dumps(
                        {
                            "tenant": None if c is None else c.to_dict(),
                            "lookalike": None if c is None else c.lookalike,
                            "usage": u.as_dict(),
                        },
                        indent=2,
                    )
                )
            else:
                if c is None:
                    click.echo(
                        row(
                            "tenant",
                            tenant_id,
                            "not found (removed, or never created); usage of jobs it left:",
                        )
                    )
                else:
                    click.echo(row("tenant", c.tenant_id))
                    if c.lookalike is not None:
                        click.echo(row("lookalike", _flag(c)))
                    click.echo(row("name", c.name or "-"))
                    click.echo(row("weight", f"{c.weight:g}"))
                    for k, v in zip(
                        ("max_queue_size", "max_concurrency", "rate_limit"), _quota(c), strict=True
                    ):
                        click.echo(row(k, v))
                    click.echo(row("allowed_regions", ",".join(c.allowed_regions) or "any"))
                table(
                    ["queue", "queued", "active", "held", "rate used", "completed", "failed"],
                    [
                        [
                            name,
                            _queued(qu),
                            qu.active,
                            qu.held,
                            qu.rate_used,
                            qu.completed,
                            qu.failed,
                        ]
                        for name, qu in u.queues.items()
                    ]
                    + [["total", _queued(u), *_usage(u)[1:]]],
                )
            if c is None and not any(_usage(u)):
                raise click.ClickException(f"no tenant {tenant_id!r}")

        with_queue(app, redis, act)

    @tenants.command("sync")
    @click.argument("app")
    @click.option(
        "--queue",
        "queues",
        multiple=True,
        help=(
            "Also register this queue again (it must be there: a job, a key or a live "
            "worker of its own; a name that is not is refused); repeatable."
        ),
    )
    @redis_option
    def tenants_sync(app: str, queues: tuple[str, ...], redis: str | None) -> None:
        """Copy every tenant's quota into every registered queue and recount the tenants'
        damaged counts of unfinished jobs (what each worker does every 30 s). APP's
        queue, when APP enables tenancy on it, is registered again first, even if its
        keys were deleted, and so is each --queue, which must be there (a mistyped name
        is refused, and nothing is written)."""
        from .registry import TenantRegistry

        async def act(q: Any) -> None:
            reg = TenantRegistry.for_queue(q)
            written = await reg.sync(list(queues))
            usages = await _all_usages(reg, [c.tenant_id for c in await reg.list_tenants()])
            left = sorted(f"{u.tenant_id} in {n}" for u in usages for n in u.count_damaged)
            click.echo(f"{written} quota copies written; damaged counts left: {len(left)}")
            if left:
                raise click.ClickException(
                    "counts damaged again since they were recounted (something outside "
                    "kitium-queue writes them): " + ", ".join(x[:100] for x in left[:20])
                )

        with_queue(app, redis, act)

    return tenants
