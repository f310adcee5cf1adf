"""``kitium-queue encryption ...``: key status and rotation with its progress.

Built by ``make_command`` with the CLI's own helpers passed in (this module does not
import the CLI). The app module the CLI loads builds the queue's ``EncryptionManager``
with its keys (from its configuration: environment, files); the CLI never reads or
prints key material, only key ids.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from .rotation import RotationStatus

__all__ = ["make_command"]

WithQueue = Callable[[str, "str | None", Callable[[Any], Awaitable[Any]]], Any]
_BAR = 30


def _bar(st: RotationStatus) -> str:
    filled = round(st.fraction * _BAR)
    return "[" + "#" * filled + "." * (_BAR - filled) + f"] {st.fraction * 100:5.1f}%"


def _line(st: RotationStatus) -> str:
    return (
        f"{_bar(st)} rotation {st.rotation} {st.from_key_id}->{st.to_key_id} "
        f"{st.state} round {st.round} scanned {st.scanned}/{st.total} "
        f"re-encrypted {st.reencrypted} skipped {st.conflicts} "
        f"undecryptable {st.undecryptable}"
    )


def make_command(
    with_queue: WithQueue, redis_option: Callable[[Any], Any], row: Callable[..., str]
) -> click.Group:
    """The ``encryption`` command group, using the CLI's queue loader, ``--redis``
    option and row formatter."""

    @click.group()
    def encryption() -> None:
        """Payload encryption: key status, rotation and its progress."""

    @encryption.command("status")
    @click.argument("app")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @redis_option
    def status(app: str, as_json: bool, redis: str | None) -> None:
        """The current key id, the key ids recorded, and the latest rotation."""
        from .manager import EncryptionManager

        async def act(q: Any) -> None:
            m = EncryptionManager.for_queue(q)
            st = await m.rotation_status()
            held = m.held_key_ids()
            if as_json:
                click.echo(json.dumps({**st.to_dict(), "held_here": held}, indent=2))
                return
            click.echo(row("current key", st.current_key_id or "(none yet)"))
            click.echo(row("key ids", ", ".join(st.key_ids) or "-"))
            click.echo(row("held here", ", ".join(held) or "-"))
            if st.rotation:
                click.echo(row("rotation", _line(st)))
                if st.problems:
                    click.echo(row("problems", st.problems))
            else:
                click.echo(row("rotation", "none yet"))
            if st.state == "running":
                click.echo(row("pass leader", st.leader or "(none)"))
            for who in st.lacking:
                click.echo(row("lacks key", who))
            if st.stalled:
                click.echo(row("stalled", st.stalled))
            if st.damaged:
                click.echo(row("damaged", st.damaged))

        with_queue(app, redis, act)

    @encryption.command("rotate")
    @click.argument("app")
    @click.argument("old_key_id")
    @click.argument("new_key_id")
    @click.option(
        "--run",
        "run_here",
        is_flag=True,
        help="Run the re-encryption pass in this process (else a worker's "
        "leader runs it and this command follows its progress).",
    )
    @click.option("--no-wait", is_flag=True, help="Return once the key is rotated.")
    @click.option(
        "--timeout",
        default=0.0,
        show_default=True,
        help="Stop following after this many seconds (0 = until done).",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print progress as JSON lines.")
    @redis_option
    def rotate(
        app: str,
        old_key_id: str,
        new_key_id: str,
        run_here: bool,
        no_wait: bool,
        timeout: float,
        as_json: bool,
        redis: str | None,
    ) -> None:
        """Make NEW_KEY_ID the current key and re-encrypt what is stored under others.

        Both keys must be held by the app's EncryptionManager (its configuration)."""
        from .manager import EncryptionManager

        def show(st: RotationStatus) -> None:
            click.echo(json.dumps(st.to_dict()) if as_json else row(_line(st)))

        async def act(q: Any) -> None:
            m = EncryptionManager.for_queue(q)
            st = await m.rotate_key(old_key_id, new_key_id)
            show(st)
            if no_wait:
                return
            task = asyncio.ensure_future(m.run_rotation()) if run_here else None
            deadline = time.monotonic() + timeout if timeout else None
            last: dict[str, Any] = {}
            try:
                while True:
                    st = await m.rotation_status()
                    if st.to_dict() != last:
                        show(st)
                        last = st.to_dict()
                    if st.state != "running" or (task is not None and task.done()):
                        break
                    if deadline is not None and time.monotonic() > deadline:
                        click.echo(
                            "still running; follow with: kitium-queue encryption status", err=True
                        )
                        break
                    await asyncio.sleep(0.5)
                if task is not None:
                    show(await task)
            finally:
                if task is not None and not task.done():
                    task.cancel()

        with_queue(app, redis, act)

    return encryption
