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
from collections.abc import Sequence
from typing import Any

import orjson
from redis.exceptions import ResponseError

from ..codec import Serializer
from ..errors import ConfigurationError
from ..limits import clip, printable
from ..options import shown

__all__ = ["check_intact", "schedule_hash", "schedule_values", "stored_id"]

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


def _definition(raw: bytes | None, damage: list[str]) -> dict[str, Any]:
    try:
        parsed = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:
        damage.append("definition is not valid JSON")
        return {}
    if not isinstance(parsed, dict):
        damage.append("definition is not a JSON object")
        return {}
    out: dict[str, Any] = {}
    for name, types in _DEFINITION.items():
        if name not in parsed:
            continue
        value = parsed[name]
        if isinstance(value, types) and not isinstance(value, bool):
            out[name] = value
        else:
            damage.append(f"definition field {name} is not a {types[0].__name__}")
    if not isinstance(out.get("job_name"), str):
        damage.append("definition has no job name")
    if out.get("cron") is None and out.get("every_ms") is None:
        damage.append("definition has neither a cron pattern nor an interval")
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
