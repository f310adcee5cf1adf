"""The payload round-trip rule (issue 11, item 3): every row of the README's "Job data
and results" table, checked here — a value either arrives exactly as sent (or as its
plain type, equal) or is refused with a ``SerializationError`` saying what to send."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import decimal
import enum
import math
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import JobStatus, SerializationError
from kitium_queue.codec import Serializer

README = Path(__file__).resolve().parents[1] / "README.md"


class Color(enum.Enum):
    RED = 1


class Shade(str, enum.Enum):
    DARK = "dark"


class Level(enum.IntEnum):
    HIGH = 3


@dataclasses.dataclass
class Point:
    x: int


Pair = collections.namedtuple("Pair", "a b")


class FakeNdarray:
    """Stands for a numpy array (numpy is not a dependency): same module name."""

    __module__ = "numpy"


def _deep(n: int) -> Any:
    value: Any = []
    for _ in range(n):
        value = [value]
    return value


SAME = "round-trips exactly"
PLAIN = "arrive as the plain type, equal (`==`)"

#: README row (its first cell) -> (sample values, the rule, what the message must say).
ROWS: dict[str, tuple[list[Any], str, str]] = {
    "`dict` with `str` keys, `list`, `str`, `int` within 64 bits, finite `float`, `bool`, `None`": (
        [{"a": [1, "x", 2.5, True, None, {"b": -(2**63)}]}, [], "", 2**64 - 1, 0.1, False],
        SAME,
        "",
    ),
    "subclasses of `str`, `int`, `float`, `dict`, `list` (`StrEnum`, `IntEnum`, `OrderedDict`)": (
        [{"s": Shade.DARK}, {"l": Level.HIGH}, collections.OrderedDict(a=1), {Shade.DARK: 1}],
        PLAIN,
        "",
    ),
    "`tuple`, named tuple": ([{"t": (1, 2)}, [Pair(1, 2)]], "refused", "list(value)"),
    "`datetime`, `date`, `time`": (
        [
            {"at": datetime.datetime(2026, 1, 2, 3, 4, 5)},
            [datetime.date(2026, 1, 2)],
            datetime.time(3, 4),
        ],
        "refused",
        "value.isoformat()",
    ),
    "`uuid.UUID`": ([{"id": uuid.UUID(int=7)}], "refused", "str(value)"),
    "other `Enum` members": ([{"c": Color.RED}], "refused", "member.value"),
    "dataclass instance": ([Point(1), {"p": [Point(2)]}], "refused", "dataclasses.asdict(value)"),
    "numpy array or scalar": ([{"a": FakeNdarray()}], "refused", "value.tolist()"),
    "`NaN`, `inf`, `-inf`": (
        [{"f": math.nan}, [math.inf], {"a": {"b": -math.inf}}],
        "refused",
        "use None",
    ),
    "dict key that is not a `str`": (
        [{1: "a"}, {"a": {None: 1}}, {(1, 2): 3}],
        "refused",
        "str(key)",
    ),
    "`int` outside -2\\*\\*63 .. 2\\*\\*64-1": (
        [2**64, {"n": -(2**63) - 1}],
        "refused",
        "as strings",
    ),
    "string with a lone surrogate": (
        [{"f": "r-\udcff.csv"}, {"\udcff": 1}],
        "refused",
        "lone surrogate",
    ),
    "nesting deeper than 254 levels": ([_deep(300)], "refused", "deeper than 254"),
    "`set`, `bytes`, `Decimal`, other objects": (
        [{"s": {1}}, {"b": b"x"}, {"d": decimal.Decimal("1.5")}, object()],
        "refused",
        "cannot be serialized",
    ),
}


def _readme_rows() -> dict[str, str]:
    text = README.read_text()
    section = text[text.index("### Job data and results") :]
    section = section[: section.index("\n## ")]
    rows = re.findall(r"^\| (.+?) \| (.+?) \|$", section, re.M)
    return {first: rule for first, rule in rows if first not in ("value", "---")}


def test_the_readme_table_is_this_table() -> None:
    readme = _readme_rows()
    assert list(readme) == list(ROWS)
    for first, (_, rule, _hint) in ROWS.items():
        assert readme[first].startswith(rule), (first, readme[first])


def _cases(rule: str) -> list[Any]:
    return [
        pytest.param(v, hint, id=f"{first[:30]}-{i}")
        for first, (values, r, hint) in ROWS.items()
        if r == rule
        for i, v in enumerate(values)
    ]


@pytest.mark.parametrize(("value", "hint"), _cases("refused"))
async def test_refused_values(make_queue: QueueFactory, value: Any, hint: str) -> None:
    q = make_queue()
    with pytest.raises(SerializationError) as info:
        await q.add_job("n", value)
    msg = str(info.value)
    assert msg.startswith("job data cannot be serialized to JSON: ") and hint in msg, msg
    assert len(msg) < 600
    assert (await q.get_stats()).waiting == 0  # nothing written
    with pytest.raises(SerializationError, match=r"^result cannot be serialized"):
        Serializer().dumps(value, "result")


@pytest.mark.parametrize(("value", "hint"), _cases(SAME) + _cases(PLAIN))
async def test_values_that_arrive_equal(make_queue: QueueFactory, value: Any, hint: str) -> None:
    q = make_queue()
    got: list[Any] = []
    q.process("n", lambda job: got.append(job.data) or job.data)
    jid = await q.add_job("n", value)
    await q.start()
    await wait_until(lambda: got)
    assert got[0] == value and _shape(got[0]) == _shape(_plain(value))
    info = await wait_for_status(q, jid, JobStatus.COMPLETED)
    assert info.result == value


def _plain(value: Any) -> Any:
    """What ``value`` is once its subclasses are the plain types."""
    if isinstance(value, dict):
        return {str.__str__(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    for kind in (bool, str, int, float):
        if isinstance(value, kind):
            return kind(value) if kind is not str else str.__str__(value)
    return value


def _shape(value: Any) -> Any:
    """The exact types inside ``value``, to compare beyond ``==``."""
    if isinstance(value, dict):
        return (type(value), {k: (type(k), _shape(v)) for k, v in value.items()})
    if isinstance(value, list):
        return (type(value), [_shape(v) for v in value])
    return type(value)


async def test_a_result_that_would_change_fails_its_job_with_the_reason(
    make_queue: QueueFactory,
) -> None:
    q = make_queue()
    q.process("n", lambda job: (1, 2))
    jid = await q.add_job("n", {})
    await q.start()
    info = await wait_for_status(q, jid, JobStatus.DLQ)
    assert info.failed_reason is not None and "a tuple" in info.failed_reason
    assert "send list(value)" in info.failed_reason and info.attempts == 1
