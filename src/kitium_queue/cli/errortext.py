"""The text of the one line an error becomes (``base.Main.invoke``): made safe for the
terminal once, and cut to a bounded length.

An error's text quotes values the library escaped already (``principal 'root\\x1b[2J'``,
``got 'a\\nb'``): escaping it again as a field of output (``limits.printable``, which
doubles every backslash) would show ``root\\\\x1b[2J``. ``error_text`` escapes only
what is not printable (a raw control, format or separator character, a lone surrogate)
and leaves backslashes alone, so an escaped value reads as it was written while a raw
control character that reached an error (a message of another library, quoting what it
was given) still cannot move the cursor or recolour the terminal.
"""

from __future__ import annotations

from ..limits import printable

__all__ = ["MAX_ERROR_LINE", "error_line", "error_text"]

#: Longest error line: a message quoting an argument as long as the shell allows
#: (128 KiB) keeps its start and its end (what to do), and says how much was cut.
MAX_ERROR_LINE = 1000


def error_text(text: str) -> str:
    """``text`` with each character that is not printable escaped (``\\n``, ``\\x1b``,
    ``\\u202e``...), backslashes left as they are (see the module docstring)."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else printable(ch) for ch in text)


def error_line(text: str) -> str:
    """``text`` (escaped already) cut in its middle to at most about ``MAX_ERROR_LINE``
    characters."""
    if len(text) <= MAX_ERROR_LINE:
        return text
    head, tail = MAX_ERROR_LINE * 3 // 5, MAX_ERROR_LINE // 4
    return f"{text[:head]}...[{len(text) - head - tail} characters cut]...{text[-tail:]}"
