"""Serialization of job data and results (JSON via orjson), plus the codec extension point.

A ``Codec`` is a bytes→bytes transform applied after serialization (encode) and before
deserialization (decode): payload encryption and compression plug in here. No pickle
is used anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import orjson

from .errors import SerializationError

__all__ = ["Codec", "Serializer"]


@runtime_checkable
class Codec(Protocol):
    """A reversible bytes transform (encryption, compression)."""

    def encode(self, data: bytes) -> bytes: ...

    def decode(self, data: bytes) -> bytes: ...


_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class Serializer:
    """JSON (orjson) serializer with an optional chain of codecs."""

    __slots__ = ("codecs",)

    def __init__(self, codecs: Sequence[Codec] = ()) -> None:
        self.codecs = tuple(codecs)

    def dumps(self, value: Any, what: str = "job data") -> bytes:
        try:
            raw = orjson.dumps(value, option=_OPTS)
        except TypeError as exc:
            raise SerializationError(
                f"{what} cannot be serialized to JSON: {exc}. Pass JSON-compatible values "
                "(dict, list, str, int, float, bool, None, datetime, UUID, dataclass) or "
                "convert the object first"
            ) from None
        for codec in self.codecs:
            raw = codec.encode(raw)
        return raw

    def loads(self, raw: bytes, what: str = "job data") -> Any:
        try:
            for codec in reversed(self.codecs):
                raw = codec.decode(raw)
            return orjson.loads(raw)
        except Exception as exc:
            raise SerializationError(
                f"stored {what} cannot be decoded ({type(exc).__name__}: {exc})"
            ) from None
