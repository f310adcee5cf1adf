"""What a reply deadline (``connerrors.bound_replies``) must allow for.

A command that Redis holds on purpose: the lists' and sorted sets' blocking pops
(``BLPOP``, ``BLMPOP``, ``BZMPOP``, ``BRPOPLPUSH``...), ``XREAD``/``XREADGROUP`` with
``BLOCK``, ``WAIT`` and ``WAITAOF`` get the wait they ask for on top of the deadline
(``held_for``), and none at all when they ask to wait for ever (a timeout of 0). And a
reply that came but waits unread (``unread``: a subscriber reads its ``SUBSCRIBE``
confirmation when it likes) is no server that stopped answering.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["HELD", "held_for", "holds", "unread"]

#: Blocking commands: where their wait is (argument index; XREAD: after BLOCK), its unit.
_WAITS = dict.fromkeys(
    ("BLPOP", "BRPOP", "BZPOPMIN", "BZPOPMAX", "BLMOVE", "BRPOPLPUSH"), (-1, 1.0)
)
_WAITS.update(BLMPOP=(1, 1.0), BZMPOP=(1, 1.0), WAIT=(2, 1e-3), WAITAOF=(3, 1e-3))
_WAITS.update(XREAD=(0, 1e-3), XREADGROUP=(0, 1e-3))
#: Their names as redis-py's commands spell them (str and bytes, upper and lower case).
HELD = frozenset(f for n in _WAITS for t in (n, n.lower()) for f in (t, t.encode()))


def holds(name: Any) -> bool:
    """Whether command ``name`` (``args[0]``) may block: ``held_for`` then says how long."""
    return isinstance(name, (str, bytes)) and (name in HELD or name.upper() in HELD)


def held_for(args: Sequence[Any]) -> float | None:
    """The wait command ``args`` asks Redis for (s; None: no limit), e.g. ``XREAD BLOCK``."""
    words = [(a.decode("latin-1") if isinstance(a, bytes) else str(a)).upper() for a in args]
    at, unit = _WAITS.get(words[0] if words else "", (None, 0.0))
    if at == 0:
        # BLOCK among the options: after XREADGROUP's GROUP <group> <consumer> (either
        # may be named BLOCK or STREAMS), before STREAMS (a stream may be named BLOCK).
        first = 4 if words[0] == "XREADGROUP" else 1
        end = words.index("STREAMS", first) if "STREAMS" in words[first:] else len(words)
        at = words.index("BLOCK", first, end) + 1 if "BLOCK" in words[first:end] else None
    try:
        wait = float(words[at]) * unit if at is not None else 0.0
    except (IndexError, ValueError):
        return 0.0
    return None if at is not None and wait <= 0 else max(wait, 0.0)


def unread(conn: Any) -> bool:
    """Whether bytes Redis sent wait unread in redis-py connection ``conn``'s stream or
    parser (hiredis's, or redis-py's own): the server answered."""
    parser, stream = getattr(conn, "_parser", None), getattr(conn, "_reader", None)
    hiredis: Any = getattr(parser, "_reader", None)
    own = getattr(parser, "_buffer", None)  # redis-py's parser: bytes, read up to _pos
    return bool(
        getattr(stream, "_buffer", None)
        or (hasattr(hiredis, "has_data") and hiredis.has_data())
        or (isinstance(own, bytes) and len(own) > (getattr(parser, "_pos", 0) or 0))
    )
