"""Who the command line acts for: the global ``--as`` / ``--principal`` option.

``kitium-queue --as alice@acme.com jobs list APP`` (or ``KITIUM_QUEUE_PRINCIPAL``, read
here only) runs the whole command inside ``identity.acting_as``: on a queue protected by
access control each read and action is checked against that principal's grants, and the
audit log records it. A command's own ``--as`` or ``--principal`` (``access grant --as``,
``compliance erase --principal``) names it for that command instead. ``access grant`` /
``revoke`` take either as the shell operator naming themselves (the manager's
``principal``, not checked: ``features/access/cli.py``). The name is checked
(``identity.check_principal``) before anything is loaded.

``shell_terms`` words an access refusal in the command line's terms: for want of a
principal, the library's text names ``JobQueue(..., principal=...)`` and
``acting_as(...)``, which a shell user cannot act on; a refused principal's text names
``AccessControlManager.grant_access``, and ``kitium-queue access grant`` is added.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import click

from ..errors import AccessDeniedError, ConfigurationError
from ..identity import acting_as, check_principal

__all__ = ["PRINCIPAL_ENV", "acting", "principal_option", "shell_terms"]

#: The environment variable naming the principal when ``--as`` is not given.
PRINCIPAL_ENV = "KITIUM_QUEUE_PRINCIPAL"
_META = "kitium_queue.principal"

#: What the library's refusals tell a program to do, and what a shell user does instead.
_API_HINTS = (
    "name one with JobQueue(..., principal=...) or run the call inside acting_as(...)",
    "run the call inside acting_as(...) or give AccessControlManager(principal=...)",
)


def _keep(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if not value:  # not given, or the environment variable set empty
        return None
    try:
        who = check_principal(value)
    except ConfigurationError as exc:  # its text quotes the name escaped
        raise click.BadParameter(str(exc), ctx, param) from None
    ctx.meta[_META] = who
    return who


def principal_option() -> click.Option:
    """The group's ``--as`` / ``--principal`` option (default ``$KITIUM_QUEUE_PRINCIPAL``)."""
    return click.Option(
        ["--as", "--principal", "principal"],
        metavar="PRINCIPAL",
        envvar=PRINCIPAL_ENV,
        expose_value=False,
        callback=_keep,
        help=(
            "Act as PRINCIPAL: on a queue protected by access control every call is "
            "checked against its grants, and audit records it (default: "
            f"${PRINCIPAL_ENV} when set). Give it before the command: "
            "kitium-queue --as alice jobs list APP."
        ),
    )


@contextlib.contextmanager
def acting(ctx: click.Context) -> Iterator[None]:
    """The command's run, inside ``acting_as`` the principal ``--as`` named (if any)."""
    who: Any = ctx.meta.get(_META)
    if who is None:
        yield
        return
    with acting_as(who):
        yield


def shell_terms(exc: BaseException, text: str, command: str | None) -> str:
    """``text`` (the line of ``exc``) with an access refusal told in the command line's
    terms: for want of a principal, ``--as`` before ``command`` or
    ``KITIUM_QUEUE_PRINCIPAL``; for a refused one, ``kitium-queue access grant``."""
    if not isinstance(exc, AccessDeniedError):
        return text
    if exc.principal is not None:  # refused: the grant it lacks, from a shell
        grant = "AccessControlManager.grant_access"
        return f"{text} (from a shell: kitium-queue access grant)" if grant in text else text
    hint = (
        f"name one with kitium-queue --as PRINCIPAL {command or 'COMMAND'} ... (before the "
        f"command), or set {PRINCIPAL_ENV}"
    )
    for api in _API_HINTS:
        if api in text:
            return text.replace(api, hint)
    return f"{text}; {hint}"
