"""Verification of the audit chain: which entry was altered, removed or inserted.

``verify_chain`` reads the entries in stream order, with one entry of look-ahead:

1. Each entry's own MAC is checked with the key its ``kid`` names. A valid MAC means
   the entry is exactly as written (time, position ``n``, ``prev`` and content).
2. A valid entry must *link* to the last trusted one: ``prev`` equal to its MAC and
   ``n`` one more. If not, entries between them were removed (``removed``, reported at
   the entry after the gap, with how many positions are missing).
3. An entry whose MAC fails was changed or forged. If the next entry links to it (its
   ``prev`` is the MAC the bad entry carries), the chain passes through it: its content
   was edited (``altered``). If instead the next entry links to the entry before it, it
   sits outside the chain: it was ``inserted``. (At the end of the log, where there is
   no next entry, an entry that still links to its predecessor is ``altered``, one that
   does not is ``inserted``.) The position is exact; the kind is the best reading of
   the evidence.
4. The start: the first entry must be the first ever (``n`` 1, empty ``prev``) or be
   named, with its id, ``n`` and ``prev``, by a valid retention record later in the
   chain (``AuditLog.trim`` writes one, atomically with the trim). Otherwise the entries
   before it were removed.
5. The end: deleting the newest entries leaves a shorter chain that is consistent in
   itself. Two things catch it: Redis counts every entry ever added to the stream
   (``XINFO STREAM`` ``entries-added``, Redis 7+), which must equal the last ``n`` (plus
   any inserted entries); and a ``checkpoint`` (the ``head`` of an earlier report, kept
   outside Redis) must still be there with the same MAC. An attacker with full control
   of Redis can rewrite the counter too; only a checkpoint kept elsewhere binds the end.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from ...errors import ConfigurationError
from .chain import DAMAGE, FIELDS, AuditKeys, entry_mac, parse_id, parse_n

__all__ = [
    "PREVIOUS_KEYS_HOW",
    "RETENTION_ACTION",
    "AuditHead",
    "AuditProblem",
    "AuditReport",
    "verify_chain",
]

#: The action of the record ``AuditLog.trim`` writes before it removes old entries.
RETENTION_ACTION = "audit.retention"
_MAX_PROBLEMS = 100
#: How keys used before a key change are given, in the API and in the CLI.
PREVIOUS_KEYS_HOW = (
    "pass it in audit_previous_keys (AuditLog: previous_keys; kitium-queue audit: "
    "KITIUM_QUEUE_AUDIT_PREVIOUS_KEYS or --audit-previous-key-file)"
)

ProblemKind = Literal["altered", "removed", "inserted", "unverifiable"]


@dataclass(frozen=True, slots=True)
class AuditHead:
    """The last entry of the chain as a report saw it: keep it outside Redis and pass it
    as ``checkpoint`` later to detect the removal of entries at the end."""

    n: int
    id: str
    mac: str

    def __str__(self) -> str:
        return f"{self.n}:{self.id}:{self.mac}"

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "id": self.id, "mac": self.mac}

    @classmethod
    def parse(cls, text: str) -> AuditHead:
        """A head written as ``N:ID:MAC`` (``str(head)``, as ``audit verify`` prints
        it); ``ConfigurationError`` otherwise."""
        parts = text.strip().split(":") if isinstance(text, str) else []
        if (
            len(parts) != 3
            or not (parts[0].isascii() and parts[0].isdigit() and len(parts[0]) <= 19)
            or not _is_stream_id(parts[1])
            or not _HEX.fullmatch(parts[2])
        ):
            raise ConfigurationError(
                "a checkpoint is N:ID:MAC as 'audit verify' prints it (head): N a count, "
                "ID a stream id such as 1700000000000-0, MAC hexadecimal; got "
                f"{str(text)[:100]!r}"
            )
        return cls(int(parts[0]), parts[1], parts[2])


_HEX = re.compile(r"[0-9a-f]{16,128}")


def _is_stream_id(text: str) -> bool:
    try:
        parse_id(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class AuditProblem:
    """One break of the chain.

    Attributes:
        kind: ``altered`` (the entry's content or MAC was edited), ``removed``
            (entries are missing before ``entry_id``, or at the end when it is ""),
            ``inserted`` (an entry the key holder did not write), ``unverifiable``
            (the entry's key is not held: pass it in ``previous_keys``; with
            ``entry_id`` "", no entry verifies with the keys given: a wrong key).
        entry_id: the stream id of the entry concerned ("" for the end of the log).
        n: that entry's position as it claims it (None when unreadable).
        detail: one sentence for people.
    """

    kind: ProblemKind
    entry_id: str
    n: int | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "entry_id": self.entry_id, "n": self.n, "detail": self.detail}


@dataclass(slots=True)
class AuditReport:
    """The outcome of ``verify_audit_log()``; truthy when the chain is intact.

    Attributes:
        ok: no problem found.
        entries: entries read.
        first_problem: the earliest break (None when ``ok``).
        problems: every break found, in log order (at most 100; ``more_problems``
            counts the rest).
        head: the last entry (None for an empty log): keep it as a checkpoint.
        start: ``"genesis"`` (the log begins with its first entry ever),
            ``"retention"`` (it begins where a retention record says it was trimmed),
            ``"empty"``, or ``"broken"``.
        wrong_key: no entry of a non-empty log names a key given: a wrong key, or
            keys of a key change not passed; nothing of the chain was checked (one
            ``unverifiable`` problem says so instead of one per entry).
    """

    ok: bool
    entries: int
    first_problem: AuditProblem | None
    problems: list[AuditProblem] = field(default_factory=list)
    more_problems: int = 0
    head: AuditHead | None = None
    start: str = "empty"
    wrong_key: bool = False

    def __bool__(self) -> bool:
        return self.ok

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "start": self.start,
            "head": self.head.to_dict() if self.head else None,
            "first_problem": self.first_problem.to_dict() if self.first_problem else None,
            "problems": [p.to_dict() for p in self.problems],
            "more_problems": self.more_problems,
            "wrong_key": self.wrong_key,
        }


@dataclass(slots=True)
class _Entry:
    id: str
    fields: dict[str, str]
    n: int | None
    mac: str
    valid: bool | None  # own MAC: True, False, or None (its key is not held)


def _entry(keys: AuditKeys, entry_id: str, fields: dict[str, str]) -> _Entry:
    n = parse_n(fields.get("n"))
    mac = fields.get("mac", "")
    if any(f not in fields for f in FIELDS) or n is None or DAMAGE in fields:
        return _Entry(entry_id, fields, n, mac, False)
    key = keys.key(fields["kid"])
    if key is None:
        return _Entry(entry_id, fields, n, mac, None)
    good = entry_mac(key, entry_id, [fields[f] for f in FIELDS])
    return _Entry(entry_id, fields, n, mac, good == mac)


def _why(e: _Entry) -> str:
    """Why the MAC of ``e`` fails, as far as it shows."""
    f = e.fields
    found = [f[DAMAGE]] if DAMAGE in f else []
    missing = [k for k in (*FIELDS, "mac") if k not in f]
    if missing:
        found.append(f"field{'s' if len(missing) > 1 else ''} {', '.join(missing)} missing")
    if "n" in f and e.n is None:
        found.append(f"its position n {f['n'][:30]!r} is no number")
    return "; ".join(found) or "its MAC fails"


def _links(a: _Entry, b: _Entry) -> bool:
    return b.fields.get("prev") == a.mac and a.n is not None and b.n == a.n + 1


def _anchor(e: _Entry) -> tuple[str, int, str] | None:
    """What a valid retention record says the log now starts with."""
    if e.fields.get("act") != RETENTION_ACTION:
        return None
    try:
        meta = orjson.loads(e.fields.get("meta", "{}"))
        return str(meta["first_id"]), int(meta["first_n"]), str(meta["first_prev"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


class _Walk:
    """The state of one verification pass (see the module docstring)."""

    def __init__(self) -> None:
        self.problems: list[AuditProblem] = []
        self.more = 0
        self.count = 0
        self.inserted = 0
        self.first: _Entry | None = None
        self.trusted: _Entry | None = None
        self.anchors: set[tuple[str, int, str]] = set()
        self.seen_checkpoint: _Entry | None = None
        self.keyed = 0  # entries whose key is held (or that are damaged)
        self.other_keys: dict[str, None] = {}  # ids of keys not held (the first few)
        self.more_unverifiable = 0

    def report(self, kind: ProblemKind, e: _Entry | None, detail: str) -> None:
        if len(self.problems) >= _MAX_PROBLEMS:
            self.more += 1
            self.more_unverifiable += kind == "unverifiable"
            return
        self.problems.append(AuditProblem(kind, e.id if e else "", e.n if e else None, detail))

    def accept(self, e: _Entry) -> None:
        """``e`` becomes the last link of the chain."""
        if self.first is None:
            self.first = e
        self.trusted = e

    def step(self, e: _Entry, nxt: _Entry | None) -> None:
        self.count += 1
        self.keyed += e.valid is not None
        t = self.trusted
        if e.valid:
            if t is not None and not _links(t, e):
                gap = (e.n or 0) - (t.n or 0) - 1
                what = (f"{gap} entry" if gap == 1 else f"{gap} entries") if gap > 0 else "entries"
                self.report(
                    "removed", e, f"{what} missing between entry {t.id} (n={t.n}) and this one"
                )
            anchor = _anchor(e)
            if anchor is not None:
                self.anchors.add(anchor)
            self.accept(e)
            return
        if e.valid is None:
            kid = e.fields.get("kid", "")
            if len(self.other_keys) < 5:
                self.other_keys[kid[:20]] = None
            self.report("unverifiable", e, f"its key {kid!r} is not held: {PREVIOUS_KEYS_HOW}")
            self.accept(e)
            return
        # The MAC fails: edited in place, or written by someone without the key.
        if nxt is None:  # the last entry: does it still sit where the chain expects?
            altered = (e.n == 1 and e.fields.get("prev") == "") if t is None else _links(t, e)
        elif nxt.valid and nxt.fields.get("prev") == e.mac:
            altered = True  # the chain passes through it
        else:  # inserted when the next entry skips it; otherwise changed beyond reading
            altered = not (nxt.valid and (t is None or _links(t, nxt)))
        if altered:
            self.report(
                "altered", e, f"its content or MAC was changed after it was written ({_why(e)})"
            )
            if nxt is not None and nxt.n is not None:
                e.n = nxt.n - 1
            self.accept(e)
        else:
            self.inserted += 1
            self.report("inserted", e, f"it was not written by the key holder ({_why(e)})")

    def finish(
        self, entries_added: int | None, checkpoint: AuditHead | None
    ) -> tuple[str, list[AuditProblem]]:
        start: list[AuditProblem] = []
        end: list[AuditProblem] = []
        f, last = self.first, self.trusted
        state = "broken" if self.problems else "empty"
        if f is not None:
            if f.n == 1 and f.fields.get("prev") == "":
                state = "genesis"
            elif (f.id, f.n, f.fields.get("prev", "")) in self.anchors:
                state = "retention"
            else:
                state = "broken"
                start.append(
                    AuditProblem(
                        "removed",
                        f.id,
                        f.n,
                        f"the log starts at n={f.n}: the entries before it are gone and no "
                        "retention record accounts for them",
                    )
                )
        last_n = last.n or 0 if last is not None else 0
        if entries_added is not None and entries_added > last_n + self.inserted:
            gone = entries_added - last_n - self.inserted
            end.append(
                AuditProblem(
                    "removed",
                    "",
                    None,
                    f"{gone} entries after the last one (n={last_n}) were removed: Redis "
                    f"counted {entries_added} entries added to the stream",
                )
            )
        if checkpoint is not None:
            seen = self.seen_checkpoint
            if checkpoint.n > last_n:
                end.append(
                    AuditProblem(
                        "removed",
                        "",
                        None,
                        f"the log ends at n={last_n} but the checkpoint saw n={checkpoint.n}",
                    )
                )
            elif seen is not None and seen.mac != checkpoint.mac:
                end.append(
                    AuditProblem(
                        "altered", seen.id, seen.n, "the checkpoint entry's MAC changed since"
                    )
                )
            elif seen is None and f is not None and f.n is not None and checkpoint.n >= f.n:
                end.append(
                    AuditProblem(
                        "removed", checkpoint.id, checkpoint.n, "the checkpoint entry is gone"
                    )
                )
        return state, [*start, *self.problems, *end]


class ChainCheck:
    """Verification fed one entry at a time (``AuditLog.verify`` pages through the
    stream; the whole log is never held in memory).

    ``feed`` each entry in stream order, then ``report``. Before it, ``unanchored``
    tells whether the log's first entry still needs a retention record, and
    ``consider_anchor`` offers one read from beyond the range checked (a trim that ran
    while the log was being read).
    """

    def __init__(self, keys: AuditKeys, checkpoint: AuditHead | None = None) -> None:
        self.keys = keys
        self.checkpoint = checkpoint
        self._walk = _Walk()
        self._pending: _Entry | None = None

    def feed(self, entry_id: str, fields: dict[str, str]) -> None:
        e = _entry(self.keys, entry_id, fields)
        if self._pending is not None:
            self._step(self._pending, e)
        self._pending = e

    def _step(self, e: _Entry, nxt: _Entry | None) -> None:
        if self.checkpoint is not None and e.id == self.checkpoint.id:
            self._walk.seen_checkpoint = e
        self._walk.step(e, nxt)

    def _flush(self) -> None:
        if self._pending is not None:
            self._step(self._pending, None)
            self._pending = None

    def lost(self, found: str) -> None:
        """The stream key holds ``found`` (another Redis type): its entries are gone."""
        self._flush()
        self._walk.report(
            "removed",
            None,
            f"the audit log key holds a Redis {found[:20]}, not a stream: it was replaced "
            "and its entries are gone (keep it for examination, then delete it)",
        )

    def unanchored(self) -> bool:
        """True when the first entry is neither entry 1 nor named by a retention record
        seen so far."""
        self._flush()
        f = self._walk.first
        if f is None or (f.n == 1 and f.fields.get("prev") == ""):
            return False
        return (f.id, f.n, f.fields.get("prev", "")) not in self._walk.anchors

    def consider_anchor(self, entry_id: str, fields: dict[str, str]) -> None:
        """Accept the retention record ``entry_id`` (read after the range checked) if
        its MAC is valid."""
        e = _entry(self.keys, entry_id, fields)
        anchor = _anchor(e) if e.valid else None
        if anchor is not None:
            self._walk.anchors.add(anchor)

    def report(self, entries_added: int | None = None) -> AuditReport:
        self._flush()
        walk = self._walk
        state, problems = walk.finish(entries_added, self.checkpoint)
        more = walk.more
        # Not one entry's key is held: a wrong key, not a chain broken at every entry.
        wrong_key = walk.count > 0 and walk.keyed == 0
        if wrong_key:
            problems = [self._wrong_key(walk), *(p for p in problems if p.kind != "unverifiable")]
            more -= walk.more_unverifiable
        last = walk.trusted
        head = AuditHead(last.n or 0, last.id, last.mac) if last is not None else None
        shown = problems[:_MAX_PROBLEMS]
        return AuditReport(
            ok=not problems,
            entries=walk.count,
            first_problem=shown[0] if shown else None,
            problems=shown,
            more_problems=more + len(problems) - len(shown),
            head=head,
            start=state,
            wrong_key=wrong_key,
        )

    def _wrong_key(self, walk: _Walk) -> AuditProblem:
        """The one problem of a log no entry of which names a key held."""
        named = ", ".join(repr(k) for k in walk.other_keys) or "none"
        held = ", ".join(repr(k) for k in self.keys.ids)
        return AuditProblem(
            "unverifiable",
            "",
            None,
            f"no entry verifies with this key: the {walk.count} entries name key id(s) "
            f"{named}, the key(s) given are {held}; a wrong key (give the key the log is "
            f"written with), or entries of an earlier key: {PREVIOUS_KEYS_HOW}",
        )


def verify_chain(
    keys: AuditKeys,
    entries: Iterable[tuple[str, dict[str, str]]],
    *,
    entries_added: int | None = None,
    checkpoint: AuditHead | None = None,
) -> AuditReport:
    """Check ``entries`` (stream id, fields), in stream order; see the module docstring."""
    check = ChainCheck(keys, checkpoint)
    for entry_id, fields in entries:
        check.feed(entry_id, fields)
    return check.report(entries_added)
