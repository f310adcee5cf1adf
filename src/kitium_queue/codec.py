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
a list or dict that contains itself         refused: remove the back-reference
``set``, ``bytes``, ``Decimal``, other      refused: convert to one of the above
objects
=========================================== =============================================

The rule is checked by one walk over the value before it is encoded (``_first_change``),
after a quick check of plain values (``_needs_a_look``); both walks are bounded by
``MAX_DEPTH``, so a value that contains itself is refused, never walked for ever. A
process-mode child encodes results and progress with this same ``Serializer``.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import math
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import orjson

from .errors import ConfigurationError, PayloadTooLargeError, SerializationError
from .limits import MAX_PROGRESS_BYTES

__all__ = ["MAX_DEPTH", "Codec", "RefusedValue", "Serializer", "encode_progress"]

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


class RefusedValue:
    """Stands in for a value ``Serializer.dumps`` refused where it was produced (a
    process-mode child, which cannot send the value itself): encoding it raises that
    ``SerializationError`` again, with the same text, so the refusal ends the same way
    as if the value had been encoded here."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        #: The full ``SerializationError`` text.
        self.reason = reason

    def __repr__(self) -> str:
        return f"RefusedValue({self.reason!r})"


class Serializer:
    """JSON (orjson) serializer with an optional chain of codecs."""

    __slots__ = ("codecs",)

    def __init__(self, codecs: Sequence[Codec] = ()) -> None:
        if isinstance(codecs, (str, bytes, Mapping)) or not isinstance(codecs, Sequence):
            raise ConfigurationError(
                f"codecs must be a list of codecs (objects with encode and decode), got "
                f"{type(codecs).__name__}"
            )
        for codec in codecs:
            if not isinstance(codec, Codec):
                raise ConfigurationError(
                    "each codec has encode(bytes) and decode(bytes) methods, got "
                    f"{type(codec).__name__}"
                )
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
                    if needle == "64-bit":  # where, as the other refusals say
                        reason = _big_int(value, what) or reason
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
        if type(value) is RefusedValue:
            raise SerializationError(value.reason)
        problem = _first_change(value, what)
        if problem is not None:
            raise SerializationError(f"{what} cannot be serialized to JSON: {problem}")

    def loads(self, raw: bytes, what: str = "job data") -> Any:
        """Decode a stored value; ``SerializationError`` when it cannot be decoded."""
        stored = raw
        try:
            for codec in reversed(self.codecs):
                raw = codec.decode(raw)
            return orjson.loads(raw)
        except Exception as exc:
            raise SerializationError(
                f"stored {what} cannot be decoded ({type(exc).__name__}: {exc})"
                + _frame_hint(stored, raw)
            ) from None


def _frame_hint(stored: bytes, raw: bytes) -> str:
    """What to do when a value left undecoded by this process's codecs is a codec's
    frame (a NUL byte first: no JSON text starts with one), e.g. a compressed value read
    by a process whose queue has no compression: the process that wrote it had a codec
    this one lacks."""
    if not isinstance(raw, bytes) or raw[:1] != b"\x00":
        return ""
    mark = stored[:4].hex() if isinstance(stored, bytes) else "?"
    return (
        f"; it is a codec's frame (first bytes 0x{mark}: 0x006b717a is a compressed "
        "value) that no codec of this process reads: give this queue the codec settings "
        "of the process that wrote it (a value compressed once stays readable only "
        "where compression is configured), then replay the job"
    )


#: Exact types JSON keeps as they are (checked first: the common case).
_SCALARS = frozenset({str, int, bool, type(None)})
#: The same with float (whose NaN and infinities are looked for separately).
_PLAIN = frozenset({str, int, bool, type(None), float})
_STR = frozenset({str})


def _needs_a_look(value: Any) -> bool:
    """False when ``value`` holds only dicts with exact ``str`` keys, lists and plain
    scalars (``_PLAIN``), which JSON carries as they are (NaN aside), at most
    ``MAX_DEPTH`` levels deep; True when it holds anything else, for ``_first_change``
    to examine. Type checks of whole containers run in C
    (``issuperset(map(type, ...))``), so a plain payload costs little.

    Depth first, one iterator per open container: the stack's length is the depth, so a
    value nested too deep, or one that contains itself (which would otherwise be walked
    forever), is handed on after at most ``MAX_DEPTH`` levels."""
    kind = type(value)
    if kind is dict:
        if not _STR.issuperset(map(type, value)):
            return True
        values: Any = value.values()
    elif kind is list:
        values = value
    else:
        return kind not in _PLAIN
    if _PLAIN.issuperset(map(type, values)):
        return False  # the most common payload: a flat dict (or list)
    # The items ``stack[-1]`` yields (containers, or values to look at) are at depth
    # len(stack) + 1: the root is at depth 1.
    stack: list[Iterator[Any]] = [(v for v in values if type(v) not in _PLAIN)]
    while stack:
        for item in stack[-1]:
            kind = type(item)
            if kind is dict:
                if not _STR.issuperset(map(type, item)):
                    return True
                values = item.values()
            elif kind is list:
                values = item
            else:
                return True  # not plain (plain values are never yielded)
            if not _PLAIN.issuperset(map(type, values)):
                if len(stack) >= MAX_DEPTH - 1:
                    return True  # containers deeper than MAX_DEPTH (or a cycle)
                stack.append(v for v in values if type(v) not in _PLAIN)
                break
        else:
            stack.pop()
    return False


def _first_change(value: Any, root: str) -> str | None:
    """What in ``value`` JSON would not carry as it is (where, and what to send
    instead), or None. One iterative walk, depth first: no recursion however deep; a
    value nested deeper than ``MAX_DEPTH`` levels, or a list or dict that contains
    itself (at any depth), is reported as soon as it is reached. A path is only built
    for containers."""
    # One iterator of (child, path) per open container; ``open_ids`` maps the id() of
    # each open container (the current item's ancestors) to its path, in opening order,
    # so the last one is closed with ``popitem``.
    frames: list[Iterator[tuple[Any, str]]] = [iter(((value, root),))]
    open_ids: dict[int, str] = {}
    while frames:
        for item, path in frames[-1]:
            kind = type(item)
            if kind in _SCALARS:
                continue
            if kind is dict or kind is list or isinstance(item, (dict, list)):
                ident = id(item)
                outer = open_ids.get(ident)
                if outer is not None:
                    return (
                        f"{_clip_path(path)} is {_clip_path(outer)} itself: the value "
                        "contains itself (a list or dict holds a reference to itself or to "
                        "a container around it), which JSON cannot represent; remove the "
                        "back-reference, or send an id that stands for it"
                    )
                if len(frames) > MAX_DEPTH:
                    return (
                        f"{root} is nested deeper than {MAX_DEPTH} levels of lists and dicts "
                        f"({_clip_path(path)} is at level {MAX_DEPTH + 1}); flatten it, or "
                        "store the data elsewhere and send a reference"
                    )
                children: list[tuple[Any, str]]
                if isinstance(item, dict):
                    children = []
                    for k, v in item.items():
                        if not isinstance(k, str):
                            return (
                                f"the dict key {_short(k)} ({type(k).__name__}) in "
                                f"{_clip_path(path)} is not a str; JSON object keys are "
                                f"strings, so {_key_back(k)}: convert the keys first "
                                "(str(key))"
                            )
                        if type(v) not in _SCALARS:
                            children.append((v, f"{path}[{_short(k)}]"))
                else:
                    children = [
                        (v, f"{path}[{i}]") for i, v in enumerate(item) if type(v) not in _SCALARS
                    ]
                open_ids[ident] = path
                frames.append(iter(children))
                break
            if isinstance(item, float):
                if not math.isfinite(item):
                    return (
                        f"{_clip_path(path)} is NaN or infinite, which JSON cannot represent "
                        "(it would be stored as null); use None or a string such as 'inf'"
                    )
            elif not isinstance(item, (str, int)):
                changed = _changed_type(item)
                if changed is not None:
                    return f"{_clip_path(path)} is {changed}"
        else:
            frames.pop()
            if open_ids:
                open_ids.popitem()
    return None


def _clip_path(path: str) -> str:
    """A path for a message, its middle cut when it is long (deep data)."""
    return path if len(path) <= 100 else f"{path[:60]}...{path[-30:]}"


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


def _key_back(key: Any) -> str:
    """How JSON would give a dict key that is not a str back, for a message: "it would
    come back changed (True as 'true')", or that it cannot be carried at all."""
    try:
        back = next(iter(orjson.loads(orjson.dumps({key: 0}, option=orjson.OPT_NON_STR_KEYS))))
    except Exception:
        return "it cannot be carried as it is"
    return f"it would come back changed ({_short(key)} as {_short(back)})"


#: The ints orjson encodes (-2**63 .. 2**64-1).
_INT_RANGE = range(-(2**63), 2**64)


def _big_int(value: Any, root: str) -> str | None:
    """Where in ``value`` (named ``root``) an int outside the range orjson encodes is,
    as a refusal's reason; None if none is found. Each list or dict is walked once (a
    value that contains itself ends), at most ``MAX_DEPTH`` levels deep."""
    bad = "is an int outside the 64-bit range (-2**63 .. 2**64-1); pass big numbers as strings"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{root} {bad}" if value not in _INT_RANGE else None
    if not isinstance(value, (dict, list, tuple)):
        return None
    seen: set[int] = set()
    stack: list[tuple[Any, str, int]] = [(value, root, 1)]
    while stack:
        item, path, depth = stack.pop()
        if id(item) in seen or depth > MAX_DEPTH:
            continue
        seen.add(id(item))
        pairs = item.items() if isinstance(item, dict) else enumerate(item)
        inner = []
        for k, v in pairs:
            if isinstance(v, int) and not isinstance(v, bool):
                if v not in _INT_RANGE:
                    return f"{_clip_path(f'{path}[{_short(k)}]')} {bad}"
            elif isinstance(v, (dict, list, tuple)):
                inner.append((v, f"{path}[{_short(k)}]", depth + 1))
        stack.extend(reversed(inner))  # the first container is walked first
    return None


def _short(key: Any) -> str:
    """A dict key for a message: its repr (escaped), clipped."""
    try:
        text = repr(key)
    except Exception:
        return f"<{type(key).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


#: Progress values: plain JSON (no codecs: the event stream carries small values as they
#: are), by the same round-trip rule as job data.
_PROGRESS = Serializer(())


def encode_progress(job_id: str, value: Any) -> bytes:
    """A job's progress value as recorded, in every execution mode (in-process and a
    process-mode child): ``SerializationError`` for a value JSON would change,
    ``PayloadTooLargeError`` above ``MAX_PROGRESS_BYTES`` encoded."""
    raw = _PROGRESS.dumps(value, "progress")
    if len(raw) > MAX_PROGRESS_BYTES:
        raise PayloadTooLargeError(
            f"progress of job {job_id} is {len(raw)} bytes encoded, above "
            f"{MAX_PROGRESS_BYTES}; report a small value (a percentage, a few counters)"
        )
    return raw
