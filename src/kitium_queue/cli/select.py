"""Choosing jobs: filters by name, data field, error text and age, and paging a state.

``JobFilter`` is built from the options ``filter_options`` adds to a command
(``--name``, ``--data``, ``--error``, ``--older-than``, ``--newer-than``). ``find``
pages through one state of a queue and keeps the jobs that match, up to a limit, and
returns where to go on: a cursor of ``list_jobs`` for one queue (it stays put while jobs
come and go), or ``@<offset>`` for a façade over several queues (whose order is merged).

Filters are applied in this process to the records the read API returns, so a field of
a payload that is shown redacted (encrypted jobs) never matches. A caller that shows no
payload passes ``include_data=False``: the records are then read without data, result,
progress and traceback (``get_jobs_by_status(include_data=False)``) unless a ``--data``
filter needs the data.
"""

from __future__ import annotations

import fnmatch
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import click

from ..enums import JobStatus
from ..errors import ConfigurationError
from ..facade import MultiQueue
from ..job import JobInfo
from ..options import MAX_QUERY_LIMIT

__all__ = [
    "FINISHED",
    "Found",
    "JobFilter",
    "filter_options",
    "find",
    "make_filter",
    "parse_duration",
]

#: States whose age is counted from when the job finished.
FINISHED = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.DLQ})
_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d|w)?\s*", re.IGNORECASE)
_PAGE = 500
_MISSING = object()


def parse_duration(text: str) -> int:
    """``"90s"``, ``"15m"``, ``"2h"``, ``"7d"``, ``"500ms"`` or a number of ms, as ms."""
    m = _DURATION.fullmatch(text or "")
    if m is None:
        raise click.BadParameter(
            f"{text!r} is not a duration: use a number with ms, s, m, h, d or w (e.g. 30m, "
            "2h, 7d), or a number of milliseconds"
        )
    ms = float(m.group(1)) * _UNITS[(m.group(2) or "ms").lower()]
    if ms > 10 * 365 * 86_400_000:
        raise click.BadParameter(f"{text!r} is longer than 10 years")
    return int(ms)


def _data_condition(text: str) -> tuple[list[str], Any]:
    path, sep, raw = text.partition("=")
    if not sep or not path:
        raise click.BadParameter(
            f"{text!r}: use FIELD=VALUE, e.g. --data customer=42 or --data user.email=a@b.c"
        )
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    except RecursionError:
        raise click.BadParameter(
            f"{text[:100]!r}...: the VALUE is JSON nested too deeply to compare; give a "
            "number, a string or shallow JSON"
        ) from None
    return path.split("."), value


@dataclass(frozen=True)
class JobFilter:
    """Which jobs a command acts on (every condition given must hold).

    Attributes:
        name: glob on the job name (``send-*``); exact when it has no wildcard.
        data: ``(path, value)`` pairs: the data field at the dotted ``path`` equals
            ``value`` (given as JSON, or as text: ``42`` matches the number 42 and the
            text "42").
        error: text the failure reason contains (case-insensitive).
        older_than_ms / newer_than_ms: the job's age, from when it finished (finished
            states) or was created (the others).
    """

    name: str | None = None
    data: tuple[tuple[tuple[str, ...], Any], ...] = ()
    error: str | None = None
    older_than_ms: int | None = None
    newer_than_ms: int | None = None
    now_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    @property
    def empty(self) -> bool:
        """True when no condition is set (every job matches)."""
        return (
            self.name is None
            and not self.data
            and self.error is None
            and self.older_than_ms is None
            and self.newer_than_ms is None
        )

    def describe(self) -> str:
        """The conditions in words (for a confirmation prompt)."""
        parts = []
        if self.name is not None:
            parts.append(f"name {self.name}")
        parts += [f"{'.'.join(p)}={json.dumps(v)}" for p, v in self.data]
        if self.error is not None:
            parts.append(f"error contains {self.error!r}")
        if self.older_than_ms is not None:
            parts.append(f"older than {self.older_than_ms} ms")
        if self.newer_than_ms is not None:
            parts.append(f"newer than {self.newer_than_ms} ms")
        return ", ".join(parts) or "no filter"

    def matches(self, info: JobInfo) -> bool:
        """Whether ``info`` passes every condition."""
        if self.name is not None and not fnmatch.fnmatchcase(info.name, self.name):
            return False
        if (
            self.error is not None
            and self.error.casefold() not in (info.failed_reason or "").casefold()
        ):
            return False
        if self.older_than_ms is not None or self.newer_than_ms is not None:
            at = info.finished_at if info.status in FINISHED else info.created_at
            if at is None:
                return False
            age = self.now_ms - at
            if self.older_than_ms is not None and age < self.older_than_ms:
                return False
            if self.newer_than_ms is not None and age > self.newer_than_ms:
                return False
        return all(_field_is(info.data, path, value) for path, value in self.data)


def _field_is(data: Any, path: Sequence[str], value: Any) -> bool:
    got: Any = data
    for part in path:
        if isinstance(got, dict):
            got = got.get(part, _MISSING)
        elif isinstance(got, list) and part.isascii() and part.isdigit() and int(part) < len(got):
            got = got[int(part)]
        else:
            return False
        if got is _MISSING:
            return False
    if isinstance(got, bool) or isinstance(value, bool):
        return got is value
    if got == value:
        return True
    # "42" on the command line is read as the number 42: it matches the text "42" too.
    return isinstance(got, str) and not isinstance(value, str) and got == json.dumps(value)


def filter_options(*, error: bool = True) -> Callable[[Any], Any]:
    """Add ``--name``, ``--data``, ``--older-than``, ``--newer-than`` (and ``--error``)
    to a command; it receives them as ``name``, ``data``, ``older_than``,
    ``newer_than`` (and ``error``); ``make_filter(**those)`` builds the filter."""

    def deco(fn: Any) -> Any:
        opts = [
            click.option(
                "--name", "name_glob", default=None, help="Job name, or a glob of names (send-*)."
            ),
            click.option(
                "--data",
                "data",
                multiple=True,
                metavar="FIELD=VALUE",
                help="A data field equals VALUE (JSON or text; dotted FIELD for "
                "nested ones; repeatable).",
            ),
            click.option(
                "--older-than",
                default=None,
                metavar="DURATION",
                help="Finished (or, unfinished, created) longer ago than this (30m, 2h, 7d).",
            ),
            click.option(
                "--newer-than",
                default=None,
                metavar="DURATION",
                help="Finished (or created) at most this long ago.",
            ),
        ]
        if error:
            opts.append(
                click.option(
                    "--error",
                    "error_text",
                    default=None,
                    help="The failure reason contains this text.",
                )
            )
        for opt in reversed(opts):
            fn = opt(fn)
        return fn

    return deco


def make_filter(
    name_glob: str | None = None,
    data: Sequence[str] = (),
    older_than: str | None = None,
    newer_than: str | None = None,
    error_text: str | None = None,
) -> JobFilter:
    """The ``JobFilter`` of the options ``filter_options`` added."""
    return JobFilter(
        name=name_glob,
        data=tuple((tuple(p), v) for p, v in (_data_condition(d) for d in data)),
        error=error_text,
        older_than_ms=None if older_than is None else parse_duration(older_than),
        newer_than_ms=None if newer_than is None else parse_duration(newer_than),
    )


@dataclass
class Found:
    """What ``find`` found: the matching jobs, how many it read, where to go on."""

    jobs: list[JobInfo]
    scanned: int
    next_cursor: str | None


async def find(
    queue: Any,
    status: JobStatus,
    flt: JobFilter,
    *,
    limit: int,
    cursor: str | None = None,
    on_page: Callable[[int], None] | None = None,
    include_data: bool = True,
) -> Found:
    """Up to ``limit`` jobs of ``status`` that match ``flt``, in the state's order,
    from ``cursor`` on (see the module docstring); ``on_page(n)`` after each page;
    ``include_data=False``: the jobs' payloads are not needed (see the module docstring)."""
    if not 1 <= limit <= MAX_QUERY_LIMIT:
        raise ConfigurationError(f"--limit must be from 1 to {MAX_QUERY_LIMIT}, got {limit}")
    data = include_data or bool(flt.data)
    if isinstance(queue, MultiQueue):
        return await _find_by_offset(queue, status, flt, limit, cursor, on_page, data)
    out: list[JobInfo] = []
    scanned = 0
    while True:
        need = limit - len(out)
        size = need if flt.empty else min(max(need, _PAGE), 1000)
        page = await queue.list_jobs(status, limit=size, cursor=cursor, include_data=data)
        scanned += len(page.jobs)
        if on_page is not None:
            on_page(len(page.jobs))
        hits = [i for i, info in enumerate(page.jobs) if flt.matches(info)]
        if len(hits) >= need:
            # The page holds more than wanted: read it again up to the last one wanted,
            # so the cursor given back points right after it.
            upto = hits[need - 1] + 1
            if upto < len(page.jobs):
                page = await queue.list_jobs(status, limit=upto, cursor=cursor, include_data=data)
                hits = [i for i, info in enumerate(page.jobs) if flt.matches(info)][:need]
            out += [page.jobs[i] for i in hits[:need]]
            return Found(out, scanned, page.next_cursor)
        out += [page.jobs[i] for i in hits]
        cursor = page.next_cursor
        if cursor is None:
            return Found(out, scanned, None)


async def _find_by_offset(
    queue: MultiQueue[Any],
    status: JobStatus,
    flt: JobFilter,
    limit: int,
    cursor: str | None,
    on_page: Callable[[int], None] | None,
    data: bool,
) -> Found:
    offset = 0
    if cursor is not None:
        if not (cursor.startswith("@") and cursor[1:].isascii() and cursor[1:].isdigit()):
            raise ConfigurationError(
                f"--cursor of a {type(queue).__name__} is '@<offset>' as printed by the "
                f"previous page, got {cursor[:100]!r}"
            )
        offset = int(cursor[1:])
        if offset >= MAX_QUERY_LIMIT:
            raise ConfigurationError(
                f"a {type(queue).__name__} is listed by offset up to its first "
                f"{MAX_QUERY_LIMIT:,} jobs of a state, and --cursor {cursor[:100]!r} is "
                "past them: list one partition (APP as module:attribute.queues.N), whose "
                "cursor has no such bound, or narrow the listing with filters"
            )
    out: list[JobInfo] = []
    scanned = 0
    while True:
        need = limit - len(out)
        size = need if flt.empty else min(max(need, _PAGE), 1000)
        size = min(size, MAX_QUERY_LIMIT - offset)
        if size <= 0:  # the offset bound: the next page's cursor says so when used
            return Found(out, scanned, f"@{offset}")
        jobs = await queue.get_jobs_by_status(status, limit=size, offset=offset, include_data=data)
        scanned += len(jobs)
        if on_page is not None:
            on_page(len(jobs))
        for i, info in enumerate(jobs):
            if flt.matches(info):
                out.append(info)
                if len(out) == limit:
                    return Found(out, scanned, f"@{offset + i + 1}")
        offset += len(jobs)
        if len(jobs) < size:
            return Found(out, scanned, None)
