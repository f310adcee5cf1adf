"""Copies of job data, results and failure reasons that a feature keeps under a job's id.

Some features keep a copy of a job's data, result or failure reason after the job's own
record moved on or went (the workflows feature keeps a cancelled step's data, a finished
step's result and a failed step's reason in ``dep:<id>``). Whatever processes every
stored job value — the encryption rotation pass re-encrypts them all — must reach those
copies too, without knowing the feature's keys. A feature declares them here, on the
queue, when it is enabled (``declare_copies``); a pass reads them back with
``copies_of``.

A declaration names a key prefix (relative to the queue's prefix) that the job's id
follows, ``<key_prefix><job id>``, a hash, and its fields holding copies: each a copy
of the job's ``data``, its ``result`` or its failure reason (``error``: field ``e`` as
the job's record stored it, which a failure-text filter may have sealed), with the field
of the same hash holding the job's name (the name a value is bound to), or none when
only the job's own record (field ``n`` of ``job:<id>``) has it.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["CopiedField", "CopyKind", "copies_of", "declare_copies"]


@dataclass(frozen=True, slots=True)
class CopiedField:
    """One hash field holding a copy of a job value.

    Attributes:
        field: the hash field holding the copy (as stored: the value the job held).
        part: ``data`` (a copy of the job's field ``d``), ``result`` (of ``r``) or
            ``error`` (of its failure reason ``e``, as stored: sealed by a failure-text
            filter maybe, or a marker of the feature's own in its place).
        name_field: the field of the same hash holding the job's name, or None when
            only the job's own record (``n`` of ``job:<id>``) has it.
    """

    field: str
    part: Literal["data", "result", "error"]
    name_field: str | None = None


@dataclass(frozen=True, slots=True)
class CopyKind:
    """Hashes ``<key_prefix><job id>`` (relative to the queue's prefix) in which the
    feature ``feature`` keeps copies of job values, in ``fields``."""

    feature: str
    key_prefix: str
    fields: tuple[CopiedField, ...]


_KINDS: weakref.WeakKeyDictionary[Any, dict[tuple[str, str], CopyKind]] = (
    weakref.WeakKeyDictionary()
)


def declare_copies(queue: Any, kind: CopyKind) -> None:
    """Declare on ``queue`` that ``kind.feature`` keeps copies of job values under
    ``kind.key_prefix`` (again with the same feature and prefix replaces the former)."""
    if not kind.key_prefix or not kind.fields:
        raise ValueError(
            f"a copy declaration needs a key prefix and at least one field, got {kind!r:.200}"
        )
    _KINDS.setdefault(queue, {})[(kind.feature, kind.key_prefix)] = kind


def copies_of(queue: Any) -> tuple[CopyKind, ...]:
    """Every kind of copy declared on ``queue``, in the order declared."""
    return tuple(_KINDS.get(queue, {}).values())
