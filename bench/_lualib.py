"""A composed script as a Redis 7 function library: its helpers defined once, at load
(``bench/bench_functions.py`` measures what that would save; the engine sends EVALSHA).

A script sent with ``EVALSHA`` runs its whole text on every call: each
``local function`` of its fragments makes a new closure, with its upvalues, and leaves
them to the garbage collector, before the script's own work begins. For the engine's
hot scripts that preamble is a large share of their Redis time. Loaded with
``FUNCTION LOAD``, the same text is split in two:

* **definitions**, run once when the library loads: every top-level ``local function``
  and every top-level ``local NAME = <number or string literal>``;
* **the call**, run on each ``FCALL`` in the original order: every other top-level
  statement. Its top-level ``local`` declarations become library-level variables,
  declared before the definitions and assigned where the declaration stood (``local a, b
  = x, y`` becomes ``a, b = x, y``; ``local a`` becomes ``a = nil``), so the functions
  defined once see the values of the current call, as they did when they were defined
  on every call. ``KEYS`` and ``ARGV``, globals for a script, are such variables too,
  assigned from the function's arguments first.

Calls never run concurrently in Redis, so library-level variables carry no state from
one call into the next: each is assigned before use in every call, exactly where the
script declared it. ``library`` refuses (``NotALibrary``) a script it cannot split
safely -- the same top-level name declared twice, unbalanced blocks -- and the caller
keeps sending it with ``EVALSHA``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Library", "NotALibrary", "library"]


class NotALibrary(ValueError):
    """The script cannot be turned into a function library (it stays an EVAL script)."""


@dataclass(frozen=True, slots=True)
class Library:
    """A script as a function library: its ``FUNCTION LOAD`` text and function name."""

    name: str
    function: str
    code: str


_TOKEN = re.compile(
    r"""
    (?P<comment>--\[(?P<ceq>=*)\[.*?\](?P=ceq)\]|--[^\n]*)
  | (?P<long>\[(?P<leq>=*)\[.*?\](?P=leq)\])
  | (?P<str>"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*')
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<num>0[xX][0-9a-fA-F]+|\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)
  | (?P<op>\.\.\.|\.\.|==|~=|<=|>=|[^\s])
  | (?P<ws>\s+)
    """,
    re.VERBOSE | re.DOTALL,
)

_OPENERS = {"function", "if", "do", "while", "for", "repeat"}


class _Blocks:
    """Block depth while reading tokens in order (`function`, `if`, `do`, `while`,
    `for` and `repeat` open a block; `end` and `until` close one; the `do` of a `while`
    or `for` header opens nothing more)."""

    def __init__(self) -> None:
        self.depth = 0
        self._loop_header = 0

    def step(self, t: _Tok) -> int:
        word = t.text if t.kind == "name" else ""
        if word in _OPENERS:
            if word == "do" and self._loop_header:
                self._loop_header -= 1
            else:
                self.depth += 1
                if word in ("while", "for"):
                    self._loop_header += 1
        elif word in ("end", "until"):
            self.depth -= 1
            if self.depth < 0:
                raise NotALibrary("unbalanced blocks: an `end` closes nothing")
        return self.depth


@dataclass(slots=True)
class _Tok:
    kind: str
    text: str
    start: int
    end: int


def _tokens(source: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(source):
        m = _TOKEN.match(source, pos)
        if m is None:  # pragma: no cover - every character matches some alternative
            raise NotALibrary(f"cannot read the script at offset {pos}")
        kind = m.lastgroup or ""
        if kind in ("ceq", "leq"):  # inner groups: report the outer alternative
            kind = "comment" if m.group("comment") else "long"
        if kind not in ("ws", "comment"):
            out.append(_Tok(kind, m.group(0), m.start(), m.end()))
        pos = m.end()
    return out


def _check_balance(toks: list[_Tok]) -> None:
    blocks = _Blocks()
    for t in toks:
        blocks.step(t)
    if blocks.depth != 0:
        raise NotALibrary("unbalanced blocks: a block is never closed")


def _function_end(toks: list[_Tok], i: int) -> int:
    """Index of the `end` closing the function whose `function` keyword is token ``i``."""
    blocks = _Blocks()
    for j in range(i, len(toks)):
        if blocks.step(toks[j]) == 0:
            return j
    raise NotALibrary("a local function is never closed")


def library(source: str, lib_name: str, function: str, flags: tuple[str, ...] = ()) -> Library:
    """``source`` (a composed script) as a function library named ``lib_name`` with one
    function, ``function``, taking the script's keys and arguments."""
    toks = _tokens(source)
    _check_balance(toks)
    defs: list[str] = []  # run once, at load
    call: list[str] = []  # run on every FCALL, in order
    declared: list[str] = []
    pos = 0  # source offset copied to the call so far
    i = 0
    n = len(toks)
    blocks = _Blocks()
    while i < n:
        t = toks[i]
        word = t.text if t.kind == "name" else ""
        if blocks.depth == 0 and word == "local":
            nxt = toks[i + 1] if i + 1 < n else None
            if nxt is not None and nxt.text == "function":
                j = _function_end(toks, i + 1)
                name = toks[i + 2].text
                _declare(declared, name)
                call.append(source[pos : t.start])
                defs.append(source[t.start : toks[j].end])
                pos = toks[j].end
                i = j + 1
                continue
            names, j = _name_list(toks, i + 1)
            for name in names:
                _declare(declared, name)
            if (
                len(names) == 1
                and j < n
                and toks[j].text == "="
                and j + 1 < n
                and toks[j + 1].kind in ("num", "str")
                and (j + 2 >= n or not _continues(toks[j + 2]))
            ):
                # local NAME = <literal>: a constant, defined once.
                call.append(source[pos : t.start])
                defs.append(source[t.start : toks[j + 1].end])
                pos = toks[j + 1].end
                i = j + 2
                continue
            call.append(source[pos : t.start])
            joined = ", ".join(names)
            if j < n and toks[j].text == "=":
                call.append(f"{joined} =")
                pos = toks[j].end
            else:
                call.append(f"{joined} = nil")
                pos = toks[j - 1].end
            i = j
            continue
        blocks.step(t)
        i += 1
    call.append(source[pos:])
    if "KEYS" in declared or "ARGV" in declared:
        raise NotALibrary("the script declares KEYS or ARGV itself")
    head = "local KEYS, ARGV\n"
    # Lua 5.1 takes at most 200 names per `local` statement: declare them in lines.
    decl = "".join(
        "local " + ", ".join(declared[k : k + 50]) + "\n" for k in range(0, len(declared), 50)
    )
    flag_list = ", ".join(f"'{f}'" for f in flags)
    code = (
        f"#!lua name={lib_name}\n{head}{decl}"
        + "\n".join(defs)
        + f"\nredis.register_function{{function_name='{function}', flags={{{flag_list}}}, "
        + "callback=function(keys_, args_)\nKEYS, ARGV = keys_, args_\n"
        + "".join(call)
        + "\nend}\n"
    )
    return Library(lib_name, function, code)


def _declare(declared: list[str], name: str) -> None:
    if name in declared:
        raise NotALibrary(f"top-level name {name!r} is declared twice")
    declared.append(name)


def _name_list(toks: list[_Tok], i: int) -> tuple[list[str], int]:
    names: list[str] = []
    while i < len(toks) and toks[i].kind == "name":
        names.append(toks[i].text)
        i += 1
        if i < len(toks) and toks[i].text == ",":
            i += 1
            continue
        break
    if not names:
        raise NotALibrary("`local` without a name")
    return names, i


def _continues(t: _Tok) -> bool:
    """Whether token ``t`` continues the expression before it (an operator, a call)."""
    return (t.kind == "op" and t.text not in (";",)) or t.text in ("and", "or")
