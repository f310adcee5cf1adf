"""Who is acting: the principal on whose behalf library calls run.

A principal is an opaque name (``"alice@acme.com"``, ``"svc-billing"``, a dashboard
token's owner). It reaches the extension points without being passed through every
call:

* ``with acting_as("alice@acme.com"): ...`` sets it for the code inside the block (and
  the tasks that block creates: it is a ``contextvars`` variable, so concurrent requests
  of a web server each see their own);
* a queue may carry a default (``QueueContext.principal``), used when no block is active.

The admin choke point stamps it on every ``AdminCall`` (``AdminCall.principal``), so a
guard can refuse a command and an audit subscriber can record who ran it; enqueue
middleware reads it with ``current_principal()``. The core only carries the name: what a
principal may do is decided by whichever guard a feature installs.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from .errors import ConfigurationError
from .limits import clip

__all__ = ["MAX_PRINCIPAL_LEN", "acting_as", "check_principal", "current_principal"]

#: Longest principal name accepted.
MAX_PRINCIPAL_LEN = 256

_acting: ContextVar[str | None] = ContextVar("kq_acting_principal", default=None)


def check_principal(principal: object) -> str:
    """``principal`` if it is a usable name, else ConfigurationError saying why.

    A name is a non-empty ``str`` of at most ``MAX_PRINCIPAL_LEN`` characters with no
    control characters or surrogates (it is written to audit records and shown in UIs),
    in Unicode NFKC form (a look-alike spelling is refused, never normalised).
    """
    if not isinstance(principal, str):
        raise ConfigurationError(
            f"principal must be a str (a user or service name), got {type(principal).__name__}"
        )
    if not principal or principal != principal.strip():
        raise ConfigurationError(
            "principal must be a non-empty name without leading or trailing spaces, "
            f"got {clip(repr(principal), 100)}"
        )
    if len(principal) > MAX_PRINCIPAL_LEN:
        raise ConfigurationError(
            f"principal is {len(principal)} characters; the limit is {MAX_PRINCIPAL_LEN}"
        )
    for ch in principal:
        # Control (C0, C1), format (zero-width, bidirectional) and surrogate code points:
        # the audit log could not record such a name apart from a look-alike.
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs"):
            raise ConfigurationError(
                f"principal {clip(repr(principal), 100)} contains a control or format "
                f"character or a lone surrogate (U+{ord(ch):04X}); use printable text"
            )
    # One spelling per name: a decomposed accent or a full-width letter would make a
    # second principal that looks like the first (and is not granted what it is).
    # Refused, not rewritten: two names an identity provider keeps apart stay apart.
    canonical = unicodedata.normalize("NFKC", principal)
    if canonical != principal:
        raise ConfigurationError(
            f"principal {clip(ascii(principal), 100)} is not in Unicode NFKC form (it "
            f"would look like another name); write it as {clip(ascii(canonical), 100)}"
        )
    return principal


def current_principal(default: str | None = None) -> str | None:
    """The principal set by the innermost active ``acting_as`` block, else ``default``."""
    acting = _acting.get()
    return acting if acting is not None else default


@contextmanager
def acting_as(principal: str) -> Iterator[str]:
    """Run the block on behalf of ``principal`` (validated by ``check_principal``).

    Blocks nest; leaving one restores the principal that was acting before it.
    """
    token = _acting.set(check_principal(principal))
    try:
        yield principal
    finally:
        _acting.reset(token)
