"""A stored schedule's hash read without trusting it (``ScheduleStore.get`` / ``list``).

A schedule record written by hand or by another client may hold anything: a definition
that is not a JSON object or has fields of the wrong type, counters that are not
numbers, a key of another type. ``schedule_values`` never raises on such a record: what
can be read is filled in, the rest keeps its default, and ``damaged`` names every
problem (as ``records.job_values`` does for jobs), so one damaged schedule never hides
the others from a listing. A damaged schedule can be listed, shown, paused and removed;
changing or resuming it is refused (``check_intact``): its timing cannot be trusted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from redis.exceptions import ResponseError

from ..codec import Serializer
from ..errors import ConfigurationError
from ..limits import MAX_DELAY_MS, clip, printable
from ..options import shown

__all__ = [
    "check_intact",
    "schedule_hash",
    "schedule_values",
    "stored_id",
    "timing_problems",
]

_NONE = type(None)
#: The fields of a stored definition (``Schedule.definition``) and the types they hold.
_DEFINITION: dict[str, tuple[type, ...]] = {
    "job_name": (str,),
    "cron": (str, _NONE),
    "every_ms": (int, _NONE),
    "tz": (str,),
    "start_date": (int, _NONE),
    "end_date": (int, _NONE),
    "limit": (int, _NONE),
    "jitter_ms": (int,),
    "misfire": (str,),
    "catch_up_limit": (int,),
    "misfire_grace_ms": (int,),
    "overlap": (str,),
    "options": (dict,),
}
#: Runtime fields of the hash read as numbers: hash field, ``Schedule`` attribute.
_NUMBERS = {
    b"due": "next_run_at",
    b"last": "last_run_at",
    b"cnt": "runs",
    b"skip": "skipped",
    b"ca": "created_at",
    b"ua": "updated_at",
}
_WRONG_TYPE = "schedule record damaged: its key holds another type, not a hash"


def schedule_hash(reply: Any, problems: list[str]) -> dict[bytes, bytes]:
    """The reply of ``HGETALL`` on a schedule key, read with ``raise_on_error=False``:
    a key of another type (``WRONGTYPE``) is an empty record with the damage noted in
    ``problems``; any other error is raised."""
    if isinstance(reply, ResponseError) and "WRONGTYPE" in str(reply):
        problems.append(_WRONG_TYPE)
        return {}
    if isinstance(reply, BaseException):
        raise reply
    return dict(reply or {})


def stored_id(member: bytes, problems: list[str]) -> str:
    """A schedule id as read from the index; one that is not UTF-8 is shown escaped (and
    noted in ``problems``)."""
    try:
        return member.decode()
    except UnicodeDecodeError:
        problems.append("schedule id is not valid UTF-8")
        return member.decode("utf-8", "backslashreplace")


def _typed(parsed: Mapping[str, Any], damage: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, types in _DEFINITION.items():
        if name not in parsed:
            continue
        value = parsed[name]
        if isinstance(value, types) and not isinstance(value, bool):
            out[name] = value
        else:
            damage.append(f"definition field {name} is not a {types[0].__name__}")
    return out


def _semantics(defn: Mapping[str, Any], damage: list[str]) -> None:
    """Values of the right type that no declaration could have stored: a scheduler must
    not fire them (an interval of -5 ms would fire on every round, a cron pattern that
    does not parse would read as "never again" and finish the schedule)."""
    from .schedules import (
        _MAX_EPOCH_MS,
        MAX_CATCH_UP,
        MIN_INTERVAL_MS,
        MISFIRE_POLICIES,
        _zone,
        check_cron,
    )

    def bad(name: str, rule: str) -> None:
        damage.append(f"definition field {name} {rule}, got {shown(defn[name])}")

    cron, every = defn.get("cron"), defn.get("every_ms")
    if cron is not None:
        try:
            check_cron(cron, steps=False)  # as declared before huge steps were refused
        except ConfigurationError:
            bad("cron", "is not a valid cron pattern")
    elif every is not None and not MIN_INTERVAL_MS <= every <= MAX_DELAY_MS:
        bad("every_ms", f"must be {MIN_INTERVAL_MS} to {MAX_DELAY_MS} ms")
    if "tz" in defn:
        try:
            _zone(defn["tz"])
        except ConfigurationError:
            bad("tz", "is not an IANA time zone")
    for name in ("start_date", "end_date"):
        v = defn.get(name)
        if v is not None and not 0 <= v <= _MAX_EPOCH_MS:
            bad(name, f"must be ms from 0 to {_MAX_EPOCH_MS}")
    if "misfire" in defn and defn["misfire"] not in MISFIRE_POLICIES:
        bad("misfire", f"must be one of {', '.join(MISFIRE_POLICIES)}")
    if "catch_up_limit" in defn and not 1 <= defn["catch_up_limit"] <= MAX_CATCH_UP:
        bad("catch_up_limit", f"must be 1 to {MAX_CATCH_UP}")
    for name in ("jitter_ms", "misfire_grace_ms"):
        if name in defn and not 0 <= defn[name] <= MAX_DELAY_MS:
            bad(name, f"must be 0 to {MAX_DELAY_MS} ms")


def timing_problems(defn: Any) -> list[str]:
    """What is wrong with the timing fields of a stored definition (those it holds): the
    type checks of a listing and the ranges a declaration enforces. Empty: the scheduler
    may compute its ticks."""
    if not isinstance(defn, Mapping):
        return ["definition is not a JSON object"]
    damage: list[str] = []
    out = _typed(defn, damage)
    if out.get("cron") is None and out.get("every_ms") is None:
        damage.append("definition has neither a cron pattern nor an interval")
    _semantics(out, damage)
    return damage


def _definition(raw: bytes | None, damage: list[str]) -> dict[str, Any]:
    try:
        parsed = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:
        damage.append("definition is not valid JSON")
        return {}
    if not isinstance(parsed, dict):
        damage.append("definition is not a JSON object")
        return {}
    out = _typed(parsed, damage)
    if not isinstance(out.get("job_name"), str):
        damage.append("definition has no job name")
    if out.get("cron") is None and out.get("every_ms") is None:
        damage.append("definition has neither a cron pattern nor an interval")
    _semantics(out, damage)
    return out


def schedule_values(
    sid: str, raw: dict[bytes, bytes], serializer: Serializer, problems: Sequence[str]
) -> dict[str, Any]:
    """The ``Schedule`` fields of a schedule hash, as keyword arguments; never raises
    (see the module docstring). ``problems``: damage found before (an id that is not
    UTF-8, a key of another type)."""
    damage = list(problems)
    g = raw.get
    # An empty record is a key of another type (``schedule_hash``): nothing to read.
    defn = _definition(g(b"def"), damage) if raw else {}
    values: dict[str, Any] = {"job_name": "", **defn, "id": sid}
    if g(b"d") is not None:
        try:
            values["data"] = serializer.loads(g(b"d") or b"")
        except Exception:  # undecodable (e.g. a codec key is gone): show no data
            values["data"] = None
    for key, attr in _NUMBERS.items():
        v = g(key)
        if not v:
            continue
        try:
            values[attr] = int(v)
        except ValueError:
            try:
                f = float(v)
            except ValueError:
                f = math.nan
            if math.isfinite(f):
                values[attr] = int(f)
            else:
                damage.append(f"{attr} is not a number: {shown(v)}")
    values["runs"] = values.get("runs") or 0
    values["skipped"] = values.get("skipped") or 0
    values["paused"] = g(b"paused") == b"1"
    values["finished"] = g(b"done") == b"1"
    values["last_job_id"] = (g(b"lj") or b"").decode("utf-8", "backslashreplace") or None
    if damage:
        values["damaged"] = "; ".join(damage)
    return values


def check_intact(schedule: Any) -> None:
    """Refuse to change or resume a schedule whose record is damaged (``ConfigurationError``
    saying what to do): its stored timing cannot be trusted."""
    if schedule.damaged:
        raise ConfigurationError(
            f"schedule {printable(schedule.id)!r} has a damaged record "
            f"({clip(printable(schedule.damaged), 300)}): remove it and declare it again"
        )
