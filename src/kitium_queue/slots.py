"""Lua slots: named places in the engine's scripts that features fill with fragments.

A feature that must act inside a transition, atomically with it, registers a Lua
fragment for a slot (``ScriptRegistry.add_slot``); at load time the fragments of each
slot are composed into one function that the scripts call at that place. A slot no
feature filled compiles to nothing: its call sites, and the code around them that only
serves them, are left out of the script source.

The slots, and the signature of the fragment each takes (a Lua *expression* evaluating
to that function; it is evaluated once per script call, so it may build tables of its
configuration, but must not call Redis itself):

``accept`` — ``function(id, name, opts, state) -> reason | nil``
    Runs for every new job inside ``add_job`` *before anything of it is written*
    (``opts``: its options JSON or ``''``; ``state``: ``'waiting'`` or ``'delayed'``).
    Returning a non-empty reason refuses the job: nothing of it is written, the reply
    says ``refused`` with the reason (``JobRefusedError`` in Python) and the other jobs of
    the call go on. A reason that starts with a refusal code and tab-separated fields
    (``"KQ_QUOTA_EXCEEDED\\t<tenant>\\t<quota>\\t<limit>\\t<message>"``; the codes are in
    ``errors.REFUSAL_ERRORS``) is raised as that code's subclass of ``JobRefusedError``
    (``QuotaExceededError``), with the message as its text. The first fragment that
    refuses wins; a fragment that fails accepts (and is recorded in ``slot-errors``).
    Fragments of this slot must not write: a later fragment may still refuse the job.
    Use it for atomic admission limits that a producer must hear about (a full group, a
    tenant over its quota).

``enqueue`` — ``function(id, jk, opts, state) -> blocker | nil``
    Runs for every new job inside ``add_job`` (``enqueue.lua``, ``schedule_fire.lua``),
    right after its hash was written. ``opts``: the job's options JSON or ``''``;
    ``state``: ``'waiting'`` or ``'delayed'``, or ``'pending'`` once an earlier fragment
    named a blocker for a waiting job: the job will be parked, so a later fragment
    treats it like a delayed one (it hands it no turn, ticket or place of its own: the
    job meets admission when its blocker lets it go). It may write its own marker
    fields on the job hash (so later fragments know the feature's jobs without reading
    the options JSON) and its own keys. Returning a blocker name parks a waiting job
    behind it instead of putting it in wait (``st`` = ``'pending'``; the first fragment
    that returns one wins; ignored for a delayed job, which meets admission when due).

``admission`` — ``function(id, jk, opts, <declared fields>...) -> ok[, commit]``
    Runs in ``claim`` for each candidate, in the slot's order (below); the candidate is
    handed out only if every check returns true. The values of the job-hash ``fields``
    the fragment declared are passed after ``opts`` (read in claim's own ``HMGET``, at
    no extra call). ``commit(id, jk)`` runs once every check admitted the candidate:
    count the job against limits there. A rejecting check may call
    ``admit_retry(t_ms)``, ``admit_stop()`` or ``admit_park(blocker)`` (take the job out
    of wait, behind ``blocker``; see ``kitium_queue.parking``). A check or its commit
    that moves jobs into wait (``unpark``) defers that with ``admit_after(key, fn)``:
    claim scans wait by position while it runs the checks, so ``fn`` runs once the
    call's jobs are handed out (``lua/admission.lua``).

``release`` — ``function(id, jk, outcome, payload, context, <declared fields>...)``
    Runs once for every job that leaves ``active``, in the same script: ``finish.lua``
    (``completed``, ``retrying``, ``failed``, ``deferred``, ``released``; ``removed``
    when the record was missing), recovery of an expired lease (``stalled``, or
    ``failed`` when dead-lettered) and ``clear(force=True)`` (``removed``). A cancelled
    job leaves active through one of these (``failed``). It also runs, with ``removed``,
    for every job deleted while *not* active: ``remove_job``, ``cancel_job`` of a job
    that had not started, ``drain`` (waiting, delayed and parked jobs), and a job a
    feature removes from its own fragment or script (a workflow's cancelled or skipped
    steps): each goes through ``remove_unstarted(id, jk)`` (``lua/lib_parking.lua``),
    which a fragment may call too (its script must include ``slot_release``; the
    fragments then run once more, nested, for the removed job). A fragment that only
    tracks running jobs ignores ids it does not know. It runs before the job's
    transition is written, with the record present (unless it was deleted by hand):
    decide on ``outcome``, not on ``st``. ``payload``, from ``finish.lua`` only: the
    encoded result of a ``completed`` job (before retention may delete its record), the
    failure reason of a ``retrying`` or ``failed`` one; ``nil`` elsewhere.
    ``context``, from ``finish.lua`` only: the run context the worker sent with a
    ``completed`` or ``failed`` outcome (``Job.run_context``, set by process middleware
    for a job that takes part in run links: its job-hash field ``fw`` is present); a
    feature that makes other jobs follow this one keeps it for them and writes it into
    their ``fw`` (workflows). Untrusted text: check it. ``nil`` elsewhere.
    Declared ``fields`` (job-hash fields, as for ``admission``) come after ``context``:
    from ``finish.lua`` (the common way out of active) read in its own ``HMGET``, at no
    extra call — a field's value, or ``false`` when the hash has none, so a fragment
    that keys its work on a marker field skips the jobs without it for free; ``nil``
    from every other caller, where the fragment reads what it needs itself.

``duplicate`` — ``function(existing_id, name, data, opts, delay, ik) -> 'add' | nil``
    Runs in ``enqueue.lua`` when a new job's idempotency key ``ik`` already points to a
    job (``existing_id``; its record may be gone). By default the new job is a
    duplicate: nothing is written and ``add_job`` returns ``existing_id``. A fragment
    may act on the existing job instead (replace its data and delay while it has not
    started: debounce) and still return ``nil``, or return ``'add'``: the new job is
    added as if the key were free, and the key then points to it (with a fresh window).
    The first fragment that returns ``'add'`` wins. ``delay``: the new job's delay in
    ms (0 = none), ``opts``: its options JSON or ``''``. Not called for a ``job_id``
    that exists (a job id is never reused).

``event`` — ``function(name, subject, fields)``
    Runs for every event a feature raises inside a script with ``feature_event(name,
    subject, field1, value1, ...)`` (``lua/lib_events.lua``: the event goes to the
    queue's event stream, and to this slot in the same atomic step). ``subject`` is what
    the event is about (a workflow's id), ``fields`` the flat list of field names and
    values (text). A feature that forwards events (webhooks) fills it: it learns no
    other feature's name, only the events raised. Runs only in scripts that include the
    composed slots (any script running another feature's fragments does).

``erase`` — ``function(id, jk, ik)``
    Runs when a job is *erased*: deleted for good so that nothing of it may remain (a
    compliance retention period ended, or the job's subject was erased). It runs in
    the erasing script (features' own scripts include ``slot_erase`` and call
    ``--@slot erase(id, jk, ik)``), right before the job's hash and log list are
    deleted, once per job. ``ik``: the job's idempotency key, or ``''``. The hash may
    already be gone (an ordinary deletion removed it, and only a feature's copies are
    left): a fragment finds its copies from ``id`` and ``ik``. A feature deletes what it
    keeps of the job outside its hash there (a stored result, a copy of the result in
    another record, an index entry); it must only touch what belongs to this job
    (compare the id a record names before deleting it). Ordinary deletions (retention
    trims, ``remove_job``, ``drain``, ``clear``) do not run it: there a feature's copies
    live on by design (an exactly-once result outlives its job).

``fence`` — ``function(op) -> reason | nil``
    Runs at the very start of the scripts that let work into or out of the queue, before
    anything is written: ``enqueue.lua`` (``op`` = ``'enqueue'``), ``claim.lua``
    (``'claim'``) and ``schedule_fire.lua`` (``'fire'``). Returning a non-empty reason
    fences the queue for that call: ``enqueue`` and ``schedule_fire`` answer
    ``KQ_FENCED <reason>`` (``FencedError`` in Python) and write nothing; ``claim``
    answers status ``'fenced'`` (nothing promoted, recovered or handed out; the worker
    asks again within a second or at its next wake-up). The first fragment that fences
    wins. A fragment that fails *fences* (fail closed: the reason names it and quotes the
    error), and it is not recorded in ``slot-errors``: a fenced call writes nothing.
    Fragments of this slot must not write. Use it for a guard that must hold for every
    producer and worker at once, read atomically with the transition (a copy of the
    queue that is not the active one refuses new work).

``requeue`` — ``function(id, jk, from)``
    Runs for every finished job put back to wait by ``retry_job``, ``bulk_retry`` or
    ``replay_dlq`` (``lua/lib_requeue.lua``), right after it moved (``st`` =
    ``'waiting'``); ``from``: the state it left (``'completed'``, ``'failed'`` or
    ``'dlq'``). It also runs for a job a feature brings back from its own fragment or
    script through ``requeued(id, jk, from)`` (``lua/lib_slots.lua``): a workflow's
    step revived by a replay, its record written again (``from`` = ``'cancelled'``;
    ``st`` = ``'waiting'``, or ``'pending'`` when it is parked behind its parents).
    A feature that follows jobs coming back (replication to other regions, an
    idempotency key held while the job is unfinished) fills it, and learns no other
    feature's name. Failures are recorded like ``release``'s.

Order: the fragments of a slot run by their ``order`` (lower first; default 0), then in
the order they were added (``ScriptRegistry.add_slot(..., order=n)``). Where jobs are
parked (``enqueue``, ``admission``), that order decides which feature's blocker a job
meets first, whatever order the features were enabled in: a feature whose blocker
means the job is not ready to run at all (workflows: unfinished parents,
``ORDER_READY``) comes first, then one that keeps jobs in an order (FIFO groups,
``ORDER_LINE``), then one that holds jobs back for a limit shared beyond a tenant
(flow control's concurrency keys and rates, ``ORDER_HOLD``), then the ones that share
capacity among ready jobs (tenants' lanes and dispatch tickets, default 0). A job
waiting for its parents thus holds no group turn and no tenant ticket, and a job
waiting in its group's line or behind a full concurrency key holds no tenant ticket.
Re-adding a fragment (a feature installing new settings) keeps it in its order.

What fragments may call: ``park``, ``unpark(blocker, n)``,
``remove_unstarted(id, jk[, before_delete])`` (``lua/lib_parking.lua``;
``before_delete(id, jk)`` runs after the release fragments, before the record goes),
``park_timer(blocker, due, n, every)`` (``lua/lib_park_timers.lua``), ``emit``,
``feature_event``, ``wake``, ``job_key``, ``arg_int``, ``int``, ``num``, ``PREFIX``,
``NOW``, ``NOW_S``, ``cjson``, ``redis.call``, ``requeued(id, jk, from)`` (the
``requeue`` slot, for a job the feature put back in wait), and ``outbox_add(topic, field, value,
...)`` (``lua/outbox.lua``: an entry in the queue's outbox, written atomically with the
transition; docs/outbox.md). ``SLOT_SCRATCH``
(``lua/lib_slots.lua``) is a table that lives for one script call, where a feature's
fragments share what they read under the feature's name (the compliance ``accept``
check hands the job's subject to its ``enqueue`` fragment, checking the id); a
fragment must also work without it.

What they must never do:

* fail after a write. Every fragment runs under ``pcall``: a failure does not break the
  transition around it (the job still moves), and it is recorded in
  ``<prefix>slot-errors`` (``parking.slot_errors``); but the writes the fragment made
  before failing stay. Check first, write last.
* ``unpack()`` a list of unbounded length (Lua's stack takes about 8000 values): send
  lists in chunks (``zrem_all``, ``zadd_pairs``).
* do unbounded work: they run on the hot path, per job; ``unpark`` is bounded per call.
* touch keys outside the queue's hash tag (build every key from ``PREFIX``), or define
  globals.

A fragment that does not compile is refused when it is added (or, without a local Lua
compiler, when the scripts are loaded: ``ConfigurationError`` naming it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from .errors import ConfigurationError

__all__ = [
    "ORDER_HOLD",
    "ORDER_LINE",
    "ORDER_READY",
    "RELEASE_OUTCOMES",
    "SLOTS",
    "SlotFragment",
    "SlotTable",
    "lua_string",
]

#: The slots features can fill.
SLOTS: Final = (
    "accept",
    "enqueue",
    "admission",
    "release",
    "duplicate",
    "event",
    "erase",
    "fence",
    "requeue",
)

#: ``order`` of the fragments of a feature whose blocker means a job is not ready to run
#: (its parents are unfinished): they run before every other fragment of their slot.
ORDER_READY: Final = -20
#: ``order`` of the fragments of a feature that keeps jobs in an order (a FIFO group's
#: line): after ``ORDER_READY``, before the default (0) of capacity features.
ORDER_LINE: Final = -10
#: ``order`` of the fragments of a feature that holds jobs back for a limit shared
#: beyond a tenant (flow control's concurrency keys and rates): after ``ORDER_LINE``,
#: before the default (0) of the features that hand out tenants' dispatch tickets.
ORDER_HOLD: Final = -5

#: The ``outcome`` values the ``release`` slot receives.
RELEASE_OUTCOMES: Final = (
    "completed",
    "retrying",
    "failed",
    "deferred",
    "released",
    "stalled",
    "removed",
)

#: Fragments generated from the slots (what scripts ``--@include``).
GENERATED: Final = {
    "slot_accept": "accept",
    "slot_enqueue": "enqueue",
    "admission_checks": "admission",
    "slot_release": "release",
    "slot_duplicate": "duplicate",
    "slot_event": "event",
    "slot_erase": "erase",
    "slot_fence": "fence",
    "slot_requeue": "requeue",
}

_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
#: The job-hash fields claim reads anyway: a check gets them as ``opts`` / via ``jk``.
_CLAIM_FIELDS = ("n", "d", "o", "ts", "s", "pg", "a", "fw")
_DIRECTIVE = re.compile(r"^[ \t]*--@(if|else|end)\b[ \t]*(\w*)[ \t]*$")
_SLOT_CALL = re.compile(r"^([ \t]*)--@slot (\w+)\((.*)\)[ \t]*$")
_FIELDS_MARK = "--[[@admission_fields]]"
#: The job-hash fields finish reads anyway (``lt``, ``st``, ``e``); release fragments'
#: declared fields follow them in the same ``HMGET``.
_FINISH_FIELDS = ("lt", "st", "e")
_RELEASE_MARK = "--[[@release_fields]]"


@dataclass(frozen=True, slots=True)
class SlotFragment:
    """One feature's fragment for one slot."""

    slot: str
    name: str
    source: str
    fields: tuple[str, ...] = ()
    order: int = 0


def lua_string(text: str) -> str:
    """A Lua string literal for any text (every byte outside a safe set escaped)."""
    out = []
    for b in text.encode("utf-8"):
        c = chr(b)
        out.append(c if c.isascii() and (c.isalnum() or c in "_-.:@/ ") else f"\\{b:03d}")
    return '"' + "".join(out) + '"'


class SlotTable:
    """The fragments registered for each slot, and the Lua they compose into."""

    def __init__(self) -> None:
        self._by_slot: dict[str, list[SlotFragment]] = {s: [] for s in SLOTS}

    def add(
        self, slot: str, name: str, source: str, fields: tuple[str, ...] = (), order: int = 0
    ) -> None:
        """Register (or replace, by name) a fragment; see the module docstring (``order``:
        where it runs among the slot's fragments, lower first)."""
        if slot not in SLOTS:
            raise ConfigurationError(f"unknown Lua slot {slot!r}; slots are {', '.join(SLOTS)}")
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"a {slot} slot fragment needs a non-empty name")
        if not isinstance(source, str) or not source.strip():
            raise ConfigurationError(f"{slot} slot fragment {name!r} has no Lua source")
        fields = tuple(fields)
        if fields and slot not in ("admission", "release"):
            raise ConfigurationError(
                f"{slot} slot fragment {name!r}: only admission and release fragments "
                "declare fields"
            )
        for f in fields:
            if not isinstance(f, str) or not _FIELD.fullmatch(f):
                raise ConfigurationError(
                    f"{slot} slot fragment {name!r}: invalid job-hash field name {f!r}"
                )
        if isinstance(order, bool) or not isinstance(order, int):
            raise ConfigurationError(f"{slot} slot fragment {name!r}: order must be an int")
        _check_compiles(slot, name, source)
        frags = [f for f in self._by_slot[slot] if f.name != name]
        frags.append(SlotFragment(slot, name, source, fields, order))
        # Stable: fragments of one order keep the order they were added in.
        frags.sort(key=lambda f: f.order)
        self._by_slot[slot] = frags

    def remove(self, slot: str, name: str) -> None:
        """Forget a fragment (no error when it is not there)."""
        if slot in self._by_slot:
            self._by_slot[slot] = [f for f in self._by_slot[slot] if f.name != name]

    def fragments(self, slot: str) -> tuple[SlotFragment, ...]:
        return tuple(self._by_slot.get(slot, ()))

    def flags(self) -> frozenset[str]:
        """The names ``--@if`` tests: each filled slot, and ``parking`` when any is."""
        filled = {s for s, frags in self._by_slot.items() if frags}
        if filled:
            filled.add("parking")
        return frozenset(filled)

    def admission_fields(self) -> tuple[str, ...]:
        """Extra job-hash fields claim reads for the admission checks, in order."""
        out: list[str] = []
        for frag in self._by_slot["admission"]:
            out.extend(f for f in frag.fields if f not in out and f not in _CLAIM_FIELDS)
        return tuple(out)

    def release_fields(self) -> tuple[str, ...]:
        """Extra job-hash fields finish reads for the release fragments, in order."""
        out: list[str] = []
        for frag in self._by_slot["release"]:
            out.extend(f for f in frag.fields if f not in out and f not in _FINISH_FIELDS)
        return tuple(out)

    def names(self, slot: str) -> list[str]:
        return [f.name for f in self._by_slot.get(slot, ())]

    def signature(self) -> tuple[tuple[str, tuple[SlotFragment, ...]], ...]:
        """Every slot's fragments in the order they run: what the composed Lua depends
        on (``ScriptRegistry`` keys its cache of expanded scripts by it)."""
        return tuple((s, tuple(frags)) for s, frags in self._by_slot.items())

    # -- composition ------------------------------------------------------------------
    def compose(self, generated: str) -> str:
        """The source of a generated fragment (``slot_enqueue``, ``admission_checks``,
        ``slot_release``): empty when its slot is unfilled."""
        slot = GENERATED[generated]
        frags = self._by_slot[slot]
        if not frags:
            return ""
        if slot == "accept":
            return _compose_accept(frags)
        if slot == "enqueue":
            return _compose_enqueue(frags)
        if slot == "duplicate":
            return _compose_duplicate(frags)
        if slot == "event":
            return _compose_notify("event", "name, subject, fields", "event_hook", frags)
        if slot == "fence":
            return _compose_fence(frags)
        if slot == "requeue":
            return _compose_notify("requeue", "id, jk, from", "requeue_hook", frags)
        if slot == "admission":
            return _compose_admission(frags, self.admission_fields())
        if slot == "erase":
            return _compose_notify("erase", "id, jk, ik", None, frags, args="id, jk, ik or ''")
        return _compose_release(frags, self.release_fields())

    def apply_directives(self, source: str, flags: frozenset[str]) -> str:
        """Resolve ``--@if NAME`` / ``--@else`` / ``--@end`` blocks (not nested), ``--@slot
        NAME(args)`` call lines and the admission-fields mark of one source."""
        out: list[str] = []
        keep: bool | None = None  # None: outside a block
        for line in source.split("\n"):
            d = _DIRECTIVE.match(line)
            if d:
                word, flag = d.group(1), d.group(2)
                if word == "if":
                    if keep is not None:
                        raise ConfigurationError("Lua directives: --@if blocks do not nest")
                    keep = flag in flags
                elif word == "else":
                    keep = None if keep is None else not keep
                else:
                    keep = None
                continue
            if keep is False:
                continue
            call = _SLOT_CALL.match(line)
            if call:
                indent, slot, args = call.groups()
                if slot in flags:
                    out.append(f"{indent}{slot}_slot({args})")
                continue
            if _FIELDS_MARK in line:
                extra = "".join(f", '{f}'" for f in self.admission_fields())
                line = line.replace(_FIELDS_MARK, extra)
            if _RELEASE_MARK in line:
                extra = "".join(f", '{f}'" for f in self.release_fields())
                line = line.replace(_RELEASE_MARK, extra)
            out.append(line)
        return "\n".join(out)


def _header(slot: str, frags: list[SlotFragment]) -> list[str]:
    lines = [
        f"-- Composed `{slot}` slot: " + ", ".join(f.name for f in frags),
        "--@include lib_slots",
    ]
    for i, f in enumerate(frags):
        lines.append(f"local {slot}_{i} = {f.source}")
    return lines


def _guarded(
    slot: str, frags: list[SlotFragment], args: str, result: str, on_success: str = ""
) -> list[str]:
    """One ``pcall`` per fragment: a failure is recorded (slot_failed) and the rest run."""
    out = []
    for i, f in enumerate(frags):
        out.append(f"  ok, {result} = pcall({slot}_{i}, {args})")
        out.append(
            f"  if not ok then slot_failed('{slot}', {lua_string(f.name)}, {result})"
            f"{on_success} end"
        )
    return out


def _compose_accept(frags: list[SlotFragment]) -> str:
    lines = _header("accept", frags)
    lines.append("local function accept_slot(id, name, opts, state)")
    lines.append("  local ok, r")
    # The first fragment that gives a reason refuses the job; the rest are not asked.
    for i, f in enumerate(frags):
        lines.append(f"  ok, r = pcall(accept_{i}, id, name, opts, state)")
        lines.append(f"  if not ok then slot_failed('accept', {lua_string(f.name)}, r)")
        lines.append("  elseif type(r) == 'string' and r ~= '' then return r end")
    lines.append("  return nil")
    lines.append("end")
    return "\n".join(lines) + "\n"


def _compose_fence(frags: list[SlotFragment]) -> str:
    # No lib_slots: a fence writes nothing, not even a record of a failing fragment.
    lines = [
        "-- Composed `fence` slot: " + ", ".join(f.name for f in frags),
        "--@include lib_base",
    ]
    for i, f in enumerate(frags):
        lines.append(f"local fence_{i} = {f.source}")
    lines.append("local function fence_slot(op)")
    lines.append("  local ok, r")
    # Fail closed: a guard that cannot decide must not let work through.
    for i, f in enumerate(frags):
        lines.append(f"  ok, r = pcall(fence_{i}, op)")
        lines.append(
            f"  if not ok then return 'fence ' .. {lua_string(f.name)} .. ' failed: ' .. "
            "tostring(type(r) == 'table' and (r.err or r.ok) or r)"
        )
        lines.append("  elseif type(r) == 'string' and r ~= '' then return r end")
    lines.append("  return nil")
    lines.append("end")
    return "\n".join(lines) + "\n"


def _compose_duplicate(frags: list[SlotFragment]) -> str:
    lines = _header("duplicate", frags)
    lines.append("local function duplicate_slot(existing, name, data, opts, delay, ik)")
    lines.append("  local ok, r")
    lines.append("  local add = false")
    # Every fragment runs (one may update the existing job); any 'add' adds the new one.
    for i, f in enumerate(frags):
        lines.append(f"  ok, r = pcall(duplicate_{i}, existing, name, data, opts, delay, ik)")
        lines.append(f"  if not ok then slot_failed('duplicate', {lua_string(f.name)}, r)")
        lines.append("  elseif r == 'add' then add = true end")
    lines.append("  return add")
    lines.append("end")
    return "\n".join(lines) + "\n"


def _compose_enqueue(frags: list[SlotFragment]) -> str:
    lines = _header("enqueue", frags)
    lines.append("local function enqueue_slot(id, jk, opts, state, pri, q)")
    lines.append("  local blocker, ok, b = nil, true, nil")
    # What the later fragments are told: a waiting job a fragment parks is 'pending'.
    lines.append("  local seen = state")
    # The first fragment that names a blocker parks the job (the others still run, and
    # see it pending: they hand it no turn, ticket or place of their own).
    lines += _guarded(
        "enqueue",
        frags,
        "id, jk, opts, seen",
        "b",
        " elseif blocker == nil and type(b) == 'string' and b ~= '' then blocker = b;"
        " if seen == 'waiting' then seen = 'pending' end",
    )
    lines.append("  if blocker == nil or state ~= 'waiting' then return false end")
    # False when the blocker's set is damaged (lib_parking.lua): the job goes to wait.
    lines.append("  return park(id, jk, int(wait_score(pri, q)), blocker)")
    lines.append("end")
    return "\n".join(lines) + "\n"


def _compose_admission(frags: list[SlotFragment], fields: tuple[str, ...]) -> str:
    # Claim's HMGET returns _CLAIM_FIELDS, then `fields`: position of each by name.
    index = {f: i + 1 for i, f in enumerate(_CLAIM_FIELDS + fields)}
    lines = _header("admission", frags)
    lines.append("local function admit(id, jk, opts, f)")
    lines.append("  ADMIT_PARK, ADMIT_PARK_SCORE = nil, nil")
    lines.append("  local ok, err")
    for i, frag in enumerate(frags):
        args = "".join(f", f[{index[x]}]" for x in frag.fields)
        name = lua_string(frag.name)
        lines.append(
            f"  local ok{i}, pass{i}, commit{i} = pcall(admission_{i}, id, jk, opts{args})"
        )
        lines.append(f"  if not ok{i} then")
        lines.append(
            f"    ADMIT_PARK = nil; slot_failed('admission', {name}, pass{i}); return false"
        )
        lines.append("  end")
        lines.append(f"  if not pass{i} then return false end")
    for i, frag in enumerate(frags):
        name = lua_string(frag.name)
        lines.append(f"  if commit{i} then")
        lines.append(f"    ok, err = pcall(commit{i}, id, jk)")
        lines.append(f"    if not ok then slot_failed('admission', {name}, err) end")
        lines.append("  end")
    lines.append("  return true")
    lines.append("end")
    return "\n".join(lines) + "\n"


def _compose_release(frags: list[SlotFragment], fields: tuple[str, ...]) -> str:
    # `f`: finish's HMGET (_FINISH_FIELDS, then `fields`), or nil where the caller read
    # no record (recovery, clear, removals): a fragment then gets nil for each of its
    # fields and reads what it needs itself; from finish it gets each field's value, or
    # false when the job hash has none.
    index = {f: i + 1 for i, f in enumerate(_FINISH_FIELDS + fields)}
    lines = _header("release", frags)
    lines.append("local function release_slot(id, jk, outcome, payload, context, f)")
    lines.append("  local ok, err")
    for i, frag in enumerate(frags):
        args = "".join(f", f and f[{index[x]}]" for x in frag.fields)
        lines.append(f"  ok, err = pcall(release_{i}, id, jk, outcome, payload, context{args})")
        lines.append(f"  if not ok then slot_failed('release', {lua_string(frag.name)}, err) end")
    lines.append("end")
    lines.append("release_hook = release_slot")
    return "\n".join(lines) + "\n"


def _compose_notify(
    slot: str, params: str, hook: str | None, frags: list[SlotFragment], *, args: str = ""
) -> str:
    """A slot whose fragments all run in turn, for their effects, and return nothing
    (``event``, ``erase``, ``requeue``; ``release`` is composed the same way by
    ``_compose_release``, which also hands each fragment its declared fields):
    ``<slot>_slot(params)`` calls each with ``args`` (default: the params). When ``hook``
    is given the function is also assigned to it, the name the library calls it by
    (``event_hook`` in lib_events.lua, ``requeue_hook`` in lib_slots.lua); ``erase`` is
    called by ``--@slot`` lines only."""
    lines = _header(slot, frags)
    lines.append(f"local function {slot}_slot({params})")
    lines.append("  local ok, err")
    lines += _guarded(slot, frags, args or params, "err")
    lines.append("end")
    if hook:
        lines.append(f"{hook} = {slot}_slot")
    return "\n".join(lines) + "\n"


def _check_compiles(slot: str, name: str, source: str) -> None:
    """Refuse a fragment that is not one Lua expression, with a local Lua 5.1 compiler
    when one is installed (lupa, a dependency of the memory:// backend); else the
    server refuses it when the scripts are loaded."""
    try:
        from lupa import lua51  # type: ignore[import-untyped,unused-ignore]
    except ImportError:  # pragma: no cover - lupa comes with fakeredis[lua]
        return
    try:
        # Compiled only, never run: a syntax check of the expression in a statement. A
        # fresh runtime each time (about 0.1 ms): runtimes are not safe across threads.
        lua51.LuaRuntime().compile(f"local fragment = (\n{source}\n)")
    except lua51.LuaSyntaxError as exc:
        raise ConfigurationError(
            f"{slot} slot fragment {name!r} is not a Lua expression: {exc}"
        ) from None
