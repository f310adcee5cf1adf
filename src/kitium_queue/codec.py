"""Serialization of job data and results (JSON via orjson), plus the codec extension point.

A ``Codec`` is a bytes→bytes transform applied after serialization (encode) and before
deserialization (decode): payload encryption and compression plug in here. No pickle
is used anywhere.

**The round-trip rule.** A value the processor receives (job data), or that
``get_job_status`` returns (a result, progress), equals the value that was sent. What
JSON cannot carry as it is is refused with a ``SerializationError`` that says where it
is and what to send instead, never changed on the way (orjson alone would write NaN as
``null``, a tuple as a list, a ``datetime`` as a string). Per type (README "Job data and
results" has the same table):

=========================================== =============================================
type                                        rule
=========================================== =============================================
``dict`` with ``str`` keys, ``list``,       round-trips exactly
``str``, ``int`` (64-bit), finite
``float``, ``bool``, ``None``
subclasses of ``str``, ``int``, ``float``,  arrive as the plain type with an equal value
``dict``, ``list`` (``StrEnum``,            (``==`` holds; ``Color.RED`` arrives as
``IntEnum``, ``OrderedDict``)               ``"red"``)
``tuple`` (named tuples too)                refused: send ``list(value)`` (or
                                            ``value._asdict()``)
``datetime``, ``date``, ``time``            refused: send ``value.isoformat()``, parse
                                            with ``fromisoformat``
``uuid.UUID``                               refused: send ``str(value)``
``Enum`` (not ``str``/``int`` based)        refused: send ``member.value``
dataclass instances                         refused: send ``dataclasses.asdict(value)``
numpy arrays and scalars                    refused: send ``value.tolist()``
NaN, ``inf``, ``-inf``                      refused: send None or a string
dict keys that are not ``str``              refused: convert them (``str(key)``)
``int`` outside -2**63 .. 2**64-1           refused: send it as a string
lone surrogates in a string or key          refused: convert the text first
nesting deeper than 254 levels              refused
``set``, ``bytes``, ``Decimal``, other      refused: convert to one of the above
objects
=========================================== =============================================

The rule is checked by one walk over the value before it is encoded (``_first_change``).
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import math
import uuid
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import orjson

from .errors import SerializationError

__all__ = ["MAX_DEPTH", "Codec", "Serializer"]

#: Deepest nesting of lists and dicts accepted (orjson's own limit).
MAX_DEPTH = 254


@runtime_checkable
class Codec(Protocol):
    """A reversible bytes transform (encryption, compression).

    ``encode`` and ``decode`` may run in several threads at once (the callers of a
    ``SyncJobQueue.add_job`` encode in their own threads): keep them thread-safe, as
    ``features.compression.CompressionCodec`` is (a context per thread, its counters
    under a lock).
    """

    def encode(self, data: bytes) -> bytes: ...

    def decode(self, data: bytes) -> bytes: ...


# orjson's messages for values it refuses, and what to tell the caller instead.
_REASONS = (
    (
        "surrogates not allowed",
        "a string (or dict key) holds a lone surrogate, which UTF-8 cannot encode (file "
        "names decoded with 'surrogateescape' carry them); convert it first, e.g. "
        "os.fsencode(name).decode('utf-8', 'backslashreplace')",
    ),
    (
        "64-bit",
        "an int is outside the 64-bit range (-2**63 .. 2**64-1); pass big numbers as strings",
    ),
    (
        "recursion",
        f"it is nested deeper than {MAX_DEPTH} levels of lists and dicts",
    ),
)


class Serializer:
    """JSON (orjson) serializer with an optional chain of codecs."""

    __slots__ = ("codecs",)

    def __init__(self, codecs: Sequence[Codec] = ()) -> None:
        self.codecs = tuple(codecs)

    def add_codec(self, codec: Codec, *, first: bool = False) -> None:
        """Add ``codec`` to the chain: last (applied last on encode, first on decode), or
        ``first`` (applied to the JSON itself: a compression codec goes there, so that
        it compresses before any other codec, such as encryption, makes the bytes
        incompressible). Adding the same codec object twice is a no-op. Add codecs
        before the queue is used: values already stored keep the chain they were
        written with, so a codec must recognise (and pass through) bytes it did not
        produce."""
        if not isinstance(codec, Codec):
            raise TypeError(f"a codec has encode(bytes) and decode(bytes), got {codec!r}")
        if any(c is codec for c in self.codecs):
            return
        self.codecs = (codec, *self.codecs) if first else (*self.codecs, codec)

    def dumps(self, value: Any, what: str = "job data") -> bytes:
        """Encode ``value``; ``SerializationError`` (naming ``what``) when JSON cannot
        carry it as it is (the module's round-trip rule)."""
        # Plain JSON values (the common case) pass a quick check at C speed; anything
        # else gets the walk that says what and where. NaN and infinities are floats
        # (plain): they are looked for only when the output has a null, where orjson
        # writes them.
        looked = _needs_a_look(value)
        if looked:
            self._refuse_changes(value, what)
        try:
            try:
                raw = orjson.dumps(value)
            except TypeError as exc:
                if "dict key must be str" not in str(exc).lower():
                    raise
                # Every key is a str (checked above); some are str subclasses (str
                # enums), which orjson takes only with this option.
                raw = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
        except TypeError as exc:  # orjson.JSONEncodeError
            text = str(exc)
            low = text.lower()
            for needle, reason in _REASONS:
                if needle in low:
                    raise SerializationError(
                        f"{what} cannot be serialized to JSON: {reason}"
                    ) from None
            raise SerializationError(
                f"{what} cannot be serialized to JSON: {text}. Pass JSON values (dict with "
                "str keys, list, str, int, float, bool, None) or convert the object first"
            ) from None
        if not looked and b"null" in raw:
            self._refuse_changes(value, what)
        for codec in self.codecs:
            raw = codec.encode(raw)
        return raw

    @staticmethod
    def _refuse_changes(value: Any, what: str) -> None:
        problem = _first_change(value, what)
        if problem is not None:
            raise SerializationError(f"{what} cannot be serialized to JSON: {problem}")

    def loads(self, raw: bytes, what: str = "job data") -> Any:
        """Decode a stored value; ``SerializationError`` when it cannot be decoded."""
        try:
            for codec in reversed(self.codecs):
                raw = codec.decode(raw)
            return orjson.loads(raw)
        except Exception as exc:
            raise SerializationError(
                f"stored {what} cannot be decoded ({type(exc).__name__}: {exc})"
            ) from None


#: Exact types JSON keeps as they are (checked first: the common case).
_SCALARS = frozenset({str, int, bool, type(None)})
#: The same with float (whose NaN and infinities are looked for separately).
_PLAIN = frozenset({str, int, bool, type(None), float})
_STR = frozenset({str})


def _needs_a_look(value: Any) -> bool:
    """False when ``value`` holds only dicts with exact ``str`` keys, lists and plain
    scalars (``_PLAIN``), which JSON carries as they are (NaN aside); True when it holds
    anything else, for ``_first_change`` to examine. Type checks of whole containers run
    in C (``issuperset(map(type, ...))``), so a plain payload costs little."""
    if (
        type(value) is dict
        and _STR.issuperset(map(type, value))
        and _PLAIN.issuperset(map(type, value.values()))
    ):
        return False  # the most common payload: a flat dict
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict:
            if not _STR.issuperset(map(type, item)):
                return True
            values: Any = item.values()
        elif kind is list:
            values = item
        elif kind in _PLAIN:
            continue
        else:
            return True
        if not _PLAIN.issuperset(map(type, values)):
            stack.extend(v for v in values if type(v) not in _PLAIN)
    return False


def _first_change(value: Any, root: str) -> str | None:
    """What in ``value`` JSON would not carry as it is (where, and what to send
    instead), or None. One iterative walk: no recursion however deep (orjson refuses
    what is deeper than ``MAX_DEPTH`` afterwards); a path is only built for containers."""
    stack: list[tuple[Any, str]] = [(value, root)]
    while stack:
        item, path = stack.pop()
        kind = type(item)
        if kind is dict or (kind not in _SCALARS and isinstance(item, dict)):
            for k, v in item.items():
                if not isinstance(k, str):
                    return (
                        f"the dict key {_short(k)} ({type(k).__name__}) in {path} is not a "
                        "str; JSON object keys are strings, so it would come back changed "
                        "(1 as '1'): convert the keys first (str(key))"
                    )
                if type(v) not in _SCALARS:
                    stack.append((v, f"{path}[{_short(k)}]"))
        elif kind is list or (kind not in _SCALARS and isinstance(item, list)):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(item) if type(v) not in _SCALARS)
        elif kind in _SCALARS:
            continue
        elif isinstance(item, float):
            if not math.isfinite(item):
                return (
                    f"{path} is NaN or infinite, which JSON cannot represent (it would be "
                    "stored as null); use None or a string such as 'inf'"
                )
        elif not isinstance(item, (str, int)):
            changed = _changed_type(item)
            if changed is not None:
                return f"{path} is {changed}"
    return None


def _changed_type(item: Any) -> str | None:
    """For a value orjson would encode as something else: what it is, what it would
    become, what to send instead. None for values orjson refuses itself."""
    name = type(item).__name__
    if isinstance(item, tuple):
        what = "a named tuple" if hasattr(item, "_asdict") else "a tuple"
        fix = "value._asdict() or list(value)" if hasattr(item, "_asdict") else "list(value)"
        return f"{what}, which would arrive as a list: send {fix}"
    if isinstance(item, (datetime.datetime, datetime.date, datetime.time)):
        return (
            f"a {name}, which would arrive as a string: send value.isoformat() and parse "
            f"it with {name}.fromisoformat() in the processor"
        )
    if isinstance(item, uuid.UUID):
        return "a UUID, which would arrive as a string: send str(value)"
    if isinstance(item, enum.Enum):
        return f"a {name} member, which would arrive as its value: send member.value"
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return f"a {name} dataclass, which would arrive as a dict: send dataclasses.asdict(value)"
    if type(item).__module__.startswith("numpy"):
        return f"a numpy {name}, which would arrive as plain JSON values: send value.tolist()"
    return None


def _short(key: Any) -> str:
    """A dict key for a message: its repr (escaped), clipped."""
    try:
        text = repr(key)
    except Exception:
        return f"<{type(key).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."
