"""The building blocks of ``AdvancedQueueConfig``'s sections: ``Section`` (built from an
instance or a dict with unknown keys refused, checked at construction, shown as plain
data with secrets left out) and the field checks the sections share."""

from __future__ import annotations

import contextvars
import difflib
from collections.abc import Mapping, Sequence
from dataclasses import fields
from datetime import timedelta
from typing import Any, ClassVar, TypeVar

from ...errors import ConfigurationError
from ...options import MAX_COUNT, coerce, shown, to_int, to_ms
from ..alerts.rules import AlertRule

__all__ = ["Section", "check_bool", "check_choice", "opt_int", "opt_ms"]

S = TypeVar("S", bound="Section")

#: Where the section being built by ``Section.parse`` sits (``advanced.x.retention.dlq``),
#: when its caller said so: a section used at several places (a retention limit per
#: state) names the one that is wrong.
_PATH: contextvars.ContextVar[str | None] = contextvars.ContextVar("kq_section_path", default=None)


def check_bool(value: Any, where: str) -> bool:
    """``value`` if it is a bool, else ConfigurationError naming ``where``."""
    if not isinstance(value, bool):
        raise ConfigurationError(f"{where} must be True or False, got {shown(value)}")
    return value


def opt_ms(value: Any, where: str, minimum: int = 0) -> int | None:
    """A duration in ms (``to_ms``), or None."""
    return None if value is None else to_ms(value, where, minimum=minimum)


def opt_int(value: Any, where: str, minimum: int = 0, maximum: int = MAX_COUNT) -> int | None:
    """An int within ``minimum .. maximum`` (``to_int``), or None."""
    return None if value is None else to_int(value, where, minimum=minimum, maximum=maximum)


def check_choice(value: Any, where: str, choices: Sequence[str]) -> str:
    """``value`` (or an enum member's value) if it is one of ``choices``, else
    ConfigurationError with the closest one."""
    text = getattr(value, "value", value)
    if text not in choices:
        close = difflib.get_close_matches(str(text), list(choices), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigurationError(
            f"{where} must be one of {', '.join(choices)}, got {shown(value)}{hint}"
        )
    return str(text)


def _plain(value: Any) -> Any:
    """A field value as JSON-able data (for ``to_dict``)."""
    if isinstance(value, Section):
        return value.to_dict()
    if isinstance(value, AlertRule):
        return value.to_dict()
    if isinstance(value, timedelta):
        return int(value.total_seconds() * 1000)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class Section:
    """Base of the sections: built from an instance or a dict (``parse``), checked at
    construction (``_check``), shown as plain data (``to_dict``)."""

    #: Where the section sits, for messages (``advanced.fifo``).
    PATH: ClassVar[str] = "advanced"
    #: Fields never shown by ``to_dict`` (secrets), replaced by what is safe to show.
    HIDDEN: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        self._check()

    def _check(self) -> None:
        """Check and normalise the fields (``object.__setattr__`` on frozen fields)."""

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def _where(self, name: str) -> str:
        return f"{_PATH.get() or self.PATH}.{name}"

    @classmethod
    def parse(cls: type[S], value: Any, path: str | None = None) -> S:
        """``cls`` from an instance, a dict (unknown keys refused with a suggestion) or
        None (the defaults); its field errors name ``path`` when given."""
        token = _PATH.set(path)
        try:
            return coerce(cls, value, path or cls.PATH)
        finally:
            _PATH.reset(token)

    def to_dict(self) -> dict[str, Any]:
        """The section's values as plain data; secrets hidden."""
        out = {}
        for f in fields(self):  # type: ignore[arg-type]
            if f.name in self.HIDDEN:
                continue
            out[f.name] = _plain(getattr(self, f.name))
        return out
