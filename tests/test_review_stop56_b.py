"""Text output cut to its bound: a field is cut between whole escapes.

``limits.printable`` writes every character that is not plain printable text as a
backslash escape and the backslash itself as ``\\\\``, so an escape in the output always
means one escaped character. ``cli.base.cell`` cuts a long field to ``MAX_FIELD_CHARS``:
it once cut the escaped text, which could end the field in half an escape (``\\x1``, a
lone backslash) right before the cut marker.
"""

from __future__ import annotations

import re

import pytest

from kitium_queue.cli.base import MAX_FIELD_CHARS, cell
from kitium_queue.cli.output import _bounded_lines

#: One escape of ``printable``, or one character it leaves as it is.
_TOKEN = re.compile(r"\\\\|\\[ntr]|\\x[0-9a-f]{2}|\\u[0-9a-f]{4}|\\U[0-9a-f]{8}|[^\\]", re.S)
_SHORT = {"\\\\": "\\", "\\n": "\n", "\\t": "\t", "\\r": "\r"}


def _unescaped(shown: str) -> str:
    """The text ``shown`` stands for; fails on half an escape."""
    out = []
    pos = 0
    while pos < len(shown):
        m = _TOKEN.match(shown, pos)
        assert m is not None, f"half an escape at {pos}: {shown[pos : pos + 12]!r}"
        tok = m.group()
        out.append(_SHORT.get(tok) or (chr(int(tok[2:], 16)) if len(tok) > 1 else tok))
        pos = m.end()
    return "".join(out)


def _head(shown: str) -> str:
    """The part of a cut field before its marker."""
    at = shown.rfind("... [cut, ")
    assert at >= 0, shown[-80:]
    return shown[:at]


@pytest.mark.parametrize(
    "value",
    [
        "a" + "\x1b" * 20_000,  # longer than the bound: cut before escaping
        "b" + "\\" * 20_000,
        "c" + "\U000e0001" * 20_000,  # \U escapes (a format character)
        "a" + "\x1b" * 5_000,  # within the bound, longer once escaped
        "d" + "\\" * 9_000,
        "e" + "\u202e" * 4_000,
    ],
    ids=["esc", "backslash", "U-escape", "esc-escaped-long", "backslash-escaped-long", "bidi"],
)
def test_a_cut_field_ends_with_whole_escapes(value: str) -> None:
    shown = cell(value)
    head = _head(shown)
    assert len(head) <= MAX_FIELD_CHARS
    assert len(head) > MAX_FIELD_CHARS - 10  # as much as fits is shown
    assert value.startswith(_unescaped(head))
    assert "\x1b" not in shown


def test_a_cut_line_of_a_block_ends_with_whole_escapes() -> None:
    # Lines of a log (``jobs show``): each cut to what is left of the block's bound.
    lines, _ = _bounded_lines(["a" + "\x00" * 30_000, "b" + "\x07" * 30_000])
    assert len(lines) == 2
    for line, first in zip(lines, "ab", strict=True):
        assert _unescaped(_head(line)).startswith(first)
