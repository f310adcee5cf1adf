"""Hypothesis strategies of hostile input for the fuzz suite (tests/test_fuzz.py).

Input classes (each one a named constant or strategy, so docs/RELIABILITY.md can point
at it):

* text: lone surrogates (``"\\ud800"``, ``surrogateescape``-decoded file names such as
  ``"r-\\udcff.csv"``), C0/C1 control characters, NUL, newlines/tabs and the other line
  separators, ANSI escape sequences, glob characters (``* ? [ ] \\``), hash-tag braces,
  RESP framing, numeric-looking strings, bidi/zero-width characters, noncharacters,
  very long strings;
* numbers: ``inf``, ``-inf``, NaN, 2**63, 2**64, 10**30, -1, ``sys.maxsize``, 1e17, 0.4
  and friends, bools where ints are expected, values of the wrong type;
* structures: 2,000-level deep lists/dicts, 10,000-key dicts, values orjson cannot
  encode (sets, objects, bytes, ints above 64 bits, tuple keys, surrogate strings).

Large or deep values are wrapped in :class:`Big` so that a failure report prints a
label instead of a 100 kB (or unprintably deep) ``repr``; call :func:`unwrap` before use.
"""

from __future__ import annotations

import math
import sys
from datetime import timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

from hypothesis import strategies as st

__all__ = [
    "ANSI",
    "BIG_VALUES",
    "CONTROL",
    "GLOB",
    "LONG_TEXT",
    "NASTY_NUMBERS",
    "NUMERIC_IDS",
    "SEPARATORS",
    "SURROGATES",
    "UNENCODABLE",
    "Big",
    "data_values",
    "durations",
    "ids",
    "json_values",
    "nasty_numbers",
    "nasty_text",
    "numbers_or_wrong",
    "unwrap",
    "wrong_types",
]


class Big:
    """A value with a short label for reports (deep, wide, long or unprintable)."""

    __slots__ = ("label", "value")

    def __init__(self, label: str, value: Any) -> None:
        self.label = label
        self.value = value

    def __repr__(self) -> str:
        return f"<{self.label}>"


def unwrap(x: Any) -> Any:
    """The value of a :class:`Big`, or ``x`` itself."""
    return x.value if isinstance(x, Big) else x


# ------------------------------------------------------------------------------ text

#: Lone surrogates: unencodable as UTF-8. ``"r-\udcff.csv"`` is what
#: ``b"r-\xff.csv".decode("utf-8", "surrogateescape")`` gives (os.listdir on a
#: non-UTF-8 file name).
SURROGATES = (
    "\ud800",
    "\udfff",
    "\udc80",
    b"r-\xff.csv".decode("utf-8", "surrogateescape"),
    "cannot open " + b"\xfe\xff-report.pdf".decode("utf-8", "surrogateescape"),
    "\ud83d\ude00",  # a surrogate *pair* as two code points: still not encodable
    "ok\ud800tail",
)
#: C0 controls (NUL included), DEL and C1 controls.
CONTROL = tuple(chr(c) for c in (*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)))
#: Line and field separators that forge rows in text output.
SEPARATORS = ("\n", "\r", "\r\n", "\t", "\x0b", "\x0c", "\x85", "\u2028", "\u2029")
ANSI = (
    "\x1b[31mred\x1b[0m",
    "\x1b[2J\x1b[H",
    "\x1b]0;title\x07",
    "\x1b]8;;http://example.invalid\x07link\x1b]8;;\x07",
    "\x1bc",
    "\x9b31m",  # 8-bit CSI
)
GLOB = ("*", "?", "[", "]", "\\", "[a-z]", "\\*", "t*", "*:*", "^", "{", "}", "{x}", "}{")
ODD = (
    "",
    " ",
    "\x00",
    "\u200b",  # zero-width space
    "\u202e",  # right-to-left override
    "\ufeff",  # BOM
    "\uffff",  # noncharacter
    "\U0010ffff",
    "é",
    "日本",
    "\r\n$3\r\nSET\r\n",  # RESP framing
    "%s%d%%",
    "'\"`$(x)",
    "nan",
    "inf",
    "-0",
    "null",
    "true",
    "{}",
)
#: Strings that look like (or are) the sequence numbers used for automatic job ids.
NUMERIC_IDS = (
    "0",
    "1",
    "2",
    "3",
    "4",
    "5",
    "6",
    "7",
    "8",
    "-1",
    "01",
    "1.0",
    "1e3",
    " 1",
    "0x10",
    "9007199254740993",
    "18446744073709551616",
)
LONG_TEXT = (
    Big("257 x", "x" * 257),
    Big("513 x", "x" * 513),
    Big("300 é (600 bytes)", "é" * 300),
    Big("5000 x", "x" * 5000),
    Big("100k x", "x" * 100_000),
    Big("2M x", "x" * 2_000_000),
    Big("1000 newlines", "\n" * 1000),
    Big("200 surrogates", "\udcff" * 200),
)

ATOMS: tuple[str, ...] = (*SURROGATES, *CONTROL, *SEPARATORS, *ANSI, *GLOB, *ODD, *NUMERIC_IDS)

_any_char = st.one_of(
    st.characters(),
    st.characters(categories=["Cs"]),  # surrogates, excluded by st.characters() by default
    st.characters(categories=["Cc", "Cf", "Zl", "Zp"]),
)


def nasty_text(*, long: bool = True) -> st.SearchStrategy[Any]:
    """Strings made of the atoms above, random code points (surrogates included) and,
    with ``long``, very long strings (as :class:`Big`)."""
    parts = st.one_of(st.sampled_from(ATOMS), st.text(_any_char, max_size=6))
    strategies: list[st.SearchStrategy[Any]] = [
        st.sampled_from(ATOMS),
        st.lists(parts, min_size=1, max_size=5).map("".join),
        st.text(_any_char, max_size=20),
    ]
    if long:
        strategies.append(st.sampled_from(LONG_TEXT))
    return st.one_of(*strategies)


def ids() -> st.SearchStrategy[Any]:
    """Values for ``job_id`` / ``idempotency_key``: numeric-looking strings (which meet
    the automatic ids), hostile text, and wrong types."""
    return st.one_of(
        st.sampled_from(NUMERIC_IDS),
        st.integers(0, 9).map(str),
        nasty_text(),
        st.sampled_from([0, 1, -1, 2**64, 1.5, math.nan, True, b"1", None, ["1"]]),
    )


# ------------------------------------------------------------------------------ numbers

NASTY_NUMBERS: tuple[Any, ...] = (
    math.inf,
    -math.inf,
    math.nan,
    2**63,
    2**63 - 1,
    2**64,
    -(2**63),
    10**30,
    -(10**30),
    10**100,
    -1,
    0,
    -0.0,
    sys.maxsize,
    1e17,
    9.2233720368547758e18,
    1e308,
    5e-324,
    0.4,
    0.5,
    0.6,
    1.5,
    -0.4,
    2**53 + 1,
    1,
    2,
    65535,
    65536,
    True,
    False,
)


def nasty_numbers() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(NASTY_NUMBERS),
        st.integers(),
        st.floats(),
        st.integers(-3, 3),
    )


def wrong_types() -> st.SearchStrategy[Any]:
    """Values of a type no numeric option accepts (and a few it might)."""
    return st.sampled_from(
        [
            None,
            "10",
            "abc",
            "\ud800",
            b"10",
            [],
            {},
            [1],
            (1,),
            {"a": 1},
            Decimal("1"),
            Decimal("NaN"),
            Fraction(1, 3),
            complex(1, 1),
            object(),
        ]
    )


def durations() -> st.SearchStrategy[Any]:
    """Durations: hostile numbers and timedeltas (negative, sub-millisecond, maximal)."""
    return st.one_of(
        nasty_numbers(),
        st.sampled_from(
            [
                timedelta(0),
                timedelta(microseconds=1),
                timedelta(microseconds=400),
                timedelta(seconds=-1),
                timedelta.max,
                timedelta.min,
                timedelta(days=10**6),
            ]
        ),
    )


def numbers_or_wrong() -> st.SearchStrategy[Any]:
    return st.one_of(durations(), wrong_types())


# ------------------------------------------------------------------------------ structures


def _deep_list(n: int) -> Any:
    v: Any = []
    for _ in range(n):
        v = [v]
    return v


def _deep_dict(n: int) -> Any:
    v: Any = {}
    for _ in range(n):
        v = {"k": v}
    return v


BIG_VALUES = (
    Big("list nested 253 deep", _deep_list(253)),
    Big("list nested 256 deep", _deep_list(256)),
    Big("list nested 2000 deep", _deep_list(2000)),
    Big("dict nested 2000 deep", _deep_dict(2000)),
    Big("dict of 10,000 keys", {f"k{i}": i for i in range(10_000)}),
    Big("list of 10,000 surrogate-free strings", [f"s{i}\x00\x1b[0m" for i in range(10_000)]),
    Big("2 MB string", "y" * 2_000_000),
)
#: Values orjson refuses (or that are not JSON at all).
UNENCODABLE = (
    Big("set", {1, 2}),
    Big("object()", object()),
    Big("bytes", b"\xff\x00"),
    Big("int 2**64", 2**64),
    Big("int -2**64", -(2**64)),
    Big("tuple key", {(1, 2): 1}),
    Big("surrogate str", "\ud800"),
    Big("surrogate key", {"\udcff": 1}),
    Big("surrogate in list", ["ok", "r-\udcff.csv"]),
    Big("complex", complex(1, 2)),
    Big("Decimal", Decimal("1.5")),
    Big("generator", (i for i in range(2))),
)


def json_values() -> st.SearchStrategy[Any]:
    """JSON-like values whose leaves are hostile numbers and text (surrogates included)."""
    leaf = st.one_of(
        st.none(),
        st.booleans(),
        nasty_numbers(),
        nasty_text(long=False),
    )
    return st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(nasty_text(long=False), inner, max_size=4),
        ),
        max_leaves=12,
    )


def data_values() -> st.SearchStrategy[Any]:
    """Job data or results: JSON-like hostile values, deep/wide/long ones, unencodable
    ones (wrapped in :class:`Big` where large)."""
    return st.one_of(
        json_values(),
        st.sampled_from(BIG_VALUES),
        st.sampled_from(UNENCODABLE),
        st.sampled_from(LONG_TEXT),
    )
