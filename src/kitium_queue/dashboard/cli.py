"""``kitium-queue dashboard APP [APP...] --token TOKEN:PRINCIPAL:ROLE``: serve the web
dashboard of one or more queues with uvicorn.

Built by ``make_command`` with the CLI's own helpers passed in (this module does not
import the CLI). It refuses to start without a token unless ``--insecure-local`` is
given, and with ``--insecure-local`` it listens on a loopback address only. Tokens can
come from a file (``--tokens-file``, one ``TOKEN:PRINCIPAL:ROLE`` per line) so they do
not show in the process list.

``--access`` protects the queues with the deployment's grants (an
``AccessControlManager`` on the first queue's connection and prefix; a queue the app
module protected already keeps its manager), so every signed-in principal needs both
its dashboard role and a grant, and shows the Audit page; ``--audit`` shows the Audit
page and records the dashboard's actions without enforcing grants. Both need the audit
key, read from ``--audit-key-file`` or ``$KITIUM_QUEUE_AUDIT_KEY``, never from the
command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import ipaddress
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import click

from ..errors import ConfigurationError, install_hint
from ..features.audit.cli import AUDIT_KEY_ENV, audit_key
from ..serving import listen_socket, serve_until_stopped
from .auth import parse_tokens

__all__ = ["make_command"]

#: How long a stop (SIGTERM, SIGINT) lets the requests under way finish (s).
GRACE_S = 10

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


def _access(queues: list[Any], access: bool, audit: bool, key_file: Path | None) -> Any:
    """What ``create_dashboard(access=...)`` gets for ``--access`` / ``--audit``."""
    if not (access or audit):
        if key_file is not None:
            raise ConfigurationError("--audit-key-file goes with --access or --audit")
        return None
    key = audit_key(key_file, required=True)
    prefixes = {q.keys.prefix for q in queues}
    if len(prefixes) > 1:
        raise ConfigurationError(
            f"--access / --audit need the queues of one deployment (one key prefix), got "
            f"prefixes {sorted(prefixes)}"
        )
    if not access:
        from ..features.audit import AuditLog

        return AuditLog(queues[0], key=key)
    from ..features.access import AccessControlManager

    manager = AccessControlManager(queues[0], audit_key=key)
    for q in queues:
        if AccessControlManager.protection_of(q) is None:
            manager.protect(q)
    return manager


def _server_class() -> Any:
    import uvicorn

    class _Server(uvicorn.Server):
        """uvicorn's server without its own signal handling: it raised the signal again
        once it had stopped, and the default SIGTERM then ended the process (exit 143)
        before the command's cleanup ran (the audit log's last entries and refusal
        summaries were lost)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return _Server


async def _serve(server: Any, sock: Any) -> None:
    """Serve until SIGTERM or SIGINT (``serving.serve_until_stopped``: a graceful stop,
    requests under way given up to ``GRACE_S``, then the command's cleanup and exit 0)
    or until the server ends by itself."""
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    stopped = asyncio.Event()
    serving.add_done_callback(lambda _: stopped.set())

    async def stop() -> None:
        server.should_exit = True
        await asyncio.wait([serving])

    try:
        await serve_until_stopped(stopped, stop)
        await serving  # its own error, if it ended by one
    finally:
        if not serving.done():
            serving.cancel()
            await asyncio.wait([serving])


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
        "--access",
        "with_access",
        is_flag=True,
        help="Protect the queues with the deployment's grants (role and grant both apply) "
        "and show the Audit page.",
    )
    @click.option(
        "--audit",
        "with_audit",
        is_flag=True,
        help="Show the Audit page and record the dashboard's actions (no grants enforced).",
    )
    @click.option(
        "--audit-key-file",
        "key_file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help=f"File holding the audit key (default: ${AUDIT_KEY_ENV}).",
    )
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
        with_access: bool,
        with_audit: bool,
        key_file: Path | None,
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
        if not once and importlib.util.find_spec("uvicorn") is None:
            raise ConfigurationError(
                "serving the dashboard needs uvicorn, of the optional extra 'dashboard': "
                + install_hint("dashboard")
                + "; or mount create_dashboard() in an ASGI server of your own"
            )
        parsed = parse_tokens(given)
        queues = [load_queue(a, redis) for a in app]
        access = _access(queues, with_access, with_audit, key_file)
        from .app import create_dashboard  # Starlette and Jinja2: loaded to serve only

        asgi = create_dashboard(
            queues=queues,
            tokens=parsed,
            insecure_local=insecure_local,
            refresh_ms=refresh_ms,
            show_payloads=not hide_payloads,
            access=access,
        )

        async def act(first: Any) -> None:
            try:
                for q in queues:
                    # Fails fast, with the CLI's error, when Redis is not there (a
                    # connection, not a read: a protected queue would refuse a read
                    # made for no principal).
                    await q.client()
                url = f"http://{host}:{port}/"
                if once:
                    click.echo(row("ready", url, len(queues)))
                    return
                import uvicorn

                # Bound here, before "serving" is printed: a port in use or a host that
                # is not this machine's is a clear error, not a line that says serving.
                sock = listen_socket(host, port)
                bound = sock.getsockname()[1]
                config = uvicorn.Config(
                    asgi,
                    host=host,
                    port=bound,
                    log_level="warning",
                    timeout_graceful_shutdown=GRACE_S,
                )
                server = _server_class()(config)
                click.echo(row("serving", f"http://{host}:{bound}/"))
                try:
                    with contextlib.suppress(asyncio.CancelledError):
                        await _serve(server, sock)
                finally:
                    sock.close()
            finally:
                refusals = asgi.state.dashboard.refusals
                if refusals is not None:  # a plain AuditLog's own windows summed up
                    await refusals.close()
                if access is not None:
                    await access.close()  # writes the audit entries still queued
                for q in queues[1:]:
                    await q.close()

        with_queue(app[0], redis, act)

    return dashboard
