"""Module-level processors for tests/test_hardening_codec_process.py.

Each runs both as a plain (threaded) processor and with ``mode="process"`` (children
import them by path), so the two modes can be compared on the same function.
"""

from __future__ import annotations

import collections
import datetime
import math
import os
from typing import Any

SURROGATE = b"r-\xff.csv".decode("utf-8", "surrogateescape")  # 'r-\udcff.csv'


class StrRaises(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str boom")


def self_list() -> list[Any]:
    value: list[Any] = [1]
    value.append(value)
    return value


def self_dict() -> dict[str, Any]:
    value: dict[str, Any] = {"a": 1}
    value["self"] = value
    return value


def ret_nan(job: Any) -> Any:
    return {"x": math.nan}


def ret_inf(job: Any) -> Any:
    return [1.0, math.inf]


def ret_tuple(job: Any) -> Any:
    return (1, 2)


def ret_datetime(job: Any) -> Any:
    return {"at": datetime.datetime(2024, 1, 2, 3, 4, 5)}


def ret_int_key(job: Any) -> Any:
    return {1: "a"}


def ret_self_list(job: Any) -> Any:
    return self_list()


def ret_self_dict(job: Any) -> Any:
    return {"wrapped": [self_dict()]}


def ret_ok(job: Any) -> Any:
    return {"ok": True, "n": [1, 2.5, None], "ordered": collections.OrderedDict(a=1)}


def pid(job: Any) -> int:
    return os.getpid()


def progress_probe(job: Any) -> list[str]:
    """Report values the codec refuses as progress; return what each raised. A value
    that contains itself only when ``job.data["cyclic"]`` (in a child: an in-process
    regression would spin the test's event loop)."""
    seen = []
    values: list[Any] = [{"pct": math.nan}, (1, 2), {"big": "x" * 70_000}]
    if job.data.get("cyclic"):
        values.append(self_list())
    for value in values:
        try:
            job.update_progress_sync(value)
        except Exception as exc:
            seen.append(f"{type(exc).__name__}: {exc}")
        else:
            seen.append("accepted")
    job.update_progress_sync({"pct": 50})
    return seen


def raise_surrogate(job: Any) -> None:
    raise ValueError(f"bad file {SURROGATE}")


def raise_str_raises(job: Any) -> None:
    raise StrRaises()


class Abort(BaseException):
    """Not an ``Exception``: a custom abort signal."""


def raise_base_exception(job: Any) -> None:
    raise Abort(f"stop at {SURROGATE}")


def log_surrogate(job: Any) -> str:
    job.log_sync(f"reading {SURROGATE}")
    return "logged"
