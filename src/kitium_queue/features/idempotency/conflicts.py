"""Idempotency conflicts: a key (or a chosen ``job_id``) reused with other data.

By default an add whose ``idempotency_key`` or ``job_id`` is taken returns the existing
job's id and its own data is dropped (duplicates are suppressed, as in BullMQ; some
producers re-add with varying data on purpose). ``IdempotencyManager(queue,
conflicts="raise")``, or the job option ``idempotency_conflict="raise"`` (which wins
over the manager's, either way), makes such an add with *different* data an error, as
payment APIs do: ``IdempotencyConflictError`` (a ``JobRefusedError``), nothing written;
the same data still returns the existing id.

It is the effectively-once feature's duplicate check (``hooks.DuplicateCheck``): only
an add that found its job there already, and asked for conflicts to be raised, pays
one read of that job (``dupcheck.py``). The data are compared as decoded JSON in
canonical form (orjson, sorted keys): the stored job's data read back through the
queue's codecs and payload views (compression, encryption), against the add's data
encoded as the add stores it and decoded the same way. Not compared, so the existing
id is returned as before:

* an add whose window is ``debounce`` (a repeated key replaces the data on purpose);
* a job whose record is gone while its key's or id's window still holds (removed,
  trimmed by retention), or whose data does not decode;
* an encrypted job this process cannot open (its key is not held here).

The job names are not compared, nor the options; the stored data is the job's data at
the moment of the read (one round trip after the add): a debounce by another producer
in between, or an update of the job's data, is what it is compared with.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson

from ...errors import ConfigurationError
from ...hooks import DuplicateCheck, FoundDuplicate
from ...options import shown_bare

__all__ = ["CONFLICTS", "OPTION", "ConflictCheck", "conflict_mode"]

#: The values of ``conflicts`` / ``idempotency_conflict``.
CONFLICTS = ("return", "raise")
#: The job option.
OPTION = "idempotency_conflict"
#: The refusal code (``errors.REFUSAL_ERRORS``: ``IdempotencyConflictError``).
CODE = "KQ_IDEMPOTENCY_CONFLICT"
_CANONICAL = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


def conflict_mode(value: Any, section: str = "conflicts") -> str:
    """``value`` checked: one of ``CONFLICTS``."""
    if value not in CONFLICTS:
        raise ConfigurationError(
            f"{section} must be one of {', '.join(CONFLICTS)}, got {value!r:.80}"
        )
    return str(value)


def _canonical(value: Any) -> Any:
    try:
        return orjson.dumps(value, option=_CANONICAL)
    except TypeError:  # not JSON (a custom view's value): compared as it is
        return value


class ConflictCheck(DuplicateCheck):
    """The check of one queue (a partition of a ``PartitionedQueue``).

    Args:
        conflicts: the manager's ``conflicts`` (a job's ``idempotency_conflict`` wins).
        window: the manager's default idempotency window.
        public: the id a caller knows a job of this queue by (a partition's full id).
    """

    def __init__(self, conflicts: str, window: str, public: Callable[[str], str]) -> None:
        self.conflicts = conflicts
        self.window = window
        self.public = public

    def wants(self, options: Mapping[str, Any]) -> bool:
        if (options.get(OPTION) or self.conflicts) != "raise":
            return False
        # A debounce replaces the data of the job its key found, on purpose.
        window = options.get("idempotency_window") or self.window
        return not (options.get("idempotency_key") and window == "debounce")

    def check(self, found: FoundDuplicate) -> str | None:
        if not found.readable or _canonical(found.data) == _canonical(found.found_data):
            return None
        existing = self.public(found.job_id)
        if found.chosen_id and found.chosen_id == found.job_id:
            kind, key, what = "job_id", found.chosen_id, "job_id"
        else:
            kind, key, what = "idempotency_key", found.idempotency_key, "idempotency key"
        message = (
            f"{what} {shown_bare(key)} is already used by job {existing} with different "
            f"data: the job was not added (idempotency_conflict='raise'). Add new data "
            f"under a new {what}; the same data returns job {existing}'s id"
        )
        return "\t".join((CODE, kind, key, existing, message))
