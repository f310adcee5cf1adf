"""Queue patterns of grants: a small glob, matched in linear-by-pattern time.

Syntax (what ``QueuePattern`` accepts):

* ``*`` matches any run of characters, the empty one included (``acme-*`` matches
  ``acme-`` and ``acme-orders#3``: queue names have no hierarchy, so ``*`` crosses
  ``-``, ``.``, ``:``, ``/`` and ``#``); ``**`` is the same as ``*``;
* ``?`` matches exactly one character;
* ``[abc]``, ``[a-z0-9]`` match one character of the class, ``[!abc]`` (or ``[^abc]``)
  one character not in it; a ``-`` first or last in the class is literal;
* every other character matches itself, case-sensitively. Only the characters a queue
  name may hold are accepted there (letters, digits, combining marks and
  ``- _ . : # / +``, see ``keys.NAME_PUNCTUATION``).

Queue names cannot contain ``* ? [ ] \\``, so a pattern needs no escapes and no name is
ambiguous. Anything else (spaces, braces, a backslash, an unclosed ``[``, control
characters, lone surrogates, more than ``MAX_PATTERN_LEN`` characters) is refused with
``ConfigurationError`` naming the problem.

Matching never backtracks more than once per star (the classic greedy algorithm with
one resume point), so a pattern such as ``*a*a*a*a*b`` costs O(len(pattern) *
len(name)), never exponential time.
"""

from __future__ import annotations

import unicodedata

from ...errors import ConfigurationError
from ...keys import NAME_PUNCTUATION
from ...limits import clip

__all__ = ["MAX_PATTERN_LEN", "QueuePattern"]

#: Longest queue pattern accepted.
MAX_PATTERN_LEN = 256

# A token: None is a star; otherwise (negate, chars, ranges) matching one character.
_Token = tuple[bool, frozenset[str], tuple[tuple[str, str], ...]] | None
_ANY: _Token = (True, frozenset(), ())  # "not in the empty class": any one character


def _name_char(ch: str) -> bool:
    return ch in NAME_PUNCTUATION or unicodedata.category(ch)[0] in "LNM"


def _bad(pattern: str, why: str) -> ConfigurationError:
    return ConfigurationError(
        f"invalid queue pattern {clip(repr(pattern), 100)}: {why}; a pattern holds queue-name "
        f"characters (letters, digits, {' '.join(NAME_PUNCTUATION)}) and the glob operators "
        "* ? [...] [!...]"
    )


def _class(pattern: str, i: int) -> tuple[_Token, int]:
    """The class starting at ``pattern[i] == '['``, and the index after its ``]``."""
    j = i + 1
    negate = j < len(pattern) and pattern[j] in "!^"
    if negate:
        j += 1
    body_start = j
    while j < len(pattern) and pattern[j] != "]":
        j += 1
    if j >= len(pattern):
        raise _bad(pattern, f"the class opened at position {i} has no closing ]")
    body = pattern[body_start:j]
    if not body:
        raise _bad(pattern, f"the class at position {i} is empty")
    chars: set[str] = set()
    ranges: list[tuple[str, str]] = []
    k = 0
    while k < len(body):
        ch = body[k]
        if ch != "-" and not _name_char(ch):
            raise _bad(pattern, f"character {ch!r} (U+{ord(ch):04X}) cannot be in a class")
        if k + 2 < len(body) and body[k + 1] == "-":
            lo, hi = ch, body[k + 2]
            if not _name_char(hi) or hi == "-":
                raise _bad(pattern, f"range {lo}-{hi} in the class at position {i}")
            if lo > hi:
                raise _bad(pattern, f"range {lo}-{hi} is reversed")
            ranges.append((lo, hi))
            k += 3
        else:
            chars.add(ch)
            k += 1
    return (negate, frozenset(chars), tuple(ranges)), j + 1


def _compile(pattern: object) -> tuple[str, tuple[_Token, ...]]:
    if not isinstance(pattern, str):
        raise ConfigurationError(
            f"queue_pattern must be a str (a queue name or a glob such as 'acme-*'), got "
            f"{type(pattern).__name__}"
        )
    if not pattern:
        raise _bad(pattern, "it is empty (use '*' for every queue)")
    if len(pattern) > MAX_PATTERN_LEN:
        raise _bad(pattern, f"it has {len(pattern)} characters, more than {MAX_PATTERN_LEN}")
    tokens: list[_Token] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if not tokens or tokens[-1] is not None:  # ** is *
                tokens.append(None)
            i += 1
        elif ch == "?":
            tokens.append(_ANY)
            i += 1
        elif ch == "[":
            tok, i = _class(pattern, i)
            tokens.append(tok)
        elif _name_char(ch):
            tokens.append((False, frozenset(ch), ()))
            i += 1
        else:
            where = "a closing ] without [" if ch == "]" else f"character {ch!r}"
            raise _bad(pattern, f"{where} (U+{ord(ch):04X}) at position {i} is not allowed")
    return pattern, tuple(tokens)


def _one(tok: tuple[bool, frozenset[str], tuple[tuple[str, str], ...]], ch: str) -> bool:
    negate, chars, ranges = tok
    inside = ch in chars or any(lo <= ch <= hi for lo, hi in ranges)
    return inside != negate


class QueuePattern:
    """A compiled queue pattern (see the module docstring for the syntax); equal and
    hashed by its text.

    Example::

        QueuePattern("acme-*").matches("acme-orders")    # True
        QueuePattern("acme-[!t]*").matches("acme-test")  # False
    """

    __slots__ = ("_tokens", "text")

    def __init__(self, pattern: str) -> None:
        self.text, self._tokens = _compile(pattern)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, QueuePattern) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"QueuePattern({self.text!r})"

    @property
    def is_literal(self) -> bool:
        """True when the pattern has no operator: it names one queue."""
        return all(t is not None and not t[0] and len(t[1]) == 1 and not t[2] for t in self._tokens)

    @property
    def matches_all(self) -> bool:
        """True when the pattern matches every queue name (``*``, ``**``...)."""
        return self._tokens == (None,)

    @property
    def literal_prefix(self) -> str:
        """The characters before the first operator (all of them for a literal)."""
        out = []
        for t in self._tokens:
            if t is None or t[0] or len(t[1]) != 1 or t[2]:
                break
            out.append(next(iter(t[1])))
        return "".join(out)

    def matches(self, name: str) -> bool:
        """True when queue ``name`` matches the whole pattern."""
        toks = self._tokens
        n, m = len(name), len(toks)
        i = j = 0
        star_j = -1  # token index after the last star seen
        star_i = 0  # name index that star's run currently ends at
        while i < n:
            if j < m:
                tok = toks[j]
                if tok is None:
                    star_j, star_i = j + 1, i
                    j += 1
                    continue
                if _one(tok, name[i]):
                    i += 1
                    j += 1
                    continue
            if star_j < 0:
                return False
            # Let the last star swallow one more character and retry from there.
            star_i += 1
            i, j = star_i, star_j
        while j < m and toks[j] is None:
            j += 1
        return j == m

    def __str__(self) -> str:
        return self.text
