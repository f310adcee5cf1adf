"""``kitium-queue dashboard APP [APP...] --token TOKEN:PRINCIPAL:ROLE``: serve the web
dashboard of one or more queues with uvicorn.

Built by ``make_command`` with the CLI's own helpers passed in (this module does not
import the CLI). It refuses to start without a token unless ``--insecure-local`` is
given, and with ``--insecure-local`` it listens on a loopback address only. Tokens can
come from a file (``--tokens-file``, one ``TOKEN:PRINCIPAL:ROLE`` per line) so they do
not show in the process list.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import click

from ..errors import ConfigurationError
from .app import create_dashboard
from .auth import parse_tokens

__all__ = ["make_command"]

WithQueue = Callable[[str, "str | None", Callable[[Any], Awaitable[Any]]], Any]


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _file_tokens(path: str | None) -> list[str]:
    if path is None:
        return []
    try:
        text = Path(path).read_text("utf-8")
    except OSError as exc:
        raise click.BadParameter(
            f"cannot read {path}: {exc.strerror}", param_hint="--tokens-file"
        ) from None
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def make_command(
    with_queue: WithQueue,
    redis_option: Callable[[Any], Any],
    row: Callable[..., str],
    load_queue: Callable[[str, str | None], Any],
) -> click.Command:
    """The ``dashboard`` command, using the CLI's queue loader, ``--redis`` option and
    row formatter."""

    @click.command()
    @click.argument("app", nargs=-1, required=True, metavar="APP...")
    @click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
    @click.option(
        "--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="TCP port."
    )
    @click.option(
        "--token",
        "tokens",
        multiple=True,
        metavar="TOKEN:PRINCIPAL:ROLE",
        help="Who may sign in, with which role (viewer, operator, manager, admin); repeat it.",
    )
    @click.option(
        "--tokens-file",
        default=None,
        help="A file of TOKEN:PRINCIPAL:ROLE lines (kept out of the process list).",
    )
    @click.option(
        "--insecure-local",
        is_flag=True,
        help="Serve without tokens, to this machine only, everyone as admin (development).",
    )
    @click.option(
        "--refresh-ms", default=2000, show_default=True, help="Page refresh interval (0: off)."
    )
    @click.option("--hide-payloads", is_flag=True, help="Never show job data or results.")
    @click.option(
        "--once", is_flag=True, help="Check the configuration and Redis, print the URL, exit."
    )
    @redis_option
    def dashboard(
        app: tuple[str, ...],
        host: str,
        port: int,
        tokens: tuple[str, ...],
        tokens_file: str | None,
        insecure_local: bool,
        refresh_ms: int,
        hide_payloads: bool,
        once: bool,
        redis: str | None,
    ) -> None:
        """Serve the web dashboard of the queues APP... (module:attribute each) on
        http://HOST:PORT/. Refuses to start without --token or --tokens-file unless
        --insecure-local (then on a loopback address only)."""
        given = [*tokens, *_file_tokens(tokens_file)]
        if not given and not insecure_local:
            raise ConfigurationError(
                "the dashboard needs --token TOKEN:PRINCIPAL:ROLE (or --tokens-file); "
                "--insecure-local serves this machine only without tokens"
            )
        if insecure_local and not given and not _loopback(host):
            raise ConfigurationError(
                f"--insecure-local listens on a loopback address only, not {host!r}"
            )
        parsed = parse_tokens(given)
        queues = [load_queue(a, redis) for a in app]
        asgi = create_dashboard(
            queues=queues,
            tokens=parsed,
            insecure_local=insecure_local,
            refresh_ms=refresh_ms,
            show_payloads=not hide_payloads,
        )

        async def act(first: Any) -> None:
            for q in queues:
                await q.get_stats()  # fails fast, with the CLI's error, when Redis is not there
            url = f"http://{host}:{port}/"
            if once:
                click.echo(row("ready", url, len(queues)))
                return
            import uvicorn

            config = uvicorn.Config(asgi, host=host, port=port, log_level="warning")
            server = uvicorn.Server(config)
            click.echo(row("serving", url))
            try:
                await server.serve()
            except asyncio.CancelledError:
                pass
            finally:
                for q in queues[1:]:
                    await q.close()

        with_queue(app[0], redis, act)

    return dashboard
