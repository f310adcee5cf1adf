"""``kitium-queue webhooks ...``: list, show, history, DLQ and replay (click).

``list``, ``show``, ``history`` and ``dlq`` read Redis only and work without httpx (the
``webhooks`` extra); ``replay`` and ``deliver`` schedule or send deliveries and need it.

``list`` and ``show`` never print a credential unless given ``--show-secrets``: an
endpoint URL's user info and query values are masked (``shown_url``), and so are the
values of its headers, but for a few that carry none (``Accept``...: ``PLAIN_HEADERS``).

Built by ``commands(load_queue, text_field)`` so that this module does not import the
command line module that adds it (``kitium_queue.cli``).
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import click

if TYPE_CHECKING:
    from .manager import WebhookManager
    from .models import DeliveryRecord

__all__ = ["PLAIN_HEADERS", "commands", "shown_headers", "shown_url"]

T = TypeVar("T")

#: What a masked value is printed as.
MASKED = "***"
#: Request headers (lowercase) whose values are printed: they never carry a credential.
#: Any other header may (``Authorization``, ``X-Api-Key``, ``Cookie``, a custom token);
#: ``Content-Type``, ``User-Agent`` and the like are the sender's own, never registered.
PLAIN_HEADERS = frozenset(
    {"accept", "accept-charset", "accept-encoding", "accept-language", "cache-control", "pragma"}
)


def shown_url(url: Any) -> str:
    """An endpoint URL as printed: its user info (``user:password@``), every query value
    (a token given as ``?token=...``; a query item with no ``=`` is masked whole) and
    its fragment masked; scheme, host, port, path and query names kept. Anything that
    does not parse: ``<redacted>``."""
    try:
        parts = urlsplit(str(url))
        netloc = parts.netloc
        if "@" in netloc:
            netloc = MASKED + netloc[netloc.rfind("@") :]
        items = []
        for item in parts.query.split("&") if parts.query else ():
            name, sep, _ = item.partition("=")
            items.append(f"{name}={MASKED}" if sep else MASKED)
        fragment = MASKED if parts.fragment else ""
        return urlunsplit((parts.scheme, netloc, parts.path, "&".join(items), fragment))
    except Exception:
        return "<redacted>"


def shown_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """Request headers as printed: values masked but for ``PLAIN_HEADERS``."""
    return {k: v if str(k).lower() in PLAIN_HEADERS else MASKED for k, v in headers.items()}


def _shown_hook(hook: dict[str, Any], show_secrets: bool) -> dict[str, Any]:
    """A registration's ``to_dict()`` as printed (``shown_url``, ``shown_headers``)."""
    if show_secrets:
        return hook
    headers = hook.get("headers")
    return {
        **hook,
        "url": shown_url(hook.get("url")),
        "headers": shown_headers(headers) if isinstance(headers, Mapping) else headers,
    }


def _ms(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="seconds")


def _record(r: DeliveryRecord) -> dict[str, Any]:
    return {
        "webhook_id": r.webhook_id,
        "event_id": r.event_id,
        "type": r.event_type,
        "state": r.state,
        "attempts": r.attempts,
        "strategy": r.strategy,
        "created_at": r.created_at,
        "last_status": r.last_status,
        "last_error": r.last_error,
        "history": [
            {
                "at": a.at,
                "attempt": a.attempt,
                "status": a.status,
                "error": a.error,
                "duration_ms": a.duration_ms,
            }
            for a in r.history
        ],
    }


def commands(
    load_queue: Callable[[str, str | None], Any],
    text_field: Callable[[object], str],
    table: Callable[..., None],
) -> click.Group:
    """The ``webhooks`` command group (``load_queue(app, redis)`` gives the queue;
    ``table(columns, rows, header=False)`` prints rows, rich or plain)."""

    def row(*fields: object) -> str:
        return "\t".join(text_field(f) for f in fields)

    def show_records(
        recs: list[DeliveryRecord],
        as_json: bool,
        empty: str,
        columns: list[str],
        fields: Callable[[DeliveryRecord], tuple[object, ...]],
    ) -> None:
        if as_json:
            click.echo(json.dumps([_record(r) for r in recs], indent=2))
            return
        if not recs:
            click.echo(empty)
            return
        table(columns, [fields(r) for r in recs], header=False)

    def run(
        app: str,
        redis: str | None,
        action: Callable[[WebhookManager], Awaitable[T]],
        own: bool = False,
        reads: bool = False,
    ) -> T:
        from .manager import WebhookManager, reading_manager

        queue = load_queue(app, redis)
        if own and WebhookManager.of(queue) is None:
            raise click.ClickException(
                f"{text_field(app)} constructs no WebhookManager: the delivery process needs "
                "the application's own (its secrets and allow-list)"
            )

        async def go() -> T:
            try:
                # The application's own manager when its module made one (secrets,
                # allow-list); otherwise a bare one, enough to read and replay. Reading
                # what Redis holds needs no HTTP client (httpx, the webhooks extra).
                manager = WebhookManager.of(queue) or (
                    reading_manager(queue) if reads else WebhookManager(queue, run_service=False)
                )
                return await action(manager)
            finally:
                # Errors go up to the CLI's one place that prints them in one line with
                # their exit code (cannot connect: 3, configuration: 2, others: 1).
                await queue.close()

        return asyncio.run(go())

    redis_option = click.option(
        "--redis",
        default=None,
        help="Redis URL overriding the queue's (default: $KITIUM_QUEUE_REDIS when set).",
    )
    json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    secrets_option = click.option(
        "--show-secrets",
        is_flag=True,
        help="Print header values and URLs whole (tokens, passwords); masked by default.",
    )

    @click.group()
    def webhooks() -> None:
        """Webhook endpoints of a queue: registrations, deliveries, the webhook DLQ."""

    @webhooks.command("list")
    @click.argument("app")
    @json_option
    @secrets_option
    @redis_option
    def list_(app: str, as_json: bool, show_secrets: bool, redis: str | None) -> None:
        """List endpoints: id, strategy, state, events, URL (its user info and query
        values masked unless --show-secrets)."""

        async def act(m: WebhookManager) -> None:
            hooks = await m.list_webhooks()
            if as_json:
                shown = [_shown_hook(h.to_dict(), show_secrets) for h in hooks]
                click.echo(json.dumps(shown, indent=2))
                return
            for wid in m.registry.damaged:
                # Named, never hidden: a registration that cannot be read sends nothing.
                click.echo(
                    row(
                        wid,
                        f"damaged: its registration in {m.registry.key} cannot be read; "
                        "remove it and register it again",
                    )
                )
            if not hooks:
                click.echo("no webhooks")
                return
            table(
                ["id", "strategy", "state", "events", "url", "max retries"],
                [
                    [
                        h.id,
                        h.delivery_strategy.value,
                        "active" if h.active else "inactive",
                        ",".join(h.events),
                        h.url if show_secrets else shown_url(h.url),
                        f"max_retries={h.max_retries}",
                    ]
                    for h in hooks
                ],
                header=False,
            )

        run(app, redis, act, reads=True)

    @webhooks.command("show")
    @click.argument("app")
    @click.argument("webhook_id")
    @json_option
    @secrets_option
    @redis_option
    def show(
        app: str, webhook_id: str, as_json: bool, show_secrets: bool, redis: str | None
    ) -> None:
        """Show one endpoint and the delivery counts of the queue (header values but
        Accept and the like, URL user info and query values masked unless
        --show-secrets)."""

        async def act(m: WebhookManager) -> None:
            hook = await m.get_webhook(webhook_id)
            if hook is None:
                raise click.ClickException(f"no webhook '{text_field(webhook_id)}'")
            out = {**_shown_hook(hook.to_dict(), show_secrets), "stats": await m.stats()}
            if as_json:
                click.echo(json.dumps(out, indent=2))
                return
            for k, v in out.items():
                click.echo(row(k, v if not isinstance(v, (dict, list)) else json.dumps(v)))

        run(app, redis, act, reads=True)

    @webhooks.command("history")
    @click.argument("app")
    @click.argument("webhook_id")
    @click.option("--event", "event_id", default=None, help="One event's delivery.")
    @click.option("-n", "--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
    @json_option
    @redis_option
    def history(
        app: str,
        webhook_id: str,
        event_id: str | None,
        limit: int,
        as_json: bool,
        redis: str | None,
    ) -> None:
        """Latest deliveries to WEBHOOK_ID (``job``: jobs' own URLs), newest first."""

        async def act(m: WebhookManager) -> None:
            recs = await m.get_delivery_history(webhook_id, event_id, limit=limit)
            show_records(
                recs,
                as_json,
                "no deliveries recorded",
                ["event", "type", "state", "attempts", "created", "status", "error"],
                lambda r: (
                    r.event_id,
                    r.event_type,
                    r.state,
                    f"attempts={r.attempts}",
                    _ms(r.created_at),
                    r.last_status or "-",
                    r.last_error or "",
                ),
            )

        run(app, redis, act, reads=True)

    @webhooks.command("dlq")
    @click.argument("app")
    @click.option("--webhook", "webhook_id", default=None, help="One endpoint only.")
    @click.option("-n", "--limit", default=20, show_default=True, type=click.IntRange(1, 10_000))
    @click.option(
        "--offset", default=0, show_default=True, type=click.IntRange(0), help="Skip as many."
    )
    @json_option
    @redis_option
    def dlq(
        app: str, webhook_id: str | None, limit: int, offset: int, as_json: bool, redis: str | None
    ) -> None:
        """Dead-lettered deliveries, oldest first, a page at a time (--offset, -n); then
        how many the DLQ's bound dropped (dead_max, dead_ttl_s)."""
        from .dlq import dropped_counts

        async def act(m: WebhookManager) -> None:
            recs = await m.list_dlq(limit=limit, webhook_id=webhook_id, offset=offset)
            show_records(
                recs,
                as_json,
                "the webhook DLQ is empty",
                ["webhook", "event", "type", "attempts", "error"],
                lambda r: (
                    r.webhook_id,
                    r.event_id,
                    r.event_type,
                    f"attempts={r.attempts}",
                    r.last_error or "",
                ),
            )
            if not as_json:
                drops = await dropped_counts(m)
                n = drops.get(webhook_id, 0) if webhook_id else sum(drops.values())
                if len(recs) == limit:
                    click.echo(f"more: --offset {offset + limit}")
                click.echo(f"dropped by the DLQ's bound (dead_max, dead_ttl_s): {n}")

        run(app, redis, act, reads=True)

    @webhooks.command("replay")
    @click.argument("app")
    @click.option("--webhook", "webhook_id", default=None, help="One endpoint only.")
    @click.option(
        "--event",
        "event_id",
        default=None,
        help="One delivery (with --webhook); refused while a worker is attempting it.",
    )
    @click.option("-n", "--limit", default=1000, show_default=True, type=click.IntRange(1))
    @json_option
    @redis_option
    def replay(
        app: str,
        webhook_id: str | None,
        event_id: str | None,
        limit: int,
        as_json: bool,
        redis: str | None,
    ) -> None:
        """Schedule dead-lettered deliveries (or one delivery) for an attempt now; the
        workers' delivery service sends them."""
        if event_id is not None and webhook_id is None:
            raise click.UsageError("--event needs --webhook")

        async def act(m: WebhookManager) -> int:
            if event_id is not None and webhook_id is not None:
                return int(await m.retry_delivery(webhook_id, event_id))
            return await m.replay_dlq(limit=limit, webhook_id=webhook_id)

        n = run(app, redis, act)
        click.echo(json.dumps({"replayed": n}) if as_json else f"replayed {n}")

    @webhooks.command("deliver")
    @click.argument("app")
    @redis_option
    def deliver(app: str, redis: str | None) -> None:
        """Run only the delivery service of APP (no jobs) until SIGINT/SIGTERM: a
        dedicated delivery process. APP's module must construct its WebhookManager (with
        its secrets); give its workers ``run_service=False`` to leave delivery here."""

        async def act(m: WebhookManager) -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await m.service.start(m.queue)
            click.echo(f"delivering webhooks of queue '{text_field(m.queue.name)}'", err=True)
            try:
                await stop.wait()
            finally:
                await m.service.stop()

        run(app, redis, act, own=True)

    return webhooks
