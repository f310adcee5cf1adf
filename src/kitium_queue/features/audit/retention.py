"""Retention of the audit log: which entry the log will start with, and the trim that
removes the older ones in the same script call that appends the ``audit.retention``
record naming that start (``AuditLog.trim`` checks its arguments, verifies, and calls
these)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from .chain import Draft, parse_id, parse_n
from .read import PAGE
from .verify import RETENTION_ACTION

if TYPE_CHECKING:
    from .log import AuditLog

__all__ = ["TrimPointGone", "first_kept", "trim_to"]


class TrimPointGone(Exception):
    """The entry a trim would start the log with was removed meanwhile."""


async def first_kept(
    log: AuditLog, age: int | None, keep: int | None
) -> tuple[bool, tuple[str, dict[str, str]] | None]:
    """(whether anything goes, the entry the log should start with: None when every
    entry goes)."""
    candidates: list[tuple[str, dict[str, str]] | None] = []
    oldest = await log.reader.page("-", "+", reverse=False)  # the stream's type checked
    total = int(await log.deployment.call("xlen", log.stream))
    if total == 0:
        return False, None
    if age is not None:
        cutoff = int(log.now_ms()) - age
        page = await log.reader.page(str(max(cutoff, 0)), "+", reverse=False)
        candidates.append(page[0] if page else None)
    # Over the limit: trim so that ``keep`` entries remain, the retention record
    # included.
    if keep is not None and total > keep and keep == 1:
        candidates.append(None)
    elif keep is not None and total > keep:
        skip, lo = total + 1 - keep, "-"
        while True:
            page = await log.reader.page(lo, "+", reverse=False)
            if len(page) > skip:
                candidates.append(page[skip])
                break
            if len(page) < PAGE:
                candidates.append(None)
                break
            skip -= len(page)
            lo = "(" + page[-1][0]
    if None in candidates:
        return True, None
    found = [c for c in candidates if c is not None]
    if not found:
        return False, None
    latest = max(found, key=lambda c: parse_id(c[0]))
    if oldest and oldest[0][0] == latest[0]:
        return False, None  # it starts there already
    return True, latest


async def trim_to(
    log: AuditLog,
    first: tuple[str, dict[str, str]] | None,
    age: int | None,
    keep: int | None,
    principal: str | None,
) -> int:
    rules = {"max_age_ms": age, "max_entries": keep}
    draft = Draft.make(principal, RETENTION_ACTION, "audit", "ok", rules)

    def meta_of(entry_id: str, n: int, prev: str) -> str:
        if first is None:  # everything goes: the record itself is the new start
            start = {"first_id": entry_id, "first_n": n, "first_prev": prev}
        else:
            f = first[1]
            start = {"first_id": first[0], "first_n": parse_n(f.get("n")) or 0,
                     "first_prev": f.get("prev", "")}  # fmt: skip
        return orjson.dumps({**rules, **start}).decode()

    before = int(await log.deployment.call("xlen", log.stream))
    await log.write(
        [draft], trim=(lambda ids: ids[0]) if first is None else first[0], meta_of=meta_of
    )
    after = int(await log.deployment.call("xlen", log.stream))
    return max(0, before + 1 - after)
