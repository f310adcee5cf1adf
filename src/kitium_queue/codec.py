"""Serialization of job data and results (JSON via orjson), plus the codec extension point.

A ``Codec`` is a bytes→bytes transform applied after serialization (encode) and before
deserialization (decode): payload encryption and compression plug in here. No pickle
is used anywhere.

What JSON cannot carry faithfully is refused with a ``SerializationError`` that says what
and where, instead of being changed on the way (orjson writes NaN as ``null`` and turns
an int key into a string): lone surrogates in strings or keys, NaN and infinities, ints
outside the 64-bit range, nesting deeper than 254 levels, and dict keys that are not
strings.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import orjson

from .errors import SerializationError

__all__ = ["MAX_DEPTH", "Codec", "Serializer"]

#: Deepest nesting of lists and dicts accepted (orjson's own limit).
MAX_DEPTH = 254


@runtime_checkable
class Codec(Protocol):
    """A reversible bytes transform (encryption, compression)."""

    def encode(self, data: bytes) -> bytes: ...

    def decode(self, data: bytes) -> bytes: ...


_OPTS = orjson.OPT_SERIALIZE_NUMPY

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
        "an int is outside the 64-bit range (-2**63 .. 2**64-1); pass big numbers as "
        "strings",
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

    def dumps(self, value: Any, what: str = "job data") -> bytes:
        """Encode ``value``; ``SerializationError`` (naming ``what``) when JSON cannot
        carry it as it is."""
        try:
            try:
                raw = orjson.dumps(value, option=_OPTS)
            except TypeError as exc:
                if "dict key must be str" not in str(exc).lower():
                    raise
                # Keys of str subclasses (str enums) are strings in JSON too; any other
                # key type would come back changed (1 as "1"), so it is refused.
                where = _non_str_key(value, what)
                if where is not None:
                    raise SerializationError(
                        f"{what} cannot be serialized to JSON: the dict key {where} is not "
                        "a str; JSON object keys are strings, so it would come back "
                        "changed (1 as '1'): convert the keys first (str(key))"
                    ) from None
                raw = orjson.dumps(value, option=_OPTS | orjson.OPT_NON_STR_KEYS)
        except SerializationError:
            raise
        except TypeError as exc:  # orjson.JSONEncodeError
            text = str(exc)
            low = text.lower()
            for needle, reason in _REASONS:
                if needle in low:
                    raise SerializationError(
                        f"{what} cannot be serialized to JSON: {reason}"
                    ) from None
            raise SerializationError(
                f"{what} cannot be serialized to JSON: {text}. Pass JSON-compatible values "
                "(dict, list, str, int, float, bool, None, datetime, UUID, dataclass) or "
                "convert the object first"
            ) from None
        # orjson writes NaN and +-inf as null. Only a payload that has a null can hold
        # one, so the (rare) walk below costs nothing for the others.
        if b"null" in raw:
            where = _non_finite(value, what)
            if where is not None:
                raise SerializationError(
                    f"{what} cannot be serialized to JSON: {where} is NaN or infinite, "
                    "which JSON cannot represent (it would be stored as null); use None "
                    "or a string such as 'inf'"
                )
        for codec in self.codecs:
            raw = codec.encode(raw)
        return raw

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


def _walk(value: Any, root: str) -> Iterator[tuple[Any, str]]:
    """Every value inside ``value`` with where it is (``<root>['a'][3]``), depth first.

    Iterative, so it needs no recursion however deep the value (orjson has already
    refused anything deeper than ``MAX_DEPTH``). A dict is yielded before its values,
    so a caller can look at its keys.
    """
    stack: list[tuple[Any, str]] = [(value, root)]
    while stack:
        item, path = stack.pop()
        yield item, path
        if isinstance(item, dict):
            stack.extend((v, f"{path}[{_short(k)}]") for k, v in item.items())
        elif isinstance(item, (list, tuple)):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(item))
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            stack.extend(
                (getattr(item, f.name, None), f"{path}.{f.name}")
                for f in dataclasses.fields(item)
            )


def _non_finite(value: Any, root: str) -> str | None:
    """Where the first NaN or infinity in ``value`` is (``<root>['a'][3]``), or None."""
    for item, path in _walk(value, root):
        if isinstance(item, float):
            if not math.isfinite(item):
                return path
        elif _is_float_array(item) and not _all_finite(item):
            return path
    return None


def _non_str_key(value: Any, root: str) -> str | None:
    """The first dict key in ``value`` that is not a ``str`` (or a str subclass), shown
    with where it is (``1 in <root>['a']``), or None."""
    for item, path in _walk(value, root):
        if isinstance(item, dict):
            for k in item:
                if not isinstance(k, str):
                    return f"{_short(k)} ({type(k).__name__}) in {path}"
    return None


def _short(key: Any) -> str:
    """A dict key for a message: its repr (escaped), clipped."""
    try:
        text = repr(key)
    except Exception:
        return f"<{type(key).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


def _is_float_array(item: Any) -> bool:
    """A numpy array or scalar of floats (orjson writes their NaN as null too)."""
    kind = getattr(getattr(item, "dtype", None), "kind", None)
    return kind in ("f", "c") and type(item).__module__.startswith("numpy")


def _all_finite(item: Any) -> bool:
    # Only reached for a numpy value, so numpy is installed; imported by name so that
    # it stays an optional dependency.
    numpy = importlib.import_module("numpy")
    return bool(numpy.isfinite(item).all())
