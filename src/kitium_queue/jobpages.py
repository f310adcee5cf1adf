"""Paging through a state set for the job listings (``queries.py``).

A page of ``get_jobs_by_status`` is a slice of a state set by position
(``zrange_pages``); a page of ``list_jobs`` starts after a cursor, a place in the set's
order (``make_cursor`` / ``parse_cursor``, ``members_after``), so jobs that arrive or
leave meanwhile neither repeat nor skip the jobs after it.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

from .enums import JobStatus
from .errors import ConfigurationError
from .limits import QUERY_PAGE
from .options import shown

__all__ = ["make_cursor", "members_after", "parse_cursor", "zrange_pages"]

# Members read per round while skipping past a cursor (see ``members_after``).
_SKIP_BATCH = 100


def make_cursor(status: JobStatus, member: bytes | str, score: float) -> str:
    """The cursor of the place right after ``member`` (with ``score``) in ``status``'s
    set: ``"<status>:<score>:<member, base64url>"``, the member as stored (it may not be
    UTF-8), the score exactly (repr round-trips a float)."""
    raw = member.encode() if isinstance(member, str) else member
    return f"{status.value}:{score!r}:{base64.urlsafe_b64encode(raw).decode()}"


def parse_cursor(cursor: Any, status: JobStatus) -> tuple[float, bytes]:
    """The (score, member) of a cursor of ``make_cursor`` for ``status``, or
    ``ConfigurationError``; a pending cursor's score is an offset (see ``list_jobs``)."""
    bad = ConfigurationError(
        f"cursor must be a next_cursor returned by list_jobs for status "
        f"{status.value!r}, got {shown(cursor)}"
    )
    if not isinstance(cursor, str):
        raise bad
    parts = cursor.split(":", 2)
    if len(parts) != 3 or parts[0] != status.value:
        raise bad
    try:
        score = float(parts[1])
        member = base64.b64decode(parts[2].encode(), altchars=b"-_", validate=True)
    except (ValueError, binascii.Error):
        raise bad from None
    if math.isnan(score):  # +-inf is a score a member may have (set by hand)
        raise bad
    if status is JobStatus.PENDING and not (score >= 0 and score.is_integer()):
        raise bad  # an offset (see list_jobs)
    return score, member


async def zrange_pages(
    client: Any, key: str | bytes, first: int, n: int, *, rev: bool = False
) -> list[tuple[bytes, float]]:
    """Members ``first .. first + n - 1`` of sorted set ``key`` with their scores
    (descending with ``rev``), read in slices of ``QUERY_PAGE`` sent in one pipeline:
    one round trip, and no single command that holds Redis for long (a 100,000-member
    read in one ``ZRANGE`` blocks every other client while it is built)."""
    if n <= 0:
        return []
    pipe = client.pipeline(transaction=False)
    for lo in range(first, first + n, QUERY_PAGE):
        hi = min(first + n, lo + QUERY_PAGE) - 1
        if rev:
            pipe.zrevrange(key, lo, hi, withscores=True)
        else:
            pipe.zrange(key, lo, hi, withscores=True)
    out: list[tuple[bytes, float]] = []
    for rows in await pipe.execute():
        out.extend(rows)
        if len(rows) < QUERY_PAGE:
            break  # the end of the set: later slices are empty
    return out


async def members_after(
    client: Any, key: str, after: tuple[float, bytes], n: int, newest_first: bool
) -> list[tuple[bytes, float]]:
    """Up to ``n`` members of sorted set ``key`` that come after ``after`` (score,
    member) in the set's order (descending for ``newest_first``).

    By score, not by position: jobs that arrive or leave meanwhile do not shift the
    page. Members with the cursor's own score are ordered by their bytes, as Redis
    orders them; those at or before the cursor are skipped.
    """
    score, member = after
    out: list[tuple[bytes, float]] = []
    start = 0
    batch = max(min(n, QUERY_PAGE), _SKIP_BATCH)
    bound = repr(score)
    while len(out) < n:
        if newest_first:
            got = await client.zrevrangebyscore(
                key, bound, "-inf", start=start, num=batch, withscores=True
            )
        else:
            got = await client.zrangebyscore(
                key, bound, "+inf", start=start, num=batch, withscores=True
            )
        for m, s in got:
            if s == score and (m >= member if newest_first else m <= member):
                continue
            out.append((m, s))
        if len(got) < batch:
            break
        start += len(got)
    return out[:n]
